"""A guided demo of push and pull: ``python -m mailserver.demo`` (``make demo``).

It starts the embedded default (``etc/mailserver.toml``, with its sample store) in a
temporary directory on free loopback ports with trace mode on, then plays a scripted
scenario with Python's own mail clients and prints, step by step, the annotated trace
the server writes to ``<run_dir>/trace.jsonl``:

1. bob opens his INBOX over IMAP (STARTTLS) and waits in IDLE;
2. alice submits a message to bob over the MSA (STARTTLS, AUTH PLAIN): push;
3. bob's IDLE session hears of it at once;
4. bob reads it over IMAP: pull;
5. alice's phone downloads her own mail over POP3 with implicit TLS: pull.

The server is stopped by its PID and the temporary directory removed at the end.
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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mailserver.trace import TRACE_FILE, TraceEvent, format_event

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret"  # the sample password of etc/passwd
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
QUIET = 0.6  # seconds without a new trace line before a step's trace is printed
MESSAGE = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: Lunch at noon?\r\n"
    "\r\n"
    "Hi Bob,\r\n"
    "the new place around the corner, at noon?\r\n"
    "Alice\r\n"
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


def write_config(directory: str, ports: dict[str, int]) -> str:
    """The embedded default, moved into ``directory`` and onto ``ports``, trace on."""
    with open(os.path.join(ROOT, "etc", "mailserver.toml"), "rb") as f:
        config = tomllib.load(f)
    run = os.path.join(directory, "run")
    config["server"].update(run_dir=run, trace=True)
    config["store"].update(
        maildir=os.path.join(run, "Maildir"), sample=os.path.join(ROOT, "Maildir-sample")
    )
    config["accounts"]["passwd_file"] = os.path.join(ROOT, "etc", "passwd")
    config["listeners"] = {name: [f"tcp:{ports[name]}:interface=127.0.0.1"] for name in LISTENERS}
    path = os.path.join(directory, "mailserver.toml")
    with open(path, "w") as f:
        f.write(dump_toml(config))
    return path


class TraceReader:
    """Reads the events the server appended to its trace file since the last call."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.position = 0
        self.pending = b""

    def read(self) -> list[TraceEvent]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.position)
                data = f.read()
        except FileNotFoundError:
            return []
        self.position += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [TraceEvent.from_json(line.decode()) for line in lines if line]

    def drain(self, quiet: float = QUIET) -> list[TraceEvent]:
        """Everything written until the server has been quiet for ``quiet`` seconds."""
        events: list[TraceEvent] = []
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            time.sleep(0.05)
            new = self.read()
            if new:
                events += new
                last = time.monotonic()
        return events


@contextmanager
def server(directory: str) -> Iterator[tuple[dict[str, int], str]]:
    """Run ``twistd -n mailserver`` on free ports; yields (ports, trace file path)."""
    ports = dict(zip(LISTENERS, free_ports(len(LISTENERS)), strict=True))
    config = write_config(directory, ports)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    logfile = os.path.join(directory, "twistd.log")
    command = [twistd, "-n", "--pidfile", "", "--logfile", logfile, "mailserver"]
    process = subprocess.Popen([*command, "--config", config], cwd=directory)
    try:
        wait_for(ports.values(), process, logfile)
        yield ports, os.path.join(directory, "run", TRACE_FILE)
    finally:
        process.terminate()  # by its PID: only the server this demo started
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(ports: Any, process: subprocess.Popen[bytes], logfile: str) -> None:
    deadline = time.monotonic() + 30
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


def show(reader: TraceReader) -> None:
    for event in reader.drain():
        print(format_event(event))


def scenario(ports: dict[str, int], trace_path: str, ca_file: str) -> None:
    reader = TraceReader(trace_path)
    reader.drain()  # the connections that checked the server listens
    tls = ssl.create_default_context(cafile=ca_file)

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
    show(reader)

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
    show(reader)

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
    show(reader)

    number = exists.split()[1].decode()
    step(
        f"4. bob reads message {number} over IMAP: pull",
        """FETCH BODY.PEEK[] returns the whole message as a literal {size}; the MDA put
        Return-Path (the envelope sender) and the MSA put Received on top of it.""",
    )
    imap.fetch(number, "(FLAGS BODY.PEEK[])")
    imap.logout()
    show(reader)

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
    show(reader)


def main() -> int:
    directory = tempfile.mkdtemp(prefix="mailserver-demo-")
    try:
        print("mailserver demo: push (SMTP) and pull (IMAP, POP3), traced line by line")
        print("    C: client to server, S: server to client, *: an event")
        with server(directory) as (ports, trace_path):
            ca_file = os.path.join(directory, "run", "tls", "ca.pem")
            scenario(ports, trace_path, ca_file)
        print("\nDone: the server is stopped and its temporary directory removed.")
        print("Read docs/push-pull.md for what each step shows.")
        return 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
