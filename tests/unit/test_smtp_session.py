"""Transcript tests of the SMTP server session: client bytes in, exact replies out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.session import Authenticate, Close, Effect, Send, StartTLS
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import (
    CheckRecipient,
    CheckSender,
    DeliverMessage,
    SMTPLimits,
    SMTPRole,
    SMTPSession,
)

HOST = "mx.example.test"
LOCAL = {"alice@example.test", "bob@example.test", "postmaster@example.test"}


class Transcript:
    """Runs a session the way the driver does, with policy decisions made in memory."""

    def __init__(
        self,
        limits: SMTPLimits | None = None,
        role: SMTPRole | None = None,
        peer: str = "192.0.2.7",
    ) -> None:
        self.session = SMTPSession(
            HOST,
            peer,
            "sid1",
            limits or SMTPLimits(),
            "postmaster@example.test",
            role=role,
            clock=lambda: 1_700_000_000.0,
        )
        self.tls_started = 0
        self.delivered: list[DeliverMessage] = []
        self.closed = False
        self.deliver_result: Callable[[DeliverMessage], Any] = lambda e: Reply(
            250, "2.0.0", "OK queued"
        )

    def run_effect(self, effect: Effect) -> Any:
        if isinstance(effect, Authenticate):
            if effect.password == "secret":
                return effect.username
            return None
        if isinstance(effect, CheckSender):
            if effect.envelope.auth_user and effect.address != effect.envelope.auth_user:
                return Reply(553, "5.7.1", "Sender address not owned by user")
            return Reply(250, "2.1.0", "Sender OK")
        if isinstance(effect, CheckRecipient):
            if effect.address in LOCAL:
                return Reply(250, "2.1.5", "Recipient OK")
            return Reply(550, "5.1.1", "No such user here")
        assert isinstance(effect, DeliverMessage)
        self.delivered.append(effect)
        return self.deliver_result(effect)

    def send(self, data: bytes) -> bytes:
        self.session.receive_data(data)
        return self.drain()

    def drain(self) -> bytes:
        out = []
        while (action := self.session.next_action()) is not None:
            if isinstance(action, Send):
                out.append(action.data)
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, StartTLS):
                self.tls_started += 1
            else:
                self.session.resume(self.run_effect(action))
        return b"".join(out)


def started(limits: SMTPLimits | None = None, role: SMTPRole | None = None) -> Transcript:
    t = Transcript(limits, role)
    assert t.drain() == b"220 mx.example.test ESMTP mailserver ready\r\n"
    return t


def ehlo(limits: SMTPLimits | None = None) -> Transcript:
    t = started(limits)
    assert t.send(b"EHLO client.example.org\r\n").startswith(b"250-mx.example.test greets")
    return t


def test_ehlo_advertises_exactly_what_works() -> None:
    t = started()
    assert t.send(b"EHLO client.example.org\r\n") == (
        b"250-mx.example.test greets client.example.org\r\n"
        b"250-PIPELINING\r\n"
        b"250-SIZE 33554432\r\n"
        b"250-8BITMIME\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-SMTPUTF8\r\n"
        b"250 HELP\r\n"
    )


def test_helo_and_address_literal() -> None:
    t = started()
    assert t.send(b"HELO [192.0.2.7]\r\n") == b"250 mx.example.test\r\n"


def test_ehlo_needs_a_domain() -> None:
    t = started()
    assert t.send(b"EHLO\r\n") == b"501 5.5.4 Syntax: EHLO domain (RFC 5321 \xc2\xa74.1.1.1)\r\n"
    assert t.send(b"EHLO bad_domain!\r\n").startswith(b"501 5.5.4")


def test_each_transaction_of_a_session_has_its_own_queue_id() -> None:
    t = ehlo()
    for _ in range(2):
        t.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        t.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
    assert [d.envelope.queue_id for d in t.delivered] == ["sid1.1", "sid1.2"]
    received = [d.chunks[0] for d in t.delivered]  # the Received field names it too
    assert [b" id sid1.1\r\n" in received[0], b" id sid1.2\r\n" in received[1]] == [True, True]


def test_whole_transaction_with_received_header_and_dot_unstuffing() -> None:
    t = ehlo()
    assert t.send(b"MAIL FROM:<sender@example.org>\r\n") == b"250 2.1.0 Sender OK\r\n"
    assert t.send(b"RCPT TO:<alice@example.test>\r\n") == b"250 2.1.5 Recipient OK\r\n"
    assert t.send(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    assert t.send(b"Subject: x\r\n\r\n..leading dot\r\n.\r\n") == b"250 2.0.0 OK queued\r\n"
    (delivery,) = t.delivered
    assert delivery.envelope.mail_from == "sender@example.org"
    assert delivery.envelope.rcpt_to == ["alice@example.test"]
    received, *body = delivery.chunks
    assert received.startswith(b"Received: from client.example.org ([192.0.2.7])\r\n")
    assert b"with ESMTP id sid1.1\r\n\tfor <alice@example.test>;" in received
    assert b"".join(body) == b"Subject: x\r\n\r\n.leading dot\r\n"
    assert t.send(b"QUIT\r\n") == b"221 2.0.0 mx.example.test closing connection\r\n"
    assert t.closed


def test_pipelined_commands_are_answered_in_order() -> None:
    t = ehlo()
    out = t.send(
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\nDATA\r\nhello\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    assert out == (
        b"250 2.1.0 Sender OK\r\n"
        b"550 5.1.1 No such user here\r\n"
        b"250 2.1.5 Recipient OK\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
        b"250 2.0.0 OK queued\r\n"
        b"250 2.0.0 OK\r\n"
        b"250 2.0.0 OK\r\n"
        b"221 2.0.0 mx.example.test closing connection\r\n"
    )
    assert t.delivered[0].envelope.rcpt_to == ["bob@example.test"]


def test_data_split_across_packets_at_every_offset() -> None:
    message = b"Subject: s\r\n\r\nline\r\n.\r\n"
    for cut in range(len(message)):
        t = ehlo()
        t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert t.send(message[:cut]) == b""
        assert t.send(message[cut:]) == b"250 2.0.0 OK queued\r\n", cut
        assert b"".join(t.delivered[0].chunks[1:]) == b"Subject: s\r\n\r\nline\r\n"


def test_empty_message() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(b".\r\n") == b"250 2.0.0 OK queued\r\n"
    assert t.delivered[0].chunks[1:] == ()


def test_sequence_errors() -> None:
    t = started()
    assert t.send(b"MAIL FROM:<a@b.example>\r\n") == b"503 5.5.1 Send EHLO or HELO first\r\n"
    t.send(b"EHLO c.example\r\n")
    assert t.send(b"RCPT TO:<alice@example.test>\r\n") == b"503 5.5.1 Need MAIL before RCPT\r\n"
    assert t.send(b"DATA\r\n") == b"503 5.5.1 Need MAIL before DATA\r\n"
    t.send(b"MAIL FROM:<a@b.example>\r\n")
    assert t.send(b"MAIL FROM:<a@b.example>\r\n") == b"503 5.5.1 Sender already specified\r\n"
    assert t.send(b"DATA\r\n") == b"554 5.5.1 No valid recipients\r\n"


def test_bad_addresses_and_parameters() -> None:
    t = ehlo()
    assert t.send(b"MAIL FROM:alice\r\n").startswith(b"501 5.1.7")
    assert t.send(b"MAIL TO:<a@b.example>\r\n").startswith(b"501 5.5.4")
    assert t.send(b"MAIL FROM:<a@b.example> FOO=1\r\n") == (
        b"555 5.5.4 Unsupported parameter FOO\r\n"
    )
    assert t.send(b"MAIL FROM:<a@b.example> SIZE=99999999999\r\n") == (
        b"552 5.3.4 Message size exceeds fixed maximum\r\n"
    )
    assert t.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n").startswith(b"501 5.5.4")
    assert t.send(b"MAIL FROM:<a@b.example> SIZE=100 BODY=8BITMIME\r\n") == (
        b"250 2.1.0 Sender OK\r\n"
    )
    assert t.send(b"RCPT TO:<>\r\n").startswith(b"501 5.1.3")
    assert t.send(b"RCPT TO:<a@b@c>\r\n").startswith(b"501 5.1.3")
    assert t.send(b"RCPT TO:<alice@example.test> NOTIFY=NEVER\r\n").startswith(b"555 5.5.4")


def test_helo_clients_may_not_use_parameters() -> None:
    t = started()
    t.send(b"HELO c.example\r\n")
    assert t.send(b"MAIL FROM:<a@b.example> SIZE=10\r\n") == (
        b"555 5.5.4 MAIL parameters need EHLO\r\n"
    )


def test_source_route_and_postmaster() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<@relay.example:a@b.example>\r\n")
    assert t.session.envelope is not None
    assert t.session.envelope.mail_from == "a@b.example"
    assert t.send(b"RCPT TO:<Postmaster>\r\n") == b"250 2.1.5 Recipient OK\r\n"
    assert t.session.envelope.rcpt_to == ["postmaster@example.test"]


def test_too_many_recipients() -> None:
    t = ehlo(SMTPLimits(max_recipients=2))
    t.send(b"MAIL FROM:<>\r\n")
    out = t.send(b"RCPT TO:<alice@example.test>\r\n" * 3)
    assert out.endswith(b"452 4.5.3 Too many recipients\r\n")


def test_command_line_too_long_keeps_session_usable() -> None:
    t = ehlo()
    assert t.send(b"NOOP " + b"x" * 600) == b"500 5.5.2 Line too long\r\n"
    assert t.send(b"x" * 100 + b"\r\n") == b""
    assert t.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
    assert t.send(b"NOOP " + b"y" * 520 + b"\r\n") == b"500 5.5.2 Line too long\r\n"


def test_unknown_and_non_ascii_commands() -> None:
    t = ehlo()
    assert t.send(b"FOO\r\n") == b"500 5.5.2 Command not recognized\r\n"
    assert t.send(b"NOOP \xff\r\n") == b"500 5.5.2 Command is not valid UTF-8\r\n"
    assert t.send("NOOP é\r\n".encode()) == b"500 5.5.2 Command contains non-ASCII characters\r\n"
    assert t.send(b"VRFY alice\r\n") == (b"252 2.5.0 Cannot VRFY user, but will accept message\r\n")
    assert t.send(b"EXPN list\r\n") == b"502 5.5.1 EXPN not available\r\n"
    assert t.send(b"HELP\r\n").startswith(b"214-2.0.0 Commands:")


def test_too_many_errors_closes_with_421() -> None:
    t = ehlo(SMTPLimits(max_errors=2))
    out = t.send(b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
    assert t.closed
    assert b"250" not in out


def test_bare_lf_in_data_is_refused_and_never_ends_data() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    # A smuggling attempt: "\n.\n" (or "\r.\r") must not end the message.
    out = t.send(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@example.org>\r\n")
    assert out == b""
    assert t.send(b".\r\n") == (b"554 5.6.0 Bare CR or LF in message; lines must end with CRLF\r\n")
    assert t.delivered == []
    assert t.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"


def test_bare_cr_in_data_is_refused() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(b"a\r.\r\nb\r\n.\r\n").startswith(b"554 5.6.0 Bare CR or LF")


def test_overlong_data_line_never_drops_into_command_mode() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    long_line = b"A" * 5000 + b"\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n"
    # Deliver the long line in pieces, as TCP would.
    out = b"".join(t.send(long_line[i : i + 700]) for i in range(0, len(long_line), 700))
    assert out == b""
    assert t.send(b".\r\n") == b"554 5.6.0 Message has a line longer than 1000 octets\r\n"
    assert t.delivered == []


def test_line_of_exactly_1000_octets_is_fine() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(b"B" * 998 + b"\r\n.\r\n") == b"250 2.0.0 OK queued\r\n"


def test_message_too_big() -> None:
    t = ehlo(SMTPLimits(max_message_size=100))
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    out = t.send(b"x" * 50 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n")
    assert out == b"552 5.3.4 Message size exceeds fixed maximum\r\n"
    assert t.delivered == []


def test_failed_delivery_gives_a_temporary_error() -> None:
    t = ehlo()
    t.deliver_result = lambda e: Reply(451, "4.3.0", "Local error in processing, try again later")
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(b"x\r\n.\r\n") == b"451 4.3.0 Local error in processing, try again later\r\n"
    # The transaction is over: a new MAIL is allowed.
    assert t.send(b"MAIL FROM:<>\r\n") == b"250 2.1.0 Sender OK\r\n"


def test_rset_and_ehlo_reset_the_transaction() -> None:
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\n")
    assert t.send(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
    assert t.send(b"RCPT TO:<alice@example.test>\r\n").startswith(b"503")
    t.send(b"MAIL FROM:<>\r\n")
    t.send(b"EHLO again.example\r\n")
    assert t.session.envelope is None


def test_timeout_reply() -> None:
    t = started()
    assert t.session.timed_out() == b"421 4.4.2 mx.example.test Timeout, closing connection\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_input_never_breaks_the_session(chunks: list[bytes]) -> None:
    t = ehlo()
    for chunk in chunks:
        out = t.send(chunk)
        for line in out.split(b"\r\n")[:-1]:
            assert line[:3].isdigit()
    if not t.closed:
        t.send(b"\r\n.\r\nRSET\r\n")
        t.send(b"NOOP\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"..", b"", b"x.y", b". "]), max_size=30))
def test_dot_stuffed_bodies_round_trip(lines: list[bytes]) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    t = ehlo()
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(stuffed + b".\r\n") == b"250 2.0.0 OK queued\r\n"
    assert b"".join(t.delivered[0].chunks[1:]) == body


_atext = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-")
)
_atom = st.text(_atext, min_size=1, max_size=10)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(
    st.lists(_atom, min_size=1, max_size=3).map(".".join),
    st.lists(_label, min_size=1, max_size=4).map(".".join),
)
def test_valid_paths_parse_back(local: str, domain: str) -> None:
    from mailserver.smtp.address import parse_path

    path = parse_path(f"<{local}@{domain}> SIZE=10", allow_null=False)
    assert path.address == f"{local}@{domain}"
    assert path.params == {"SIZE": "10"}


@given(st.text(max_size=80))
def test_any_text_either_parses_or_raises_path_error(text: str) -> None:
    from mailserver.smtp.address import PathError, parse_path

    for utf8 in (False, True):
        try:
            parse_path(text, allow_null=True, utf8=utf8)
        except PathError:
            pass


# Domain characters where IDNA has rules: combining marks, joiners, final sigma, digits
# of other scripts, compatibility forms, a full-width dot that UTS 46 maps to ".".
_idna_text = st.text(st.sampled_from("ab0-.üßς\u0301\u200d\u0660\u216b\uff0e\u00a0"), max_size=30)


@given(st.sampled_from(["a", "jösé", "x.y", '"a b"']), _idna_text)
def test_any_utf8_mailbox_either_parses_or_raises_path_error(local: str, domain: str) -> None:
    """U-label domains go through idna: whatever it refuses is a PathError, not a crash."""
    from mailserver.smtp.address import PathError, parse_path

    try:
        path = parse_path(f"<{local}@{domain}>", allow_null=False, utf8=True)
    except PathError:
        return
    parsed_local, _, parsed_domain = path.address.rpartition("@")
    assert parsed_local == local and parsed_domain.isascii()


def test_smtputf8_transaction_with_utf8_addresses() -> None:
    """RFC 6531: with SMTPUTF8 on MAIL, the paths may be UTF-8 (the domain becomes its
    A-label), and the Received field says UTF8SMTP (§4.3)."""
    LOCAL.add("jösé@example.test")
    try:
        t = ehlo()
        out = t.send(
            "MAIL FROM:<pelé@bücher.example> SMTPUTF8 BODY=8BITMIME\r\n"
            "RCPT TO:<jösé@example.test>\r\nDATA\r\n".encode()
        )
        assert out == (
            b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        )
        assert t.send("Subject: Grüße\r\n\r\nhi\r\n.\r\n".encode()) == b"250 2.0.0 OK queued\r\n"
    finally:
        LOCAL.discard("jösé@example.test")
    (delivery,) = t.delivered
    assert delivery.envelope.mail_from == "pelé@xn--bcher-kva.example"
    assert delivery.envelope.rcpt_to == ["jösé@example.test"]
    assert "SMTPUTF8" in delivery.envelope.params
    received = delivery.chunks[0].decode("utf-8")
    assert "with UTF8SMTP id sid1.1\r\n\tfor <jösé@example.test>;" in received
    assert b"".join(delivery.chunks[1:]) == "Subject: Grüße\r\n\r\nhi\r\n".encode()


def test_utf8_addresses_need_smtputf8() -> None:
    t = ehlo()
    refused = b"553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter of MAIL\r\n"
    assert t.send("MAIL FROM:<pelé@example.org>\r\n".encode()) == refused
    # A U-label domain is UTF-8 on the wire too, even though it has an ASCII A-label.
    assert t.send("MAIL FROM:<a@bücher.example>\r\n".encode()) == refused
    assert t.send(b"MAIL FROM:<a@xn--bcher-kva.example>\r\n") == b"250 2.1.0 Sender OK\r\n"
    assert t.send("RCPT TO:<jösé@example.test>\r\n".encode()) == refused
    t.send(b"RSET\r\n")
    assert t.send(b"MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n") == (
        b"501 5.5.4 Syntax: SMTPUTF8 (without a value)\r\n"
    )
    assert t.send("MAIL FROM:<a@bü--x.example> SMTPUTF8\r\n".encode()).startswith(
        b"501 5.1.7 Bad sender address: bad internationalized domain"
    )
    # Invalid UTF-8 is not a UTF-8 address.
    assert t.send(b"MAIL FROM:<p\xe9@example.org> SMTPUTF8\r\n") == (
        b"500 5.5.2 Command is not valid UTF-8\r\n"
    )
    helo = started()
    helo.send(b"HELO client.example.org\r\n")
    assert helo.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n") == (
        b"555 5.5.4 MAIL parameters need EHLO\r\n"
    )


def test_utf8_local_part_length_is_counted_in_octets() -> None:
    from mailserver.smtp.address import PathError, parse_path

    parse_path(f"<{'é' * 32}@example.org>", allow_null=False, utf8=True)  # 64 octets
    try:
        parse_path(f"<{'é' * 33}@example.org>", allow_null=False, utf8=True)
    except PathError as e:
        assert "too long" in str(e)
    else:
        raise AssertionError("a 66-octet local part was accepted")


@given(
    st.lists(
        st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x2FFF), min_size=1, max_size=5),
        min_size=1,
        max_size=3,
    ).map(".".join),
)
def test_utf8_local_parts_parse_back_only_with_utf8(local: str) -> None:
    from mailserver.smtp.address import PathError, parse_path

    path = parse_path(f"<{local}@example.org> SMTPUTF8", allow_null=False, utf8=True)
    assert path.address == f"{local}@example.org"
    try:
        parse_path(f"<{local}@example.org>", allow_null=False)
    except PathError:
        pass
    else:
        raise AssertionError("a UTF-8 local part parsed without SMTPUTF8")


def test_received_header_tags_an_ipv6_peer() -> None:
    t = Transcript(peer="2001:db8::7")
    t.drain()
    t.send(b"EHLO c.example\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert t.send(b"x\r\n.\r\n") == b"250 2.0.0 OK queued\r\n"
    assert t.delivered[0].chunks[0].startswith(b"Received: from c.example ([IPv6:2001:db8::7])\r\n")


def _reference_data(stream: bytes, max_line: int) -> tuple[bytes, bool, bool, int] | None:
    """RFC 5321 DATA read one line at a time: (body, bare newline, long line, consumed),
    or None when the stream holds no end of data."""
    body, bare, long_line, pos = [], False, False, 0
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return None
        line = stream[pos:end]
        pos = end + 2
        if line == b".":
            return b"".join(body), bare, long_line, pos
        long_line |= len(line) + 2 > max_line
        bare |= b"\r" in line or b"\n" in line
        body.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"x" * 9, b" "]), max_size=40
    ),
    st.lists(st.integers(min_value=1, max_value=30), max_size=10),
)
def test_data_reader_matches_a_line_by_line_reader(pieces: list[bytes], cuts: list[int]) -> None:
    from mailserver.smtp.session import _DataReader

    stream = b"".join(pieces) + b"\r\n.\r\nNOOP\r\n"
    expected = _reference_data(stream, 12)
    reader = _DataReader(SMTPLimits(max_text_line=12))
    buf, consumed, done, offset = bytearray(), 0, False, 0
    for size in [*cuts, len(stream)]:
        buf += stream[offset : offset + size]
        offset += size
        used, done = reader.feed(buf)
        consumed += used
        del buf[:used]
        if done:
            break
    assert done
    assert expected is not None
    body, bare, long_line, end = expected
    assert reader.long_line == long_line
    if not long_line:  # a long line's rest is dropped unread: the message is refused anyway
        assert reader.bare_newline == bare
        assert b"".join(reader.chunks) == body
        assert consumed == end
