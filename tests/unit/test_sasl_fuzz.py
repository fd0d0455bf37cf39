"""Any SASL response, in any protocol, gets the protocol's error reply or a login
attempt; never a dropped connection or a traceback, and the session stays usable."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailserver.smtp.session import SMTPRole
from tests.unit.test_imap_session import Client, Mail
from tests.unit.test_pop3_tls_auth import TLSClient
from tests.unit.test_smtp_session import started

# Responses: raw bytes (mostly not base64), and base64 of random fields joined by NUL.
ALPHABET = st.sampled_from(b"ABCabc+/=*!\x00\t -.0123456789")
RAW = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
NEAR = st.lists(ALPHABET, max_size=40).map(bytes)
FIELDS = st.lists(st.binary(max_size=12), max_size=5).map(
    lambda parts: base64.b64encode(b"\0".join(parts))
)
RESPONSES = st.one_of(RAW, NEAR, FIELDS)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(response=RESPONSES, initial=st.booleans(), mechanism=st.sampled_from([b"PLAIN", b"LOGIN"]))
def test_smtp_auth(response: bytes, initial: bool, mechanism: bytes) -> None:
    t = started(role=SMTPRole("MSA", tls_active=True, auth=True, require_auth=True))
    t.send(b"EHLO c.example\r\n")
    if initial and response:
        out = t.send(b"AUTH " + mechanism + b" " + response + b"\r\n")
    else:
        assert t.send(b"AUTH " + mechanism + b"\r\n").startswith(b"334 ")
        out = t.send(response + b"\r\n")
    if out.startswith(b"334 "):  # LOGIN asks for the password next
        out = t.send(response + b"\r\n")
    codes = [b"235", b"501", b"535"]
    if initial and not response.isascii():
        codes.append(b"500")  # the AUTH command line itself is not ASCII (RFC 5321 §2.4)
    assert out[:3] in codes, out
    assert not t.closed
    assert t.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


@FUZZ
@given(response=RESPONSES, initial=st.booleans())
def test_imap_authenticate(response: bytes, initial: bool) -> None:
    mail = Mail()
    try:
        c = Client(mail, tls_active=True)
        if initial and response and b" " not in response:
            out = c.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
        else:
            assert c.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
            out = c.send(response + b"\r\n")
        assert out.startswith((b"a OK", b"a NO", b"a BAD")), out
        assert c.send(b"n NOOP\r\n").endswith(b"n OK NOOP completed\r\n")
    finally:
        mail.cleanup()


@FUZZ
@given(response=RESPONSES, initial=st.booleans())
def test_pop3_auth(response: bytes, initial: bool) -> None:
    c = TLSClient(tls_active=True)
    if initial and response:
        out = c.send(b"AUTH PLAIN " + response + b"\r\n")
    else:
        assert c.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
        out = c.send(response + b"\r\n")
    assert out.startswith((b"+OK", b"-ERR")), out
    if out.startswith(b"-ERR"):
        assert not c.closed
        assert c.send(b"CAPA\r\n").startswith(b"+OK capability list follows\r\n")
