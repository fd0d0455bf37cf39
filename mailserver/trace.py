"""The protocol trace: every line on the wire, labelled, annotated with its RFC, secrets masked.

A class watching mail move sees push (client → MSA → MDA → store, over SMTP) and pull
(store → IMAP/POP3 → client) as the lines the programs really exchange, each one with the
role that handled it, the session id, the time and the RFC section that defines it.

The driver (:mod:`mailserver.driver`) hands a :class:`ConnectionTrace` the bytes it reads
and the bytes it writes. The trace frames them into lines per direction with a small
state machine of its own per protocol (literals in IMAP, the message after DATA in SMTP,
multi-line responses in POP3) and with just enough of the protocol's state to know when
a line carries a secret: SASL responses after ``AUTH``/``AUTHENTICATE``, the password of
IMAP ``LOGIN`` (atom, quoted string or literal), POP3 ``PASS``. Secrets are masked before
an event exists, so no sink can leak them. Messages are summarised (size and first
lines) unless ``trace_bodies = "full"``.

Events go to the Twisted log (human form) and, while the service runs, to a JSON-lines
file (``<run_dir>/trace.jsonl``) that ``mailserver trace`` follows. File writes are
buffered and flushed by a timer every :data:`FLUSH_INTERVAL` seconds, so the reactor
never waits on the disk for a traced line.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()

TRACE_FILE = "trace.jsonl"
BODY_MODES = ("summary", "full")
FLUSH_INTERVAL = 0.2
SUMMARY_LINES = 6  # lines of a message shown in "summary" mode
MAX_SHOWN = 200  # characters of one line shown; longer lines are cut
MAX_PENDING_LINE = 65536  # a "line" longer than this is shown cut and its rest dropped
MASK = "***"

CLIENT = "C"  # client to server, as the RFC examples write it
SERVER = "S"  # server to client
NOTE = "*"  # something that happened without a line on the wire (TLS, delivery)

Sink = Callable[["TraceEvent"], None]


@dataclass(frozen=True)
class TraceEvent:
    """One traced line; ``rfc`` names the section that defines it, ``note`` says why."""

    time: float
    role: str
    session: str
    dir: str
    line: str
    rfc: str = ""
    note: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TraceEvent:
        return cls(**json.loads(text))


def format_event(event: TraceEvent, width: int = 60) -> str:
    """The human form: ``time role session dir: line   [RFC §: note]``."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.time))
    millis = int(event.time * 1000) % 1000
    prefix = f"{clock}.{millis:03d} {event.role:<4} {event.session} "
    text = f"{event.dir}: {event.line}"
    notes = ": ".join(x for x in (event.rfc, event.note) if x)
    if not notes:
        return prefix + text
    return f"{prefix}{text:<{width}}  [{notes}]"


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def _first_word(text: str) -> tuple[str, str]:
    """The first word and the rest, split at any run of white space.

    Looser than any of our parsers on purpose: a line a server might still read as
    AUTH, PASS or LOGIN is masked as one (a leading blank, a tab, two spaces).
    """
    words = text.split(None, 1)
    return (words[0] if words else ""), (words[1] if len(words) > 1 else "")


def describe_sasl(response: bytes) -> str:
    """A SASL response with the secret masked; PLAIN (RFC 4616) keeps the user name."""
    if response == b"*":
        return "* (cancel)"
    try:
        fields = base64.b64decode(response, validate=True).split(b"\0")
    except (binascii.Error, ValueError):
        fields = []
    if len(fields) == 3 and fields[1]:
        return f"{MASK} (PLAIN authcid {_show(fields[1])}, password masked)"
    return f"{MASK} (masked)"


# What a header field of the message means, for the lines a summary shows.
_HEADER_NOTES = {
    "return-path": ("RFC 5321 §4.4", "the envelope sender, added by the delivering MDA"),
    "received": ("RFC 5321 §4.4", "trace header: one per server the message passed"),
    "from": ("RFC 5322 §3.6.2", "header author, not the envelope MAIL FROM"),
    "to": ("RFC 5322 §3.6.3", "header recipients, not the envelope RCPT TO"),
    "cc": ("RFC 5322 §3.6.3", "header copies, not the envelope"),
    "subject": ("RFC 5322 §3.6.5", ""),
    "date": ("RFC 5322 §3.6.1", ""),
    "message-id": ("RFC 5322 §3.6.4", ""),
}


class MessageTrace:
    """Collects one message's lines and turns them into events (summary or full)."""

    def __init__(self, emit: Callable[[str, str, str], None], full: bool, rfc: str) -> None:
        self.emit = emit
        self.full = full
        self.rfc = rfc
        self.octets = 0
        self.lines = 0
        self.in_header = True

    def line(self, data: bytes) -> None:
        self.octets += len(data) + 2
        self.lines += 1
        if self.full or self.lines <= SUMMARY_LINES:
            rfc, note = "", ""
            if self.in_header and data[:1] not in (b" ", b"\t"):
                name = data.partition(b":")[0].decode("ascii", "replace").lower()
                rfc, note = _HEADER_NOTES.get(name, ("", ""))
            self.emit("| " + _show(data), rfc, note)
        if not data:
            self.in_header = False

    def data(self, data: bytes) -> None:
        """An IMAP literal: many lines at once."""
        lines = data.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for line in lines:
            self.line(line)
        self.octets = len(data)

    def end(self) -> None:
        size = f"{self.lines} lines, {self.octets} octets"
        hidden = self.lines - SUMMARY_LINES
        if self.full or hidden <= 0:
            self.emit(f"(message: {size})", self.rfc, "")
        else:
            more = f"{hidden} more line{'s' if hidden > 1 else ''}"
            self.emit(f"(… {more}; message: {size})", self.rfc, "summary")


class LineSplitter:
    """Bytes of one direction into lines without CRLF; over-long lines are cut."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skipping = False  # inside the rest of a cut line

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def take(self, count: int) -> bytes:
        """Up to ``count`` raw bytes (an IMAP literal)."""
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def next_line(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_PENDING_LINE and not self.skipping:
                    self.skipping = True
                    line = bytes(self.buffer[:MAX_PENDING_LINE])
                    del self.buffer[:]
                    return line
                if self.skipping:
                    del self.buffer[:]
                return None
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            return line[:-1] if line.endswith(b"\r") else line


class ConnectionTrace:
    """The trace of one connection; subclasses know one protocol's framing and masking."""

    tls_rfc = ""  # the section that defines the switch to TLS

    def __init__(self, tracer: Tracer, role: str, session: str) -> None:
        self.tracer = tracer
        self.role = role
        self.session = session
        self.implicit_tls = False  # a 465/993/995 listener: TLS before the first line
        self.client = LineSplitter()
        self.server = LineSplitter()

    def emit(self, direction: str, line: str, rfc: str = "", note: str = "") -> None:
        self.tracer.emit(self.role, self.session, direction, line, rfc, note)

    def opened(self, peer: str, port: int | None) -> None:
        where = f" on port {port}" if port is not None else ""
        self.emit(NOTE, f"connection from {peer}{where}", "", self.opened_note())
        if self.implicit_tls:
            # RFC 8314 §3: the handshake comes first, so every line below is encrypted.
            self.emit(NOTE, "TLS from the first byte (implicit TLS)", "RFC 8314 §3")

    def opened_note(self) -> str:
        return ""

    def tls_started(self) -> None:
        self.emit(NOTE, "TLS handshake; what follows is encrypted on the wire", self.tls_rfc)

    def closed(self) -> None:
        self.emit(NOTE, "connection closed")

    def client_data(self, data: bytes) -> None:
        self.client.feed(data)
        self.read_client()

    def server_data(self, data: bytes) -> None:
        self.server.feed(data)
        self.read_server()

    def read_client(self) -> None:
        while (line := self.client.next_line()) is not None:
            self.client_line(line)

    def read_server(self) -> None:
        while (line := self.server.next_line()) is not None:
            self.server_line(line)

    def client_line(self, line: bytes) -> None:
        raise NotImplementedError

    def server_line(self, line: bytes) -> None:
        raise NotImplementedError

    def body(self, direction: str, rfc: str) -> MessageTrace:
        def emit(line: str, line_rfc: str, note: str) -> None:
            self.emit(direction, line, line_rfc, note)

        return MessageTrace(emit, self.tracer.full_bodies, rfc)


# SMTP ----------------------------------------------------------------------------------
SMTP_COMMANDS = {
    "EHLO": ("RFC 5321 §4.1.1.1", "client introduces itself, asks for extensions"),
    "HELO": ("RFC 5321 §4.1.1.1", "client introduces itself (no extensions)"),
    "MAIL": ("RFC 5321 §4.1.1.2", "envelope sender: where bounces go"),
    "RCPT": ("RFC 5321 §4.1.1.3", "envelope recipient: where the message goes"),
    "DATA": ("RFC 5321 §4.1.1.4", "the message itself follows"),
    "RSET": ("RFC 5321 §4.1.1.5", "abort the transaction"),
    "VRFY": ("RFC 5321 §4.1.1.6", ""),
    "EXPN": ("RFC 5321 §4.1.1.7", ""),
    "HELP": ("RFC 5321 §4.1.1.8", ""),
    "NOOP": ("RFC 5321 §4.1.1.9", ""),
    "QUIT": ("RFC 5321 §4.1.1.10", ""),
    "STARTTLS": ("RFC 3207 §4", "switch this connection to TLS"),
    "AUTH": ("RFC 4954 §4", "log in with SASL"),
}
SMTP_EXTENSIONS = {
    "PIPELINING": "RFC 2920",
    "SIZE": "RFC 1870",
    "8BITMIME": "RFC 6152",
    "ENHANCEDSTATUSCODES": "RFC 2034",
    "STARTTLS": "RFC 3207",
    "AUTH": "RFC 4954",
    "DSN": "RFC 3461",
    "HELP": "RFC 5321 §4.1.1.8",
    "SMTPUTF8": "RFC 6531",
    "CHUNKING": "RFC 3030",
    "REQUIRETLS": "RFC 8689",
}
# RFC 5321 §4.2.1: the first digit says how the command went.
SMTP_REPLY_CLASSES = {
    "2": "2yz: done",
    "3": "3yz: go on, send more",
    "4": "4yz: failed for now, try again later",
    "5": "5yz: failed for good, do not repeat",
}
_CONNECT = "(connect)"
_END_OF_DATA = "(end of data)"


class SMTPTrace(ConnectionTrace):
    """SMTP (RFC 5321) as our MTA and MSA speak it."""

    tls_rfc = "RFC 3207 §4.2"

    def __init__(self, tracer: Tracer, role: str, session: str) -> None:
        super().__init__(tracer, role, session)
        # Commands waiting for their reply, oldest first (RFC 2920 pipelining).
        self.pending: deque[str] = deque([_CONNECT])
        self.sasl = False  # client lines are SASL responses until AUTH gets its reply
        self.message: MessageTrace | None = None  # the client is sending the message
        self.ehlo_reply = False

    def opened_note(self) -> str:
        if self.role == "MTA":
            return "MTA: mail from other servers (port 25), for local domains only"
        if self.role == "MSA":
            return "MSA: submission by our users (587/465), login required (RFC 6409)"
        return ""

    def client_line(self, line: bytes) -> None:
        if self.message is not None:
            if line == b".":
                self.message.end()
                self.message = None
                self.pending.append(_END_OF_DATA)
                self.emit(CLIENT, ".", "RFC 5321 §4.1.1.4", "end of the message: <CRLF>.<CRLF>")
            else:
                # RFC 5321 §4.5.2: the transparency dot is not part of the message.
                self.message.line(line[1:] if line.startswith(b".") else line)
            return
        if self.sasl:
            self.emit(CLIENT, describe_sasl(line), "RFC 4954 §4", "SASL response")
            return
        text = _show(line)
        verb, argument = _first_word(text)
        verb = verb.upper()
        self.pending.append(verb)
        rfc, note = SMTP_COMMANDS.get(verb, ("", "not an SMTP command"))
        if verb == "AUTH":
            # RFC 4954 §4: the server reads SASL responses until it replies to AUTH.
            self.sasl = True
            mechanism, initial = _first_word(argument)
            if initial:
                text = f"AUTH {mechanism} {describe_sasl(initial.encode())}"
        self.emit(CLIENT, text, rfc, note)

    def server_line(self, line: bytes) -> None:
        text = _show(line)
        code, final = text[:3], text[3:4] != "-"
        rfc, note = "", ""
        if self.ehlo_reply:
            keyword = text[4:].split(" ")[0].upper()
            rfc = SMTP_EXTENSIONS.get(keyword, "")
        elif code.isdigit():
            rfc, note = self._reply_note(code, text[4:])
        self.ehlo_reply = not final and bool(self.pending) and self.pending[0] == "EHLO"
        if final and code.isdigit():
            self._replied(code)
        self.emit(SERVER, text, rfc, note)

    def _reply_note(self, code: str, rest: str) -> tuple[str, str]:
        command = self.pending[0] if self.pending else ""
        if command == _CONNECT and code == "220":
            return "RFC 5321 §4.3.1", "greeting: 2yz, the server is ready"
        if command == _END_OF_DATA and code.startswith("2"):
            return "RFC 5321 §4.1.1.4", "250: the message is stored durably; the server owns it now"
        if code == "354":
            return "RFC 5321 §4.1.1.4", "3yz: send the message, end with a line '.'"
        if code == "334":
            prompt = ""
            try:
                prompt = base64.b64decode(rest, validate=True).decode("ascii")
            except (binascii.Error, ValueError):
                pass
            return "RFC 4954 §4", f"SASL challenge {prompt!r}" if prompt else "SASL challenge"
        return "RFC 5321 §4.2.1", SMTP_REPLY_CLASSES.get(code[0], "")

    def _replied(self, code: str) -> None:
        if code == "334":
            return  # RFC 4954 §4: a challenge; AUTH goes on
        command = self.pending.popleft() if self.pending else ""
        if command == "AUTH":
            self.sasl = False
        if code == "354":  # RFC 5321 §4.1.1.4: only DATA gets a 354
            self.message = self.body(CLIENT, "RFC 5322 §2.1")


# IMAP ----------------------------------------------------------------------------------
IMAP_COMMANDS = {
    "CAPABILITY": ("RFC 3501 §6.1.1", ""),
    "NOOP": ("RFC 3501 §6.1.2", "also a poll for new mail"),
    "LOGOUT": ("RFC 3501 §6.1.3", ""),
    "STARTTLS": ("RFC 3501 §6.2.1", "switch this connection to TLS"),
    "AUTHENTICATE": ("RFC 3501 §6.2.2", "log in with SASL"),
    "LOGIN": ("RFC 3501 §6.2.3", "log in with name and password"),
    "SELECT": ("RFC 3501 §6.3.1", "open a mailbox"),
    "EXAMINE": ("RFC 3501 §6.3.2", "open a mailbox read-only"),
    "CREATE": ("RFC 3501 §6.3.3", ""),
    "DELETE": ("RFC 3501 §6.3.4", ""),
    "RENAME": ("RFC 3501 §6.3.5", ""),
    "SUBSCRIBE": ("RFC 3501 §6.3.6", ""),
    "UNSUBSCRIBE": ("RFC 3501 §6.3.7", ""),
    "LIST": ("RFC 3501 §6.3.8", ""),
    "LSUB": ("RFC 3501 §6.3.9", ""),
    "STATUS": ("RFC 3501 §6.3.10", ""),
    "APPEND": ("RFC 3501 §6.3.11", "store a message (e.g. in Sent)"),
    "CHECK": ("RFC 3501 §6.4.1", ""),
    "CLOSE": ("RFC 3501 §6.4.2", ""),
    "EXPUNGE": ("RFC 3501 §6.4.3", ""),
    "SEARCH": ("RFC 3501 §6.4.4", ""),
    "FETCH": ("RFC 3501 §6.4.5", "pull: read (parts of) messages"),
    "STORE": ("RFC 3501 §6.4.6", "change flags"),
    "COPY": ("RFC 3501 §6.4.7", ""),
    "UID": ("RFC 3501 §6.4.8", "the same command, by UID"),
    "IDLE": ("RFC 2177 §3", "tell me at once when something changes"),
    "UNSELECT": ("RFC 3691 §2", ""),
    "NAMESPACE": ("RFC 2342 §5", ""),
    "ID": ("RFC 2971 §3.1", ""),
    "ENABLE": ("RFC 5161 §3.1", ""),
    "MOVE": ("RFC 6851 §3", ""),
}
IMAP_UNTAGGED = {
    "OK": ("RFC 3501 §7.1.1", ""),
    "NO": ("RFC 3501 §7.1.2", ""),
    "BAD": ("RFC 3501 §7.1.3", ""),
    "PREAUTH": ("RFC 3501 §7.1.4", ""),
    "BYE": ("RFC 3501 §7.1.5", "the server closes the connection"),
    "CAPABILITY": ("RFC 3501 §7.2.1", ""),
    "LIST": ("RFC 3501 §7.2.2", ""),
    "LSUB": ("RFC 3501 §7.2.3", ""),
    "STATUS": ("RFC 3501 §7.2.4", ""),
    "SEARCH": ("RFC 3501 §7.2.5", ""),
    "FLAGS": ("RFC 3501 §7.2.6", ""),
    "EXISTS": ("RFC 3501 §7.3.1", "number of messages in the mailbox"),
    "RECENT": ("RFC 3501 §7.3.2", ""),
    "EXPUNGE": ("RFC 3501 §7.4.1", ""),
    "FETCH": ("RFC 3501 §7.4.2", ""),
    "NAMESPACE": ("RFC 2342 §5", ""),
    "ID": ("RFC 2971 §3.2", ""),
    "ENABLED": ("RFC 5161 §3.2", ""),
}
# Response codes that other RFCs than RFC 3501 define (RFC 3501 §7.1 has the rest).
IMAP_RESPONSE_CODES = {
    "HIGHESTMODSEQ": ("RFC 7162 §3.1.2.1", "CONDSTORE: the highest mod-sequence"),
    "NOMODSEQ": ("RFC 7162 §3.1.2.2", ""),
    "APPENDUID": ("RFC 4315 §3", ""),
    "COPYUID": ("RFC 4315 §3", ""),
}
IMAP_TAGGED = {
    "OK": "tagged OK: the command with this tag is done",
    "NO": "tagged NO: the command failed",
    "BAD": "tagged BAD: the command was not understood",
}
_LITERAL = re.compile(rb"\{(\d{1,10})(\+?)\}$")
_ATOM_OR_QUOTED = re.compile(rb'\s*("(?:[^"\\]|\\.)*"|\{\d{1,10}\+?\}$|\S+)')


class IMAPTrace(ConnectionTrace):
    """IMAP4rev1 (RFC 3501): tagged commands, literals, continuations, IDLE."""

    tls_rfc = "RFC 3501 §6.2.1"

    def __init__(self, tracer: Tracer, role: str, session: str) -> None:
        super().__init__(tracer, role, session)
        self.tag = ""  # the tag of the command being framed or awaiting its reply
        self.command = ""
        self.arguments = 0  # LOGIN: arguments seen so far (the second is the password)
        self.continuing = False  # the next client line continues the command after a literal
        self.literal_left = 0
        self.literal_secret = False
        self.literal_data = bytearray()
        self.sasl_tag: str | None = None  # AUTHENTICATE in progress: lines are SASL responses
        self.idle_tag: str | None = None
        self.server_literal_left = 0
        self.server_literal = bytearray()
        self.greeted = False

    def opened_note(self) -> str:
        return "IMAP: pull; the mail stays on the server, the client reads and marks it"

    # Client -----------------------------------------------------------------------------
    def read_client(self) -> None:
        while True:
            if self.literal_left:
                data = self.client.take(self.literal_left)
                if not data:
                    return
                self.literal_left -= len(data)
                self.literal_data += data
                if not self.literal_left:
                    self._client_literal_done()
                continue
            line = self.client.next_line()
            if line is None:
                return
            self.client_line(line)

    def _client_literal_done(self) -> None:
        data, self.literal_data = bytes(self.literal_data), bytearray()
        self.continuing = True
        if self.literal_secret:
            self.literal_secret = False
            self.emit(CLIENT, f"{MASK} (literal, masked)", "RFC 3501 §4.3", "the password")
        elif self.command == "APPEND":
            message = self.body(CLIENT, "RFC 3501 §6.3.11")
            message.data(data)
            message.end()
        else:
            self.emit(CLIENT, _show(data), "RFC 3501 §4.3", f"literal of {len(data)} octets")

    def client_line(self, line: bytes) -> None:
        if self.sasl_tag is not None:
            self.emit(CLIENT, describe_sasl(line), "RFC 3501 §6.2.2", "SASL response")
            return
        if self.idle_tag is not None and not self.continuing:
            self.idle_tag = None
            self.emit(CLIENT, _show(line), "RFC 2177 §3", "DONE ends IDLE")
            return
        if self.continuing:
            self.continuing = False
            shown = self._login_arguments(line) if self.command == "LOGIN" else line
            if shown:
                self.emit(CLIENT, _show(shown), "", "the rest of the command")
        else:
            self._command_line(line)
        match = _LITERAL.search(line)
        if match is not None:
            self.literal_left = int(match.group(1))
            if not self.literal_left:
                self._client_literal_done()

    def _command_line(self, line: bytes) -> None:
        parts = line.split(None, 2) or [b""]  # loosely, as _first_word: every LOGIN masked
        self.tag = parts[0].decode("utf-8", "replace")
        self.command = parts[1].decode("utf-8", "replace").upper() if len(parts) > 1 else ""
        self.arguments = 0
        rest = parts[2] if len(parts) > 2 else b""
        shown = line
        if self.command == "LOGIN":
            shown = b" ".join(parts[:2]) + b" " + self._login_arguments(rest)
        elif self.command == "AUTHENTICATE":
            # RFC 3501 §6.2.2: client lines are SASL responses until the tagged reply.
            self.sasl_tag = self.tag
            words = rest.split(None, 1)
            if len(words) > 1:
                # RFC 4959: SASL-IR, the first response on the command line.
                shown = b" ".join(parts[:2]) + b" " + words[0] + b" "
                shown += describe_sasl(words[1].strip()).encode()
        elif self.command == "IDLE":
            self.idle_tag = self.tag
        rfc, note = IMAP_COMMANDS.get(self.command, ("", "not an IMAP4rev1 command"))
        if self.command == "UID" and len(parts) > 2:
            sub = parts[2].split(b" ")[0].decode("utf-8", "replace").upper()
            note = f"UID {sub}: " + IMAP_COMMANDS.get(sub, ("", ""))[1]
        self.emit(CLIENT, _show(shown), rfc, note)

    def _login_arguments(self, data: bytes) -> bytes:
        """LOGIN's arguments with the password masked, as atom, quoted or literal."""
        out = []
        pos = 0
        while (match := _ATOM_OR_QUOTED.match(data, pos)) is not None:
            token = match.group(1)
            pos = match.end()
            self.arguments += 1
            if self.arguments == 2:
                if _LITERAL.fullmatch(token):
                    self.literal_secret = True
                    token = b"{" + MASK.encode() + b"}"
                else:
                    token = MASK.encode()
            out.append(token)
        return b" ".join(out)

    # Server -----------------------------------------------------------------------------
    def read_server(self) -> None:
        while True:
            if self.server_literal_left:
                data = self.server.take(self.server_literal_left)
                if not data:
                    return
                self.server_literal_left -= len(data)
                self.server_literal += data
                if not self.server_literal_left:
                    literal, self.server_literal = bytes(self.server_literal), bytearray()
                    message = self.body(SERVER, "RFC 3501 §4.3")
                    message.data(literal)
                    message.end()
                continue
            line = self.server.next_line()
            if line is None:
                return
            self.server_line(line)

    def server_line(self, line: bytes) -> None:
        text = _show(line)
        words = text.split(" ")
        rfc, note = "", ""
        if words[0] == "*" and len(words) > 1:
            key = words[2] if words[1].isdigit() and len(words) > 2 else words[1]
            rfc, note = IMAP_UNTAGGED.get(key.upper(), ("", ""))
            if key.upper() == "OK" and len(words) > 2 and words[2].startswith("["):
                code = words[2][1:].rstrip("]").upper()
                rfc, note = IMAP_RESPONSE_CODES.get(code, (rfc, note))
            if key.upper() == "EXISTS" and self.idle_tag is not None:
                note = "pushed during IDLE: a new message arrived"
            elif not self.greeted:
                # RFC 3501 §7.1: the greeting is an untagged OK, PREAUTH or BYE.
                note = {"OK": "greeting: log in next", "PREAUTH": "greeting: logged in"}.get(
                    key.upper(), "greeting: the server refuses this connection"
                )
        elif words[0] == "+":
            rfc, note = "RFC 3501 §7.5", "continuation: go on"
            if self.sasl_tag is not None:
                rfc, note = "RFC 3501 §6.2.2", "SASL challenge: send the response"
            elif self.idle_tag is not None:
                rfc, note = "RFC 2177 §3", "idling: the server will speak first"
        elif len(words) > 1 and words[0] == self.tag:
            rfc, note = "RFC 3501 §7.1", IMAP_TAGGED.get(words[1].upper(), "")
            self._completed()
        self.greeted = True
        self.emit(SERVER, text, rfc, note)
        match = _LITERAL.search(line)
        if match is not None and int(match.group(1)):
            self.server_literal_left = int(match.group(1))

    def _completed(self) -> None:
        """The tagged reply: the command is over (a literal it announced will not come)."""
        self.sasl_tag = self.idle_tag = None
        if not self.literal_data:
            self.literal_left = 0
            self.literal_secret = False
            self.continuing = False


# POP3 ----------------------------------------------------------------------------------
POP3_COMMANDS = {
    "USER": ("RFC 1939 §7", "the mailbox name"),
    "PASS": ("RFC 1939 §7", "the password"),
    "APOP": ("RFC 1939 §7", "login with a digest"),
    "QUIT": ("RFC 1939 §6", "now the deletions marked by DELE happen"),
    "STAT": ("RFC 1939 §5", "how many messages, how many octets"),
    "LIST": ("RFC 1939 §5", "the size of each message"),
    "RETR": ("RFC 1939 §5", "pull: download one message"),
    "DELE": ("RFC 1939 §5", "mark for deletion (done at QUIT)"),
    "NOOP": ("RFC 1939 §5", ""),
    "RSET": ("RFC 1939 §5", "unmark the deletions"),
    "TOP": ("RFC 1939 §7", "the header and first lines of a message"),
    "UIDL": ("RFC 1939 §7", "stable unique ids, to download each message once"),
    "CAPA": ("RFC 2449 §5", ""),
    "STLS": ("RFC 2595 §4", "switch this connection to TLS"),
    "AUTH": ("RFC 5034 §4", "log in with SASL"),
}


class POP3Trace(ConnectionTrace):
    """POP3 (RFC 1939): one line per command, multi-line replies ending with "."."""

    tls_rfc = "RFC 2595 §4"

    def __init__(self, tracer: Tracer, role: str, session: str) -> None:
        super().__init__(tracer, role, session)
        self.pending: deque[tuple[str, bool]] = deque([(_CONNECT, False)])
        self.sasl = False
        self.listing = False  # inside a multi-line reply
        self.message: MessageTrace | None = None  # the multi-line reply is a message

    def opened_note(self) -> str:
        return "POP3: pull; the client downloads the mail (and often deletes it)"

    def client_line(self, line: bytes) -> None:
        if self.sasl:
            self.emit(CLIENT, describe_sasl(line), "RFC 5034 §4", "SASL response")
            return
        text = _show(line)
        verb, argument = _first_word(text)
        verb = verb.upper()
        # RFC 1939 §3 and RFC 2449 §5: which replies are multi-line.
        multi = verb in ("RETR", "TOP", "CAPA") or (
            verb in ("LIST", "UIDL", "AUTH") and not argument
        )
        self.pending.append((verb, multi))
        if verb == "PASS":
            text = f"PASS {MASK}"
        elif verb == "APOP":
            text = f"APOP {_first_word(argument)[0]} {MASK}"
        elif verb == "AUTH" and argument:
            self.sasl = True
            mechanism, initial = _first_word(argument)
            text = f"AUTH {mechanism}" + (f" {describe_sasl(initial.encode())}" if initial else "")
        rfc, note = POP3_COMMANDS.get(verb, ("", "not a POP3 command"))
        self.emit(CLIENT, text, rfc, note)

    def server_line(self, line: bytes) -> None:
        if self.listing:
            if line == b".":
                self.listing = False
                if self.message is not None:
                    self.message.end()
                    self.message = None
                self.emit(SERVER, ".", "RFC 1939 §3", "end of the multi-line reply")
            elif self.message is not None:
                # RFC 1939 §3: the byte-stuffed dot is not part of the message.
                self.message.line(line[1:] if line.startswith(b".") else line)
            else:
                self.emit(SERVER, _show(line))
            return
        text = _show(line)
        if text.startswith("+ ") or text == "+":
            self.emit(SERVER, text, "RFC 5034 §4", "SASL challenge: send the response")
            return
        command, multi = self.pending.popleft() if self.pending else ("", False)
        if command == "AUTH":
            self.sasl = False
        rfc, note = "RFC 1939 §3", "+OK: done" if text.startswith("+OK") else "-ERR: failed"
        if command == _CONNECT:
            rfc, note = "RFC 1939 §4", "greeting: the AUTHORIZATION state begins"
        if multi and text.startswith("+OK"):
            self.listing = True
            if command in ("RETR", "TOP"):
                note = "the message follows, dot-stuffed"
                self.message = self.body(SERVER, "RFC 5322 §2.1")
        self.emit(SERVER, text, rfc, note)


# The tracer ----------------------------------------------------------------------------
class OutboundSMTPTrace(SMTPTrace):
    """SMTP as our queue speaks it to other servers: we are the client ("C:")."""

    def opened(self, peer: str, port: int | None) -> None:
        where = f" port {port}" if port is not None else ""
        self.emit(NOTE, f"connection to {peer}{where}", "", self.opened_note())

    def opened_note(self) -> str:
        return (
            "OUT: the queue pushes the message to the recipient's MX or the smarthost (RFC 5321 §5)"
        )


PROTOCOL_TRACES: dict[str, type[ConnectionTrace]] = {
    "MTA": SMTPTrace,
    "MSA": SMTPTrace,
    "OUT": OutboundSMTPTrace,
    "IMAP": IMAPTrace,
    "POP3": POP3Trace,
}


class Tracer(Service):
    """Makes a ConnectionTrace per connection and sends each event to the sinks.

    While running it also writes the events as JSON lines to ``path`` (truncated at
    start), buffered and flushed every FLUSH_INTERVAL seconds by a reactor timer.
    """

    def __init__(
        self,
        full_bodies: bool = False,
        path: str | None = None,
        reactor: Any = None,
        clock: Callable[[], float] = time.time,
        to_log: bool = True,
    ) -> None:
        self.full_bodies = full_bodies
        self.path = path
        self.reactor = reactor
        self.clock = clock
        self.sinks: list[Sink] = []
        if to_log:
            self.sinks.append(self._log)
        self._file: IO[str] | None = None
        self._buffer: list[str] = []
        self._flush_call: Any = None

    def connection(self, role: str, session: str, implicit_tls: bool = False) -> ConnectionTrace:
        trace = PROTOCOL_TRACES[role](self, role, session)
        trace.implicit_tls = implicit_tls
        return trace

    def emit(
        self, role: str, session: str, direction: str, line: str, rfc: str = "", note: str = ""
    ) -> None:
        event = TraceEvent(self.clock(), role, session, direction, line, rfc, note)
        for sink in self.sinks:
            sink(event)

    def _log(self, event: TraceEvent) -> None:
        log.info("{trace}", trace=format_event(event))

    # The JSON-lines file -------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        if self.path is not None:
            self._file = open(self.path, "w", encoding="utf-8", opener=_private)
            self.sinks.append(self._write)

    def stopService(self) -> None:
        super().stopService()
        if self._file is not None:
            self.sinks.remove(self._write)
            self.flush()
            self._file.close()
            self._file = None

    def _write(self, event: TraceEvent) -> None:
        self._buffer.append(event.to_json() + "\n")
        if self.reactor is None:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._file is not None and self._buffer:
            self._file.write("".join(self._buffer))
            self._file.flush()
        self._buffer.clear()


def _private(path: str, flags: int) -> int:
    """Open for the server's user only: the trace names users and shows their mail."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # also when an older trace file was left readable
    return fd


def follow_file(
    path: str,
    write: Callable[[str], None],
    raw: bool = False,
    from_start: bool = False,
    keep_following: bool = True,
    interval: float = 0.2,
) -> None:
    """Print the events of a trace file as they come (``tail -f``), in human form or raw.

    Waits for the file to appear, and starts over when the server truncates it (a
    restart). Without ``from_start`` only events written from now on are shown.
    """
    position: int | None = 0 if from_start else None
    pending = b""
    while True:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                if position is None:
                    position = size
                elif size < position:
                    position, pending = 0, b""
                f.seek(position)
                data = f.read()
        except FileNotFoundError:
            data, position = b"", 0
        position += len(data)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if text:
                write(text if raw else format_event(TraceEvent.from_json(text)))
        if not keep_following:
            return
        time.sleep(interval)
