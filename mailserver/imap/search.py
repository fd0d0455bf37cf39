"""SEARCH (RFC 3501 §6.4.4, with MODSEQ from RFC 7162 §3.1.5): keys compiled into a tree.

The parser hands the keys over uninterpreted; :func:`compile_search` turns them into a tree
of :class:`Key` objects. A key is matched in two steps so that message files are read
only when they must be: first against the index alone (flags, sizes, dates, UIDs), where
a key that needs the message's content answers ``None`` ("cannot tell yet"); then, for
the messages still undecided, against the parsed message.
"""

from __future__ import annotations

import binascii
import quopri
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from functools import cached_property

from mailserver.imap import parser as p
from mailserver.imap.fetch import MessageParts
from mailserver.store.files import Rule, ruled_out
from mailserver.store.maildir import MessageInfo

# RFC 3501 §6.4.4 / RFC 6855: the charsets we can search in.
CHARSETS = ("US-ASCII", "UTF-8")
# NOT and OR nest without parentheses: bound the depth so that a long chain of them (the
# line limit allows thousands) cannot exhaust the stack.
MAX_DEPTH = 64
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


class SearchError(Exception):
    """Malformed search keys (a BAD reply)."""


class BadCharset(Exception):
    """RFC 3501 §6.4.4: NO [BADCHARSET] for a charset we do not know."""


@dataclass(slots=True)
class Candidate:
    """A message as the search sees it. One is built per message a search looks at; a
    frozen dataclass takes several times as long to build."""

    seq: int
    info: MessageInfo
    recent: bool
    last_seq: int  # what "*" means in a sequence set
    last_uid: int


class Key:
    """One search key. ``content`` says whether it can need the message's text."""

    content = False

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        raise NotImplementedError

    def rule(self) -> Rule | None:
        """What rules a message out from its raw header bytes (files.ruled_out): only
        messages for which match() would say False; None if nothing does."""
        return None


class All(Key):
    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        return True


@dataclass(frozen=True)
class Flag(Key):
    flag: str
    present: bool

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        flags = {f.lower() for f in m.info.flags}
        return (self.flag.lower() in flags) == self.present


@dataclass(frozen=True)
class Recent(Key):
    """RECENT, NEW (recent and unseen) and OLD (not recent)."""

    recent: bool
    unseen: bool = False

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        if self.unseen and "\\Seen" in m.info.flags:
            return False
        return m.recent == self.recent


@dataclass(frozen=True)
class Size(Key):
    larger: bool
    octets: int

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        size = m.info.size
        return size > self.octets if self.larger else size < self.octets


@dataclass(frozen=True)
class DateKey(Key):
    """BEFORE/ON/SINCE (internal date) and SENTBEFORE/SENTON/SENTSINCE (Date: field).

    RFC 3501 §6.4.4: dates compare "disregarding time and timezone".
    """

    op: str  # "BEFORE", "ON" or "SINCE"
    day: date
    sent: bool

    @property
    def content(self) -> bool:  # type: ignore[override]
        return self.sent

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        if self.sent:
            if parts is None:
                return None
            day = _sent_day(parts) or _internal_day(m.info)
        else:
            day = _internal_day(m.info)
        if self.op == "BEFORE":
            return day < self.day
        if self.op == "ON":
            return day == self.day
        return day >= self.day


@dataclass(frozen=True)
class Header(Key):
    """HEADER field string; FROM, TO, CC, BCC and SUBJECT are headers too."""

    field: str
    text: str
    content = True

    @cached_property
    def _ascii_word(self) -> bytes | None:
        text = self.text
        if text and text.isascii() and not any(c.isspace() for c in text):
            return text.encode("ascii")
        return None

    def rule(self) -> Rule | None:
        needle = self._ascii_word
        return None if needle is None else ("word", needle)

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        if parts is None:
            return None
        needle = self._ascii_word
        # Most messages do not have the word anywhere in their header: tell them from the
        # raw bytes without splitting the fields.
        if needle is not None and ruled_out(parts.header, ("word", needle)):
            return False
        wanted = self.field.upper()
        for f in parts.fields:
            if f.name is not None and f.name.upper() == wanted:
                # RFC 3501 §6.4.4: an empty string matches every message with the field.
                if not self.text or self.text in _decode_header(f.value).casefold():
                    return True
        return False


@dataclass(frozen=True)
class Text(Key):
    """BODY (the body only) and TEXT (header and body), case-insensitive substrings."""

    text: str
    header: bool
    content = True

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        if parts is None:
            return None
        if self.header and self.text in _decode_header(parts.header).casefold():
            return True
        return any(self.text in chunk for chunk in _body_texts(parts))


@dataclass(frozen=True)
class Sequence(Key):
    """A sequence set of sequence numbers, or with ``uid`` (the UID key) of UIDs."""

    numbers: p.SequenceSet
    uid: bool

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        if self.uid:
            return self.numbers.contains(m.info.uid, m.last_uid)
        return self.numbers.contains(m.seq, m.last_seq)


@dataclass(frozen=True)
class ModSeq(Key):
    """RFC 7162 §3.1.5: messages whose mod-sequence is at least this."""

    modseq: int

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        return m.info.modseq >= self.modseq


@dataclass(frozen=True)
class Not(Key):
    key: Key

    @property
    def content(self) -> bool:  # type: ignore[override]
        return self.key.content

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        result = self.key.match(m, parts)
        return None if result is None else not result


@dataclass(frozen=True)
class Or(Key):
    keys: tuple[Key, ...]

    @property
    def content(self) -> bool:  # type: ignore[override]
        return any(k.content for k in self.keys)

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        unknown = False
        for key in self.keys:
            result = key.match(m, parts)
            if result:
                return True
            unknown = unknown or result is None
        return None if unknown else False

    def rule(self) -> Rule | None:
        rules = tuple(key.rule() for key in self.keys)
        return None if None in rules else ("or", rules)  # type: ignore[return-value]


@dataclass(frozen=True)
class And(Key):
    keys: tuple[Key, ...]

    @property
    def content(self) -> bool:  # type: ignore[override]
        return any(k.content for k in self.keys)

    def match(self, m: Candidate, parts: MessageParts | None) -> bool | None:
        unknown = False
        for key in self.keys:
            result = key.match(m, parts)
            if result is False:
                return False
            unknown = unknown or result is None
        return None if unknown else True

    def rule(self) -> Rule | None:
        rules = tuple(r for key in self.keys if (r := key.rule()) is not None)
        return ("and", rules) if rules else None


@dataclass(frozen=True)
class Program:
    """A compiled SEARCH: the key tree and whether it used MODSEQ (RFC 7162 §3.1.5)."""

    key: Key
    uses_modseq: bool


def compile_search(charset: str | None, keys: list[p.Arg]) -> Program:
    """Compile the parser's search keys; raise SearchError or BadCharset."""
    if charset is not None and charset.upper() not in CHARSETS:
        raise BadCharset(charset)
    compiler = _Compiler(keys)
    result = []
    while not compiler.done():
        result.append(compiler.key(0))
    return Program(And(tuple(result)), compiler.uses_modseq)


class _Compiler:
    def __init__(self, keys: list[p.Arg]) -> None:
        self.items = keys
        self.pos = 0
        self.uses_modseq = False

    def done(self) -> bool:
        return self.pos >= len(self.items)

    def next(self) -> p.Arg:
        if self.done():
            raise SearchError("missing search argument")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def string(self) -> str:
        item = self.next()
        if isinstance(item, p.Atom):
            return item.value
        if isinstance(item, bytes):
            # 8-bit octets are UTF-8 (RFC 6855); anything else cannot match anyway.
            return item.decode("utf-8", "replace")
        raise SearchError("expected a string")

    def number(self, limit: int = 0xFFFFFFFF) -> int:
        text = self.string()
        if not text.isdigit() or len(text) > 19 or int(text) > limit:
            raise SearchError("expected a number")
        return int(text)

    def date(self) -> date:
        text = self.string()
        # RFC 3501 §9 date-text = date-day "-" date-month "-" date-year
        day, _, rest = text.partition("-")
        month, _, year = rest.partition("-")
        if (
            not (day.isdigit() and len(day) <= 2)
            or month.upper() not in _MONTHS
            or not (year.isdigit() and len(year) == 4)
        ):
            raise SearchError(f"invalid date {text!r}")
        try:
            return date(int(year), _MONTHS.index(month.upper()) + 1, int(day))
        except ValueError:
            raise SearchError(f"invalid date {text!r}") from None

    def key(self, depth: int) -> Key:
        if depth > MAX_DEPTH:
            raise SearchError("search keys nested too deeply")
        item = self.next()
        if isinstance(item, list):
            if not item:
                raise SearchError("empty parenthesized search keys")
            inner = _Compiler(item)
            keys = []
            while not inner.done():
                keys.append(inner.key(depth + 1))
            self.uses_modseq = self.uses_modseq or inner.uses_modseq
            return And(tuple(keys))
        if not isinstance(item, p.Atom):
            raise SearchError("expected a search key")
        name = item.value.upper()
        simple = _SIMPLE.get(name)
        if simple is not None:
            return simple
        if name[:1].isdigit() or name[:1] == "*":
            try:
                return Sequence(p.parse_sequence_set(item.value), uid=False)
            except ValueError as e:
                raise SearchError(str(e)) from None
        if name in _HEADER_KEYS:
            return Header(name, self.string().casefold())
        if name == "HEADER":
            field = self.string()
            return Header(field, self.string().casefold())
        if name in ("BODY", "TEXT"):
            return Text(self.string().casefold(), header=name == "TEXT")
        if name in ("KEYWORD", "UNKEYWORD"):
            return Flag(self.string(), present=name == "KEYWORD")
        if name in ("LARGER", "SMALLER"):
            return Size(name == "LARGER", self.number())
        if name in ("BEFORE", "ON", "SINCE"):
            return DateKey(name, self.date(), sent=False)
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return DateKey(name[4:], self.date(), sent=True)
        if name == "UID":
            try:
                return Sequence(p.parse_sequence_set(self.string()), uid=True)
            except ValueError as e:
                raise SearchError(str(e)) from None
        if name == "NOT":
            return Not(self.key(depth + 1))
        if name == "OR":
            return Or((self.key(depth + 1), self.key(depth + 1)))
        if name == "MODSEQ":
            # RFC 7162 §3.1.5: MODSEQ [entry-name SP entry-type-req SP] mod-sequence-valzer
            if not self.done() and isinstance(self.items[self.pos], bytes):
                self.next()
                if self.string().lower() not in ("priv", "shared", "all"):
                    raise SearchError("invalid MODSEQ entry type")
            self.uses_modseq = True
            return ModSeq(self.number(0x7FFFFFFFFFFFFFFF))
        raise SearchError(f"unknown search key {item.value}")


_SIMPLE: dict[str, Key] = {
    "ALL": All(),
    "ANSWERED": Flag("\\Answered", True),
    "DELETED": Flag("\\Deleted", True),
    "DRAFT": Flag("\\Draft", True),
    "FLAGGED": Flag("\\Flagged", True),
    "SEEN": Flag("\\Seen", True),
    "UNANSWERED": Flag("\\Answered", False),
    "UNDELETED": Flag("\\Deleted", False),
    "UNDRAFT": Flag("\\Draft", False),
    "UNFLAGGED": Flag("\\Flagged", False),
    "UNSEEN": Flag("\\Seen", False),
    "RECENT": Recent(True),
    "NEW": Recent(True, unseen=True),
    "OLD": Recent(False),
}
_HEADER_KEYS = ("FROM", "TO", "CC", "BCC", "SUBJECT")


def _internal_day(info: MessageInfo) -> date:
    return datetime.fromtimestamp(info.internal_date, UTC).date()


def _sent_day(parts: MessageParts) -> date | None:
    raw = parts.get("Date")
    if raw is None:
        return None
    try:
        return parsedate_to_datetime(raw.decode("latin-1")).date()
    except (TypeError, ValueError, IndexError):
        return None


def _decode_header(raw: bytes) -> str:
    """A header value as text: RFC 2047 encoded words decoded, 8-bit octets as UTF-8."""
    text = raw.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, ValueError, UnicodeError, binascii.Error):
        return text


def _body_texts(entity: MessageParts) -> list[str]:
    """The text of each part, transfer encoding and charset undone, case-folded."""
    if entity.is_multipart:
        return [t for child in entity.children for t in _body_texts(child)]
    inner = entity.encapsulated
    if inner is not None:
        return [_decode_header(inner.header).casefold(), *_body_texts(inner)]
    maintype, _, params = entity.content_type
    if maintype not in ("TEXT", "MESSAGE"):
        return []
    body = entity.body
    encoding = (entity.get("Content-Transfer-Encoding") or b"").strip().lower()
    try:
        if encoding == b"base64":
            body = binascii.a2b_base64(body)
        elif encoding == b"quoted-printable":
            body = quopri.decodestring(body)
    except (binascii.Error, ValueError):
        pass
    charset = dict(params).get("CHARSET", "utf-8")
    try:
        text = body.decode(charset, "replace")
    except LookupError:
        text = body.decode("utf-8", "replace")
    return [text.casefold()]
