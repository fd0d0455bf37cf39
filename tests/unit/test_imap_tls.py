"""IMAP STARTTLS and LOGINDISABLED (RFC 3501 §6.2.1, §6.2.3; RFC 8314) as transcripts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.test_imap_session import Client, Mail, plain


class TLSClient(Client):
    """A client of a listener that offers STARTTLS and refuses passwords in the clear."""

    def __init__(self, mail: Mail, tls_active: bool = False) -> None:
        super().__init__(mail, starttls=True, tls_active=tls_active, allow_plaintext_login=False)


@pytest.fixture
def mail() -> Iterator[Mail]:
    m = Mail()
    yield m
    m.cleanup()


def caps(client: TLSClient) -> list[bytes]:
    out = client.send(b"c CAPABILITY\r\n")
    return out.split(b"\r\n")[0].split()[2:]


def test_before_tls_login_is_disabled(mail: Mail) -> None:
    c = TLSClient(mail)
    assert b"LOGINDISABLED" in c.greeting and b"STARTTLS" in c.greeting
    assert b"AUTH=PLAIN" not in c.greeting
    assert c.send(b"a LOGIN alice secret\r\n") == (
        b"a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"
    )
    assert c.send(b"b AUTHENTICATE PLAIN " + plain(b"", b"alice", b"secret") + b"\r\n") == (
        b"b NO [PRIVACYREQUIRED] Authentication needs TLS first\r\n"
    )


def test_starttls_discards_injected_commands(mail: Mail) -> None:
    c = TLSClient(mail)
    out = c.send(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert c.tls_started == 1
    assert c.session.user is None
    capabilities = caps(c)
    assert b"STARTTLS" not in capabilities and b"LOGINDISABLED" not in capabilities
    assert b"AUTH=PLAIN" in capabilities
    assert c.send(b"d STARTTLS\r\n") == b"d BAD STARTTLS not available\r\n"
    assert c.send(b"e LOGIN alice secret\r\n").startswith(b"e OK [CAPABILITY")


def test_implicit_tls_allows_login_at_once(mail: Mail) -> None:
    c = TLSClient(mail, tls_active=True)
    assert b"STARTTLS" not in c.greeting and b"LOGINDISABLED" not in c.greeting
    assert c.send(b"a LOGIN alice secret\r\n").startswith(b"a OK")
