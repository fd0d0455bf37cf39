"""A guided demo of push and pull: ``python -m mailserver.demo`` (``make demo``).

It starts the embedded default (``etc/mailserver.toml``, with its sample store) in a
temporary directory on free loopback ports with trace mode on, then plays a scripted
scenario with Python's own mail clients and prints, step by step, the annotated trace
the server writes to ``<run_dir>/trace.jsonl``:

1. bob opens his INBOX over IMAP (STARTTLS) and waits in IDLE;
2. alice submits a message to bob over the MSA (STARTTLS, AUTH PLAIN): push;
3. bob's IDLE session hears of it at once;
4. bob reads it over IMAP: pull;
5. alice's phone downloads her own mail over POP3 with implicit TLS: pull;
6. alice writes to carol@remote.test: the queue (OUT) pushes the message to a second
   server, started for the demo as remote.test, whose MTA and MDA take it.

Each step waits for its own last trace event, not for a fixed time. Both servers are
stopped by their PIDs and the temporary directory removed at the end.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from mailserver.accounts import hash_password
from mailserver.trace import NOTE, TRACE_FILE, TraceEvent, format_event

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@remote.test"  # a user of the other server the demo starts
REMOTE_HOST = "mx.remote.test"
PASSWORD = "secret"  # the sample password of etc/passwd
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
WAIT = 30  # seconds to wait for a step's trace before giving up
MESSAGE = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: Lunch at noon?\r\n"
    "\r\n"
    "Hi Bob,\r\n"
    "the new place around the corner, at noon?\r\n"
    "Alice\r\n"
)
REMOTE_MESSAGE = (
    "From: Alice <alice@example.test>\r\n"
    "To: Carol <carol@remote.test>\r\n"
    "Subject: Hello from example.test\r\n"
    "\r\n"
    "Hi Carol, this one travels between two servers.\r\n"
)


def free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out: free now, and never the make-run ports."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for a configuration: tables of scalars, lists and sub-tables."""
    lines: list[str] = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    text = "\n".join(lines) + "\n"
    for key, value in tables:
        name = f"{prefix}.{json.dumps(key)}" if prefix else key
        text += f"\n[{name}]\n" + dump_toml(value, name)
    return text


def write_config(directory: str, ports: dict[str, int], relay: str, relay_ca: str) -> str:
    """The embedded default, moved into ``directory`` and onto ``ports``, trace on.

    Mail for other domains goes to ``relay`` (the other server's MTA), whose
    certificate is checked against ``relay_ca``.
    """
    with open(os.path.join(ROOT, "etc", "mailserver.toml"), "rb") as f:
        config = tomllib.load(f)
    run = os.path.join(directory, "run")
    config["server"].update(run_dir=run, trace=True)
    config["store"].update(
        maildir=os.path.join(run, "Maildir"), sample=os.path.join(ROOT, "Maildir-sample")
    )
    config["accounts"]["passwd_file"] = os.path.join(ROOT, "etc", "passwd")
    config["listeners"] = {name: [f"tcp:{ports[name]}:interface=127.0.0.1"] for name in LISTENERS}
    config["queue"] = {"relay_host": relay, "tls_ca_file": relay_ca}
    return save(directory, config)


def write_remote_config(directory: str, port: int) -> str:
    """The other server: carol's, for remote.test, with only its MTA listening."""
    run = os.path.join(directory, "run")
    passwd = os.path.join(directory, "passwd")
    os.makedirs(directory)
    with open(passwd, "w") as f:
        f.write(f"{CAROL}:{hash_password(PASSWORD)}\n")
    config = {
        "server": {"hostname": REMOTE_HOST, "run_dir": run, "trace": True},
        "domains": {"local": [CAROL.partition("@")[2]]},
        "store": {"maildir": os.path.join(run, "Maildir")},
        "accounts": {"passwd_file": passwd},
        "listeners": {"smtp": [f"tcp:{port}:interface=127.0.0.1"]},
    }
    return save(directory, config)


def save(directory: str, config: dict[str, Any]) -> str:
    path = os.path.join(directory, "mailserver.toml")
    with open(path, "w") as f:
        f.write(dump_toml(config))
    return path


class TraceReader:
    """Reads the events the server appends to its trace file, step by step."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.position = 0
        self.pending = b""
        self.unread: deque[TraceEvent] = deque()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.position)
                data = f.read()
        except FileNotFoundError:
            return
        self.position += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        self.unread.extend(TraceEvent.from_json(line.decode()) for line in lines if line)

    def until(self, done: Callable[[TraceEvent], bool], what: str) -> list[TraceEvent]:
        """The events up to and including the first for which ``done`` is true.

        The server flushes its trace file every FLUSH_INTERVAL (0.2 s): a step's events
        are on disk that long after they happened, so no step waits for a fixed time.
        """
        events: list[TraceEvent] = []
        deadline = time.monotonic() + WAIT
        while True:
            while self.unread:
                events.append(self.unread.popleft())
                if done(events[-1]):
                    return events
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: no trace of {what} after {WAIT} s")
            time.sleep(0.05)
            self._read()


@contextmanager
def server(directory: str, config: str, ports: list[int]) -> Iterator[TraceReader]:
    """Run ``twistd -n mailserver`` until the block ends; yields its trace, probes skipped."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    logfile = os.path.join(directory, "twistd.log")
    command = [twistd, "-n", "--pidfile", "", "--logfile", logfile, "mailserver"]
    process = subprocess.Popen([*command, "--config", config], cwd=directory)
    try:
        wait_for(ports, process, logfile)
        reader = TraceReader(os.path.join(directory, "run", TRACE_FILE))
        for _ in ports:  # each probe of wait_for is a traced connection
            reader.until(closed(), "the port probes")
        yield reader
    finally:
        process.terminate()  # by its PID: only the server this demo started
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(ports: Iterable[int], process: subprocess.Popen[bytes], logfile: str) -> None:
    deadline = time.monotonic() + WAIT
    for port in ports:
        while True:
            if process.poll() is not None:
                with open(logfile, errors="replace") as f:
                    raise SystemExit(f"the server exited:\n{f.read()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the server does not listen on port {port}") from None
                time.sleep(0.05)


def step(title: str, explanation: str) -> None:
    print(f"\n=== {title} ===")
    for line in explanation.strip().splitlines():
        print(f"    {line.strip()}")
    print()


def closed(role: str = "") -> Callable[[TraceEvent], bool]:
    """Matches the end of a connection (of ``role``, if given)."""
    return lambda e: e.line == "connection closed" and role in ("", e.role)


def show(events: list[TraceEvent]) -> None:
    for event in events:
        print(format_event(event))


def scenario(ports: dict[str, int], trace: TraceReader, remote: TraceReader, ca: str) -> None:
    tls = ssl.create_default_context(cafile=ca)

    step(
        f"1. bob opens his INBOX over IMAP (port {ports['imap']}) and waits in IDLE",
        """IMAP is pull: the mail stays on the server and the client asks for it.
        IDLE (RFC 2177) lets the client wait for the server to speak first.""",
    )
    imap = imaplib.IMAP4("localhost", ports["imap"], timeout=30)
    imap.starttls(tls)
    imap.login(BOB, PASSWORD)
    imap.select("INBOX")
    tag = imap._new_tag().decode()
    imap.send(f"{tag} IDLE\r\n".encode())
    imap.readline()  # "+ idling"
    show(trace.until(lambda e: e.line.startswith("+ "), "IDLE"))

    step(
        f"2. alice submits a message to bob over the MSA (port {ports['submission']}): push",
        """The MSA (RFC 6409) takes mail from our own users only: STARTTLS, then AUTH.
        MAIL FROM and RCPT TO are the envelope; From: and To: inside are the header.
        250 after the final "." means: written, fsynced, renamed into bob's new/.""",
    )
    with smtplib.SMTP("localhost", ports["submission"], "alice-laptop.example.test", 30) as smtp:
        smtp.starttls(context=tls)
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, [BOB], MESSAGE)
    show(trace.until(closed("MSA"), "the submission"))

    step(
        "3. bob's IDLE session heard of it at once",
        """Look above: "* n EXISTS" reached bob between alice's "." and her 250. No
        polling: the store announced the delivery on its change bus, and the IMAP
        session in IDLE spoke by itself. bob ends IDLE with DONE.""",
    )
    exists = b""
    while not exists.endswith(b"EXISTS\r\n"):
        exists = imap.readline()
    imap.send(b"DONE\r\n")
    while not imap.readline().startswith(tag.encode()):
        pass
    show(trace.until(lambda e: e.line.startswith(f"{tag} "), "the end of IDLE"))

    number = exists.split()[1].decode()
    step(
        f"4. bob reads message {number} over IMAP: pull",
        """FETCH BODY.PEEK[] returns the whole message as a literal {size}; the MDA put
        Return-Path (the envelope sender) and the MSA put Received on top of it.""",
    )
    imap.fetch(number, "(FLAGS BODY.PEEK[])")
    imap.logout()
    show(trace.until(closed("IMAP"), "bob's IMAP session"))

    step(
        f"5. alice's phone downloads her mail over POP3 with TLS (port {ports['pop3s']})",
        """POP3 is pull too, but simpler: list, download (RETR), and usually delete.
        UIDL gives each message an id that never changes, so it is fetched once.""",
    )
    pop = poplib.POP3_SSL("localhost", ports["pop3s"], context=tls, timeout=30)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    pop.stat()
    pop.uidl()
    pop.retr(1)
    pop.quit()
    show(trace.until(closed("POP3"), "the POP3 session"))

    step(
        f"6. alice writes to {CAROL}: the queue pushes it to carol's server",
        """remote.test is not our domain: the MSA puts the message in the queue (250),
        then the queue, as an SMTP client (OUT), pushes it to carol's server, whose MTA
        (port 25 in production, no login) takes mail for its own domain only. Their
        server traces the same lines from its side; only its events (*) are shown.""",
    )
    laptop = "alice-laptop.example.test"
    with smtplib.SMTP_SSL("localhost", ports["submissions"], laptop, context=tls) as smtp:
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, [CAROL], REMOTE_MESSAGE)
    ours = trace.until(closed("OUT"), "the queue's delivery")
    skipped = sum(e.role == "MSA" for e in ours)
    print(f"(alice's submission over the MSA, as in step 2: {skipped} lines not shown)")
    theirs = [e for e in remote.until(closed("MTA"), "carol's server") if e.dir == NOTE]
    show(sorted([e for e in ours if e.role != "MSA"] + theirs, key=lambda e: e.time))


def main() -> int:
    directory = tempfile.mkdtemp(prefix="mailserver-demo-")
    try:
        print("mailserver demo: push (SMTP) and pull (IMAP, POP3), traced line by line")
        print("    C: client to server, S: server to client, *: an event")
        remote_port, *our_ports = free_ports(1 + len(LISTENERS))
        ports = dict(zip(LISTENERS, our_ports, strict=True))
        there = os.path.join(directory, "remote")
        with server(there, write_remote_config(there, remote_port), [remote_port]) as remote:
            ca = os.path.join(directory, "run", "tls", "ca.pem")
            config = write_config(
                directory,
                ports,
                f"localhost:{remote_port}",
                os.path.join(there, "run", "tls", "ca.pem"),
            )
            with server(directory, config, list(ports.values())) as trace:
                scenario(ports, trace, remote, ca)
        print("\nDone: both servers are stopped and the temporary directory removed.")
        print("Read docs/push-pull.md for what each step shows.")
        return 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
