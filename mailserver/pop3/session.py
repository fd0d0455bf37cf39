"""The POP3 state machine (RFC 1939), free of I/O.

AUTHORIZATION (USER, PASS: effects Authenticate then OpenMaildrop) -> TRANSACTION ->
QUIT -> UPDATE (effect CommitDeletes) -> closed. The maildrop is a snapshot taken at
login: message numbers never change during the session, and DELE only marks a message
until QUIT commits the marks (RFC 1939 §5, §6). A session that ends any other way
deletes nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.python.failure import Failure

from mailserver.session import Action, Authenticate, Close, Effect, Send, StartTLS
from mailserver.store.readahead import READ_AHEAD_MESSAGES

CRLF = b"\r\n"
# RFC 2449 §5: what CAPA announces, in this order (USER only while plaintext is allowed).
CAPABILITIES = ("USER", "TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE")
MAX_NUMBER_DIGITS = 10  # message numbers and TOP line counts
MAX_USERNAME = 255  # octets
# RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
MAX_UNIQUE_ID = 70


@dataclass(frozen=True)
class MaildropEntry:
    """One message of the maildrop as listed at login."""

    uid: int  # the store's UID: what ReadMessage and CommitDeletes name
    unique_id: str  # what UIDL shows (see unique_id_for)
    size: int  # octets with CRLF line ends, before byte-stuffing (RFC 1939 §5 LIST)


class MaildropInUse(Exception):
    """Another session holds the maildrop's lock (RFC 2449 §8.1.2 [IN-USE])."""


@dataclass(frozen=True)
class OpenMaildrop(Effect):
    """Lock the user's maildrop and list it.

    The result is a sequence of MaildropEntry in message-number order, or a Failure:
    MaildropInUse when another session holds the lock, anything else for a store error.
    """

    address: str


@dataclass(frozen=True)
class ReadMessage(Effect):
    """Read one message; the result is its bytes with CRLF line ends. ``upcoming``: the
    UIDs of the messages after it, which clients download next and may be read ahead."""

    uid: int
    upcoming: tuple[int, ...] = ()


@dataclass(frozen=True)
class CommitDeletes(Effect):
    """Remove these messages and release the maildrop lock (RFC 1939 §6 UPDATE).

    The result is ignored unless it is a Failure. The effect comes at every QUIT after
    login, even with nothing to remove, because it is also the release of the lock.
    """

    uids: tuple[int, ...]


class Limits(Protocol):
    """The part of POP3Config the session uses."""

    @property
    def max_line(self) -> int: ...

    @property
    def max_errors(self) -> int: ...


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


# RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E.
_UNIQUE_ID = re.compile(rf"[!-~]{{1,{MAX_UNIQUE_ID}}}")


def unique_id_for(base: str) -> str:
    """The UIDL unique-id of a Maildir message: its base name when RFC 1939 §7 allows it.

    The base name survives flag changes (they only touch the ``:2,`` suffix). A base
    that is too long or has other characters (a long host name, a file left by another
    tool) is replaced by its SHA-256 digest, which is just as stable.
    """
    if _UNIQUE_ID.fullmatch(base):
        return base
    return hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()


def top_of(message: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line after it, then ``lines`` body lines."""
    if message.startswith(CRLF):
        end = 2  # no header at all: the message starts with the blank line
    else:
        blank = message.find(b"\r\n\r\n")
        if blank < 0:
            return message
        end = blank + 4
    for _ in range(lines):
        eol = message.find(CRLF, end)
        if eol < 0:
            return message
        end = eol + 2
    return message[:end]


def stuffed_response(first: str, data: bytes) -> bytes:
    """A multi-line response, byte-stuffed (RFC 1939 §3), in one piece to send.

    A line starting with "." gets one more; the body is closed with CRLF if it lacks
    one, then ".". The body is copied once, into the response, never walked line by line
    in Python (and once more by ``replace`` only when some line starts with a dot). One
    piece, not three: a RETR is a round trip, and each Send is a turn of the driver's pump.
    """
    head = f"{first}\r\n".encode()
    if data.startswith(b"."):
        head += b"."
    body = data.replace(b"\r\n.", b"\r\n..") if b"\r\n." in data else data
    tail = b".\r\n" if not data or data.endswith(CRLF) else b"\r\n.\r\n"
    return b"".join((head, body, tail))


def _number(arg: bytes) -> int | None:
    """A strictly decimal argument (RFC 1939 §3), or None."""
    if 0 < len(arg) <= MAX_NUMBER_DIGITS and arg.isdigit():
        return int(arg)
    return None


class POP3Session:
    """One POP3 conversation (see mailserver.session.Session for the contract).

    ``address`` is the canonical address once logged in; ``session_id`` and ``address``
    are there for the driver's logs, the session itself logs nothing.
    """

    def __init__(
        self,
        limits: Limits,
        hostname: str,
        session_id: str,
        allow_plaintext_login: bool = True,
        starttls: bool = False,
        tls_active: bool = False,
    ) -> None:
        self.max_line = limits.max_line
        self.max_errors = limits.max_errors
        self.hostname = hostname
        self.session_id = session_id
        self.allow_plaintext_login = allow_plaintext_login
        self.starttls = starttls
        self.tls = tls_active
        self._sasl = False  # the next line is the client's AUTH PLAIN response
        self.state = State.AUTHORIZATION
        self.address: str | None = None
        self._user: str | None = None
        self._entries: list[MaildropEntry] = []
        self._uids: tuple[int, ...] = ()  # the entries' UIDs, for read-ahead
        self._deleted: set[int] = set()  # message numbers marked by DELE
        self._buffer = bytearray()
        self._discarding = False  # inside a line that was too long
        self._errors = 0
        self._actions: deque[Action] = deque()
        self._then: Callable[[Any], None] | None = None  # takes the pending effect's result
        self._commands: dict[bytes, tuple[Callable[[bytes | None], None], set[State]]] = {
            b"CAPA": (self._capa, {State.AUTHORIZATION, State.TRANSACTION}),
            b"USER": (self._user_command, {State.AUTHORIZATION}),
            b"PASS": (self._pass, {State.AUTHORIZATION}),
            b"STLS": (self._stls, {State.AUTHORIZATION}),
            b"AUTH": (self._auth, {State.AUTHORIZATION}),
            b"QUIT": (self._quit, {State.AUTHORIZATION, State.TRANSACTION}),
            b"STAT": (self._stat, {State.TRANSACTION}),
            b"LIST": (self._list, {State.TRANSACTION}),
            b"UIDL": (self._uidl, {State.TRANSACTION}),
            b"RETR": (self._retr, {State.TRANSACTION}),
            b"TOP": (self._top, {State.TRANSACTION}),
            b"DELE": (self._dele, {State.TRANSACTION}),
            b"RSET": (self._rset, {State.TRANSACTION}),
            b"NOOP": (self._noop, {State.TRANSACTION}),
        }
        self._ok(f"{hostname} POP3 ready")  # RFC 1939 §4 greeting

    # The Session protocol ---------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._buffer += data

    def next_action(self) -> Action | None:
        while not self._actions and self._then is None and self.state is not State.CLOSED:
            if not self._process_line():
                break
        return self._actions.popleft() if self._actions else None

    def resume(self, result: Any) -> None:
        then = self._then
        if then is None:
            raise RuntimeError("resume() without a pending effect")
        self._then = None
        then(result)

    def timed_out(self) -> bytes:
        self._closed()
        return b"-ERR autologout; idle for too long\r\n"

    def connection_lost(self) -> None:
        """Forget everything: marked deletions are not applied (RFC 1939 §6).

        The maildrop lock belongs to whoever ran OpenMaildrop, which must release it.
        """
        self._closed()

    def buffered(self) -> int:
        return len(self._buffer)

    # Line framing -------------------------------------------------------------------
    def _process_line(self) -> bool:
        """Handle one line from the buffer; False when no complete line is there."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if self._discarding:
            if end < 0:
                buffer.clear()
                return False
            del buffer[: end + 1]
            self._discarding = False
            end = buffer.find(b"\n")
        if end < 0:
            # max_line counts the CRLF: a longer partial line can only get longer.
            if len(buffer) < self.max_line:
                return False
            buffer.clear()
            self._discarding = True
            self._error("line too long")
            return True
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > self.max_line:
            self._sasl = False
            self._error("line too long")
        elif self._sasl:
            self._sasl = False
            self._sasl_response(line)
        else:
            self._command(line)
        return True

    def _command(self, line: bytes) -> None:
        # RFC 1939 §3: a case-insensitive keyword, then arguments after single spaces.
        keyword, space, rest = line.partition(b" ")
        command = self._commands.get(keyword.upper())
        if command is None:
            self._error("unknown command")
            return
        handler, states = command
        if self.state not in states:
            self._error("command not valid in this state")
            return
        handler(rest if space else None)

    # Replies --------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._actions.append(Send(data))

    def _ok(self, text: str = "") -> None:
        self._send(f"+OK {text}\r\n".encode() if text else b"+OK\r\n")

    def _refuse(self, text: str) -> None:
        """A negative reply that is not the client's fault (not counted as an error)."""
        self._send(f"-ERR {text}\r\n".encode())

    def _error(self, text: str) -> None:
        """A negative reply to a bad command; the max_errors-th one ends the session."""
        self._errors += 1
        if self._errors >= self.max_errors:
            self._send(b"-ERR too many errors\r\n")
            self._close()
        else:
            self._refuse(text)

    def _listing(self, first: str, lines: Sequence[str]) -> None:
        """A multi-line reply whose lines never start with "." (no stuffing needed)."""
        self._send("".join([f"+OK {first}\r\n", *(f"{x}\r\n" for x in lines), ".\r\n"]).encode())

    def _effect(self, effect: Effect, then: Callable[[Any], None]) -> None:
        self._actions.append(effect)
        self._then = then

    def _close(self) -> None:
        self._actions.append(Close())
        self._closed()

    def _closed(self) -> None:
        self.state = State.CLOSED
        self._buffer.clear()
        self._then = None

    # AUTHORIZATION (RFC 1939 §4, §7) --------------------------------------------------
    def _capa(self, arg: bytes | None) -> None:
        # RFC 2449 §5
        if arg is not None:
            self._error("syntax error")
            return
        names = [c for c in CAPABILITIES if c != "USER" or self._login_allowed]
        if self.starttls and not self.tls and self.state is State.AUTHORIZATION:
            names.append("STLS")  # RFC 2595 §4
        if self._login_allowed and self.state is State.AUTHORIZATION:
            names.append("SASL PLAIN")  # RFC 2449 §6.3, RFC 5034
        self._listing("capability list follows", names)

    @property
    def _login_allowed(self) -> bool:
        """RFC 8314 / RFC 2595 §2: no passwords in the clear, but for the dev default."""
        return self.tls or self.allow_plaintext_login

    def _stls(self, arg: bytes | None) -> None:
        if arg is not None:
            self._error("syntax error")
            return
        if self.tls or not self.starttls:
            self._error("STLS not available")
            return
        self._ok("Begin TLS negotiation")
        # RFC 2595 §4: discard anything sent before the handshake (no command injection)
        # and what we learnt of the client.
        self._buffer.clear()
        self._user = None
        self._actions.append(StartTLS())
        self.tls = True

    def _auth(self, arg: bytes | None) -> None:
        # RFC 5034
        if arg is None:
            # The RFC 1734 form, still used by clients to list the mechanisms.
            self._listing("SASL mechanisms follow", ["PLAIN"] if self._login_allowed else [])
            return
        mechanism, _, initial = arg.partition(b" ")
        if mechanism.upper() != b"PLAIN":
            self._error("unsupported SASL mechanism")
            return
        if not self._login_allowed:
            self._error("[AUTH] plaintext authentication disallowed on non-secure connections")
            return
        if initial:
            self._sasl_response(initial)
        else:
            self._sasl = True
            self._send(b"+ \r\n")

    def _sasl_response(self, line: bytes) -> None:
        if line == b"*":
            self._error("authentication cancelled")
            return
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
            fields = decoded.decode("utf-8").split("\0")
        except (binascii.Error, ValueError):
            self._error("malformed SASL response")
            return
        if len(fields) != 3 or not fields[1]:
            self._error("malformed SASL PLAIN response")
            return
        authzid, username, password = fields
        if authzid and authzid != username:
            self._error("[AUTH] cannot act as another user")
            return
        self._effect(Authenticate(username, password), self._authenticated)

    def _user_command(self, arg: bytes | None) -> None:
        if not self._login_allowed:
            self._error("[AUTH] plaintext authentication disallowed on non-secure connections")
            return
        name = _printable(arg) if arg is not None and len(arg) <= MAX_USERNAME else None
        if name is None or " " in name:
            self._error("syntax error")
            return
        self._user = name
        self._ok()

    def _pass(self, arg: bytes | None) -> None:
        if not self._login_allowed:
            self._error("[AUTH] plaintext authentication disallowed on non-secure connections")
            return
        user, self._user = self._user, None
        if user is None:
            self._error("send USER first")
            return
        if arg is None:
            self._error("syntax error")
            return
        # RFC 1939 §7: PASS has one argument, so spaces belong to the password.
        try:
            password = arg.decode("utf-8")
        except UnicodeDecodeError:
            self._error("[AUTH] invalid user name or password")
            return
        self._effect(Authenticate(user, password), self._authenticated)

    def _authenticated(self, result: Any) -> None:
        if isinstance(result, Failure):
            # RFC 3206 §4: SYS/TEMP, a problem on our side that may go away.
            self._refuse("[SYS/TEMP] authentication unavailable, try again later")
        elif result is None:
            # RFC 3206 §5: AUTH, the credentials are wrong.
            self._error("[AUTH] invalid user name or password")
        else:
            self.address = result
            self._effect(OpenMaildrop(result), self._opened)

    def _opened(self, result: Any) -> None:
        if isinstance(result, Failure):
            if result.check(MaildropInUse):
                self._refuse("[IN-USE] maildrop already locked")  # RFC 2449 §8.1.2
            else:
                self._refuse("[SYS/TEMP] cannot open maildrop")
            self._close()
            return
        self._entries = list(result)
        self._uids = tuple(e.uid for e in self._entries)
        self.state = State.TRANSACTION
        count, octets = self._totals()
        self._ok(f"{count} messages ({octets} octets)")

    def _quit(self, arg: bytes | None) -> None:
        if arg is not None:
            self._error("syntax error")
            return
        if self.state is State.AUTHORIZATION:
            self._ok(f"{self.hostname} POP3 server signing off")
            self._close()
            return
        # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE and removes the marked messages.
        self.state = State.UPDATE
        uids = tuple(sorted(self._entries[n - 1].uid for n in self._deleted))
        self._effect(CommitDeletes(uids), self._committed)

    def _committed(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._refuse("some deleted messages not removed")
        else:
            left = len(self._entries) - len(self._deleted)
            self._ok(f"{self.hostname} POP3 server signing off ({left} messages left)")
        self._close()

    # TRANSACTION (RFC 1939 §5, §7) ------------------------------------------------------
    def _live(self) -> list[tuple[int, MaildropEntry]]:
        """(message number, entry) of every message not marked as deleted."""
        return [(n, e) for n, e in enumerate(self._entries, 1) if n not in self._deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(e.size for _, e in live)

    def _message(self, arg: bytes | None) -> int | None:
        """The message number in ``arg``, or None after replying -ERR."""
        number = _number(arg) if arg is not None else None
        if number is None:
            self._error("no such message")
            return None
        if not 1 <= number <= len(self._entries):
            self._refuse("no such message")
            return None
        if number in self._deleted:
            self._refuse(f"message {number} already deleted")
            return None
        return number

    def _stat(self, arg: bytes | None) -> None:
        if arg is not None:
            self._error("syntax error")
            return
        count, octets = self._totals()
        self._ok(f"{count} {octets}")

    def _list(self, arg: bytes | None) -> None:
        if arg is None:
            count, octets = self._totals()
            lines = [f"{n} {e.size}" for n, e in self._live()]
            self._listing(f"{count} messages ({octets} octets)", lines)
            return
        number = self._message(arg)
        if number is not None:
            self._ok(f"{number} {self._entries[number - 1].size}")

    def _uidl(self, arg: bytes | None) -> None:
        if arg is None:
            lines = [f"{n} {e.unique_id}" for n, e in self._live()]
            self._listing("unique-id listing follows", lines)
            return
        number = self._message(arg)
        if number is not None:
            self._ok(f"{number} {self._entries[number - 1].unique_id}")

    def _retr(self, arg: bytes | None) -> None:
        number = self._message(arg)
        if number is not None:
            self._read(number, None)

    def _top(self, arg: bytes | None) -> None:
        message, space, count = (arg or b"").partition(b" ")
        if not space:
            self._error("syntax error")
            return
        lines = _number(count)
        if lines is None:
            self._error("syntax error")
            return
        number = self._message(message)
        if number is not None:
            self._read(number, lines)

    def _read(self, number: int, top_lines: int | None) -> None:
        def send(result: Any) -> None:
            if isinstance(result, Failure):
                self._refuse("cannot read message")
                return
            data = result if top_lines is None else top_of(result, top_lines)
            self._send(stuffed_response(f"+OK {len(data)} octets", data))

        # What follows, for the read-ahead. Messages marked deleted are left in: they stay on
        # disk until QUIT, and leaving them out cost a fifth of a RETR's time on the reactor.
        upcoming = self._uids[number : number + READ_AHEAD_MESSAGES]
        self._effect(ReadMessage(self._uids[number - 1], upcoming), send)

    def _dele(self, arg: bytes | None) -> None:
        number = self._message(arg)
        if number is not None:
            self._deleted.add(number)
            self._ok(f"message {number} deleted")

    def _rset(self, arg: bytes | None) -> None:
        if arg is not None:
            self._error("syntax error")
            return
        self._deleted.clear()
        count, octets = self._totals()
        self._ok(f"maildrop has {count} messages ({octets} octets)")

    def _noop(self, arg: bytes | None) -> None:
        if arg is not None:
            self._error("syntax error")
            return
        self._ok()


def _printable(arg: bytes) -> str | None:
    """``arg`` as text when it is non-empty UTF-8 without control characters."""
    try:
        text = arg.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or not text.isprintable():
        return None
    return text
