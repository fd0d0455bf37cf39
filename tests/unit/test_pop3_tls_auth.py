"""POP3 STLS (RFC 2595) and AUTH PLAIN (RFC 5034) as transcripts."""

from __future__ import annotations

import base64

from mailserver.config import POP3Config
from mailserver.pop3.session import POP3Session
from mailserver.session import Close, Effect, Send, StartTLS
from tests.unit.test_pop3_session import HOST, Maildrop


class TLSClient:
    def __init__(self, plaintext: bool = False, tls_active: bool = False) -> None:
        self.maildrop = Maildrop()
        self.session = POP3Session(
            POP3Config(),
            HOST,
            "t",
            allow_plaintext_login=plaintext,
            starttls=True,
            tls_active=tls_active,
        )
        self.tls_started = 0
        self.closed = False
        self.pump()

    def pump(self) -> bytes:
        out = []
        while (action := self.session.next_action()) is not None:
            if isinstance(action, Send):
                out.append(action.data)
            elif isinstance(action, StartTLS):
                self.tls_started += 1
            elif isinstance(action, Close):
                self.closed = True
            else:
                assert isinstance(action, Effect)
                self.session.resume(self.maildrop.run(action))
        return b"".join(out)

    def send(self, data: bytes) -> bytes:
        self.session.receive_data(data)
        return self.pump()


def plain(user: str = "alice", password: str = "secret", authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_before_tls_no_login_is_offered_or_accepted() -> None:
    c = TLSClient()
    assert c.send(b"CAPA\r\n") == (
        b"+OK capability list follows\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\n"
        b"AUTH-RESP-CODE\r\nSTLS\r\n.\r\n"
    )
    refusal = b"-ERR [AUTH] plaintext authentication disallowed on non-secure connections\r\n"
    assert c.send(b"USER alice\r\n") == refusal
    assert c.send(b"PASS secret\r\n") == refusal
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n") == refusal
    assert c.send(b"AUTH\r\n") == b"+OK SASL mechanisms follow\r\n.\r\n"


def test_stls_discards_injected_commands_then_login_works() -> None:
    c = TLSClient()
    assert c.send(b"STLS\r\nUSER alice\r\nPASS secret\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert c.tls_started == 1
    assert c.session.address is None
    caps = c.send(b"CAPA\r\n")
    assert b"STLS" not in caps and b"USER\r\n" in caps and b"SASL PLAIN" in caps
    assert c.send(b"STLS\r\n") == b"-ERR STLS not available\r\n"
    assert c.send(b"AUTH PLAIN " + plain() + b"\r\n").startswith(b"+OK 2 messages")


def test_auth_plain_with_continuation_and_errors() -> None:
    c = TLSClient(tls_active=True)
    assert c.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert c.send(b"*\r\n") == b"-ERR authentication cancelled\r\n"
    assert c.send(b"AUTH PLAIN\r\n!!!\r\n") == b"+ \r\n-ERR malformed SASL response\r\n"
    assert c.send(b"AUTH PLAIN " + base64.b64encode(b"a\0b") + b"\r\n") == (
        b"-ERR malformed SASL PLAIN response\r\n"
    )
    assert c.send(b"AUTH PLAIN " + plain(authzid="bob") + b"\r\n") == (
        b"-ERR [AUTH] cannot act as another user\r\n"
    )
    assert c.send(b"AUTH CRAM-MD5\r\n") == b"-ERR unsupported SASL mechanism\r\n"
    assert c.send(b"AUTH PLAIN " + plain(password="wrong") + b"\r\n") == (
        b"-ERR [AUTH] invalid user name or password\r\n"
    )
    assert c.send(b"AUTH PLAIN\r\n" + plain() + b"\r\n").startswith(b"+ \r\n+OK 2 messages")


def test_implicit_tls_offers_no_stls() -> None:
    c = TLSClient(tls_active=True)
    assert b"STLS" not in c.send(b"CAPA\r\n")


def test_loopback_dev_default_allows_user_pass_before_tls() -> None:
    c = TLSClient(plaintext=True)
    caps = c.send(b"CAPA\r\n")
    assert b"USER" in caps and b"STLS" in caps
    assert c.send(b"USER alice\r\nPASS secret\r\n").startswith(b"+OK\r\n+OK 2 messages")
