"""SMTP STARTTLS (RFC 3207), AUTH (RFC 4954) and the MSA role (RFC 6409) as transcripts."""

from __future__ import annotations

import base64

from mailserver.smtp.session import SMTPRole
from tests.unit.test_smtp_session import started

MTA = SMTPRole("MTA", starttls=True)
MSA = SMTPRole("MSA", starttls=True, auth=True, require_auth=True)
MSA_TLS = SMTPRole("MSA", tls_active=True, auth=True, require_auth=True)
MSA_LOOPBACK = SMTPRole("MSA", starttls=True, auth=True, require_auth=True, plaintext_auth=True)


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def plain(user: str = "alice@example.test", password: str = "secret") -> bytes:
    return b64(f"\0{user}\0{password}")


def ehlo_keywords(out: bytes) -> list[bytes]:
    return [line[4:] for line in out.split(b"\r\n")[1:] if line]


def test_mta_offers_starttls_never_auth() -> None:
    t = started(role=MTA)
    keywords = ehlo_keywords(t.send(b"EHLO c.example\r\n"))
    assert b"STARTTLS" in keywords
    assert not any(k.startswith(b"AUTH") for k in keywords)
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"503 5.5.1 Authentication not enabled\r\n"
    assert t.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert t.tls_started == 1
    keywords = ehlo_keywords(t.send(b"EHLO c.example\r\n"))
    assert b"STARTTLS" not in keywords
    assert not any(k.startswith(b"AUTH") for k in keywords)


def test_starttls_discards_what_was_sent_with_it_and_resets_the_session() -> None:
    t = started(role=MTA)
    t.send(b"EHLO c.example\r\n")
    # The classic injection: a command in the same packet as STARTTLS.
    out = t.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert t.session.envelope is None
    # After the handshake the client must say EHLO again.
    assert t.send(b"MAIL FROM:<a@example.org>\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"
    assert t.send(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"


def test_starttls_not_configured() -> None:
    t = started()
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"STARTTLS\r\n") == b"502 5.5.1 STARTTLS not available\r\n"
    assert t.send(b"STARTTLS now\r\n") == b"501 5.5.4 Syntax: STARTTLS\r\n"


def test_msa_refuses_auth_and_mail_before_tls() -> None:
    t = started(role=MSA)
    keywords = ehlo_keywords(t.send(b"EHLO c.example\r\n"))
    assert b"STARTTLS" in keywords and not any(k.startswith(b"AUTH") for k in keywords)
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == (
        b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    )
    assert t.send(b"MAIL FROM:<alice@example.test>\r\n") == (
        b"530 5.7.0 Authentication required\r\n"
    )
    t.send(b"STARTTLS\r\n")
    keywords = ehlo_keywords(t.send(b"EHLO c.example\r\n"))
    assert b"AUTH PLAIN LOGIN" in keywords


def test_auth_plain_with_initial_response_then_submission() -> None:
    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"503 5.5.1 Already authenticated\r\n"
    assert t.send(b"MAIL FROM:<bob@example.test>\r\n") == (
        b"553 5.7.1 Sender address not owned by user\r\n"
    )
    assert t.send(b"MAIL FROM:<alice@example.test>\r\n") == b"250 2.1.0 Sender OK\r\n"
    assert t.send(b"RCPT TO:<bob@example.test>\r\nDATA\r\nx\r\n.\r\n").endswith(
        b"250 2.0.0 OK queued\r\n"
    )
    received = t.delivered[0].chunks[0]
    assert b"with ESMTPSA id sid1" in received
    assert t.delivered[0].envelope.auth_user == "alice@example.test"


def test_auth_plain_with_continuation_and_login() -> None:
    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert t.send(plain() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"

    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert t.send(b64("alice@example.test") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert t.send(b64("secret") + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"

    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH LOGIN " + b64("alice@example.test") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert t.send(b64("wrong") + b"\r\n") == b"535 5.7.8 Authentication credentials invalid\r\n"


def test_malformed_auth_gets_501_and_the_session_goes_on() -> None:
    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH PLAIN !!!notbase64\r\n") == (
        b"501 5.5.2 Cannot decode the response as base64 UTF-8\r\n"
    )
    assert t.send(b"AUTH PLAIN " + b64("only-one-field") + b"\r\n") == (
        b"501 5.5.2 PLAIN needs authzid NUL authcid NUL password\r\n"
    )
    assert t.send(b"AUTH PLAIN\r\n*\r\n") == b"334 \r\n501 5.0.0 Authentication cancelled\r\n"
    assert t.send(b"AUTH CRAM-MD5\r\n") == b"504 5.5.4 Unrecognized authentication type\r\n"
    assert t.send(
        b"AUTH PLAIN " + b64("bob@example.test\0alice@example.test\0secret") + b"\r\n"
    ) == (b"535 5.7.8 Cannot act as another user\r\n")
    assert t.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_auth_needs_ehlo_and_no_transaction() -> None:
    t = started(role=MSA_TLS)
    t.send(b"HELO c.example\r\n")
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"503 5.5.1 Send EHLO first\r\n"


def test_loopback_dev_default_allows_plaintext_auth() -> None:
    t = started(role=MSA_LOOPBACK)
    keywords = ehlo_keywords(t.send(b"EHLO c.example\r\n"))
    assert b"AUTH PLAIN LOGIN" in keywords and b"STARTTLS" in keywords
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"


def test_long_auth_line_is_allowed() -> None:
    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    long_password = "p" * 3000
    assert t.send(b"AUTH PLAIN " + plain(password=long_password) + b"\r\n") == (
        b"535 5.7.8 Authentication credentials invalid\r\n"
    )


def test_locked_out_client_gets_454() -> None:
    from twisted.python.failure import Failure

    from mailserver.login import TooManyFailures

    t = started(role=MSA_TLS)
    t.send(b"EHLO c.example\r\n")
    t.session.receive_data(b"AUTH PLAIN " + plain() + b"\r\n")
    action = t.session.next_action()
    t.session.resume(Failure(TooManyFailures("192.0.2.7")))
    assert action is not None
    assert t.drain() == b"454 4.7.0 Temporary authentication failure\r\n"


def test_help_lists_the_commands_that_work_here() -> None:
    t = started(role=MTA)
    assert t.send(b"HELP\r\n").startswith(
        b"214-2.0.0 Commands: EHLO HELO STARTTLS MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n"
    )
    t = started(role=MSA_TLS)
    assert t.send(b"HELP\r\n").startswith(
        b"214-2.0.0 Commands: EHLO HELO AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n"
    )


def test_starttls_forgets_an_earlier_auth() -> None:
    """RFC 3207 §4.2: after the handshake the client must EHLO and AUTH again."""
    t = started(role=MSA_LOOPBACK)
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert t.send(b"STARTTLS\r\nAUTH PLAIN " + plain() + b"\r\n") == (
        b"220 2.0.0 Ready to start TLS\r\n"  # the AUTH in the same packet is dropped
    )
    assert t.session.auth_user is None
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"MAIL FROM:<alice@example.test>\r\n") == b"530 5.7.0 Authentication required\r\n"
    assert t.send(b"AUTH PLAIN " + plain() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert t.send(b"MAIL FROM:<alice@example.test>\r\n") == b"250 2.1.0 Sender OK\r\n"
