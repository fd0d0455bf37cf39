"""IMAP command grammar (RFC 3501 §9, RFC 9051 §9, LITERAL+ RFC 7888).

Pure parsing: the protocol layer frames one complete command as a list of
*pieces* -- text lines and literal payloads alternating::

    [line, literal, line, literal, ..., line]

Every line but the last ends with the literal marker ``{n}`` or ``{n+}`` that
announced the following literal (the CRLF is not included).  ``parse_command``
turns such a list into a typed ``Command`` or raises ``ParseError``.

The parser is a single left-to-right cursor over the pieces: each byte is
looked at a bounded number of times, parenthesized lists are the only nesting
and are capped at ``MAX_NESTING``.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Literal, TypeAlias

__all__ = [
    "MAX_NESTING",
    "NIL",
    "STATUS_ITEMS",
    "SYSTEM_FLAGS",
    "Append",
    "Arg",
    "Atom",
    "Authenticate",
    "Command",
    "CommandArgs",
    "CopyMove",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchAtt",
    "Id",
    "ListMailboxes",
    "Login",
    "Mailbox",
    "Nil",
    "ParseError",
    "Rename",
    "Search",
    "Section",
    "Select",
    "SequenceSet",
    "Status",
    "Store",
    "literal_at_end",
    "nstring",
    "parse_command",
    "parse_sequence_set",
    "quote",
]

#: Deepest parenthesized list accepted anywhere in a command.
MAX_NESTING = 32

_MAX_U32 = 0xFFFFFFFF  # RFC 3501 §9: number / nz-number are unsigned 32-bit
_MAX_MODSEQ = 0x7FFFFFFFFFFFFFFF  # RFC 7162 §7: mod-sequence-value < 2^63
_MAX_LITERAL_DIGITS = 10


class ParseError(Exception):
    """A malformed command; ``tag`` is None when no tag could be recovered.

    The server answers ``<tag> BAD <message>``, or ``* BAD <message>`` without a tag.
    """

    def __init__(self, tag: str | None, message: str) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message


# ---------------------------------------------------------------------------
# Generic argument model


@dataclass(frozen=True)
class Atom:
    """An unquoted token, kept as sent (case is preserved)."""

    value: str


@dataclass(frozen=True)
class Nil:
    """The NIL token; use the ``NIL`` singleton."""


NIL = Nil()

#: A parsed generic argument: atoms, string values (quoted or literal) as bytes,
#: NIL, and parenthesized lists.
Arg: TypeAlias = "Atom | bytes | Nil | list[Arg]"


# ---------------------------------------------------------------------------
# Sequence sets


@dataclass(frozen=True)
class SequenceSet:
    """An RFC 3501 §9 sequence-set; ``None`` stands for ``*`` (the largest value in use).

    Ranges are kept unresolved because ``*`` depends on the mailbox state at
    execution time, not at parse time.
    """

    items: tuple[tuple[int | None, int | None], ...]

    def resolve(self, max_value: int) -> list[tuple[int, int]]:
        """Return sorted, merged, inclusive ``(lo, hi)`` ranges with ``*`` = ``max_value``.

        Ranges are not clipped to ``max_value``: for UIDs a range beyond the
        highest UID is legal (RFC 3501 §6.4.8) and for sequence numbers the
        caller must report the error.  When ``max_value`` is 0 (empty mailbox)
        elements that mention ``*`` denote nothing and are dropped.
        """
        ranges: list[tuple[int, int]] = []
        for first, last in self.items:
            if max_value == 0 and (first is None or last is None):
                continue
            a = max_value if first is None else first
            b = max_value if last is None else last
            # RFC 3501 §9: "a:b" and "b:a" are the same range.
            ranges.append((a, b) if a <= b else (b, a))
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def iter(self, max_value: int) -> Iterator[int]:
        """Yield every member in ascending order, each once, without building a list."""
        for lo, hi in self.resolve(max_value):
            yield from range(lo, hi + 1)

    def contains(self, n: int, max_value: int) -> bool:
        """Whether ``n`` is a member when ``*`` is ``max_value``."""
        for first, last in self.items:
            if max_value == 0 and (first is None or last is None):
                continue
            a = max_value if first is None else first
            b = max_value if last is None else last
            if min(a, b) <= n <= max(a, b):
                return True
        return False

    def __str__(self) -> str:
        def num(v: int | None) -> str:
            return "*" if v is None else str(v)

        return ",".join(num(a) if a == b else f"{num(a)}:{num(b)}" for a, b in self.items)


_SEQ_NUMBER = re.compile(r"\*|[1-9][0-9]{0,9}")


def parse_sequence_set(text: str) -> SequenceSet:
    """Parse a sequence-set (RFC 3501 §9); raise ``ValueError`` if malformed.

    Exposed for the SEARCH engine, which receives sequence sets as raw atoms.
    """
    items: list[tuple[int | None, int | None]] = []
    for element in text.split(","):
        bounds = element.split(":")
        if len(bounds) > 2:
            raise ValueError(f"bad sequence range {element!r}")
        values: list[int | None] = []
        for bound in bounds:
            if not _SEQ_NUMBER.fullmatch(bound):
                # RFC 3501 §9 seq-number: nz-number / "*"; zero is not allowed.
                raise ValueError(f"bad sequence number {bound!r}")
            value = None if bound == "*" else int(bound)
            if value is not None and value > _MAX_U32:
                raise ValueError(f"sequence number {bound} out of range")
            values.append(value)
        items.append((values[0], values[-1]))
    return SequenceSet(tuple(items))


# ---------------------------------------------------------------------------
# FETCH attributes


@dataclass(frozen=True)
class Section:
    """A BODY[...] section-spec (RFC 3501 §6.4.5).

    ``part`` is the part path (``(1, 2)`` for ``1.2``), ``text`` one of ``None``,
    ``"HEADER"``, ``"HEADER.FIELDS"``, ``"HEADER.FIELDS.NOT"``, ``"TEXT"``,
    ``"MIME"``; ``fields`` the header names for HEADER.FIELDS[.NOT], as sent.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section-spec as echoed in a FETCH response, without brackets."""
        pieces = [str(n) for n in self.part]
        if self.text is not None:
            pieces.append(self.text)
        spec = ".".join(pieces)
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            spec += " (" + " ".join(_astring_out(f) for f in self.fields) + ")"
        return spec


def _astring_out(value: str) -> str:
    if value and all(_is_astring_char(ord(c)) for c in value):
        return value
    return quote(value).decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH attribute.

    ``name`` is the upper-case attribute (``BODY`` for BODY[...] and BODY.PEEK[...]);
    ``section`` is set only for BODY[...]; ``partial`` is ``(offset, length)``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        """The item name the server must echo in the FETCH response.

        RFC 3501 §7.4.2: BODY.PEEK[...] is answered as BODY[...], and a partial
        fetch echoes only the origin octet (``BODY[]<0>``).
        """
        if self.section is None:
            return self.name
        name = f"BODY[{self.section.spec()}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name

    @cached_property
    def response_bytes(self) -> bytes:
        """response_name() as sent: made once for the many messages of a FETCH."""
        return self.response_name().encode()

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this implicitly sets ``\\Seen`` (RFC 3501 §6.4.5)."""
        if self.section is not None:
            return not self.peek
        return self.name in ("RFC822", "RFC822.TEXT")


_SIMPLE_FETCH_ATTS = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",  # RFC 7162 §3.1.4.1
    }
)

# RFC 3501 §6.4.5: the macros, only valid on their own.
_FETCH_MACROS: dict[str, tuple[str, ...]] = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}

# ---------------------------------------------------------------------------
# Flags and STATUS items

#: RFC 3501 §2.3.2 system flags that may be set by clients, by canonical spelling.
SYSTEM_FLAGS: dict[str, str] = {
    f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}

#: STATUS data items (RFC 3501 §6.3.10, RFC 7162 §3.1.10, RFC 8438, RFC 9051 §6.3.11).
STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE", "DELETED"}
)

# ---------------------------------------------------------------------------
# Typed command arguments


@dataclass(frozen=True)
class Authenticate:
    mechanism: str
    #: SASL-IR initial response (RFC 4959 §3), still base64; ``"="`` means empty.
    initial_response: str | None


@dataclass(frozen=True)
class Login:
    userid: bytes
    password: bytes


@dataclass(frozen=True)
class Mailbox:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    mailbox: str


@dataclass(frozen=True)
class Select:
    """SELECT, EXAMINE; ``condstore`` is the RFC 7162 §3.1.8 select parameter."""

    mailbox: str
    condstore: bool = False


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class ListMailboxes:
    """LIST, LSUB: reference name and mailbox pattern (with ``%``/``*``), verbatim."""

    reference: str
    pattern: str


@dataclass(frozen=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append:
    mailbox: str
    flags: tuple[str, ...]
    date_time: datetime | None
    message: bytes


@dataclass(frozen=True)
class Search:
    """SEARCH keys, uninterpreted.

    Keys are generic ``Arg`` values; sequence sets arrive as ``Atom`` (whose
    value may contain ``*``) for the engine to pass to ``parse_sequence_set``.
    """

    charset: str | None
    keys: list[Arg]


@dataclass(frozen=True)
class Fetch:
    sequence_set: SequenceSet
    attributes: tuple[FetchAtt, ...]
    #: RFC 7162 §3.1.4.1 CHANGEDSINCE modifier.
    changed_since: int | None = None


@dataclass(frozen=True)
class Store:
    sequence_set: SequenceSet
    #: ``"+"`` adds, ``"-"`` removes, ``""`` replaces (RFC 3501 §6.4.6).
    mode: Literal["+", "-", ""]
    silent: bool
    flags: tuple[str, ...]
    #: RFC 7162 §3.1.3 UNCHANGEDSINCE modifier.
    unchanged_since: int | None = None


@dataclass(frozen=True)
class CopyMove:
    """COPY, MOVE (RFC 6851)."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE (RFC 4315 §2.1) with its UID set."""

    sequence_set: SequenceSet | None = None


@dataclass(frozen=True)
class Id:
    """ID (RFC 2971): None for ``ID NIL``, else (field, value-or-None) pairs."""

    params: tuple[tuple[bytes, bytes | None], ...] | None


@dataclass(frozen=True)
class Enable:
    """ENABLE (RFC 5161): capability names, upper-cased."""

    capabilities: tuple[str, ...]


CommandArgs: TypeAlias = (
    Authenticate
    | Login
    | Mailbox
    | Select
    | Rename
    | ListMailboxes
    | Status
    | Append
    | Search
    | Fetch
    | Store
    | CopyMove
    | Expunge
    | Id
    | Enable
    | None
)


@dataclass(frozen=True)
class Command:
    """A parsed command; ``args`` is None for commands that take none."""

    tag: str
    name: str
    uid: bool = False
    args: CommandArgs = None


# ---------------------------------------------------------------------------
# Character classes (RFC 3501 §9)


def _is_atom_char(c: int) -> bool:
    # ATOM-CHAR = <any CHAR except atom-specials>; atom-specials = "(" / ")" / "{" /
    # SP / CTL / list-wildcards / quoted-specials / resp-specials
    return 0x20 < c < 0x7F and c not in b'(){%*"\\]'


def _is_astring_char(c: int) -> bool:
    # ASTRING-CHAR = ATOM-CHAR / resp-specials
    return _is_atom_char(c) or c == 0x5D


def _class_regex(pred: Callable[[int], bool], extra: bytes = b"") -> re.Pattern[bytes]:
    chars = bytes(c for c in range(256) if pred(c)) + extra
    return re.compile(b"[" + re.escape(chars) + b"]+")


_ATOM = _class_regex(_is_atom_char)
_ASTRING = _class_regex(_is_astring_char)
# RFC 3501 §9 tag = 1*<any ASTRING-CHAR except "+">
_TAG = _class_regex(lambda c: _is_astring_char(c) and c != 0x2B)
_LIST_MAILBOX = _class_regex(_is_astring_char, b"%*")  # RFC 3501 §9 list-char
_SEARCH_TOKEN = _class_regex(_is_astring_char, b"*")  # astrings and sequence sets
_LITERAL_MARKER = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TOKEN = re.compile(rb"[A-Za-z0-9.]*")
_DIGITS = re.compile(rb"[0-9]+")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|=")


def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """Return ``(length, non_synchronizing)`` if ``line`` ends with ``{n}`` / ``{n+}``.

    ``line`` excludes the CRLF.  More than ten digits raises ``ParseError`` so
    that absurd lengths are refused before any arithmetic on them.
    """
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    if brace < 0:
        return None
    match = _LITERAL_MARKER.match(line, brace)
    if match is None:
        return None
    if len(match.group(1)) > _MAX_LITERAL_DIGITS:
        raise ParseError(_recover_tag(line), "literal length too large")
    # RFC 7888 §3: "{n+}" is a non-synchronizing literal.
    return int(match.group(1)), match.group(2) == b"+"


def _recover_tag(line: bytes) -> str | None:
    match = _TAG.match(line)
    if match is None or line[match.end() : match.end() + 1] != b" ":
        return None
    return match.group().decode("ascii")


# ---------------------------------------------------------------------------
# Cursor


class _Reader:
    """Cursor over the pieces; literals are consumed where a line ends in a marker."""

    def __init__(self, pieces: list[bytes], tag: str | None) -> None:
        self.pieces = pieces
        self.index = 0  # index of the current line piece (always even)
        self.line = pieces[0]
        self.pos = 0
        self.tag = tag

    def error(self, message: str) -> ParseError:
        return ParseError(self.tag, message)

    def peek(self) -> int | None:
        return self.line[self.pos] if self.pos < len(self.line) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.index == len(self.pieces) - 1

    def expect_end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected extra arguments")

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.error("expected SP")
        self.pos += 1

    def try_space(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def char(self, c: bytes) -> None:
        if self.peek() != c[0]:
            raise self.error(f"expected {c.decode()!r}")
        self.pos += 1

    def regex(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        match = pattern.match(self.line, self.pos)
        if match is None or match.end() == self.pos:
            raise self.error(f"expected {what}")
        self.pos = match.end()
        return match.group()

    def atom(self) -> str:
        return self.regex(_ATOM, "atom").decode("ascii")

    def number(self, limit: int = _MAX_U32, *, nonzero: bool = False) -> int:
        digits = self.regex(_DIGITS, "number")
        # Bounded digit count keeps int() linear and refuses absurd values.
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise self.error("number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise self.error("zero is not allowed here")
        return value

    def quoted(self) -> bytes:
        # RFC 3501 §9 quoted: DQUOTE *QUOTED-CHAR DQUOTE, escapes only for "\" and DQUOTE.
        # 8-bit octets are accepted (RFC 9051 utf8-quoted, e.g. UTF-8 passwords).
        self.char(b'"')
        line = self.line
        out = bytearray()
        i = self.pos
        n = len(line)
        while True:
            j = i
            while j < n and line[j] not in b'"\\\r\n\x00':
                j += 1
            out += line[i:j]
            if j >= n:
                raise self.error("unterminated quoted string")
            c = line[j]
            if c == 0x22:
                self.pos = j + 1
                return bytes(out)
            if c != 0x5C:
                raise self.error("invalid character in quoted string")
            if j + 1 >= n or line[j + 1] not in b'"\\':
                raise self.error("invalid escape in quoted string")
            out.append(line[j + 1])
            i = j + 2

    def literal(self) -> bytes:
        match = _LITERAL_MARKER.match(self.line, self.pos)
        if match is None:
            raise self.error("literal marker must end the line")
        size = int(match.group(1)) if len(match.group(1)) <= _MAX_LITERAL_DIGITS else -1
        if self.index + 2 >= len(self.pieces):
            raise self.error("missing literal data")
        data = self.pieces[self.index + 1]
        if len(data) != size:
            raise self.error("literal length mismatch")
        self.index += 2
        self.line = self.pieces[self.index]
        self.pos = 0
        return data

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise self.error("expected string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        return self.regex(_ASTRING, "astring")

    def values(self, token: re.Pattern[bytes], *, nil: bool, depth: int = 0) -> list[Arg]:
        """Space-separated generic values up to an unmatched ``)`` or the end.

        Iterative with an explicit stack, so nesting costs no Python recursion;
        ``depth`` is the number of lists already open around this run.
        """
        stack: list[list[Arg]] = [[]]
        need_space = False
        while True:
            c = self.peek()
            if c == 0x29 or self.at_end():
                if len(stack) == 1:
                    return stack[0]
                self.char(b")")
                done = stack.pop()
                stack[-1].append(done)
                need_space = True
            elif need_space:
                self.space()
                if self.peek() in (0x29, None):
                    raise self.error("unexpected SP")
                need_space = False
            elif c == 0x28:
                if depth + len(stack) > MAX_NESTING:
                    raise self.error("lists nested too deeply")
                self.pos += 1
                stack.append([])
            elif c in (0x22, 0x7B):
                stack[-1].append(self.string())
                need_space = True
            else:
                text = self.regex(token, "value").decode("ascii")
                stack[-1].append(NIL if nil and text.upper() == "NIL" else Atom(text))
                need_space = True

    def mailbox(self) -> str:
        return _mailbox_name(self, self.astring())

    def sequence_set(self) -> SequenceSet:
        text = self.regex(_SEARCH_TOKEN, "sequence set").decode("ascii")
        try:
            return parse_sequence_set(text)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def flag(self) -> str:
        if self.peek() == 0x5C:
            self.pos += 1
            name = "\\" + self.atom()
            canonical = SYSTEM_FLAGS.get(name.upper())
            if canonical is not None:
                return canonical
            if name.upper() == "\\RECENT":
                # RFC 3501 §2.3.2: \Recent cannot be altered by the client.
                raise self.error("\\Recent may not be set")
            raise self.error(f"unsupported system flag {name}")
        return self.atom()  # RFC 3501 §9 keyword = atom

    def flag_list(self) -> tuple[str, ...]:
        self.char(b"(")
        flags: list[str] = []
        while self.peek() != 0x29:
            if flags:
                self.space()
            flags.append(self.flag())
        self.pos += 1
        return tuple(flags)


def _mailbox_name(reader: _Reader, raw: bytes) -> str:
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise reader.error("mailbox name must be 7-bit (modified UTF-7)") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise reader.error("control character in mailbox name")
    # RFC 3501 §5.1: INBOX is case-insensitive.
    return "INBOX" if name.upper() == "INBOX" else name


def _ascii(reader: _Reader, raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise reader.error(f"{what} must be ASCII") from None


# ---------------------------------------------------------------------------
# Per-command argument parsers


def _args_authenticate(r: _Reader) -> Authenticate:
    r.space()
    mechanism = r.atom().upper()
    response = None
    if r.try_space():
        # RFC 4959 §3: initial-response = base64 / "="
        response = r.atom()
        if not _BASE64.fullmatch(response):
            raise r.error("invalid base64 initial response")
    return Authenticate(mechanism, response)


def _args_login(r: _Reader) -> Login:
    r.space()
    userid = r.astring()
    r.space()
    return Login(userid, r.astring())


def _args_mailbox(r: _Reader) -> Mailbox:
    r.space()
    return Mailbox(r.mailbox())


def _args_select(r: _Reader) -> Select:
    r.space()
    mailbox = r.mailbox()
    condstore = False
    if r.try_space():
        # RFC 4466 §2.1 select-params; only CONDSTORE (RFC 7162 §3.1.8) is known.
        r.char(b"(")
        params = r.values(_ATOM, nil=False, depth=1)
        r.char(b")")
        for param in params:
            if not isinstance(param, Atom) or param.value.upper() != "CONDSTORE":
                raise r.error("unsupported select parameter")
            condstore = True
    return Select(mailbox, condstore)


def _args_rename(r: _Reader) -> Rename:
    r.space()
    old = r.mailbox()
    r.space()
    return Rename(old, r.mailbox())


def _args_list(r: _Reader) -> ListMailboxes:
    r.space()
    reference = _mailbox_name(r, r.astring())
    r.space()
    # RFC 3501 §9 list-mailbox = 1*list-char / string
    c = r.peek()
    raw = r.string() if c in (0x22, 0x7B) else r.regex(_LIST_MAILBOX, "mailbox pattern")
    return ListMailboxes(reference, _mailbox_name(r, raw))


def _args_status(r: _Reader) -> Status:
    r.space()
    mailbox = r.mailbox()
    r.space()
    r.char(b"(")
    items: list[str] = []
    while r.peek() != 0x29:
        if items:
            r.space()
        item = r.atom().upper()
        if item not in STATUS_ITEMS:
            raise r.error(f"unknown status item {item}")
        items.append(item)
    r.pos += 1
    if not items:
        raise r.error("empty status item list")
    return Status(mailbox, tuple(items))


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TIME = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"'
)


def _date_time(r: _Reader) -> datetime:
    # RFC 3501 §9 date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
    #                          SP time SP zone DQUOTE
    match = _DATE_TIME.match(r.line, r.pos)
    if match is None:
        raise r.error("invalid date-time")
    day, month, year, hh, mm, ss, sign, zone = (g.decode("ascii") for g in match.groups())
    try:
        month_number = [m.upper() for m in _MONTHS].index(month.upper()) + 1
        if int(zone[2:]) >= 60:
            raise ValueError("zone minutes out of range")
        offset = timedelta(hours=int(zone[:2]), minutes=int(zone[2:]))
        value = datetime(
            int(year),
            month_number,
            int(day.strip()),
            int(hh),
            int(mm),
            int(ss),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )
    except ValueError:
        raise r.error("invalid date-time") from None
    r.pos = match.end()
    return value


def _args_append(r: _Reader) -> Append:
    r.space()
    mailbox = r.mailbox()
    r.space()
    flags: tuple[str, ...] = ()
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.space()
    date_time = None
    if r.peek() == 0x22:
        date_time = _date_time(r)
        r.space()
    if r.peek() != 0x7B:
        raise r.error("expected message literal")
    return Append(mailbox, flags, date_time, r.literal())


def _args_search(r: _Reader) -> Search:
    r.space()
    charset = None
    first = _SEARCH_TOKEN.match(r.line, r.pos)
    if first is not None and first.group().upper() == b"CHARSET":
        r.pos = first.end()
        r.space()
        charset = _ascii(r, r.astring(), "charset").upper()
        r.space()
    keys = r.values(_SEARCH_TOKEN, nil=False)
    if not keys:
        raise r.error("missing search keys")
    return Search(charset, keys)


def _section(r: _Reader) -> Section:
    # RFC 3501 §9 section = "[" [section-spec] "]"
    r.char(b"[")
    token = r.regex(_SECTION_TOKEN, "section") if r.peek() != 0x5D else b""
    words = token.decode("ascii").upper().split(".") if token else []
    part: list[int] = []
    while words and words[0].isdigit():
        word = words.pop(0)
        if word[0] == "0" or len(word) > 10 or int(word) > _MAX_U32:
            raise r.error("invalid section part number")
        part.append(int(word))
    text = ".".join(words) or None
    allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
    if part:
        allowed.add("MIME")  # RFC 3501 §9 section-text: MIME only after a part
    if text is not None and text not in allowed:
        raise r.error("invalid section")
    fields: list[str] = []
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        # RFC 3501 §9 header-list = "(" header-fld-name *(SP header-fld-name) ")"
        r.space()
        r.char(b"(")
        while True:
            name = _ascii(r, r.astring(), "header field name")
            if not name or any(not (0x20 < ord(c) < 0x7F) or c == ":" for c in name):
                raise r.error("invalid header field name")
            fields.append(name)
            if r.peek() == 0x29:
                break
            r.space()
        r.pos += 1
    r.char(b"]")
    return Section(tuple(part), text, tuple(fields))


def _fetch_att(r: _Reader) -> FetchAtt:
    name = r.regex(_FETCH_NAME, "fetch attribute").decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:
        section = _section(r)
        partial = None
        if r.peek() == 0x3C:
            # RFC 3501 §9: "<" number "." nz-number ">"
            r.pos += 1
            offset = r.number()
            r.char(b".")
            length = r.number(nonzero=True)
            r.char(b">")
            partial = (offset, length)
        return FetchAtt("BODY", section, partial, peek=name == "BODY.PEEK")
    if name not in _SIMPLE_FETCH_ATTS:
        raise r.error(f"unknown fetch attribute {name}")
    return FetchAtt(name)


def _args_fetch(r: _Reader) -> Fetch:
    r.space()
    seq = r.sequence_set()
    r.space()
    atts: list[FetchAtt] = []
    if r.peek() == 0x28:
        r.pos += 1
        while True:
            atts.append(_fetch_att(r))
            if r.peek() == 0x29:
                break
            r.space()
        r.pos += 1
    else:
        start = r.pos
        macro = r.regex(_FETCH_NAME, "fetch attribute").decode("ascii").upper()
        if macro in _FETCH_MACROS:
            atts = [FetchAtt(name) for name in _FETCH_MACROS[macro]]
        else:
            r.pos = start
            atts.append(_fetch_att(r))
    changed_since = None
    if r.try_space():
        # RFC 7162 §3.1.4.1: fetch-modifier "(" "CHANGEDSINCE" SP mod-sequence-value ")"
        r.char(b"(")
        if r.atom().upper() != "CHANGEDSINCE":
            raise r.error("unsupported fetch modifier")
        r.space()
        changed_since = r.number(_MAX_MODSEQ, nonzero=True)
        r.char(b")")
    return Fetch(seq, tuple(atts), changed_since)


def _args_store(r: _Reader) -> Store:
    r.space()
    seq = r.sequence_set()
    r.space()
    unchanged_since = None
    if r.peek() == 0x28:
        # RFC 7162 §3.1.3: store-modifier "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")"
        r.pos += 1
        if r.atom().upper() != "UNCHANGEDSINCE":
            raise r.error("unsupported store modifier")
        r.space()
        unchanged_since = r.number(_MAX_MODSEQ)
        r.char(b")")
        r.space()
    # RFC 3501 §9 store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP
    #                                (flag-list / (flag *(SP flag)))
    mode: Literal["+", "-", ""] = ""
    if r.peek() == 0x2B:
        mode = "+"
        r.pos += 1
    elif r.peek() == 0x2D:
        mode = "-"
        r.pos += 1
    item = r.atom().upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error("expected FLAGS or FLAGS.SILENT")
    r.space()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        bare = [r.flag()]
        while r.try_space():
            bare.append(r.flag())
        flags = tuple(bare)
    return Store(seq, mode, item == "FLAGS.SILENT", flags, unchanged_since)


def _args_copy_move(r: _Reader) -> CopyMove:
    r.space()
    seq = r.sequence_set()
    r.space()
    return CopyMove(seq, r.mailbox())


def _args_uid_expunge(r: _Reader) -> Expunge:
    r.space()
    return Expunge(r.sequence_set())


def _args_id(r: _Reader) -> Id:
    # RFC 2971 §3.3: id_params_list ::= "(" #(string SP nstring) ")" / nil
    r.space()
    if r.peek() != 0x28:
        if r.atom().upper() != "NIL":
            raise r.error("expected parameter list or NIL")
        return Id(None)
    r.char(b"(")
    values = r.values(_ATOM, nil=True, depth=1)
    r.char(b")")
    if len(values) % 2:
        raise r.error("ID parameters must be field/value pairs")
    pairs: list[tuple[bytes, bytes | None]] = []
    for key, value in zip(values[::2], values[1::2], strict=True):
        if not isinstance(key, bytes) or not isinstance(value, bytes | Nil):
            raise r.error("ID fields must be strings and values nstrings")
        pairs.append((key, None if isinstance(value, Nil) else value))
    return Id(tuple(pairs))


def _args_enable(r: _Reader) -> Enable:
    caps: list[str] = []
    while r.try_space():
        caps.append(r.atom().upper())
    if not caps:
        raise r.error("ENABLE needs at least one capability")
    return Enable(tuple(caps))


def _no_args(r: _Reader) -> None:
    return None


_COMMANDS = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "AUTHENTICATE": _args_authenticate,
    "LOGIN": _args_login,
    "SELECT": _args_select,
    "EXAMINE": _args_select,
    "CREATE": _args_mailbox,
    "DELETE": _args_mailbox,
    "SUBSCRIBE": _args_mailbox,
    "UNSUBSCRIBE": _args_mailbox,
    "RENAME": _args_rename,
    "LIST": _args_list,
    "LSUB": _args_list,
    "STATUS": _args_status,
    "APPEND": _args_append,
    "CHECK": _no_args,
    "CLOSE": _no_args,
    "UNSELECT": _no_args,
    "EXPUNGE": _no_args,
    "SEARCH": _args_search,
    "FETCH": _args_fetch,
    "STORE": _args_store,
    "COPY": _args_copy_move,
    "MOVE": _args_copy_move,
    "IDLE": _no_args,
    "NAMESPACE": _no_args,
    "ID": _args_id,
    "ENABLE": _args_enable,
}

# RFC 3501 §6.4.8, RFC 4315 §2.1 (UID EXPUNGE), RFC 6851 §3.2 (UID MOVE)
_UID_COMMANDS = {
    "FETCH": _args_fetch,
    "STORE": _args_store,
    "COPY": _args_copy_move,
    "MOVE": _args_copy_move,
    "SEARCH": _args_search,
    "EXPUNGE": _args_uid_expunge,
}


def parse_command(pieces: list[bytes]) -> Command:
    """Parse one framed command (see the module docstring); raise ``ParseError``."""
    if not pieces or len(pieces) % 2 == 0:
        raise ParseError(None, "malformed command framing")
    first = pieces[0]
    tag_match = _TAG.match(first)
    if tag_match is None:
        raise ParseError(None, "missing tag")
    tag = tag_match.group().decode("ascii")
    r = _Reader(pieces, None)
    r.pos = tag_match.end()
    if r.peek() != 0x20:
        raise ParseError(None, "missing tag")
    r.tag = tag
    r.pos += 1
    name = r.regex(_ATOM, "command name").decode("ascii").upper()
    uid = False
    if name == "UID":
        uid = True
        r.space()
        name = r.atom().upper()
        parser = _UID_COMMANDS.get(name)
    else:
        parser = _COMMANDS.get(name)
    if parser is None:
        raise r.error("unknown command")
    args = parser(r)
    r.expect_end()
    return Command(tag, name, uid, args)


# ---------------------------------------------------------------------------
# Response helpers

_QUOTE_LIMIT = 1000


def quote(value: bytes | str) -> bytes:
    """Render ``value`` as an IMAP string for a server response.

    A quoted string when the value is short and every octet is printable 7-bit
    or TAB (a subset of RFC 3501 §9 TEXT-CHAR that no client mis-parses),
    otherwise a synchronizing literal ``{n}\\r\\n<data>``.
    """
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if len(data) <= _QUOTE_LIMIT and not any(c > 0x7E or (c < 0x20 and c != 0x09) for c in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def nstring(value: bytes | str | None) -> bytes:
    """``NIL`` for None, else ``quote(value)`` (RFC 3501 §9 nstring)."""
    return b"NIL" if value is None else quote(value)
