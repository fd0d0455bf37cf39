"""Trace mode on the real server: a scripted push/pull session against a golden
transcript, and no password in any trace output whatever the login method."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import re
import smtplib
import socket
import subprocess
import sys
import threading
from pathlib import Path

from twisted.internet import threads
from twisted.logger import globalLogPublisher

from mailserver.trace import TRACE_FILE, TraceEvent
from tests.e2e.harness import ALICE, BOB, PASSWORD, ServerProcess, ServerTestCase, free_ports

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "trace_golden.txt")
PLAIN = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, PLAIN, base64.b64encode(PASSWORD.encode()).decode())
MESSAGE = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: Lunch?\r\n"
    "Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
    "Message-ID: <lunch@example.test>\r\n"
    "\r\n"
    "At noon?\r\n"
    ".leading dot\r\n"
)


class Wire:
    """A line-by-line client on a raw socket: what it sends is exactly what is traced."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def until(self, done: re.Pattern[bytes]) -> list[bytes]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise AssertionError(f"connection closed; got {lines!r}")
            lines.append(line)
            if done.match(line):
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def closed_by_server(self) -> None:
        """Wait for the server to hang up, so the next session's events come after it."""
        while self.file.readline():
            pass
        self.close()


SMTP_DONE = re.compile(rb"^\d{3} ")
POP3_DONE = re.compile(rb"^(\+OK|-ERR|\+ )")
POP3_END = re.compile(rb"^\.\r\n")


def imap_done(tag: str) -> re.Pattern[bytes]:
    return re.compile(rb"^(" + tag.encode() + rb" |\+ )")


def normalise(events: list[TraceEvent]) -> str:
    """The human form without what changes between runs: time, ids, ports, file names."""
    ids: dict[str, str] = {}
    out = []
    for e in events:
        label = ids.setdefault(e.session, f"S{len(ids) + 1}")
        notes = ": ".join(x for x in (e.rfc, e.note) if x)
        out.append(f"{e.role:<4} {label} {e.dir}: {e.line}" + (f"  [{notes}]" if notes else ""))
    text = "\n".join(out) + "\n"
    for session, label in ids.items():
        text = text.replace(session, label)
    text = re.sub(r"on port \d+", "on port PORT", text)
    text = re.sub(r"\b\d{10}\.M\d+P\d+Q\d+R[0-9a-f]+\.[\w.]+(,S=\d+,W=\d+)?", "FILE", text)
    text = re.sub(r"UIDVALIDITY \d+", "UIDVALIDITY N", text)
    return re.sub(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", "DATE", text)


class TraceTestCase(ServerTestCase):
    trace = True  # through the configuration file, as a teacher would set it

    async def start_traced(self) -> list[TraceEvent]:
        await self.start_server()
        assert self.server.tracer is not None
        events: list[TraceEvent] = []
        self.server.tracer.sinks.append(events.append)
        return events

    def all_output(self, events: list[TraceEvent]) -> str:
        """Every form the trace takes: the events, the JSON file, the human lines."""
        assert self.server.tracer is not None
        self.server.tracer.flush()
        with open(os.path.join(self.directory, "run", TRACE_FILE), encoding="utf-8") as f:
            on_disk = f.read()
        return on_disk + "\n".join(repr(e) for e in events)


class GoldenTranscript(TraceTestCase):
    def script(self) -> None:
        mta = Wire(self.ports["smtp"])  # another server delivers to our MTA: no login
        mta.until(SMTP_DONE)
        for command in (
            "EHLO mx.remote.test\r\n",
            "MAIL FROM:<carol@remote.test>\r\n",
            f"RCPT TO:<{ALICE}>\r\n",
            "RCPT TO:<nobody@elsewhere.test>\r\n",
            "DATA\r\n",
            "Subject: hi\r\n\r\nfrom carol\r\n.\r\n",
            "QUIT\r\n",
        ):
            mta.send(command)
            mta.until(SMTP_DONE)
        mta.closed_by_server()

        smtp = Wire(self.ports["submission"])
        smtp.until(SMTP_DONE)
        for command in (
            "EHLO client.example.test\r\n",
            f"AUTH PLAIN {PLAIN}\r\n",
            f"MAIL FROM:<{ALICE}>\r\n",
            f"RCPT TO:<{BOB}>\r\n",
            "DATA\r\n",
            MESSAGE.replace("\r\n.", "\r\n..") + ".\r\n",
            "QUIT\r\n",
        ):
            smtp.send(command)
            smtp.until(SMTP_DONE)
        smtp.closed_by_server()

        imap = Wire(self.ports["imap"])
        imap.until(re.compile(rb"^\* OK"))
        for tag, command in (
            ("a1", f"LOGIN {BOB} {{6}}\r\n"),
            ("a1", f"{PASSWORD}\r\n"),
            ("a2", "SELECT INBOX\r\n"),
            ("a3", "FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT)])\r\n"),
            ("a4", "LOGOUT\r\n"),
        ):
            imap.send(command if command.startswith(PASSWORD) else f"{tag} {command}")
            imap.until(imap_done(tag))
        imap.closed_by_server()

        pop = Wire(self.ports["pop3"])
        pop.until(POP3_DONE)
        for command, multi in (
            (f"USER {BOB}\r\n", False),
            (f"PASS {PASSWORD}\r\n", False),
            ("STAT\r\n", False),
            ("TOP 1 1\r\n", True),
            ("QUIT\r\n", False),
        ):
            pop.send(command)
            pop.until(POP3_DONE)
            if multi:
                pop.until(POP3_END)
        pop.closed_by_server()

    async def test_scripted_session_matches_the_golden_transcript(self) -> None:
        events = await self.start_traced()
        await threads.deferToThread(self.script)
        text = normalise(events)
        if os.environ.get("UPDATE_GOLDEN"):
            with open(GOLDEN, "w", encoding="utf-8") as f:
                f.write(text)
        with open(GOLDEN, encoding="utf-8") as f:
            golden = f.read()
        assert text == golden, "trace differs from tests/data/trace_golden.txt"
        output = self.all_output(events)
        for secret in SECRETS:
            assert secret not in output


class PasswordsNeverTraced(TraceTestCase):
    def logins(self) -> None:
        port = self.ports
        with smtplib.SMTP("127.0.0.1", port["submission"], timeout=30) as smtp:
            smtp.login(ALICE, PASSWORD)  # AUTH PLAIN, initial response
        with smtplib.SMTP("127.0.0.1", port["submission"], timeout=30) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = ALICE, PASSWORD
            smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        with smtplib.SMTP("127.0.0.1", port["submission"], timeout=30) as smtp:
            smtp.ehlo()
            code, _ = smtp.docmd("AUTH", "PLAIN")
            assert code == 334
            assert smtp.docmd(PLAIN)[0] == 235
        wire = Wire(port["submission"])  # AUTH LOGIN with the user name as initial response
        wire.until(SMTP_DONE)
        wire.send("EHLO client.example.test\r\n")
        wire.until(SMTP_DONE)
        wire.send(f"AUTH LOGIN {base64.b64encode(ALICE.encode()).decode()}\r\n")
        assert wire.until(SMTP_DONE)[-1].startswith(b"334 ")
        wire.send(f"{base64.b64encode(PASSWORD.encode()).decode()}\r\n")
        assert wire.until(SMTP_DONE)[-1].startswith(b"235 ")
        wire.close()

        imap = imaplib.IMAP4("127.0.0.1", port["imap"], timeout=30)
        imap.login(ALICE, PASSWORD)  # an atom
        imap.logout()
        wire = Wire(port["imap"])
        wire.until(re.compile(rb"^\* OK"))
        wire.send(f'q1 LOGIN "{ALICE}" "{PASSWORD}"\r\n')  # quoted
        assert wire.until(imap_done("q1"))[-1].startswith(b"q1 OK")
        wire.close()
        wire = Wire(port["imap"])
        wire.until(re.compile(rb"^\* OK"))
        wire.send(f"l1 LOGIN {{{len(ALICE)}}}\r\n")  # literals, synchronizing
        wire.until(imap_done("l1"))
        wire.send(f"{ALICE} {{{len(PASSWORD)}}}\r\n")
        wire.until(imap_done("l1"))
        wire.send(f"{PASSWORD}\r\n")
        assert wire.until(imap_done("l1"))[-1].startswith(b"l1 OK")
        wire.close()
        wire = Wire(port["imap"])
        wire.until(re.compile(rb"^\* OK"))
        wire.send(f"l3 LOGIN {ALICE} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n")  # LITERAL+
        assert wire.until(imap_done("l3"))[-1].startswith(b"l3 OK")
        wire.close()
        imap = imaplib.IMAP4("127.0.0.1", port["imap"], timeout=30)
        imap.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())
        imap.logout()
        wire = Wire(port["imap"])
        wire.until(re.compile(rb"^\* OK"))
        wire.send(f"i1 AUTHENTICATE PLAIN {PLAIN}\r\n")  # SASL-IR
        assert wire.until(imap_done("i1"))[-1].startswith(b"i1 OK")
        wire.close()

        pop = poplib.POP3("127.0.0.1", port["pop3"], timeout=30)
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        pop.quit()
        for auth in (f"AUTH PLAIN {PLAIN}\r\n", f"AUTH PLAIN\r\n{PLAIN}\r\n"):
            wire = Wire(port["pop3"])
            wire.until(POP3_DONE)
            wire.send(auth)
            replies = wire.until(re.compile(rb"^(\+OK|-ERR)"))
            assert replies[-1].startswith(b"+OK"), replies
            wire.send("QUIT\r\n")
            wire.until(POP3_DONE)
            wire.close()

    async def test_no_password_in_any_trace_output(self) -> None:
        events = await self.start_traced()
        logged: list[str] = []

        def observe(event: dict) -> None:
            if "trace" in event:
                logged.append(event["trace"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await threads.deferToThread(self.logins)
        output = self.all_output(events) + "\n".join(logged)
        assert output.count("***") >= 10
        assert len(logged) == len(events)
        for secret in SECRETS:
            assert secret not in output


def follower(config: str, *flags: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "mailserver.cli", "trace", "--config", config, *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_sessions(process: subprocess.Popen[str], count: int) -> list[str]:
    """What a follower prints until ``count`` connections have closed."""
    assert process.stdout is not None
    lines: list[str] = []
    while sum("connection closed" in line for line in lines) < count:
        line = process.stdout.readline()
        assert line, f"the follower ended; it printed {lines!r}"
        lines.append(line)
    return lines


def test_twistd_trace_flag_followed_from_other_processes(tmp_path: Path) -> None:
    """``twistd -n mailserver --trace`` (trace off in the file) and ``mailserver trace``
    in two other processes, human and --json, each started before the server."""
    (submission,) = free_ports(1)
    server = ServerProcess(str(tmp_path), {"submission": submission}, flags=("--trace",))
    followers = [follower(server.config, "--from-start", *f) for f in ((), ("--json",))]
    # Should the trace never come, the followers are ended and the test fails, not hangs.
    watchdog = threading.Timer(60, lambda: [p.terminate() for p in followers])
    watchdog.start()
    try:
        for process in followers:  # both are up, and wait, before the server starts
            assert process.stderr is not None
            said = [process.stderr.readline(), process.stderr.readline()]
            assert "trace is off in" in said[0] and "waiting for" in said[1], said
        server.start()
        with smtplib.SMTP("127.0.0.1", submission, timeout=30) as smtp:
            smtp.login(ALICE, PASSWORD)
        # Two sessions: ServerProcess.start's probe of the port, then the login.
        shown, raw = (read_sessions(p, 2) for p in followers)
    finally:
        watchdog.cancel()
        server.stop()
        for process in followers:  # by their PIDs: the followers this test started
            process.terminate()
            process.wait()
    events = [TraceEvent.from_json(line) for line in raw]
    assert {e.role for e in events} == {"MSA"} and len(shown) == len(events) > 10
    auth = [line for line in shown if " C: AUTH PLAIN " in line]
    assert len(auth) == 1 and "[RFC 4954 §4: log in with SASL]" in auth[0]
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} MSA  [0-9a-f]{12} \*: connection from", shown[0])
    for secret in SECRETS:
        assert not [x for x in shown + raw if secret in x]
