"""Transcript tests of the SMTP client state machine: server bytes in, exact bytes out."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.testing import StringTransport

from mailserver.session import Close, Send, StartTLS
from mailserver.smtp.client import (
    ClientSession,
    ClientTimeouts,
    DotStuffer,
    OutboundMessage,
    OutboundRecipient,
    Result,
    TLSPolicy,
    stuff,
)
from mailserver.smtp.client_protocol import ClientProtocol

EHLO_PIPE = (
    b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
EHLO_PLAIN = b"250-mx.example.net\r\n250 SIZE 0\r\n"


def message(
    body: bytes = b"Subject: hi\r\n\r\nhello\r\n", *rcpts: str, **kw: object
) -> OutboundMessage:
    recipients = tuple(OutboundRecipient(r) for r in (rcpts or ("a@example.net",)))
    return OutboundMessage("s@example.test", recipients, (body,), **kw)  # type: ignore[arg-type]


class Client:
    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.closed = False
        self.tls = False

    def feed(self, data: bytes) -> bytes:
        self.session.receive_data(data)
        out = []
        while (action := self.session.next_action()) is not None:
            if isinstance(action, Send):
                out.append(action.data)
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, StartTLS):
                self.tls = True
                self.session.tls_started()
        return b"".join(out)


def new(msg: OutboundMessage | None = None, **kw: object) -> Client:
    return Client(ClientSession("out.example.test", msg or message(), **kw))  # type: ignore[arg-type]


def test_pipelined_delivery() -> None:
    c = new(tls=TLSPolicy.NEVER)
    assert c.feed(b"220 mx.example.net ESMTP\r\n") == b"EHLO out.example.test\r\n"
    assert c.feed(EHLO_PIPE) == (
        b"MAIL FROM:<s@example.test> SIZE=22\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"
    )
    assert c.feed(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n") == (
        b"Subject: hi\r\n\r\nhello\r\n.\r\n"
    )
    assert c.feed(b"250 2.0.0 queued as X\r\n") == b"QUIT\r\n"
    assert c.feed(b"221 bye\r\n") == b""
    assert c.closed
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.DELIVERED
    assert outcome.reply.enhanced == "2.0.0"
    assert outcome.reply.text == "queued as X"


def test_without_pipelining_one_command_at_a_time_and_partial_rcpt() -> None:
    c = new(
        message(b"x\r\n", "a@example.net", "b@example.net", "c@example.net"), tls=TLSPolicy.NEVER
    )
    c.feed(b"220 hi\r\n")
    assert c.feed(EHLO_PLAIN) == b"MAIL FROM:<s@example.test> SIZE=3\r\n"
    assert c.feed(b"250 ok\r\n") == b"RCPT TO:<a@example.net>\r\n"
    assert c.feed(b"550 5.1.1 no such user\r\n") == b"RCPT TO:<b@example.net>\r\n"
    assert c.feed(b"451 4.3.0 try later\r\n") == b"RCPT TO:<c@example.net>\r\n"
    assert c.feed(b"250 ok\r\n") == b"DATA\r\n"
    assert c.feed(b"354 go\r\n") == b"x\r\n.\r\n"
    assert c.feed(b"250 ok\r\n") == b"QUIT\r\n"
    r = c.session.outcome.recipients
    assert r["a@example.net"].result is Result.PERMANENT
    assert r["a@example.net"].reply.enhanced == "5.1.1"
    assert r["b@example.net"].result is Result.TEMPORARY
    assert r["c@example.net"].result is Result.DELIVERED


def test_helo_fallback() -> None:
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 old\r\n")
    assert c.feed(b"502 what\r\n") == b"HELO out.example.test\r\n"
    assert c.feed(b"250 old\r\n") == b"MAIL FROM:<s@example.test>\r\n"


def test_all_rcpts_refused_with_pipelining_sends_no_body() -> None:
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    c.feed(EHLO_PIPE)
    assert c.feed(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n") == b"QUIT\r\n"
    assert c.session.outcome.recipients["a@example.net"].result is Result.PERMANENT


def test_mail_refused_with_pipelining_waits_for_data_reply_before_quit() -> None:
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    c.feed(EHLO_PIPE)
    assert c.feed(b"451 4.3.0 busy\r\n") == b""
    assert c.feed(b"503 5.5.1 no\r\n") == b""
    # A broken server says 354 anyway: end the DATA empty, and only then QUIT.
    assert c.feed(b"354 go\r\n") == b".\r\n"
    assert c.feed(b"250 ok\r\n") == b"QUIT\r\n"
    assert c.session.outcome.recipients["a@example.net"].result is Result.TEMPORARY


def test_size_limit_refuses_without_sending() -> None:
    c = new(message(b"x" * 2000 + b"\r\n"), tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    assert c.feed(EHLO_PIPE) == b"QUIT\r\n"
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.PERMANENT
    assert outcome.reply.enhanced == "5.3.4"


def test_8bitmime_and_dsn_parameters() -> None:
    msg = OutboundMessage(
        "s@example.test",
        (OutboundRecipient("a@example.net", ("SUCCESS", "FAILURE"), "rfc822;a+2Bb@example.net"),),
        ("Subject: caf\u00e9\r\n\r\n\u00e9\r\n".encode(),),
        ret="HDRS",
        envid="ENV1",
    )
    c = new(msg, tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    out = c.feed(b"250-hi\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 DSN\r\n")
    assert out == (
        b"MAIL FROM:<s@example.test> BODY=8BITMIME RET=HDRS ENVID=ENV1\r\n"
        b"RCPT TO:<a@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@example.net\r\n"
        b"DATA\r\n"
    )
    assert c.session.outcome.dsn_supported


def test_greeting_554_gives_up_temporarily_per_host() -> None:
    c = new()
    assert c.feed(b"554 5.7.1 go away\r\n") == b"QUIT\r\n"
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.TEMPORARY  # another MX host may take it
    assert (outcome.reply.code, outcome.reply.enhanced) == (554, "5.7.1")
    c = new()
    assert c.feed(b"421 4.3.2 busy\r\n") == b"QUIT\r\n"
    assert c.session.outcome.recipients["a@example.net"].result is Result.TEMPORARY


def test_opportunistic_starttls_then_ehlo_again() -> None:
    c = new()
    c.feed(b"220 hi\r\n")
    assert c.feed(b"250-hi\r\n250 STARTTLS\r\n") == b"STARTTLS\r\n"
    assert c.feed(b"220 go ahead\r\n") == b"EHLO out.example.test\r\n"
    assert c.tls and c.session.outcome.tls
    assert c.feed(b"250-hi\r\n250 STARTTLS\r\n") == b"MAIL FROM:<s@example.test>\r\n"


def test_required_tls_not_offered_is_temporary() -> None:
    c = new(tls=TLSPolicy.REQUIRED)
    c.feed(b"220 hi\r\n")
    assert c.feed(b"250 hi\r\n") == b"QUIT\r\n"
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.TEMPORARY and outcome.reply.enhanced == "4.7.5"


def test_auth_plain_and_login() -> None:
    c = new(tls=TLSPolicy.REQUIRED, credentials=("u@x", "p w"))
    c.feed(b"220 hi\r\n")
    c.feed(b"250-hi\r\n250 STARTTLS\r\n")
    c.feed(b"220 go\r\n")
    token = base64.b64encode(b"\0u@x\0p w")
    assert c.feed(b"250-hi\r\n250 AUTH LOGIN PLAIN\r\n") == b"AUTH PLAIN " + token + b"\r\n"
    assert c.feed(b"235 2.7.0 ok\r\n") == b"MAIL FROM:<s@example.test>\r\n"

    c = new(tls=TLSPolicy.NEVER, credentials=("u@x", "pw"))
    c.feed(b"220 hi\r\n")
    assert c.feed(b"250-hi\r\n250 AUTH LOGIN\r\n") == b"AUTH LOGIN\r\n"
    assert c.feed(b"334 VXNlcm5hbWU6\r\n") == base64.b64encode(b"u@x") + b"\r\n"
    assert c.feed(b"334 UGFzc3dvcmQ6\r\n") == base64.b64encode(b"pw") + b"\r\n"
    assert c.feed(b"535 5.7.8 bad\r\n") == b"QUIT\r\n"
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.TEMPORARY and outcome.reply.enhanced == "4.7.8"


def test_timeouts_per_step_and_timed_out() -> None:
    t = ClientTimeouts(greeting=1, command=2, data_init=3, data_end=4)
    c = new(tls=TLSPolicy.NEVER, timeouts=t)
    assert c.session.timeout() == 1
    c.feed(b"220 hi\r\n")
    assert c.session.timeout() == 2
    c.feed(EHLO_PLAIN)
    c.feed(b"250 ok\r\n")
    c.feed(b"250 ok\r\n")
    assert c.session.timeout() == 3
    c.feed(b"354 go\r\n")
    assert c.session.timeout() == 4
    c.session.timed_out()
    assert c.feed(b"") == b""
    assert c.closed
    assert c.session.outcome.recipients["a@example.net"].result is Result.TEMPORARY


def test_malformed_reply_and_connection_lost() -> None:
    c = new()
    c.feed(b"hello there\r\n")
    assert c.closed
    assert c.session.outcome.recipients["a@example.net"].result is Result.TEMPORARY
    c = new()
    c.feed(b"220 hi\r\n")
    c.session.connection_lost("reset")
    assert c.session.outcome.recipients["a@example.net"].reply.text == "reset"


def test_multiline_reply_with_enhanced_codes() -> None:
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    c.feed(EHLO_PLAIN)
    c.feed(b"550-5.1.1 first\r\n550 5.1.1 second\r\n")
    reply = c.session.outcome.recipients["a@example.net"].reply
    assert reply.code == 550 and reply.enhanced == "5.1.1" and reply.text == ("first", "second")


# Dot-stuffing and line ends ------------------------------------------------------------


def stuffed(chunks: list[bytes]) -> bytes:
    return b"".join(stuff(chunks))


def test_dot_lines_at_16k_boundaries() -> None:
    for offset in (16383, 16384, 16385):
        body = b"a" * (offset - 2) + b"\r\n" + b".\r\n" + b".x\r\n" + b"tail\r\n"
        expected = b"a" * (offset - 2) + b"\r\n..\r\n..x\r\ntail\r\n.\r\n"
        for size in (16383, 16384, 16385, 1, 2, 3, len(body)):
            chunks = [body[i : i + size] for i in range(0, len(body), size)]
            assert stuffed(chunks) == expected, (offset, size)


def test_dot_at_message_start_and_chunk_start() -> None:
    assert stuffed([b".\r\n"]) == b"..\r\n.\r\n"
    assert stuffed([b"a\r\n", b".b\r\n"]) == b"a\r\n..b\r\n.\r\n"
    assert stuffed([b"a\r", b"\n.b"]) == b"a\r\n..b\r\n.\r\n"
    assert stuffed([b"a.b\r\n"]) == b"a.b\r\n.\r\n"


def test_bare_cr_and_lf_become_crlf() -> None:
    assert stuffed([b"a\nb\rc\r\n"]) == b"a\r\nb\r\nc\r\n.\r\n"
    assert stuffed([b"a\n.\nb"]) == b"a\r\n..\r\nb\r\n.\r\n"
    assert stuffed([b"a\r"]) == b"a\r\n.\r\n"
    assert stuffed([b"a\r", b"\r", b"\n"]) == b"a\r\n\r\n.\r\n"
    assert stuffed([]) == b".\r\n"


def reference(data: bytes) -> bytes:
    """Stuffing done on the whole message at once, the obviously right way."""
    lines = re.split(rb"\r\n|\r|\n", data)
    if lines and lines[-1] == b"":
        lines.pop()
    return (
        b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
        + b".\r\n"
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x.\n"]), max_size=40),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
)
def test_stuffing_is_independent_of_chunking(parts: list[bytes], sizes: list[int]) -> None:
    data = b"".join(parts)
    chunks, i, k = [], 0, 0
    while i < len(data):
        size = sizes[k % len(sizes)]
        chunks.append(data[i : i + size])
        i, k = i + size, k + 1
    out = stuffed(chunks)
    assert out == reference(data)
    # Never a bare CR or LF, and the only "." line is the terminator.
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None
    assert out.split(b"\r\n").count(b".") == 1


def test_dot_stuffer_state_object() -> None:
    s = DotStuffer()
    assert s.feed(b"") == b""
    assert s.feed(b".") == b".."
    assert s.finish() == b"\r\n.\r\n"


# The Twisted driver -------------------------------------------------------------------


def driven(timeouts: ClientTimeouts) -> tuple[ClientProtocol, StringTransport, task.Clock]:
    clock = task.Clock()
    protocol = ClientProtocol(
        ClientSession("out.example.test", message(), tls=TLSPolicy.NEVER, timeouts=timeouts),
        None,
    )
    protocol.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def test_a_trickling_server_does_not_restart_the_reply_timer() -> None:
    """RFC 5321 §4.5.3.2: the timeout is per reply; a tarpit sending one byte at a time
    must not keep the connection (and the destination's slot) forever."""
    protocol, transport, clock = driven(ClientTimeouts(greeting=10, command=20))
    for byte in b"220 slow":
        clock.advance(3)
        protocol.dataReceived(bytes([byte]))
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert clock.seconds() == 12  # the greeting timer was never restarted
    outcome = protocol.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.TEMPORARY and outcome.reply.enhanced == "4.4.2"


def test_each_complete_reply_restarts_the_timer_for_the_next() -> None:
    protocol, transport, clock = driven(ClientTimeouts(greeting=10, command=20))
    clock.advance(9)
    protocol.dataReceived(b"220 hi\r\n")
    assert transport.value() == b"EHLO out.example.test\r\n"
    clock.advance(19)
    assert not transport.disconnecting
    protocol.dataReceived(b"250 hi\r\n")
    clock.advance(19)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_8bit_message_to_a_server_without_8bitmime_is_returned_unsent() -> None:
    """RFC 6152 §3: no 8-bit data to a server that does not announce 8BITMIME; the
    outcome says that a 7-bit version may go (the transport converts it, off the
    reactor), and what stands if it cannot."""
    c = new(message("Subject: caf\u00e9\r\n\r\n\u00e9\r\n".encode()), tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    assert c.feed(b"250-hi\r\n250 PIPELINING\r\n") == b"QUIT\r\n"
    assert c.session.outcome.needs_7bit
    outcome = c.session.outcome.recipients["a@example.net"]
    assert outcome.result is Result.PERMANENT and outcome.reply.enhanced == "5.6.3"
    # A 7-bit message goes to the same server.
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    assert c.feed(b"250-hi\r\n250 PIPELINING\r\n").startswith(b"MAIL FROM:<s@example.test>")
    assert not c.session.outcome.needs_7bit


def test_smtputf8_is_passed_on_to_a_server_that_announces_it() -> None:
    body = "Subject: Grüße\r\n\r\nhallo\r\n".encode()
    msg = OutboundMessage(
        "pelé@example.test", (OutboundRecipient("jösé@example.net"),), (body,), smtputf8=True
    )
    c = new(msg, tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    out = c.feed(b"250-hi\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
    assert (
        out
        == (
            "MAIL FROM:<pelé@example.test> BODY=8BITMIME SMTPUTF8\r\n"
            "RCPT TO:<jösé@example.net>\r\nDATA\r\n"
        ).encode()
    )
    assert c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n") == body + b".\r\n"


@pytest.mark.parametrize(
    ("sender", "rcpt", "body", "expected"),
    [
        ("pelé@example.test", "a@example.net", b"Subject: x\r\n\r\nhi\r\n", (553, "5.6.7")),
        ("s@example.test", "jösé@example.net", b"Subject: x\r\n\r\nhi\r\n", (553, "5.6.7")),
        ("s@example.test", "a@example.net", "Subject: Grüße\r\n\r\n".encode(), (550, "5.6.9")),
        # Nothing in it needs SMTPUTF8 (an 8-bit body is 8BITMIME's business): sent as is.
        ("s@example.test", "a@example.net", "Subject: x\r\n\r\né\r\n".encode(), None),
    ],
)
def test_smtputf8_message_to_a_server_without_it(
    sender: str, rcpt: str, body: bytes, expected: tuple[int, str] | None
) -> None:
    """RFC 6531 §3.2: no UTF-8 address and no UTF-8 header field to a server without
    SMTPUTF8; we do not downgrade them, so the message is returned."""
    msg = OutboundMessage(sender, (OutboundRecipient(rcpt),), (body,), smtputf8=True)
    c = new(msg, tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    out = c.feed(b"250-hi\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    if expected is None:
        assert out.startswith(b"MAIL FROM:<s@example.test> BODY=8BITMIME\r\n")
        assert b"SMTPUTF8" not in out
        return
    assert out == b"QUIT\r\n"
    outcome = c.session.outcome.recipients[rcpt]
    assert outcome.result is Result.PERMANENT
    assert (outcome.reply.code, outcome.reply.enhanced) == expected


def test_no_command_with_cr_or_lf_is_ever_written() -> None:
    bad = OutboundMessage(
        "s@example.test", (OutboundRecipient("a@example.net\r\nRSET"),), (b"x\r\n",)
    )
    c = new(bad, tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    with pytest.raises(ValueError):
        c.feed(EHLO_PLAIN + b"250 ok\r\n")


def test_implicit_tls_goes_straight_to_auth() -> None:
    """RFC 8314 §3.3: TLS is on from the first byte; no STARTTLS, the policy is met."""
    c = new(tls=TLSPolicy.REQUIRED, credentials=("u@x", "pw"), implicit_tls=True)
    assert c.feed(b"220 hi\r\n") == b"EHLO out.example.test\r\n"
    token = base64.b64encode(b"\0u@x\0pw")
    assert c.feed(b"250-hi\r\n250 AUTH PLAIN\r\n") == b"AUTH PLAIN " + token + b"\r\n"
    assert not c.tls and c.session.outcome.tls


def test_tls_failed_only_when_the_connection_ends_before_a_reply_inside_tls() -> None:
    c = new()
    c.feed(b"220 hi\r\n")
    c.feed(b"250-hi\r\n250 STARTTLS\r\n")
    assert c.feed(b"220 go ahead\r\n") == b"EHLO out.example.test\r\n"
    c.session.connection_lost("handshake failed")
    assert c.session.outcome.tls_failed
    c = new()
    c.feed(b"220 hi\r\n")
    c.feed(b"250-hi\r\n250 STARTTLS\r\n")
    c.feed(b"220 go ahead\r\n")
    c.feed(b"250 hi\r\n")  # the server answered inside TLS: the handshake worked
    c.session.connection_lost("reset")
    assert not c.session.outcome.tls_failed
    c = new(tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    c.session.connection_lost("reset")
    assert not c.session.outcome.tls_failed


def test_452_too_many_recipients_go_in_the_next_transaction() -> None:
    """RFC 5321 §4.5.3.1.10: the recipients refused with 452 are sent in a new
    transaction on the same connection, once the first one is through."""
    rcpts = ("a@example.net", "b@example.net", "c@example.net")
    c = new(message(b"x\r\n", *rcpts), tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    assert c.feed(EHLO_PIPE) == (
        b"MAIL FROM:<s@example.test> SIZE=3\r\nRCPT TO:<a@example.net>\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    assert c.feed(b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n452 4.5.3 too many\r\n354 go\r\n")
    assert c.feed(b"250 2.0.0 first\r\n") == (
        b"MAIL FROM:<s@example.test> SIZE=3\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    assert c.feed(b"250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n354 go\r\n") == b"x\r\n.\r\n"
    assert c.feed(b"250 2.0.0 second\r\n") == (
        b"MAIL FROM:<s@example.test> SIZE=3\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    # Nothing accepted in a transaction: no loop, the rest waits for a later attempt.
    assert c.feed(b"250 ok\r\n452 4.5.3 too many\r\n554 5.5.1 no valid recipients\r\n") == (
        b"QUIT\r\n"
    )
    r = c.session.outcome.recipients
    assert [r[a].result for a in rcpts] == [Result.DELIVERED, Result.DELIVERED, Result.TEMPORARY]
    assert (r["a@example.net"].reply.text, r["b@example.net"].reply.text) == ("first", "second")
    assert r["c@example.net"].reply.enhanced == "4.5.3"


def test_452_without_pipelining_and_a_failed_first_transaction() -> None:
    c = new(message(b"x\r\n", "a@example.net", "b@example.net"), tls=TLSPolicy.NEVER)
    c.feed(b"220 hi\r\n")
    c.feed(EHLO_PLAIN)
    assert c.feed(b"250 ok\r\n") == b"RCPT TO:<a@example.net>\r\n"
    assert c.feed(b"250 ok\r\n") == b"RCPT TO:<b@example.net>\r\n"
    assert c.feed(b"452 4.5.3 too many\r\n") == b"DATA\r\n"
    assert c.feed(b"354 go\r\n") == b"x\r\n.\r\n"
    assert c.feed(b"451 4.3.0 disk trouble\r\n") == b"QUIT\r\n"
    r = c.session.outcome.recipients
    assert r["a@example.net"].reply.enhanced == "4.3.0"
    assert r["b@example.net"].reply.enhanced == "4.5.3"
    assert r["b@example.net"].result is Result.TEMPORARY
