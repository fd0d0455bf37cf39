"""The IMAP server session: RFC 3501 with IDLE, UNSELECT, NAMESPACE, ID, LITERAL+, SASL-IR,
UIDPLUS, MOVE, ENABLE, SPECIAL-USE, CHILDREN and CONDSTORE.

The session frames commands (lines and literals), parses them with
:mod:`mailserver.imap.parser` and runs each one as a small generator ("job") that yields
actions: replies to send, and effects for what must not happen on the session's own
stack (checking a password, reading a message file in a thread, giving other sessions a
turn during a long FETCH). It reads and changes folder metadata through the store's
in-memory index, and keeps its own sequence-number view of the selected folder:
changes made by others reach the client as untagged EXISTS/EXPUNGE/FETCH responses only
at the moments RFC 3501 §7.4.1 allows, or at once while the client is in IDLE.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from twisted.python.failure import Failure

from mailserver.imap import parser as p
from mailserver.imap import search
from mailserver.imap.fetch import (
    MessageParts,
    apply_partial,
    bodystructure,
    envelope,
    format_internaldate,
    section_bytes,
)
from mailserver.imap.utf7 import UTF7Error, decode_mailbox
from mailserver.names import BadName, check_folder_name
from mailserver.session import Action, Authenticate, Close, Effect, Send, StartTLS
from mailserver.store.bus import Appended, Change, Expunged, FlagsChanged
from mailserver.store.files import Rule
from mailserver.store.maildir import (
    Folder,
    FolderExists,
    MaildirStore,
    MessageInfo,
    NoSuchFolder,
    QuotaExceeded,
)

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
SPECIAL_USE = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
DELIMITER = "."
# How many messages a FETCH answers (or a SEARCH reads) before it lets other sessions run,
# and how many bytes of message files one such batch reads at most (one larger alone).
FETCH_BATCH = 256
READ_BATCH_BYTES = 1 << 20
# How many files a STORE renames in one job (while the reactor reports the batch before):
# 128, 256 and 1024 took the same time for 10,000 messages, bound by the renames. The
# first and the last batches are smaller, as nothing runs beside the renames of the first
# and the report of the last: STORE_FIRST_BATCH, doubling, and halving again at the end.
STORE_BATCH = 1024
STORE_FIRST_BATCH = 64
FLAG_LISTS_KEPT = 256  # flag sets whose FETCH form a session keeps (_flags)
# Up to how many bytes of responses in a row next_action joins into one Send.
SEND_JOIN_BYTES = 64 * 1024
# How many messages a SEARCH matches against the index alone between two pauses.
SEARCH_BATCH = 4096
# From how many messages to read a SEARCH screens their headers first (ScreenMessages).
SCREEN_FROM = 64
# RFC 5161 §3.1: the extensions ENABLE can turn on.
ENABLEABLE = ("CONDSTORE",)

Job = Generator[Action, Any, None]


# The octets of literals one command may carry before the client has logged in.
MAX_PREAUTH_LITERAL = 8192


@dataclass(frozen=True)
class IMAPLimits:
    max_line: int = 8192
    max_literal: int = 64 * 1024 * 1024
    max_errors: int = 20
    # Logged-in sessions one user may have at once across the process (NO [LIMIT] beyond).
    max_sessions_per_user: int = 20


class UserSessions:
    """The logged-in IMAP sessions of the process, by user (shared by all listeners).

    ``on_change`` is called after every change, e.g. to run keep-alives while any
    session is logged in.
    """

    def __init__(self) -> None:
        self._by_user: dict[str, set[IMAPSession]] = {}
        self.on_change: Callable[[], None] | None = None

    def add(self, user: str, session: IMAPSession, limit: int) -> bool:
        """Count a session in; False (and nothing counted) when the user is at the limit."""
        sessions = self._by_user.setdefault(user, set())
        if len(sessions) >= limit:
            if not sessions:
                del self._by_user[user]
            return False
        sessions.add(session)
        if self.on_change is not None:
            self.on_change()
        return True

    def remove(self, user: str, session: IMAPSession) -> None:
        sessions = self._by_user.get(user)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        if not sessions:
            del self._by_user[user]
        if self.on_change is not None:
            self.on_change()

    def count(self, user: str) -> int:
        return len(self._by_user.get(user, ()))

    def all(self) -> list[IMAPSession]:
        return [s for sessions in self._by_user.values() for s in sessions]


@dataclass(frozen=True)
class AppendMessage(Effect):
    """Deliver a message durably into a folder (MaildirStore.deliver); the result is a
    :class:`~mailserver.store.maildir.Stored`."""

    address: str
    folder: str
    data: bytes
    flags: tuple[str, ...]
    internal_date: float | None


@dataclass(frozen=True)
class CopyMessages(Effect):
    """Copy messages durably (MaildirStore.copy_messages); the result is the list of
    (source UID, new UID) pairs."""

    source: Folder
    uids: tuple[int, ...]
    dest: Folder


@dataclass(frozen=True)
class ReadMessages(Effect):
    """Read a batch of messages (CRLF line ends); the result maps each UID to its bytes
    and leaves out those that are gone (Folder.read_many)."""

    folder: Folder
    uids: tuple[int, ...]


@dataclass(frozen=True)
class ScreenMessages(Effect):
    """Rule messages out of a search from their raw headers (Folder.screen); the result
    is the set of UIDs that may still match."""

    folder: Folder
    uids: tuple[int, ...]
    rule: Rule


@dataclass(frozen=True)
class SetFlags(Effect):
    """Give messages these flags (Folder.set_flags_many: the renames run off the
    reactor), and start renaming those of ``then``, the batch asked for next; the result
    is the UIDs whose flags changed."""

    folder: Folder
    changes: tuple[tuple[int, frozenset[str]], ...]
    then: tuple[tuple[int, frozenset[str]], ...] = ()


@dataclass(frozen=True)
class OpenFolder(Effect):
    """The user's folder of this name (MaildirStore.open_folder: loaded in a thread the
    first time); fails with NoSuchFolder, or BadName for a name that cannot be one."""

    address: str
    name: str


@dataclass(frozen=True)
class CreateFolder(Effect):
    """Create the user's folder (MaildirStore.create_folder); done once it is durable.
    Fails with FolderExists or BadName."""

    address: str
    name: str


@dataclass(frozen=True)
class RenameFolder(Effect):
    """Rename the user's folder and its children (MaildirStore.rename_folder); done once
    durable. Fails with NoSuchFolder, FolderExists or BadName."""

    address: str
    old: str
    new: str


@dataclass(frozen=True)
class MeasureFolder(Effect):
    """Learn the sizes, line ends and dates of files other programs put in the folder
    (Folder.measure), before a command that reports them."""

    folder: Folder


@dataclass(frozen=True)
class RefreshFolder(Effect):
    """Bring the folder's index up to date with what other programs changed on the disk
    (Folder.refresh: a rescan, if one is needed, runs in a thread)."""

    folder: Folder


@dataclass(frozen=True)
class FilesGone(Effect):
    """Wait until the files of the folder's expunged messages are unlinked
    (Folder.expunged), so that a tagged OK means they are gone from the disk."""

    folder: Folder


@dataclass(frozen=True)
class Pause(Effect):
    """Let the reactor serve others before going on (a long reply in progress)."""


class _Selected:
    """This session's view of its selected folder: its own sequence numbers."""

    def __init__(self, folder: Folder, readonly: bool, recent: set[int]) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uids: list[int] = [m.uid for m in folder.messages]
        self.recent = recent
        self.expunged: list[int] = []  # by others, not yet told to the client
        self.flags_changed: set[int] = set()
        self.appended = False
        self.keywords = folder_keywords(folder)  # as last told in a FLAGS response

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def remove(self, uids: list[int]) -> list[int]:
        """Drop these UIDs from the view; the EXPUNGE sequence numbers to report, in order
        (each one counts the removals reported before it, RFC 3501 §7.4.1)."""
        seqs = []
        for uid in sorted(set(uids)):
            seq = self.seq_of(uid)
            if seq is not None:
                seqs.append(seq - len(seqs))
            self.recent.discard(uid)
        if seqs:
            gone = set(uids)
            self.uids = [uid for uid in self.uids if uid not in gone]
        return seqs


class IMAPSession:
    def __init__(
        self,
        hostname: str,
        session_id: str,
        limits: IMAPLimits,
        store: MaildirStore,
        starttls: bool = False,
        tls_active: bool = False,
        allow_plaintext_login: bool = True,
        sessions: UserSessions | None = None,
    ) -> None:
        self.hostname = hostname
        self.sessions = sessions
        self.condstore = False  # RFC 7162 §3.1: on after a CONDSTORE-enabling command
        self.starttls = starttls
        self.tls = tls_active
        self.allow_plaintext_login = allow_plaintext_login
        self.session_id = session_id
        self.limits = limits
        self.store = store
        self.user: str | None = None
        self.selected: _Selected | None = None
        self._in = bytearray()
        # What to do next: bytes to send (joined in next_action) and other actions.
        self._out: deque[Action | bytes] = deque()
        self._job: Job | None = None
        self._job_tag = "*"
        self._job_input: Any = None
        self._waiting = False
        self._closed = False
        self._errors = 0
        self._pieces: list[bytes] = []  # the command being framed
        self._literal_left = 0  # octets of a literal still to read
        self._literal_total = 0  # octets of the command's literals so far
        self._line_total = 0  # octets of the command's lines so far (literals excluded)
        self._discarding = False
        self._idle_tag: str | None = None
        self._sasl_tag: str | None = None
        # Changes this session is making right now: the bus announces them to us too,
        # but the client hears of them in the command's own responses.
        self._own_flags: set[int] = set()
        self._flag_lists: dict[tuple[frozenset[str], bool], bytes] = {}  # see _flags()
        self._own_expunges: set[int] = set()
        self._wake: Callable[[], None] | None = None
        self._send(
            b"* OK [CAPABILITY "
            + self._capabilities()
            + b"] "
            + hostname.encode()
            + b" IMAP4rev1 mailserver ready\r\n"
        )

    # Session protocol ------------------------------------------------------------------
    def attach(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def receive_data(self, data: bytes) -> None:
        if not self._closed:
            self._in += data

    def buffered(self) -> int:
        return len(self._in)

    def next_action(self) -> Action | None:
        while not self._out and not self._closed and not self._waiting:
            if self._job is not None:
                self._advance_job()
            elif not self._step():
                break
        out = self._out
        if not out:
            return None
        first = out.popleft()
        if not isinstance(first, bytes):
            return first
        # The responses said in a row go out as one Send: a FETCH or STORE of 10,000
        # messages is 10,000 lines, and the driver's pump costs more per action than
        # joining them does.
        if not out or not isinstance(out[0], bytes):
            return Send(first)
        parts, size = [first], len(first)
        while out and isinstance(out[0], bytes) and size < SEND_JOIN_BYTES:
            data = out.popleft()
            parts.append(data)  # type: ignore[arg-type]
            size += len(data)
        return Send(b"".join(parts))  # type: ignore[arg-type]

    def resume(self, result: Any) -> None:
        self._waiting = False
        self._job_input = result

    def timed_out(self) -> bytes:
        # RFC 3501 §5.4: the autologout timer.
        return b"* BYE Autologout; idle for too long\r\n"

    def connection_lost(self) -> None:
        self._closed = True
        self._unselect()
        self._leave()

    def keepalive(self) -> None:
        """Say something to a client in IDLE, so that NATs and the client keep the
        connection (RFC 2177 §3: the client re-issues IDLE within 29 minutes)."""
        if self._idle_tag is not None and not self._closed:
            self._send(b"* OK Still here\r\n")
            if self._wake is not None:
                self._wake()

    def _leave(self) -> None:
        if self.sessions is not None and self.user is not None:
            self.sessions.remove(self.user, self)

    # Output helpers ------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self._out.append(data)

    def _tagged(self, tag: str, status: str, text: str) -> None:
        self._send(f"{tag} {status} {text}\r\n".encode())

    def _close(self) -> None:
        self._out.append(Close())
        self._closed = True
        self._unselect()
        self._leave()

    def _bad(self, tag: str | None, text: str) -> None:
        self._errors += 1
        self._send(f"{tag or '*'} BAD {text}\r\n".encode())
        if self._errors >= self.limits.max_errors:
            self._send(b"* BYE Too many errors\r\n")
            self._close()

    def _capabilities(self) -> bytes:
        caps = [
            "IMAP4rev1",
            "LITERAL+",
            "SASL-IR",
            "IDLE",
            "UNSELECT",
            "NAMESPACE",
            "ID",
            "CHILDREN",  # RFC 3348: LIST answers carry \HasChildren / \HasNoChildren
            "SPECIAL-USE",
            "UIDPLUS",
            "MOVE",
            "ENABLE",
            "CONDSTORE",
        ]
        if self.user is None:
            if self.starttls and not self.tls:
                caps.append("STARTTLS")  # RFC 3501 §6.2.1
            if self._login_allowed:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 §6.2.3, RFC 8314
        return " ".join(caps).encode()

    @property
    def _login_allowed(self) -> bool:
        return self.tls or self.allow_plaintext_login

    # Jobs ------------------------------------------------------------------------------
    def _advance_job(self) -> None:
        assert self._job is not None
        value, self._job_input = self._job_input, None
        try:
            if isinstance(value, Failure):
                action = self._job.throw(value.value)
            else:
                action = self._job.send(value)
        except StopIteration:
            self._job = None
            return
        except Exception as e:
            # An effect failed in a way the command did not expect: fail the command only.
            self._job = None
            self._tagged(self._job_tag, "NO", f"[SERVERBUG] {type(e).__name__}")
            return
        if isinstance(action, Effect):
            self._waiting = True
        self._out.append(action)

    # Framing (RFC 3501 §2.2, RFC 7888) -------------------------------------------------
    def _step(self) -> bool:
        if self._literal_left:
            take = min(self._literal_left, len(self._in))
            if not take:
                return False
            self._pieces[-1] += self._in[:take]
            del self._in[:take]
            self._literal_left -= take
            if self._literal_left:
                return False
            self._pieces.append(b"")
            return True
        end = self._in.find(b"\n")
        # The command's lines together (literals aside) must fit in max_line, so that a
        # command made of endless empty literals cannot grow without bound either.
        room = self.limits.max_line - self._line_total
        if end < 0:
            if len(self._in) > room:
                if not self._discarding:
                    self._line_too_long(bytes(self._in[:room]))
                    self._discarding = True
                del self._in[:]
            return False
        line = bytes(self._in[:end])
        del self._in[: end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._discarding:
            self._discarding = False
            return True
        if len(line) > room:
            self._line_too_long(line)
            return True
        if self._idle_tag is not None:
            self._idle_line(line)
            return True
        if self._sasl_tag is not None:
            tag, self._sasl_tag = self._sasl_tag, None
            self._job, self._job_tag = self._authenticate_response(tag, line), tag
            return True
        self._line_total += len(line)
        if self._pieces:
            self._pieces[-1] += line
        else:
            self._pieces = [line]
        try:
            literal = p.literal_at_end(line)
        except p.ParseError as e:
            self._reset_command()
            self._bad(e.tag, e.message)
            return True
        if literal is None:
            pieces = self._pieces
            self._reset_command()
            self._dispatch(pieces)
            return True
        size, nonsync = literal
        self._literal_total += size
        if self._literal_total > self._literal_limit():
            tag = _tag_of(self._pieces[0])
            self._reset_command()
            if nonsync:
                # RFC 7888 §4: a too-big non-synchronizing literal ends the connection
                # (its octets are already on their way and cannot be told apart).
                self._send(b"* BYE [TOOBIG] Literal too big\r\n")
                self._close()
            else:
                # RFC 7888 §4 / RFC 9051 §7.1: refuse before the client sends it.
                self._send(f"{tag or '*'} NO [TOOBIG] Literal too big\r\n".encode())
            return True
        if not nonsync:
            # RFC 3501 §7.5: ask for a synchronizing literal.
            self._send(b"+ Ready for literal data\r\n")
        self._pieces.append(b"")  # the literal's octets go here
        self._literal_left = size
        if size == 0:
            self._pieces.append(b"")
        return True

    def _literal_limit(self) -> int:
        """Before login only LOGIN's user name and password come as literals: an
        unauthenticated client may not make the server hold megabytes (RFC 7888 §4)."""
        if self.user is None:
            return min(self.limits.max_literal, MAX_PREAUTH_LITERAL)
        return self.limits.max_literal

    def _reset_command(self) -> None:
        self._pieces = []
        self._literal_total = 0
        self._line_total = 0

    def _line_too_long(self, start: bytes) -> None:
        """BAD for an over-long line; the rest of it is discarded (``start`` is its head).

        An IDLE or an AUTHENTICATE exchange waiting for this line ends with it.
        """
        if self._idle_tag is not None:
            tag: str | None = self._idle_tag
            self._idle_tag = None
        elif self._sasl_tag is not None:
            tag, self._sasl_tag = self._sasl_tag, None
        else:
            tag = _tag_of(self._pieces[0] if self._pieces else start)
        self._reset_command()
        self._bad(tag, "Line too long")

    def _dispatch(self, pieces: list[bytes]) -> None:
        try:
            command = p.parse_command(pieces)
        except p.ParseError as e:
            self._bad(e.tag, e.message)
            return
        handler = getattr(self, f"_cmd_{command.name}", None)
        if handler is None:
            self._bad(command.tag, f"{command.name} is not supported")
            return
        if command.name not in _ANY_STATE:
            if self.user is None:
                self._bad(command.tag, "Log in first")
                return
            if command.name in _SELECTED_STATE and self.selected is None:
                self._bad(command.tag, "No mailbox selected")
                return
        elif command.name in _NOT_AUTHENTICATED_STATE and self.user is not None:
            self._bad(command.tag, "Already logged in")
            return
        if (
            command.name in _NEEDS_MEASURED
            and self.selected is not None
            and self.selected.folder.unmeasured
        ):
            self._job, self._job_tag = self._measured_first(handler, command), command.tag
            return
        try:
            job = handler(command)
        except Exception as e:
            # A failure outside the command's control (a disk error): fail it alone.
            self._tagged(command.tag, "NO", f"[SERVERBUG] {type(e).__name__}")
            return
        if job is not None:
            self._job, self._job_tag = job, command.tag

    def _measured_first(self, handler: Callable[[p.Command], Job | None], c: p.Command) -> Job:
        """Run a command that reports sizes or dates once the folder is measured."""
        assert self.selected is not None
        yield MeasureFolder(self.selected.folder)
        job = handler(c)
        if job is not None:
            yield from job

    # Any state (RFC 3501 §6.1) ---------------------------------------------------------
    def _cmd_CAPABILITY(self, c: p.Command) -> None:
        self._send(b"* CAPABILITY " + self._capabilities() + b"\r\n")
        self._tagged(c.tag, "OK", "CAPABILITY completed")

    def _cmd_NOOP(self, c: p.Command) -> Job:
        # RFC 3501 §6.1.2: NOOP is the client's poll for new mail.
        if self.selected is not None:
            yield RefreshFolder(self.selected.folder)
        self._updates(allow_expunge=True)
        self._tagged(c.tag, "OK", "NOOP completed")

    def _cmd_LOGOUT(self, c: p.Command) -> None:
        self._send(b"* BYE Logging out\r\n")
        self._tagged(c.tag, "OK", "LOGOUT completed")
        self._close()

    def _cmd_ID(self, c: p.Command) -> None:
        # RFC 2971 §3.1
        self._send(b'* ID ("name" "mailserver")\r\n')
        self._tagged(c.tag, "OK", "ID completed")

    # Not authenticated (RFC 3501 §6.2) -------------------------------------------------
    def _cmd_STARTTLS(self, c: p.Command) -> None:
        if self.tls or not self.starttls:
            self._bad(c.tag, "STARTTLS not available")
            return
        self._tagged(c.tag, "OK", "Begin TLS negotiation now")
        # RFC 3501 §6.2.1: nothing the client sent before the handshake counts (no
        # plaintext command injection).
        del self._in[:]
        self._pieces, self._literal_left, self._literal_total, self._line_total = [], 0, 0, 0
        self._out.append(StartTLS())
        self.tls = True

    def _cmd_LOGIN(self, c: p.Command) -> Job | None:
        assert isinstance(c.args, p.Login)
        if not self._login_allowed:
            self._tagged(c.tag, "NO", "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS")
            return None
        return self._login(c.tag, c.args.userid, c.args.password)

    def _cmd_AUTHENTICATE(self, c: p.Command) -> Job | None:
        assert isinstance(c.args, p.Authenticate)
        if not self._login_allowed:
            self._tagged(c.tag, "NO", "[PRIVACYREQUIRED] Authentication needs TLS first")
            return None
        if c.args.mechanism.upper() != "PLAIN":
            self._tagged(c.tag, "NO", "Unsupported authentication mechanism")
            return None
        if c.args.initial_response is None:
            # RFC 3501 §6.2.2: ask for the response with an empty continuation.
            self._sasl_tag = c.tag
            self._send(b"+ \r\n")
            return None
        return self._authenticate_response(c.tag, c.args.initial_response.encode())

    def _authenticate_response(self, tag: str, response: bytes) -> Job:
        if response == b"*":
            self._bad(tag, "Authentication cancelled")
            return
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._bad(tag, "Invalid base64")
            return
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            self._bad(tag, "PLAIN needs authzid NUL authcid NUL password (RFC 4616)")
            return
        authzid, authcid, password = fields
        if authzid and authzid != authcid:
            self._tagged(tag, "NO", "[AUTHORIZATIONFAILED] Cannot act as another user")
            return
        yield from self._login(tag, authcid, password)

    def _login(self, tag: str, userid: bytes, password: bytes) -> Job:
        try:
            username, secret = userid.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            self._tagged(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
            return
        try:
            address = yield Authenticate(username, secret)
        except Exception:
            # RFC 5530: the account directory could not be asked.
            self._tagged(tag, "NO", "[UNAVAILABLE] Cannot check credentials now")
            return
        if address is None:
            # RFC 5530 response code.
            self._tagged(tag, "NO", "[AUTHENTICATIONFAILED] Invalid credentials")
            return
        limit = self.limits.max_sessions_per_user
        if self.sessions is not None and not self.sessions.add(address, self, limit):
            # RFC 5530: the user has too many sessions already.
            self._tagged(tag, "NO", "[LIMIT] Too many sessions for this user")
            return
        self.user = address
        self._send(f"{tag} OK [CAPABILITY ".encode() + self._capabilities() + b"] Logged in\r\n")

    # Authenticated (RFC 3501 §6.3) -----------------------------------------------------
    def _folder(
        self, tag: str, name: str, trycreate: bool = False
    ) -> Generator[Action, Any, Folder | None]:
        """The open folder, or None after a NO (``[TRYCREATE]`` where RFC 3501 §6.3.11 and
        §6.4.7 ask for it)."""
        assert self.user is not None
        if not self._valid_name(tag, name, "CANNOT" if trycreate else "NONEXISTENT"):
            return None
        try:
            folder: Folder = yield OpenFolder(self.user, name)
            return folder
        except (BadName, NoSuchFolder):
            code = "TRYCREATE" if trycreate else "NONEXISTENT"
            self._tagged(tag, "NO", f"[{code}] No such mailbox")
            return None

    def _valid_name(self, tag: str, name: str, code: str = "CANNOT") -> bool:
        """Check a mailbox name from the client before it reaches a path: modified UTF-7
        (RFC 3501 §5.1.3) and a Maildir++ folder name (no ``/``, NUL, ``..``, not too long).
        ``code`` is the response code of the NO (a name that cannot exist does not exist)."""
        if name == "INBOX":
            return True
        try:
            decode_mailbox(name)
            check_folder_name(name)
        except (UTF7Error, BadName):
            text = "No such mailbox" if code == "NONEXISTENT" else "Invalid mailbox name"
            self._tagged(tag, "NO", f"[{code}] {text}")
            return False
        return True

    def _valid_new_name(self, tag: str, name: str) -> bool:
        """A name a folder may be created with: valid, and without the LIST wildcards
        (RFC 3501 §6.3.8: such a folder could not be listed by its own name)."""
        if "*" in name or "%" in name:
            self._tagged(tag, "NO", "[CANNOT] Mailbox names cannot contain * or %")
            return False
        return self._valid_name(tag, name)

    def _cmd_SELECT(self, c: p.Command) -> Job:
        return self._select(c, readonly=False)

    def _cmd_EXAMINE(self, c: p.Command) -> Job:
        return self._select(c, readonly=True)

    def _select(self, c: p.Command, readonly: bool) -> Job:
        assert isinstance(c.args, p.Select)
        if c.args.condstore:
            self.condstore = True  # RFC 7162 §3.1.8
        self._unselect()  # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected
        folder = yield from self._folder(c.tag, c.args.mailbox)
        if folder is None:
            return
        yield RefreshFolder(folder)
        # RFC 3501 §2.3.2: a read-write session claims the recent messages for itself.
        recent = set(folder.recent_uids() if readonly else folder.claim_recent())
        selected = _Selected(folder, readonly, recent)
        self.selected = selected
        self.store.bus.subscribe(folder.key, self._on_change)
        self._send_flags(selected)
        self._send(f"* {len(selected.uids)} EXISTS\r\n* {len(recent)} RECENT\r\n".encode())
        for seq, message in enumerate(folder.messages, 1):
            if "\\Seen" not in message.flags:
                self._send(f"* OK [UNSEEN {seq}] First unseen\r\n".encode())
                break
        self._send(f"* OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid\r\n".encode())
        self._send(f"* OK [UIDNEXT {folder.uidnext}] Predicted next UID\r\n".encode())
        # RFC 7162 §3.1.2.1: with every successful SELECT or EXAMINE (mod-sequences are
        # persistent here), whether or not the client has enabled CONDSTORE yet.
        self._send(f"* OK [HIGHESTMODSEQ {folder.highest_modseq}] Highest\r\n".encode())
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        self._tagged(c.tag, "OK", f"[{mode}] {c.name} completed")

    def _send_flags(self, selected: _Selected) -> None:
        """The FLAGS and PERMANENTFLAGS responses (RFC 3501 §7.2.6, §7.1)."""
        flags = " ".join((*SYSTEM_FLAGS, *selected.keywords))
        self._send(f"* FLAGS ({flags})\r\n".encode())
        if selected.readonly:
            self._send(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        else:
            self._send(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted\r\n".encode())

    def _unselect(self) -> None:
        if self.selected is not None:
            self.store.bus.unsubscribe(self.selected.folder.key, self._on_change)
            self.selected = None

    def _cmd_LIST(self, c: p.Command) -> None:
        self._list(c, subscribed_only=False)

    def _cmd_LSUB(self, c: p.Command) -> None:
        self._list(c, subscribed_only=True)

    def _list(self, c: p.Command, subscribed_only: bool) -> None:
        assert isinstance(c.args, p.ListMailboxes) and self.user is not None
        reference, pattern = c.args.reference, c.args.pattern
        if not pattern and not subscribed_only:
            # RFC 3501 §6.3.8: an empty pattern asks for the delimiter.
            self._send(f'* LIST (\\Noselect) "{DELIMITER}" ""\r\n'.encode())
            self._tagged(c.tag, "OK", "LIST completed")
            return
        existing = self.store.list_folders(self.user)
        exists = set(existing)
        matcher = _pattern(reference + pattern)
        placeholders: set[str] = set()
        if subscribed_only:
            subscribed = self.store.subscriptions(self.user)
            names = ["INBOX", *(n for n in subscribed if n != "INBOX")]
            # RFC 3501 §6.3.9: where "%" stops above a subscribed name, the level it
            # stops at is listed as \Noselect if it is not subscribed itself.
            for name in list(names):
                if matcher(name):
                    continue
                for level in _ancestors(name):
                    if level not in names and level not in placeholders and matcher(level):
                        placeholders.add(level)
                        names.append(level)
        else:
            # RFC 3501 §6.3.8: a level with children but no folder of its own is listed
            # (as \Noselect), so that "%" can walk the hierarchy.
            names = sorted(set(existing) | {a for n in existing for a in _ancestors(n)})
            names.remove("INBOX")
            names.insert(0, "INBOX")
        response = "LSUB" if subscribed_only else "LIST"
        for name in names:
            if not matcher(name):
                continue
            attributes = []
            if name not in exists or name in placeholders:
                attributes.append("\\Noselect")
            has_children = any(other.startswith(name + DELIMITER) for other in existing)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if name in SPECIAL_USE:
                attributes.append(SPECIAL_USE[name])
            line = f'* {response} ({" ".join(attributes)}) "{DELIMITER}" '
            self._send(line.encode() + p.quote(name) + b"\r\n")
        self._tagged(c.tag, "OK", f"{response} completed")

    def _cmd_CREATE(self, c: p.Command) -> Job:
        assert isinstance(c.args, p.Mailbox) and self.user is not None
        # RFC 3501 §6.3.3: a trailing delimiter only declares the intent to add children.
        name = c.args.mailbox.rstrip(DELIMITER) or c.args.mailbox
        if name.upper() == "INBOX":
            self._tagged(c.tag, "NO", "[ALREADYEXISTS] INBOX always exists")
            return
        if not self._valid_new_name(c.tag, name):
            return
        try:
            yield CreateFolder(self.user, name)
        except FolderExists:
            self._tagged(c.tag, "NO", "[ALREADYEXISTS] Mailbox exists")
            return
        self._tagged(c.tag, "OK", "CREATE completed")

    def _cmd_DELETE(self, c: p.Command) -> None:
        assert isinstance(c.args, p.Mailbox) and self.user is not None
        name = c.args.mailbox
        if name == "INBOX":
            self._tagged(c.tag, "NO", "[CANNOT] INBOX cannot be deleted")  # RFC 3501 §6.3.4
            return
        if not self._valid_name(c.tag, name):
            return
        if self.selected is not None and self.selected.folder.name == name:
            self._unselect()
        try:
            self.store.delete_folder(self.user, name)
        except NoSuchFolder:
            self._tagged(c.tag, "NO", "[NONEXISTENT] No such mailbox")
            return
        self._tagged(c.tag, "OK", "DELETE completed")

    def _cmd_RENAME(self, c: p.Command) -> Job | None:
        assert isinstance(c.args, p.Rename) and self.user is not None
        old, new = c.args.old, c.args.new
        if not (self._valid_name(c.tag, old) and self._valid_new_name(c.tag, new)):
            return None
        if new == "INBOX":
            self._tagged(c.tag, "NO", "[ALREADYEXISTS] INBOX always exists")
            return None
        if old == "INBOX":
            return self._rename_inbox(c.tag, new)
        return self._rename(c.tag, old, new)

    def _rename(self, tag: str, old: str, new: str) -> Job:
        assert self.user is not None
        try:
            yield RenameFolder(self.user, old, new)
        except NoSuchFolder:
            self._tagged(tag, "NO", "[NONEXISTENT] No such mailbox")
            return
        except FolderExists:
            self._tagged(tag, "NO", "[ALREADYEXISTS] Target mailbox exists")
            return
        except BadName as e:
            self._tagged(tag, "NO", f"[CANNOT] {e}")
            return
        self._tagged(tag, "OK", "RENAME completed")

    def _rename_inbox(self, tag: str, new: str) -> Job:
        """RFC 3501 §6.3.5: renaming INBOX moves all its messages to the new folder and
        leaves INBOX, empty, in place."""
        assert self.user is not None
        try:
            yield CreateFolder(self.user, new)
        except FolderExists:
            self._tagged(tag, "NO", "[ALREADYEXISTS] Target mailbox exists")
            return
        inbox: Folder = yield OpenFolder(self.user, "INBOX")
        dest: Folder = yield OpenFolder(self.user, new)
        pairs = yield CopyMessages(inbox, tuple(m.uid for m in inbox.messages), dest)
        self._own_expunges.update(src for src, _ in pairs)
        try:
            removed = inbox.expunge([src for src, _ in pairs])
        finally:
            self._own_expunges.clear()
        selected = self.selected
        if selected is not None and selected.folder is inbox:
            for seq in selected.remove(removed):
                self._send(f"* {seq} EXPUNGE\r\n".encode())
        if removed:
            yield FilesGone(inbox)
        self._tagged(tag, "OK", "RENAME completed")

    def _cmd_SUBSCRIBE(self, c: p.Command) -> None:
        self._subscribe(c, True)

    def _cmd_UNSUBSCRIBE(self, c: p.Command) -> None:
        self._subscribe(c, False)

    def _subscribe(self, c: p.Command, subscribed: bool) -> None:
        # RFC 3501 §6.3.6: a name may be subscribed whether or not the mailbox exists.
        assert isinstance(c.args, p.Mailbox) and self.user is not None
        if not self._valid_name(c.tag, c.args.mailbox):
            return
        self.store.set_subscribed(self.user, c.args.mailbox, subscribed)
        self._tagged(c.tag, "OK", f"{c.name} completed")

    def _cmd_APPEND(self, c: p.Command) -> Job:
        assert isinstance(c.args, p.Append) and self.user is not None
        folder = yield from self._folder(c.tag, c.args.mailbox, trycreate=True)
        if folder is not None:
            yield from self._append(c.tag, folder, c.args)

    def _append(self, tag: str, folder: Folder, args: p.Append) -> Job:
        assert self.user is not None
        date = None if args.date_time is None else args.date_time.timestamp()
        try:
            stored = yield AppendMessage(self.user, folder.name, args.message, args.flags, date)
        except NoSuchFolder:
            self._tagged(tag, "NO", "[TRYCREATE] No such mailbox")
            return
        except QuotaExceeded:
            self._tagged(tag, "NO", "[OVERQUOTA] Quota exceeded")  # RFC 5530
            return
        self._updates(allow_expunge=True)
        if stored.uid is None:
            self._tagged(tag, "OK", "APPEND completed")
        else:
            # RFC 4315 §3
            code = f"[APPENDUID {folder.uidvalidity} {stored.uid}]"
            self._tagged(tag, "OK", f"{code} APPEND completed")

    def _cmd_ENABLE(self, c: p.Command) -> None:
        # RFC 5161 §3.1: unknown capabilities are ignored; ENABLED lists what changed.
        assert isinstance(c.args, p.Enable)
        enabled = [cap for cap in dict.fromkeys(c.args.capabilities) if cap in ENABLEABLE]
        if "CONDSTORE" in enabled:
            self._enable_condstore()
        self._send(" ".join(["* ENABLED", *enabled]).encode() + b"\r\n")
        self._tagged(c.tag, "OK", "ENABLE completed")

    def _enable_condstore(self) -> None:
        """RFC 7162 §3.1: after the first CONDSTORE-enabling command, a selected mailbox
        tells its HIGHESTMODSEQ at once (§3.1.2.1)."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            modseq = self.selected.folder.highest_modseq
            self._send(f"* OK [HIGHESTMODSEQ {modseq}] Highest\r\n".encode())

    def _cmd_STATUS(self, c: p.Command) -> Job:
        assert isinstance(c.args, p.Status)
        folder = yield from self._folder(c.tag, c.args.mailbox)
        if folder is None:
            return
        yield RefreshFolder(folder)
        if "SIZE" in c.args.items and folder.unmeasured:
            yield MeasureFolder(folder)
        self._status(c, folder)

    def _status(self, c: p.Command, folder: Folder) -> None:
        assert isinstance(c.args, p.Status)
        values = {
            "MESSAGES": len(folder.messages),
            "RECENT": len(folder.recent_uids()),
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": sum(1 for m in folder.messages if "\\Seen" not in m.flags),
            "SIZE": folder.total_size(),
            "DELETED": sum(1 for m in folder.messages if "\\Deleted" in m.flags),
            "HIGHESTMODSEQ": folder.highest_modseq,  # RFC 7162 §3.1.10
        }
        if "HIGHESTMODSEQ" in c.args.items:
            self._enable_condstore()
        unsupported = [item for item in c.args.items if item not in values]
        if unsupported:
            self._bad(c.tag, f"Unsupported STATUS item {unsupported[0]}")
            return
        items = " ".join(f"{item} {values[item]}" for item in c.args.items)
        self._send(b"* STATUS " + p.quote(folder.name) + f" ({items})\r\n".encode())
        self._tagged(c.tag, "OK", "STATUS completed")

    def _cmd_NAMESPACE(self, c: p.Command) -> None:
        # RFC 2342: one personal namespace, no prefix, "." as the delimiter.
        self._send(f'* NAMESPACE (("" "{DELIMITER}")) NIL NIL\r\n'.encode())
        self._tagged(c.tag, "OK", "NAMESPACE completed")

    def _cmd_IDLE(self, c: p.Command) -> None:
        # RFC 2177: report changes at once until the client says DONE.
        self._idle_tag = c.tag
        self._send(b"+ idling\r\n")
        if self.selected is not None:
            # Files other programs added or removed: the rescan runs in the background,
            # and the bus announces what it finds like any other change.
            self.selected.folder.refresh()
        self._updates(allow_expunge=True)

    def _idle_line(self, line: bytes) -> None:
        tag, self._idle_tag = self._idle_tag, None
        assert tag is not None
        if line.upper() != b"DONE":
            self._bad(tag, "Expected DONE")
            return
        self._updates(allow_expunge=True)
        self._tagged(tag, "OK", "IDLE terminated")

    # Selected (RFC 3501 §6.4) ----------------------------------------------------------
    def _cmd_CHECK(self, c: p.Command) -> Job:
        assert self.selected is not None
        yield RefreshFolder(self.selected.folder)
        self._updates(allow_expunge=True)
        self._tagged(c.tag, "OK", "CHECK completed")

    def _cmd_CLOSE(self, c: p.Command) -> Job:
        assert self.selected is not None
        folder = self.selected.folder
        # RFC 3501 §6.4.2: expunge silently.
        removed = not self.selected.readonly and self._expunge(None, report=False)
        self._unselect()
        if removed:
            yield FilesGone(folder)
        self._tagged(c.tag, "OK", "CLOSE completed")

    def _cmd_UNSELECT(self, c: p.Command) -> None:
        # RFC 3691
        self._unselect()
        self._tagged(c.tag, "OK", "UNSELECT completed")

    def _cmd_EXPUNGE(self, c: p.Command) -> Job:
        assert self.selected is not None
        if self.selected.readonly:
            self._tagged(c.tag, "NO", "[READ-ONLY] Mailbox is read-only")
            return
        # Bring the view up to date first, so that every message marked \Deleted (also
        # one that arrived since) goes, and each EXPUNGE refers to the client's numbering.
        self._updates(allow_expunge=True)
        only = None
        if c.uid:
            # RFC 4315 §2.1: UID EXPUNGE removes only the \Deleted messages in the set.
            assert isinstance(c.args, p.Expunge) and c.args.sequence_set is not None
            targets = self._messages(c, c.args.sequence_set)
            assert targets is not None  # UID sets never fail
            only = {uid for _, uid in targets}
        if self._expunge(only, report=True):
            yield FilesGone(self.selected.folder)
        self._tagged(c.tag, "OK", "EXPUNGE completed")

    def _expunge(self, only: set[int] | None, report: bool) -> bool:
        """Expunge the selected folder's \\Deleted messages (of ``only``, if given);
        whether any went."""
        assert self.selected is not None
        folder = self.selected.folder
        doomed = [
            uid
            for uid in self.selected.uids
            if (m := folder.by_uid(uid)) is not None
            and "\\Deleted" in m.flags
            and (only is None or uid in only)
        ]
        self._own_expunges.update(doomed)
        try:
            removed = folder.expunge(doomed)
        finally:
            self._own_expunges.clear()
        for seq in self.selected.remove(removed):
            if report:
                self._send(f"* {seq} EXPUNGE\r\n".encode())
        return bool(removed)

    def _messages(self, c: p.Command, sequence_set: p.SequenceSet) -> list[tuple[int, int]] | None:
        """The (seq, uid) pairs a command addresses, or None after a BAD reply."""
        assert self.selected is not None
        uids = self.selected.uids
        if c.uid:
            top = uids[-1] if uids else 0
            found = []
            for lo, hi in sequence_set.resolve(top):
                start = bisect.bisect_left(uids, lo)
                end = bisect.bisect_right(uids, hi)
                found.extend((i + 1, uids[i]) for i in range(start, end))
            return found
        ranges = sequence_set.resolve(len(uids))
        if ranges and (ranges[-1][1] > len(uids) or not uids):
            self._bad(c.tag, "Invalid message sequence number")
            return None
        return [(seq, uids[seq - 1]) for lo, hi in ranges for seq in range(lo, hi + 1)]

    def _cmd_STORE(self, c: p.Command) -> Job | None:
        assert self.selected is not None and isinstance(c.args, p.Store)
        if self.selected.readonly:
            self._tagged(c.tag, "NO", "[READ-ONLY] Mailbox is read-only")
            return None
        targets = self._messages(c, c.args.sequence_set)
        if targets is None:
            return None
        unchanged_since = c.args.unchanged_since
        if unchanged_since is not None:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
        folder = self.selected.folder
        change = set(c.args.flags)
        changes: dict[int, frozenset[str]] = {}
        modified: list[int] = []
        reported: list[tuple[int, int]] = []
        for seq, uid in targets:
            message = folder.by_uid(uid)
            if message is None:
                continue  # expunged by another session, not yet reported
            if unchanged_since is not None and message.modseq > unchanged_since:
                # RFC 7162 §3.1.3: changed since the client looked; left alone.
                modified.append(uid if c.uid else seq)
                continue
            if c.args.mode == "+":
                flags = message.flags | change
            elif c.args.mode == "-":
                flags = message.flags - change
            else:
                flags = frozenset(change)
            if flags != message.flags:
                changes[uid] = flags
            reported.append((seq, uid))
        return self._store(c, changes, reported, modified)

    def _store(
        self,
        c: p.Command,
        changes: dict[int, frozenset[str]],
        reported: list[tuple[int, int]],
        modified: list[int],
    ) -> Job:
        """Rename the files (SetFlags) a batch at a time, and tell the client each
        batch's new flags while the next one is renamed."""
        assert self.selected is not None and isinstance(c.args, p.Store)
        selected = self.selected
        batches = _ramped_batches(reported, STORE_FIRST_BATCH, STORE_BATCH)
        planned = [tuple((uid, changes[uid]) for _, uid in b if uid in changes) for b in batches]
        self._own_flags.update(changes)  # reported below, not as news from others
        try:
            for i, batch in enumerate(batches):
                if planned[i]:
                    then = planned[i + 1] if i + 1 < len(planned) else ()
                    yield SetFlags(selected.folder, planned[i], then)
                    if self.selected is not selected:
                        return
                for seq, uid in batch:
                    if not c.args.silent:
                        self._send(self._fetch_line(seq, self._flag_items(uid, c.uid)))
                    elif uid in changes and self.condstore:
                        # RFC 7162 §3.1.3: even .SILENT reports the new MODSEQ.
                        items = [b"MODSEQ (%d)" % self._modseq(uid)]
                        if c.uid:
                            items.insert(0, b"UID %d" % uid)
                        self._send(self._fetch_line(seq, items))
                # Reported: a later change to these is news from others again.
                self._own_flags.difference_update(uid for uid, _ in planned[i])
        finally:
            self._own_flags.difference_update(changes)
        self._updates(allow_expunge=c.uid)
        if modified:
            numbers = _number_set(sorted(modified))
            self._tagged(c.tag, "OK", f"[MODIFIED {numbers}] Conditional STORE failed")
        else:
            self._tagged(c.tag, "OK", "STORE completed")

    def _modseq(self, uid: int) -> int:
        assert self.selected is not None
        message = self.selected.folder.by_uid(uid)
        return message.modseq if message is not None else 0

    def _flag_items(self, uid: int, with_uid: bool) -> list[bytes]:
        """FLAGS (with UID when asked, and MODSEQ once CONDSTORE is on, RFC 7162 §3.1.4)."""
        items = [b"FLAGS " + self._flags(uid)]
        if with_uid:
            items.insert(0, b"UID %d" % uid)
        if self.condstore:
            items.append(b"MODSEQ (%d)" % self._modseq(uid))
        return items

    def _flags(self, uid: int) -> bytes:
        assert self.selected is not None
        message = self.selected.folder.by_uid(uid)
        key = (message.flags if message else frozenset(), uid in self.selected.recent)
        # A FETCH or STORE of 10,000 messages asks 10,000 times for a handful of flag sets.
        listed = self._flag_lists.get(key)
        if listed is None:
            if len(self._flag_lists) >= FLAG_LISTS_KEPT:
                self._flag_lists.clear()
            flags = sorted(key[0])
            if key[1]:
                flags.append("\\Recent")
            listed = self._flag_lists[key] = ("(" + " ".join(flags) + ")").encode()
        return listed

    def _fetch_line(self, seq: int, items: list[bytes]) -> bytes:
        return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

    def _cmd_FETCH(self, c: p.Command) -> Job | None:
        assert self.selected is not None and isinstance(c.args, p.Fetch)
        targets = self._messages(c, c.args.sequence_set)
        if targets is None:
            return None
        attributes = list(c.args.attributes)
        changed_since = c.args.changed_since
        if changed_since is not None or any(a.name == "MODSEQ" for a in attributes):
            self._enable_condstore()  # RFC 7162 §3.1
        if changed_since is not None:
            # RFC 7162 §3.1.4.1: only what changed since, and MODSEQ with it.
            folder = self.selected.folder
            targets = [
                (seq, uid)
                for seq, uid in targets
                if (m := folder.by_uid(uid)) is not None and m.modseq > changed_since
            ]
            if not any(a.name == "MODSEQ" for a in attributes):
                attributes.append(p.FetchAtt("MODSEQ"))
        if c.uid and not any(a.name == "UID" for a in attributes):
            attributes.insert(0, p.FetchAtt("UID"))  # RFC 3501 §6.4.8
        return self._fetch(c, targets, attributes)

    def _fetch(
        self, c: p.Command, targets: list[tuple[int, int]], attributes: list[p.FetchAtt]
    ) -> Job:
        assert self.selected is not None
        selected = self.selected
        folder = selected.folder
        needs_body = any(a.name not in _INDEX_ITEMS for a in attributes)
        sets_seen = not selected.readonly and any(a.sets_seen for a in attributes)
        for number, batch in enumerate(_batches(folder, targets, needs_body)):
            bodies: dict[int, bytes] = {}
            if needs_body:
                bodies = yield ReadMessages(folder, tuple(uid for _, uid in batch))
            elif number:
                yield Pause()
            if self.selected is not selected:
                return
            seen_now: set[int] = set()
            if sets_seen:
                # RFC 3501 §6.4.5: BODY[] and RFC822 set \Seen (the renames in a thread).
                unseen = [
                    (uid, message.flags | {"\\Seen"})
                    for _, uid in batch
                    if (message := folder.by_uid(uid)) is not None
                    and "\\Seen" not in message.flags
                    and (not needs_body or uid in bodies)
                ]
                if unseen:
                    seen_now = {uid for uid, _ in unseen}
                    self._own_flags.update(seen_now)  # reported below
                    try:
                        yield SetFlags(folder, tuple(unseen))
                    finally:
                        self._own_flags.difference_update(seen_now)
                    if self.selected is not selected:
                        return
            for seq, uid in batch:
                # The index may have changed (or been rebuilt) while the files were read.
                message = folder.by_uid(uid)
                if message is None:
                    continue  # expunged by another session, not yet reported
                parts = None
                if needs_body:
                    data = bodies.get(uid)
                    if data is None:
                        continue  # its file went away while it was read
                    parts = MessageParts(data)
                flags_changed = uid in seen_now
                items = [self._fetch_item(a, message, uid, parts) for a in attributes]
                if flags_changed and not any(a.name == "FLAGS" for a in attributes):
                    # RFC 3501 §6.4.5: report the implicit \Seen.
                    items.append(b"FLAGS " + self._flags(uid))
                if (
                    flags_changed
                    and self.condstore
                    and not any(a.name == "MODSEQ" for a in attributes)
                ):
                    items.append(b"MODSEQ (%d)" % self._modseq(uid))
                if needs_body:
                    self._out.extend(_fetch_response(seq, items))
                else:  # no literals: one line, built the quick way
                    self._send(self._fetch_line(seq, cast(list[bytes], items)))
        self._updates(allow_expunge=c.uid)
        self._tagged(c.tag, "OK", "FETCH completed")

    def _cmd_COPY(self, c: p.Command) -> Job | None:
        return self._copy(c, move=False)

    def _cmd_MOVE(self, c: p.Command) -> Job | None:
        return self._copy(c, move=True)

    def _copy(self, c: p.Command, move: bool) -> Job | None:
        """COPY (RFC 3501 §6.4.7) and MOVE (RFC 6851), with COPYUID (RFC 4315 §3)."""
        assert self.selected is not None and isinstance(c.args, p.CopyMove)
        if move and self.selected.readonly:
            self._tagged(c.tag, "NO", "[READ-ONLY] Mailbox is read-only")
            return None
        targets = self._messages(c, c.args.sequence_set)
        if targets is None:
            return None
        return self._copy_job(c, targets, move)

    def _copy_job(self, c: p.Command, targets: list[tuple[int, int]], move: bool) -> Job:
        assert self.selected is not None and isinstance(c.args, p.CopyMove)
        dest = yield from self._folder(c.tag, c.args.mailbox, trycreate=True)
        if dest is None or self.selected is None:
            return
        selected = self.selected
        folder = selected.folder
        uids = tuple(uid for _, uid in targets if folder.by_uid(uid) is not None)
        pairs = (yield CopyMessages(folder, uids, dest)) if uids else []
        code = ""
        if pairs:
            sources = _number_set([src for src, _ in pairs])
            copies = _number_set([dst for _, dst in pairs])
            code = f"[COPYUID {dest.uidvalidity} {sources} {copies}] "
        if move:
            if code:
                # RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
                self._send(f"* OK {code}Moved\r\n".encode())
                code = ""
            moved = [src for src, _ in pairs]
            self._own_expunges.update(moved)
            try:
                removed = folder.expunge(moved)
            finally:
                self._own_expunges.clear()
            for seq in selected.remove(removed):
                self._send(f"* {seq} EXPUNGE\r\n".encode())
            if removed:
                yield FilesGone(folder)
        self._updates(allow_expunge=c.uid or move)
        self._tagged(c.tag, "OK", f"{code}{c.name} completed")

    def _cmd_SEARCH(self, c: p.Command) -> Job | None:
        assert self.selected is not None and isinstance(c.args, p.Search)
        try:
            program = search.compile_search(c.args.charset, c.args.keys)
        except search.BadCharset:
            # RFC 3501 §6.4.4, §7.1
            charsets = " ".join(search.CHARSETS)
            self._tagged(c.tag, "NO", f"[BADCHARSET ({charsets})] Unsupported charset")
            return None
        except search.SearchError as e:
            self._bad(c.tag, str(e))
            return None
        if program.uses_modseq:
            self._enable_condstore()
        return self._search(c, program)

    def _search(self, c: p.Command, program: search.Program) -> Job:
        """Match against the index first; read (in a thread, a batch at a time) only the
        messages the index cannot decide and their headers do not rule out, and pause now
        and then for other sessions."""
        assert self.selected is not None
        selected = self.selected
        folder = selected.folder
        key = program.key
        uids = selected.uids
        last_seq, last_uid = len(uids), (uids[-1] if uids else 0)
        found: list[tuple[int, int]] = []  # (seq, modseq)
        undecided: list[tuple[int, int]] = []  # (seq, uid): their files are needed
        for seq, uid in enumerate(uids, 1):
            message = folder.by_uid(uid)
            if message is None:
                continue
            candidate = search.Candidate(seq, message, uid in selected.recent, last_seq, last_uid)
            result = key.match(candidate, None)
            if result is None:
                undecided.append((seq, uid))
            elif result:
                found.append((seq, message.modseq))
            if seq % SEARCH_BATCH == 0:
                yield Pause()
                if self.selected is not selected:
                    return
        rule = key.rule()
        if rule is not None and len(undecided) >= SCREEN_FROM:
            kept = yield ScreenMessages(folder, tuple(uid for _, uid in undecided), rule)
            if self.selected is not selected:
                return
            undecided = [(seq, uid) for seq, uid in undecided if uid in kept]
        if undecided:
            found += yield from self._search_files(key, undecided, last_seq, last_uid)
            if self.selected is not selected:
                return
        found.sort()
        highest = max((modseq for _, modseq in found), default=0)
        numbers = [uids[seq - 1] if c.uid else seq for seq, _ in found]
        line = " ".join(["* SEARCH", *map(str, numbers)])
        if program.uses_modseq and found:
            line += f" (MODSEQ {highest})"  # RFC 7162 §3.1.5
        self._send(line.encode() + b"\r\n")
        self._updates(allow_expunge=c.uid)
        self._tagged(c.tag, "OK", "SEARCH completed")

    def _search_files(
        self, key: search.Key, undecided: list[tuple[int, int]], last_seq: int, last_uid: int
    ) -> Generator[Action, Any, list[tuple[int, int]]]:
        """Read a batch of the messages the index could not decide and match them; the
        (seq, modseq) of those that match."""
        assert self.selected is not None
        selected = self.selected
        folder = selected.folder
        matched = []
        for batch in _batches(folder, undecided, True):
            bodies = yield ReadMessages(folder, tuple(uid for _, uid in batch))
            if self.selected is not selected:
                return []
            for seq, uid in batch:
                message = folder.by_uid(uid)
                data = bodies.get(uid)
                if message is None or data is None:
                    continue  # expunged, or its file went away, while it was read
                candidate = search.Candidate(
                    seq, message, uid in selected.recent, last_seq, last_uid
                )
                if key.match(candidate, MessageParts(data)):
                    matched.append((seq, message.modseq))
        return matched

    def _fetch_item(
        self, att: p.FetchAtt, message: MessageInfo, uid: int, parts: MessageParts | None
    ) -> bytes | _Literal:
        name = att.name
        if name == "UID":
            return b"UID %d" % uid
        if name == "FLAGS":
            return b"FLAGS " + self._flags(uid)
        if name == "INTERNALDATE":
            return b"INTERNALDATE " + format_internaldate(message.internal_date)
        if name == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % message.size
        if name == "MODSEQ":
            return b"MODSEQ (%d)" % message.modseq  # RFC 7162 §3.1.4.1
        assert parts is not None
        if att.section is not None:
            data = apply_partial(section_bytes(parts, att.section), att.partial)
            return _Literal(att.response_bytes, data)
        if name == "ENVELOPE":
            return b"ENVELOPE " + envelope(parts)
        if name in ("BODY", "BODYSTRUCTURE"):
            return name.encode() + b" " + bodystructure(parts, name == "BODYSTRUCTURE")
        if name == "RFC822":
            return _Literal(b"RFC822", parts.whole)
        if name == "RFC822.HEADER":
            return _Literal(b"RFC822.HEADER", parts.header)
        if name == "RFC822.TEXT":
            return _Literal(b"RFC822.TEXT", parts.body)
        raise ValueError(f"unsupported FETCH item {name}")

    # Changes by others (RFC 3501 §5.2, §7.4.1) -----------------------------------------
    def _on_change(self, change: Change) -> None:
        selected = self.selected
        if selected is None:
            return
        if isinstance(change, Appended):
            selected.appended = True
        elif isinstance(change, Expunged):
            if change.uid in self._own_expunges:
                return
            selected.expunged.append(change.uid)
        elif isinstance(change, FlagsChanged):
            if change.uid in self._own_flags:
                return
            selected.flags_changed.add(change.uid)
        if self._idle_tag is not None:
            self._updates(allow_expunge=True)
            if self._wake is not None:
                self._wake()

    def _updates(self, allow_expunge: bool) -> None:
        """Tell the client what others changed, as far as the moment allows."""
        selected = self.selected
        if selected is None:
            return
        keywords = folder_keywords(selected.folder)
        if keywords != selected.keywords:
            # RFC 3501 §7.2.6: a new keyword changes the set of flags in the mailbox.
            selected.keywords = keywords
            self._send_flags(selected)
        if allow_expunge and selected.expunged:
            for seq in selected.remove(selected.expunged):
                self._send(f"* {seq} EXPUNGE\r\n".encode())
            selected.expunged = []
        if selected.appended:
            selected.appended = False
            last = selected.uids[-1] if selected.uids else 0
            new = []
            for message in reversed(selected.folder.messages):
                if message.uid <= last:
                    break
                new.append(message.uid)
            if new:
                new.reverse()
                selected.uids.extend(new)
                # RFC 3501 §2.3.2: \Recent goes to the first session told of a message;
                # a read-write one claims it.
                folder = selected.folder
                recent = folder.recent_uids() if selected.readonly else folder.claim_recent()
                selected.recent.update(set(new) & set(recent))
                self._send(f"* {len(selected.uids)} EXISTS\r\n".encode())
                self._send(f"* {len(selected.recent)} RECENT\r\n".encode())
        if selected.flags_changed:
            for uid in sorted(selected.flags_changed):
                seq = selected.seq_of(uid)
                if seq is not None and selected.folder.by_uid(uid) is not None:
                    self._send(self._fetch_line(seq, self._flag_items(uid, True)))
            selected.flags_changed = set()


def folder_keywords(folder: Folder) -> tuple[str, ...]:
    """The keywords defined in a folder, in the order of its keyword table."""
    return tuple(k for k in folder.keywords.names if k)


def _number_set(numbers: list[int]) -> str:
    """A sequence set for these numbers, in their order, runs written as ``a:b``."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


def _ancestors(name: str) -> list[str]:
    """The levels above a hierarchical name: ``a.b.c`` -> ``a``, ``a.b``."""
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:i]) for i in range(1, len(levels))]


class _Literal(NamedTuple):
    """A FETCH item whose value is a literal: its name and the literal's octets."""

    name: bytes
    data: bytes


def _fetch_response(seq: int, items: list[bytes | _Literal]) -> list[bytes]:
    """A FETCH response as the pieces to send, each literal's octets one of them: a
    message body is copied once on its way out (joined into a Send), not again into each
    string built around it."""
    pieces: list[bytes] = []
    text = [b"* %d FETCH (" % seq]
    for i, item in enumerate(items):
        if i:
            text.append(b" ")
        if isinstance(item, _Literal):
            text.append(b"%s {%d}\r\n" % (item.name, len(item.data)))
            pieces.append(b"".join(text))
            pieces.append(item.data)
            text = []
        else:
            text.append(item)
    text.append(b")\r\n")
    pieces.append(b"".join(text))
    return pieces


# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+(?= )')


def _tag_of(line: bytes) -> str | None:
    """The tag a command line starts with (followed by SP), or None."""
    match = _TAG.match(line)
    return match.group().decode("ascii") if match else None


def _pattern(pattern: str) -> Callable[[str], bool]:
    """RFC 3501 §6.3.8: ``*`` matches anything, ``%`` anything but the delimiter."""
    regex = "".join(
        ".*" if ch == "*" else f"[^{re.escape(DELIMITER)}]*" if ch == "%" else re.escape(ch)
        for ch in pattern
    )
    compiled = re.compile(regex + r"\Z", re.DOTALL)

    def match(name: str) -> bool:
        if name == "INBOX":
            return bool(compiled.match(name)) or bool(re.match(regex + r"\Z", "inbox", re.I))
        return bool(compiled.match(name))

    return match


_INDEX_ITEMS = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
_ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID", "LOGIN", "AUTHENTICATE", "STARTTLS"})
_NOT_AUTHENTICATED_STATE = frozenset({"LOGIN", "AUTHENTICATE", "STARTTLS"})
# Commands that report (or copy) RFC822.SIZE, INTERNALDATE or the bytes of messages.
_NEEDS_MEASURED = frozenset({"FETCH", "SEARCH", "COPY", "MOVE"})
_SELECTED_STATE = frozenset(
    {"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "STORE", "FETCH", "SEARCH", "COPY", "MOVE"}
)


_T = TypeVar("_T")


def _ramped_batches(items: list[_T], first: int, most: int) -> list[list[_T]]:
    """Runs of ``first`` items, then twice as many each time up to ``most``, and in the
    second half the same sizes in reverse, down to ``first`` again (a short list: one)."""
    if len(items) <= 2 * first:
        return [items] if items else []
    half = (len(items) + 1) // 2
    sizes = _growing_sizes(half, first, most)
    sizes += reversed(_growing_sizes(len(items) - half, first, most))
    batches, start = [], 0
    for size in sizes:
        batches.append(items[start : start + size])
        start += size
    return batches


def _growing_sizes(count: int, first: int, most: int) -> list[int]:
    sizes, size = [], first
    while count > 0:
        sizes.append(min(size, count))
        count -= sizes[-1]
        size = min(2 * size, most)
    return sizes


def _batches(
    folder: Folder, targets: list[tuple[int, int]], reading: bool
) -> Iterator[list[tuple[int, int]]]:
    """Split (seq, uid) pairs into the runs one turn of the reactor handles: FETCH_BATCH
    messages and, when their files are read, READ_BATCH_BYTES of them (a larger one alone)."""
    batch: list[tuple[int, int]] = []
    size = 0
    for pair in targets:
        if reading:
            message = folder.by_uid(pair[1])
            message_size = message.size if message is not None else 0
            if batch and size + message_size > READ_BATCH_BYTES:
                yield batch
                batch, size = [], 0
            size += message_size
        batch.append(pair)
        if len(batch) == FETCH_BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
