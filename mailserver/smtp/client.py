"""The SMTP client (RFC 5321) as a state machine without I/O.

Bytes from the server go in with ``receive_data``; ``next_action`` hands out what to do
(send these bytes, start TLS, close). When the conversation is over, ``outcome()`` says,
per recipient, whether the server took the message, refused it for good, or whether the
delivery should be tried again (on another MX host, or later).

One :class:`ClientSession` delivers one message to all its recipients at one host over
one connection. The driver (``mailserver.smtp.client_protocol``) owns the socket, TLS
and the timeouts; it asks :meth:`ClientSession.timeout` how long to wait for the reply
it is waiting for (RFC 5321 §4.5.3.2).
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mailserver.message import header_section
from mailserver.session import Action, Close, Send, StartTLS
from mailserver.smtp.reply import Reply

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.DOTALL)
_ENHANCED = re.compile(r"^([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; we are lenient but bounded.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100


class TLSPolicy(enum.Enum):
    """What the client does about STARTTLS (RFC 3207)."""

    NEVER = "never"
    OPPORTUNISTIC = "opportunistic"  # use it when offered, without verifying the peer
    REQUIRED = "required"  # no TLS, no delivery; the driver verifies the certificate


@dataclass(frozen=True)
class ClientTimeouts:
    """RFC 5321 §4.5.3.2: how long to wait for each reply, in seconds."""

    greeting: float = 300.0  # §4.5.3.2.1
    command: float = 300.0  # §4.5.3.2.2, §4.5.3.2.3 (MAIL, RCPT; we use it for the rest)
    data_init: float = 120.0  # §4.5.3.2.4
    data_end: float = 600.0  # §4.5.3.2.6


@dataclass(frozen=True)
class OutboundRecipient:
    """A recipient with the DSN parameters to pass on (RFC 3461 §4)."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True)
class OutboundMessage:
    """The envelope and the message as it is stored (CRLF or not; stuffed on the way)."""

    mail_from: str
    recipients: tuple[OutboundRecipient, ...]
    chunks: tuple[bytes, ...]
    ret: str | None = None  # RFC 3461 §4.3: FULL or HDRS
    envid: str | None = None  # RFC 3461 §4.4, already xtext
    smtputf8: bool = False  # RFC 6531: accepted with SMTPUTF8, passed on with it

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def eight_bit(self) -> bool:
        return any(max(c, default=0) > 0x7F for c in self.chunks)


class Result(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"  # try the next host, then later
    PERMANENT = "permanent"  # bounce


@dataclass(frozen=True)
class RecipientOutcome:
    address: str
    result: Result
    reply: Reply


@dataclass
class Outcome:
    """What became of each recipient, and what the server said about itself."""

    recipients: dict[str, RecipientOutcome] = field(default_factory=dict)
    dsn_supported: bool = False  # the server took the DSN parameters (RFC 3461 §4)
    tls: bool = False
    # The connection ended after STARTTLS (or with implicit TLS) before the server
    # answered inside TLS: most likely the handshake failed.
    tls_failed: bool = False
    # An 8-bit message and a server without 8BITMIME: nothing was sent; the message
    # may go to this server once converted to 7 bits (queue/downgrade.py).
    needs_7bit: bool = False


class DotStuffer:
    """Turns message bytes into the DATA stream, chunk by chunk.

    RFC 5321 §4.5.2: a line that starts with "." gets one more "." in front. The state
    (are we at the start of a line, did the last chunk end in CR) carries across
    chunks, so a "." line is stuffed wherever a chunk boundary falls (the twisted.mail
    bug that allows SMTP smuggling). RFC 5321 §2.3.8: CR and LF only ever go out as
    CRLF, so a bare CR or bare LF in the input becomes a line end.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # It may be the first half of a CRLF split across chunks.
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        chunk = _LINE_END.sub(b"\r\n", chunk)
        chunk = chunk.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._at_line_start = chunk.endswith(b"\r\n")
        return chunk

    def finish(self) -> bytes:
        """The end of the data: a CRLF if the message lacks one, then ".CRLF" (§4.1.1.4)."""
        tail = b""
        if self._pending_cr:
            tail = b"\r\n"
            self._pending_cr = False
        elif not self._at_line_start:
            tail = b"\r\n"
        self._at_line_start = True
        return tail + b".\r\n"


def stuff(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The whole DATA stream for ``chunks``, ending with the terminating ".CRLF"."""
    stuffer = DotStuffer()
    for chunk in chunks:
        out = stuffer.feed(chunk)
        if out:
            yield out
    yield stuffer.finish()


class _Step(enum.Enum):
    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    AUTH_USER = "auth-user"
    AUTH_PASSWORD = "auth-password"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DATA_END = "data-end"
    QUIT = "quit"


class ClientSession:
    """One delivery of one message to one host."""

    def __init__(
        self,
        hostname: str,
        message: OutboundMessage,
        tls: TLSPolicy = TLSPolicy.OPPORTUNISTIC,
        credentials: tuple[str, str] | None = None,
        timeouts: ClientTimeouts | None = None,
        implicit_tls: bool = False,
    ) -> None:
        """``implicit_tls``: the driver has TLS on from the first byte (RFC 8314 §3.3),
        so there is no STARTTLS to do and the policy is already met."""
        self.hostname = hostname
        self.message = message
        self.tls_policy = tls
        self.credentials = credentials
        self.timeouts = timeouts or ClientTimeouts()
        self.extensions: dict[str, str] = {}
        self.outcome = Outcome(tls=implicit_tls)
        self._in = bytearray()
        self._lines: list[tuple[int, str]] = []
        self._out: deque[Action] = deque()
        self._expect: deque[tuple[_Step, str]] = deque([(_Step.GREETING, "")])
        self._queued: deque[tuple[str, _Step, str]] = deque()  # without PIPELINING
        self._accepted: list[str] = []
        # This transaction's recipients, and those the server had no room for (452).
        self._batch: tuple[OutboundRecipient, ...] = message.recipients
        self._too_many: list[tuple[OutboundRecipient, Reply]] = []
        self._done = False
        self._aborted = False  # no more transaction: only the DATA cleanup and QUIT left
        self._quit_sent = False
        self._tls_confirmed = False  # a reply came inside TLS
        # Complete replies read so far: the driver restarts its timer only when this
        # changes, so a server that trickles a byte at a time cannot hold us forever.
        self.replies = 0

    # Session protocol -------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if not self._done:
            self._in += data

    def next_action(self) -> Action | None:
        while not self._out and not self._done:
            reply = self._read_reply()
            if reply is None:
                break
            self.replies += 1
            self._tls_confirmed = self.outcome.tls
            if not self._expect:
                self._fail_all(Reply(451, "4.5.0", f"unexpected reply: {describe(reply)}"))
                self._close()
                break
            step, argument = self._expect.popleft()
            self._on_reply(step, argument, reply)
        if self._out:
            return self._out.popleft()
        return None

    def timeout(self) -> float:
        """How long to wait for the next reply (RFC 5321 §4.5.3.2)."""
        if not self._expect:
            return self.timeouts.command
        step = self._expect[0][0]
        if step is _Step.GREETING:
            return self.timeouts.greeting
        if step is _Step.DATA:
            return self.timeouts.data_init
        if step is _Step.DATA_END:
            return self.timeouts.data_end
        return self.timeouts.command

    def timed_out(self) -> None:
        self._fail_all(Reply(421, "4.4.2", "timeout waiting for the server"))
        self._close()

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The connection is gone: recipients not settled yet are to be tried again."""
        if self.outcome.tls and not self._tls_confirmed and not self._done:
            self.outcome.tls_failed = True
        self._fail_all(Reply(421, "4.4.2", reason))
        self._done = True
        self._out.clear()

    def tls_started(self) -> None:
        """The driver finished the TLS handshake; RFC 3207 §4.2: forget all, EHLO again."""
        self.outcome.tls = True
        self.extensions = {}
        self._send(f"EHLO {self.hostname}", _Step.EHLO)

    # Replies ----------------------------------------------------------------------------
    def _read_reply(self) -> Reply | None:
        """A complete (possibly multiline, RFC 5321 §4.2.1) reply, or None for more input."""
        while True:
            end = self._in.find(b"\n")
            if end < 0:
                if len(self._in) > MAX_REPLY_LINE:
                    self._protocol_error("reply line too long")
                return None
            raw = bytes(self._in[:end]).rstrip(b"\r")
            del self._in[: end + 1]
            match = _REPLY_LINE.match(raw) or (
                _REPLY_LINE.match(raw + b" ") if len(raw) == 3 else None
            )
            if match is None or (self._lines and int(match.group(1)) != self._lines[0][0]):
                self._protocol_error(f"malformed reply {raw[:80]!r}")
                return None
            self._lines.append((int(match.group(1)), match.group(3).decode("utf-8", "replace")))
            if len(self._lines) > MAX_REPLY_LINES:
                self._protocol_error("reply too long")
                return None
            if match.group(2) == b" ":
                break
        code = self._lines[0][0]
        texts = [text for _, text in self._lines]
        self._lines = []
        enhanced = ""
        found = _ENHANCED.match(texts[0])
        if found and found.group(1)[0] == str(code)[0]:
            # RFC 2034 §4: the enhanced code starts each line of the reply.
            enhanced = found.group(1)
            texts = [t[len(enhanced) :].lstrip(" ") if t.startswith(enhanced) else t for t in texts]
        return Reply(code, enhanced, texts[0] if len(texts) == 1 else tuple(texts))

    def _protocol_error(self, text: str) -> None:
        self._fail_all(Reply(451, "4.5.0", f"protocol error: {text}"))
        self._close()

    def _on_reply(self, step: _Step, argument: str, reply: Reply) -> None:
        if self._aborted and step not in (_Step.DATA, _Step.DATA_END, _Step.QUIT):
            return  # a pipelined reply after we gave up: nothing left to learn from it
        handler = getattr(self, f"_on_{step.name.lower()}")
        handler(argument, reply)

    def _on_greeting(self, _: str, reply: Reply) -> None:
        # RFC 5321 §3.1: 554 instead of 220 means no service *here*: it says nothing of
        # the recipients, so (as Postfix's smtp_skip_5xx_greeting) the next MX host is
        # tried, and the message later; it is bounced only when it expires.
        if reply.code != 220:
            self._settle_all(Result.TEMPORARY, reply)
            self._quit()
            return
        self._send(f"EHLO {self.hostname}", _Step.EHLO)

    def _on_ehlo(self, _: str, reply: Reply) -> None:
        if reply.code != 250:
            # RFC 5321 §3.2: a server that does not know EHLO; fall back to HELO.
            if reply.code in (500, 502) and not self.outcome.tls:
                self._send(f"HELO {self.hostname}", _Step.HELO)
            else:
                self._give_up(reply)
            return
        for line in reply.lines()[1:]:
            keyword, _, value = line.partition(" ")
            self.extensions[keyword.upper()] = value
        self._after_hello()

    def _on_helo(self, _: str, reply: Reply) -> None:
        if reply.code != 250:
            self._give_up(reply)
            return
        self._after_hello()

    def _after_hello(self) -> None:
        if not self.outcome.tls and self.tls_policy is not TLSPolicy.NEVER:
            if "STARTTLS" in self.extensions:
                self._send("STARTTLS", _Step.STARTTLS)
                return
            if self.tls_policy is TLSPolicy.REQUIRED:
                self._give_up(Reply(451, "4.7.5", "the server does not offer STARTTLS"))
                return
        if self.credentials is not None:
            self._authenticate()
            return
        self._transaction()

    def _on_starttls(self, _: str, reply: Reply) -> None:
        if reply.code == 220:
            # RFC 3207 §4: the handshake starts now; the driver calls tls_started().
            self._out.append(StartTLS())
        elif self.tls_policy is TLSPolicy.REQUIRED:
            self._give_up(reply)
        else:
            self.tls_policy = TLSPolicy.NEVER
            self._after_hello()

    def _authenticate(self) -> None:
        assert self.credentials is not None
        user, password = self.credentials
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            # RFC 4616: authzid NUL authcid NUL passwd, as an initial response (RFC 4954 §4).
            token = _b64(f"\0{user}\0{password}")
            self._send(f"AUTH PLAIN {token}", _Step.AUTH)
        elif "LOGIN" in mechanisms:
            self._send("AUTH LOGIN", _Step.AUTH_USER)
        else:
            self._give_up(Reply(451, "4.7.0", "the server offers neither AUTH PLAIN nor LOGIN"))

    def _on_auth_user(self, _: str, reply: Reply) -> None:
        if reply.code != 334:
            self._auth_failed(reply)
            return
        assert self.credentials is not None
        self._send(_b64(self.credentials[0]), _Step.AUTH_PASSWORD)

    def _on_auth_password(self, _: str, reply: Reply) -> None:
        if reply.code != 334:
            self._auth_failed(reply)
            return
        assert self.credentials is not None
        self._send(_b64(self.credentials[1]), _Step.AUTH)

    def _on_auth(self, _: str, reply: Reply) -> None:
        if reply.code != 235:
            self._auth_failed(reply)
            return
        self._transaction()

    def _auth_failed(self, reply: Reply) -> None:
        # A refused login is our configuration's fault, not the message's: try again later.
        self._give_up(Reply(451, "4.7.8", f"authentication failed: {describe(reply)}"))

    def _transaction(self) -> None:
        message = self.message
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < message.size:
            # RFC 1870 §5: do not send what the server has said it will refuse.
            refused = Reply(552, "5.3.4", f"message size exceeds the server's limit of {limit}")
            self._settle_all(Result.PERMANENT, refused)
            self._quit()
            return
        utf8 = message.smtputf8 and "SMTPUTF8" in self.extensions
        refused = None if utf8 or not message.smtputf8 else self._needs_smtputf8()
        if refused is None and message.eight_bit and "8BITMIME" not in self.extensions:
            # RFC 6152 §3: 8-bit content goes only to a server that announces 8BITMIME.
            # The conversion to 7 bits is the transport's (in a thread, not here on the
            # reactor); if it cannot be done, this reply stands (RFC 3463 5.6.3).
            self.outcome.needs_7bit = True
            refused = Reply(
                554,
                "5.6.3",
                "the server does not announce 8BITMIME, and the message cannot be sent in 7 bits",
            )
        if refused is not None:
            self._settle_all(Result.PERMANENT, refused)
            self._quit()
            return
        dsn = "DSN" in self.extensions
        mail = f"MAIL FROM:<{message.mail_from}>"
        if "SIZE" in self.extensions:
            mail += f" SIZE={message.size}"
        if "8BITMIME" in self.extensions and message.eight_bit:
            mail += " BODY=8BITMIME"  # RFC 6152 §3
        if utf8:
            mail += " SMTPUTF8"  # RFC 6531 §3.4
        if dsn and message.ret:
            mail += f" RET={message.ret}"
        if dsn and message.envid:
            mail += f" ENVID={message.envid}"
        commands = [(mail, _Step.MAIL, "")]
        for rcpt in self._batch:
            command = f"RCPT TO:<{rcpt.address}>"
            if dsn and rcpt.notify:
                command += " NOTIFY=" + ",".join(rcpt.notify)
            if dsn and rcpt.orcpt:
                command += f" ORCPT={rcpt.orcpt}"
            commands.append((command, _Step.RCPT, rcpt.address))
        commands.append(("DATA", _Step.DATA, ""))
        self.outcome.dsn_supported = dsn
        if "PIPELINING" in self.extensions:
            # RFC 2920 §3.1: MAIL, the RCPTs and DATA go in one group, DATA last.
            self._out.append(Send(b"".join(_line(c) for c, _, _ in commands)))
            self._expect.extend((step, arg) for _, step, arg in commands)
        else:
            self._queued.extend(commands)
            self._send_next_queued()

    def _send_next_queued(self) -> None:
        command, step, argument = self._queued.popleft()
        self._send(command, step, argument)

    def _pipelined(self) -> bool:
        return "PIPELINING" in self.extensions

    def _on_mail(self, _: str, reply: Reply) -> None:
        if reply.code != 250:
            self._give_up(reply)
            return
        if not self._pipelined():
            self._send_next_queued()

    def _on_rcpt(self, address: str, reply: Reply) -> None:
        if reply.code in (250, 251):
            self._accepted.append(address)
        elif reply.code == 452:
            # RFC 5321 §4.5.3.1.10: too many recipients for one transaction; they go
            # in the next one, on this connection.
            rcpt = next(r for r in self._batch if r.address == address)
            self._too_many.append((rcpt, reply))
        else:
            result = Result.PERMANENT if reply.permanent else Result.TEMPORARY
            self._settle(address, result, reply)
        if not self._pipelined():
            if self._queued[0][1] is _Step.DATA and not self._accepted:
                self._quit()
                return
            self._send_next_queued()

    def _on_data(self, _: str, reply: Reply) -> None:
        if reply.code != 354:
            if not self._aborted:
                self._settle_many(self._accepted, reply)
            self._quit_now()
            return
        if self._aborted or not self._accepted:
            # RFC 2920 §3.1: DATA accepted although every RCPT (or MAIL) failed:
            # end it with an empty message, which the server must not deliver.
            self._out.append(Send(b".\r\n"))
            self._expect.append((_Step.DATA_END, "empty"))
            return
        for block in stuff(self.message.chunks):
            self._out.append(Send(block))
        self._expect.append((_Step.DATA_END, ""))

    def _on_data_end(self, argument: str, reply: Reply) -> None:
        if argument != "empty":
            if reply.code == 250:
                for address in self._accepted:
                    self._settle(address, Result.DELIVERED, reply)
                if self._too_many:
                    # The server took some of them: the rest in a new transaction.
                    self._batch = tuple(rcpt for rcpt, _ in self._too_many)
                    self._too_many = []
                    self._accepted = []
                    self._transaction()
                    return
            else:
                self._settle_many(self._accepted, reply)
        self._quit_now()

    def _on_quit(self, _: str, reply: Reply) -> None:
        self._close()

    # Helpers ----------------------------------------------------------------------------
    def _send(self, command: str, step: _Step, argument: str = "") -> None:
        self._out.append(Send(_line(command)))
        self._expect.append((step, argument))

    def _settle(self, address: str, result: Result, reply: Reply) -> None:
        self.outcome.recipients.setdefault(address, RecipientOutcome(address, result, reply))

    def _settle_many(self, addresses: Sequence[str], reply: Reply) -> None:
        result = Result.PERMANENT if reply.permanent else Result.TEMPORARY
        for address in addresses:
            self._settle(address, result, reply)

    def _needs_smtputf8(self) -> Reply | None:
        """RFC 6531 §3.2: to a server without SMTPUTF8, a message with UTF-8 addresses
        or UTF-8 header fields cannot go (we do not downgrade them); one with neither
        goes as it is, without the parameter. None: it may go."""
        addresses = [self.message.mail_from, *(r.address for r in self._batch)]
        if not all(a.isascii() for a in addresses):
            return Reply(553, "5.6.7", "UTF-8 address, and the server does not announce SMTPUTF8")
        if max(header_section(self.message.chunks), default=0) > 0x7F:
            return Reply(
                550, "5.6.9", "UTF-8 header fields, and the server does not announce SMTPUTF8"
            )
        return None

    def _settle_all(self, result: Result, reply: Reply) -> None:
        for rcpt in self.message.recipients:
            self._settle(rcpt.address, result, reply)

    def _fail_all(self, reply: Reply) -> None:
        """Every recipient not settled yet is settled by this reply (4xx: try again)."""
        self._settle_all(Result.PERMANENT if reply.permanent else Result.TEMPORARY, reply)

    def _give_up(self, reply: Reply) -> None:
        self._fail_all(reply)
        self._quit()

    def _quit(self) -> None:
        """End the session; with a pipelined DATA still unanswered, QUIT waits for its
        reply (after a 354 it would be taken as message text)."""
        self._aborted = True
        if any(step is _Step.DATA for step, _ in self._expect):
            return
        self._quit_now()

    def _quit_now(self) -> None:
        self._aborted = True
        for rcpt, reply in self._too_many:  # no further transaction: later, then
            self._settle(rcpt.address, Result.TEMPORARY, reply)
        self._too_many = []
        if not self._quit_sent:
            self._quit_sent = True
            self._send("QUIT", _Step.QUIT)

    def _close(self) -> None:
        self._done = True
        self._expect.clear()
        self._out.append(Close())


def _line(command: str) -> bytes:
    # RFC 5321 §2.3.8: a CR or LF inside a command would start another command.
    if "\r" in command or "\n" in command:
        raise ValueError(f"CR or LF in an SMTP command: {command!r}")
    return command.encode("utf-8") + b"\r\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def describe(reply: Reply) -> str:
    """A reply on one line, for logs and the Diagnostic-Code of a DSN."""
    prefix = f"{reply.code} {reply.enhanced}".rstrip()
    return f"{prefix} {' '.join(reply.lines())}"
