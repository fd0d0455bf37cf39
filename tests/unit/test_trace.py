"""The protocol trace: framing per direction, RFC notes, masking, message summaries."""

from __future__ import annotations

import base64
import json
import os

import pytest
from twisted.internet.testing import MemoryReactorClock

from mailserver.config import ConfigError, load
from mailserver.trace import (
    CLIENT,
    MASK,
    SERVER,
    SUMMARY_LINES,
    ConnectionTrace,
    TraceEvent,
    Tracer,
    follow_file,
    format_event,
)

PASSWORD = "s3cr3t pass"  # spaces, so a quoted IMAP string is needed
USER = "alice@example.test"
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, PLAIN, base64.b64encode(PASSWORD.encode()).decode(), "s3cr3t")


def traced(role: str, full: bool = False) -> tuple[ConnectionTrace, list[TraceEvent]]:
    events: list[TraceEvent] = []
    tracer = Tracer(full_bodies=full, clock=lambda: 1_700_000_000.25, to_log=False)
    tracer.sinks.append(events.append)
    return tracer.connection(role, "s1"), events


def run(trace: ConnectionTrace, script: list[tuple[str, bytes]]) -> None:
    for direction, data in script:
        if direction == CLIENT:
            trace.client_data(data)
        else:
            trace.server_data(data)


def assert_masked(events: list[TraceEvent]) -> None:
    text = "\n".join(format_event(e) + "\n" + e.to_json() for e in events)
    for secret in SECRETS:
        assert secret not in text
    assert MASK in text


def lines(events: list[TraceEvent], direction: str | None = None) -> list[str]:
    return [e.line for e in events if direction is None or e.dir == direction]


# Masking -------------------------------------------------------------------------------
def test_smtp_auth_plain_initial_response_is_masked_but_names_the_user() -> None:
    trace, events = traced("MSA")
    run(
        trace,
        [
            (SERVER, b"220 mx ready\r\n"),
            (CLIENT, b"EHLO c.test\r\n"),
            (SERVER, b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
            (CLIENT, f"AUTH PLAIN {PLAIN}\r\n".encode()),
            (SERVER, b"235 2.7.0 Authentication successful\r\n"),
            (CLIENT, b"MAIL FROM:<alice@example.test>\r\n"),
        ],
    )
    assert_masked(events)
    assert f"AUTH PLAIN {MASK} (PLAIN authcid {USER}, password masked)" in lines(events)
    assert lines(events)[-1] == "MAIL FROM:<alice@example.test>"  # AUTH is over


def test_smtp_auth_plain_after_a_334_and_auth_login_are_masked() -> None:
    trace, events = traced("MSA")
    user64 = base64.b64encode(USER.encode())
    pass64 = base64.b64encode(PASSWORD.encode())
    run(
        trace,
        [
            (CLIENT, b"AUTH PLAIN\r\n"),
            (SERVER, b"334 \r\n"),
            (CLIENT, PLAIN.encode() + b"\r\n"),
            (SERVER, b"535 5.7.8 Authentication credentials invalid\r\n"),
            (CLIENT, b"AUTH LOGIN\r\n"),
            (SERVER, b"334 VXNlcm5hbWU6\r\n"),
            (CLIENT, user64 + b"\r\n"),
            (SERVER, b"334 UGFzc3dvcmQ6\r\n"),
            (CLIENT, pass64 + b"\r\n"),
            (SERVER, b"235 2.7.0 Authentication successful\r\n"),
            # AUTH LOGIN with the user name as initial response, then the password.
            (CLIENT, b"AUTH LOGIN " + user64 + b"\r\n" + pass64 + b"\r\n"),
            (SERVER, b"334 UGFzc3dvcmQ6\r\n235 2.7.0 OK\r\n"),
            (CLIENT, b"NOOP\r\n"),
        ],
    )
    assert_masked(events)
    assert [e.note for e in events if e.line.startswith("334 V")] == ["SASL challenge 'Username:'"]
    assert lines(events, CLIENT)[-1] == "NOOP"


def test_imap_login_password_is_masked_as_atom_quoted_and_literal() -> None:
    trace, events = traced("IMAP")
    run(
        trace,
        [
            (CLIENT, b"a1 LOGIN alice s3cr3t\r\n"),
            (SERVER, b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            (CLIENT, f'a2 LOGIN "{USER}" "{PASSWORD}"\r\n'.encode()),
            (SERVER, b"a2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            (CLIENT, f'a3 LOGIN "a \\"b\\"" "{PASSWORD} \\"x\\""\r\n'.encode()),
            (SERVER, b"a3 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            # Synchronizing literals for both arguments, in pieces.
            (CLIENT, b"a4 LOGIN {18}\r\n"),
            (SERVER, b"+ Ready for literal data\r\n"),
            (CLIENT, USER.encode() + b" {11}\r\n"),
            (SERVER, b"+ Ready for literal data\r\n"),
            (CLIENT, PASSWORD.encode()[:4]),
            (CLIENT, PASSWORD.encode()[4:] + b"\r\n"),
            (SERVER, b"a4 OK Logged in\r\n"),
            # LITERAL+ (RFC 7888): no waiting.
            (CLIENT, b"a5 LOGIN alice {11+}\r\n" + PASSWORD.encode() + b"\r\na6 NOOP\r\n"),
        ],
    )
    assert_masked(events)
    shown = lines(events, CLIENT)
    assert shown[:3] == [
        f"a1 LOGIN alice {MASK}",
        f'a2 LOGIN "{USER}" {MASK}',
        f'a3 LOGIN "a \\"b\\"" {MASK}',
    ]
    assert shown[3:] == [
        "a4 LOGIN {18}",
        USER,
        "{***}",
        f"{MASK} (literal, masked)",
        "a5 LOGIN alice {***}",
        f"{MASK} (literal, masked)",
        "a6 NOOP",
    ]


def test_imap_authenticate_plain_with_and_without_initial_response() -> None:
    trace, events = traced("IMAP")
    run(
        trace,
        [
            (CLIENT, b"a1 AUTHENTICATE PLAIN\r\n"),
            (SERVER, b"+ \r\n"),
            (CLIENT, PLAIN.encode() + b"\r\n"),
            (SERVER, b"a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"),
            (CLIENT, f"a2 AUTHENTICATE PLAIN {PLAIN}\r\n".encode()),
            (SERVER, b"a2 OK Logged in\r\n"),
            (CLIENT, b"a3 SELECT INBOX\r\n"),
        ],
    )
    assert_masked(events)
    assert lines(events, CLIENT)[-1] == "a3 SELECT INBOX"
    assert [e.rfc for e in events if e.line == "+ "] == ["RFC 3501 §6.2.2"]


def test_pop3_pass_apop_and_auth_plain_are_masked() -> None:
    trace, events = traced("POP3")
    run(
        trace,
        [
            (SERVER, b"+OK ready\r\n"),
            (CLIENT, f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()),
            (SERVER, b"+OK\r\n-ERR [AUTH] invalid user name or password\r\n"),
            (CLIENT, b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"),
            (SERVER, b"-ERR unknown command\r\n"),
            (CLIENT, f"AUTH PLAIN {PLAIN}\r\n".encode()),
            (SERVER, b"-ERR [AUTH] invalid user name or password\r\n"),
            (CLIENT, b"AUTH PLAIN\r\n"),
            (SERVER, b"+ \r\n"),
            (CLIENT, PLAIN.encode() + b"\r\n"),
            (SERVER, b"+OK logged in\r\n"),
            (CLIENT, b"STAT\r\n"),
        ],
    )
    assert_masked(events)
    assert "c4c9334bac560ecc979e58001b3e22fb" not in str(events)
    assert f"PASS {MASK}" in lines(events)
    assert lines(events, CLIENT)[-1] == "STAT"


# Framing and notes ---------------------------------------------------------------------
MESSAGE = [f"Header-{i}: {i}".encode() for i in range(10)] + [b"", b"..dot", b"body"]


def test_smtp_message_is_summarised_unstuffed_and_250_means_stored() -> None:
    trace, events = traced("MTA")
    body = b"\r\n".join(MESSAGE) + b"\r\n.\r\n"
    run(
        trace,
        [
            (SERVER, b"220 mx ready\r\n"),
            (CLIENT, b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"),
            (SERVER, b"250 OK\r\n250 OK\r\n354 go ahead\r\n"),
            (CLIENT, body[:30]),
            (CLIENT, body[30:]),
            (SERVER, b"250 2.0.0 OK queued\r\n"),
        ],
    )
    shown = lines(events, CLIENT)
    assert shown[3 : 3 + SUMMARY_LINES] == ["| " + m.decode() for m in MESSAGE[:SUMMARY_LINES]]
    assert shown[-2:] == ["(… 7 more lines; message: 13 lines, 144 octets)", "."]
    (stored,) = [e for e in events if e.line.startswith("250 2.0.0")]
    assert "stored durably" in stored.note
    notes = {e.line.split(" ")[0]: e.rfc for e in events if e.dir == CLIENT}
    assert notes["MAIL"] == "RFC 5321 §4.1.1.2" and notes["RCPT"] == "RFC 5321 §4.1.1.3"


def test_full_bodies_show_every_line_of_an_imap_literal() -> None:
    trace, events = traced("IMAP", full=True)
    literal = b"\r\n".join(MESSAGE) + b"\r\n"
    run(
        trace,
        [
            (CLIENT, b"a FETCH 1 BODY[]\r\n"),
            (SERVER, b"* 1 FETCH (BODY[] {%d}\r\n" % len(literal) + literal + b")\r\n"),
            (SERVER, b"a OK FETCH completed\r\n"),
        ],
    )
    shown = lines(events, SERVER)
    assert shown[1:-3] == ["| " + m.decode() for m in MESSAGE]
    assert shown[-3:] == [
        f"(message: 13 lines, {len(literal)} octets)",
        ")",
        "a OK FETCH completed",
    ]


def test_idle_exists_is_called_a_push() -> None:
    trace, events = traced("IMAP")
    run(
        trace,
        [
            (CLIENT, b"a IDLE\r\n"),
            (SERVER, b"+ idling\r\n* 3 EXISTS\r\n"),
            (CLIENT, b"DONE\r\n"),
            (SERVER, b"a OK IDLE terminated\r\n"),
        ],
    )
    idle, exists, done, tagged = "RFC 2177 §3", "RFC 3501 §7.3.1", "RFC 2177 §3", "RFC 3501 §7.1"
    assert [e.rfc for e in events] == [idle, idle, exists, done, tagged]
    assert "pushed during IDLE" in events[2].note


def test_pop3_retr_is_a_message_and_uidl_a_listing() -> None:
    trace, events = traced("POP3")
    run(
        trace,
        [
            (SERVER, b"+OK ready\r\n"),
            (CLIENT, b"UIDL\r\nRETR 1\r\nLIST 1\r\n"),
            (SERVER, b"+OK\r\n1 abc\r\n.\r\n+OK 12 octets\r\nA: b\r\n\r\n..x\r\n.\r\n+OK 1 9\r\n"),
        ],
    )
    assert lines(events, SERVER) == [
        "+OK ready",
        "+OK",
        "1 abc",
        ".",
        "+OK 12 octets",
        "| A: b",
        "| ",
        "| .x",
        "(message: 3 lines, 12 octets)",
        ".",
        "+OK 1 9",
    ]


def test_long_lines_are_cut() -> None:
    trace, events = traced("MTA")
    trace.client_data(b"NOOP " + b"x" * 100_000 + b"\r\nQUIT\r\n")
    assert len(events[0].line) < 300 and events[0].line.endswith("…")
    assert events[1].line == "QUIT"


# Formats, the file, the configuration ---------------------------------------------------
def test_json_round_trip_and_human_form() -> None:
    event = TraceEvent(1.5, "MSA", "abc", CLIENT, "MAIL FROM:<a@b.test>", "RFC 5321 §4.1.1.2", "x")
    assert TraceEvent.from_json(event.to_json()) == event
    assert json.loads(event.to_json())["rfc"] == "RFC 5321 §4.1.1.2"
    text = format_event(event)
    assert " MSA  abc C: MAIL FROM:<a@b.test> " in text
    assert text.endswith("[RFC 5321 §4.1.1.2: x]")


def test_file_is_written_on_a_timer_and_followed(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "trace.jsonl")
    clock = MemoryReactorClock()
    tracer = Tracer(path=path, reactor=clock, to_log=False)
    with open(path, "w") as f:
        f.write("an older trace\n")
    os.chmod(path, 0o644)
    tracer.startService()
    assert os.stat(path).st_mode & 0o777 == 0o600  # it shows users' mail
    tracer.emit("MDA", "s1", "*", "delivered")
    assert os.path.getsize(path) == 0  # emptied, and buffered: the reactor never waits
    clock.advance(1)
    out: list[str] = []
    follow_file(path, out.append, raw=True, from_start=True, keep_following=False)
    assert [json.loads(x)["line"] for x in out] == ["delivered"]
    tracer.emit("MDA", "s1", "*", "again")
    tracer.stopService()  # flushes
    out.clear()
    follow_file(path, out.append, from_start=True, keep_following=False)
    assert [x.split(" *: ")[1] for x in out] == ["delivered", "again"]


def test_trace_bodies_is_checked(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "c.toml")
    with open(path, "w") as f:
        f.write('[server]\ntrace = true\ntrace_bodies = "all"\n[listeners]\nsmtp = "tcp:0"\n')
    with pytest.raises(ConfigError, match=r"\[server\] trace_bodies: expected summary or full"):
        load(path)


def test_implicit_tls_connections_say_so_before_the_first_line() -> None:
    events: list[TraceEvent] = []
    tracer = Tracer(clock=lambda: 0.0, to_log=False)
    tracer.sinks.append(events.append)
    tracer.connection("POP3", "s1", implicit_tls=True).opened("127.0.0.1", 995)
    tracer.connection("POP3", "s2").opened("127.0.0.1", 110)
    assert [(e.session, e.line, e.rfc) for e in events if e.dir == "*"] == [
        ("s1", "connection from 127.0.0.1 on port 995", ""),
        ("s1", "TLS from the first byte (implicit TLS)", "RFC 8314 §3"),
        ("s2", "connection from 127.0.0.1 on port 110", ""),
    ]


def test_odd_white_space_never_unmasks_a_secret() -> None:
    """A leading blank, a tab or two spaces: the trace splits more loosely than servers."""
    smtp, smtp_events = traced("MSA")
    run(
        smtp,
        [
            (CLIENT, f" AUTH PLAIN {PLAIN}\r\n".encode()),
            (SERVER, b"500 5.5.2 Syntax error\r\n"),
            (CLIENT, f"AUTH\tPLAIN\t{PLAIN}\r\n".encode()),
            (SERVER, b"501 5.5.4 Syntax error\r\n"),
        ],
    )
    assert_masked(smtp_events)
    imap, imap_events = traced("IMAP")
    run(
        imap,
        [
            (CLIENT, f"a1  LOGIN alice {PASSWORD.split()[0]}\r\n".encode()),
            (SERVER, b"a1 BAD Syntax error\r\n"),
            (CLIENT, f" a2 LOGIN\talice\t{PASSWORD.split()[0]}\r\n".encode()),
            (SERVER, b"a2 BAD Syntax error\r\n"),
            (CLIENT, f"a3 AUTHENTICATE PLAIN\t{PLAIN}\r\n".encode()),
            (SERVER, b"a3 BAD Syntax error\r\n"),
            (CLIENT, b"\r\na4 AUTHENTICATE\r\n"),
            (SERVER, b"* BAD Empty command\r\na4 BAD Syntax error\r\n"),
        ],
    )
    assert_masked(imap_events)
    pop, pop_events = traced("POP3")
    run(
        pop,
        [
            (CLIENT, f" PASS {PASSWORD}\r\npass\t{PASSWORD}\r\n".encode()),
            (SERVER, b"-ERR unknown command\r\n-ERR unknown command\r\n"),
            (CLIENT, f"AUTH PLAIN\t{PLAIN}\r\n".encode()),
            (SERVER, b"-ERR [AUTH] invalid user name or password\r\n"),
        ],
    )
    assert_masked(pop_events)
    assert lines(pop_events, CLIENT) == [
        f"PASS {MASK}",
        f"PASS {MASK}",
        f"AUTH PLAIN {MASK} (PLAIN authcid {USER}, password masked)",
    ]
