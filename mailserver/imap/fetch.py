"""Rendering message data for FETCH responses (RFC 3501 §6.4.5, §7.4.2).

The input is a stored message as bytes with CRLF line endings.  Nothing is
ever re-serialized: every section is a slice of the original bytes (except
HEADER.FIELDS[.NOT], a concatenation of original field lines).  Malformed
input never raises; broken MIME degrades to a single text/plain part.
"""

import re
import time
from dataclasses import dataclass
from functools import cached_property

from mailserver.imap.parser import Section, nstring, quote

__all__ = [
    "HeaderField",
    "MessageParts",
    "apply_partial",
    "bodystructure",
    "envelope",
    "format_internaldate",
    "section_bytes",
]

#: Deeper MIME nesting than this is treated as opaque text (bounds recursion).
MAX_MIME_DEPTH = 32

_CRLF = b"\r\n"
_UNFOLD = re.compile(rb"\r\n(?=[ \t])")  # RFC 5322 §2.2.3 unfolding


def _text(raw: bytes) -> str:
    """Decode header bytes losslessly: 8-bit octets survive as surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class HeaderField:
    """One header field: ``name`` is None for a line that is not a field at all."""

    name: str | None
    raw: bytes  # the field's lines as stored, folding and final CRLF included

    @property
    def value(self) -> bytes:
        """The unfolded value with surrounding whitespace stripped."""
        if self.name is None:
            return b""
        _, _, value = self.raw.partition(b":")
        return _UNFOLD.sub(b"", value).strip(b" \t\r\n")


# RFC 5322 §3.6.8: a field name is printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


def _split_fields(header: bytes) -> list[HeaderField]:
    fields: list[HeaderField] = []
    current: list[bytes] = []
    for line in header.split(_CRLF):
        if not line:
            break  # the blank line that ends the header
        if line[0] in b" \t" and current:
            current.append(line)  # RFC 5322 §2.2.3 continuation line
            continue
        if current:
            fields.append(_field(current))
        current = [line]
    if current:
        fields.append(_field(current))
    return fields


def _field(lines: list[bytes]) -> HeaderField:
    raw = _CRLF.join(lines) + _CRLF
    name, colon, _ = lines[0].partition(b":")
    name = name.rstrip(b" \t")  # RFC 5322 §4.5.2 obs: WSP before the colon
    if colon and _FIELD_NAME.fullmatch(name):
        return HeaderField(name.decode("ascii"), raw)
    return HeaderField(None, raw)


def _parse_params(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``value; a=b; c="d"`` into the value and parameters (RFC 2045 §5.1).

    Parameter names are upper-cased; values are unquoted but otherwise kept
    verbatim (RFC 2231 encodings are passed through).
    """
    pos = 0
    n = len(text)
    params: list[tuple[str, str]] = []

    def skip_cfws(i: int) -> int:
        while i < n:
            if text[i] in " \t\r\n":
                i += 1
            elif text[i] == "(":
                depth = 0
                while i < n:
                    if text[i] == "\\":
                        i += 1
                    elif text[i] == "(":
                        depth += 1
                    elif text[i] == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    i += 1
                i += 1
            else:
                break
        return i

    def token(i: int) -> tuple[str, int]:
        j = i
        while j < n and text[j] not in ' \t\r\n;=()"':
            j += 1
        return text[i:j], j

    pos = skip_cfws(pos)
    semi = text.find(";", pos)
    value = _COMMENT.sub("", text[pos:] if semi < 0 else text[pos:semi]).strip()
    pos = n if semi < 0 else semi
    while pos < n:
        pos = skip_cfws(pos + 1)  # skip the ";"
        name, pos = token(pos)
        pos = skip_cfws(pos)
        if pos >= n or text[pos] != "=" or not name:
            pos = text.find(";", pos)
            if pos < 0:
                break
            continue
        pos = skip_cfws(pos + 1)
        if pos < n and text[pos] == '"':
            out: list[str] = []
            pos += 1
            while pos < n and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < n:
                    pos += 1
                out.append(text[pos])
                pos += 1
            pos += 1
            param_value = "".join(out)
        else:
            param_value, pos = token(pos)
        params.append((name.upper(), param_value))
        pos = skip_cfws(pos)
        if pos < n and text[pos] != ";":
            pos = text.find(";", pos)
            if pos < 0:
                break
    return value, params


_COMMENT = re.compile(r"\([^()]*\)")  # RFC 5322 §3.2.2 comment (unnested)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")  # RFC 2045 §5.1 token


class MessageParts:
    """A parsed MIME entity: header and body located by offsets into ``raw``.

    The top-level message is ``MessageParts(raw)``; parts, sub-parts and
    encapsulated messages are ``MessageParts`` over the same buffer.  Header
    fields and children are parsed on first use.
    """

    def __init__(
        self,
        raw: bytes,
        start: int = 0,
        end: int | None = None,
        *,
        default_type: tuple[str, str] = ("TEXT", "PLAIN"),
        depth: int = 0,
    ) -> None:
        self.raw = raw
        self.start = start
        self.end = len(raw) if end is None else end
        self.depth = depth
        self._default_type = default_type
        if raw.startswith(_CRLF, start, self.end):
            # Empty header: the blank line comes first and the body follows it.
            self.header_end = start + 2
        else:
            split = raw.find(b"\r\n\r\n", start, self.end)
            # No blank line: everything is header and the body is empty.
            self.header_end = self.end if split < 0 else split + 4
        self.body_start = self.header_end

    @property
    def header(self) -> bytes:
        """The header including its terminating blank line (when present)."""
        return self.raw[self.start : self.header_end]

    @property
    def body(self) -> bytes:
        return self.raw[self.body_start : self.end]

    @property
    def whole(self) -> bytes:
        return self.raw[self.start : self.end]

    @cached_property
    def fields(self) -> list[HeaderField]:
        return _split_fields(self.header)

    def get(self, name: str) -> bytes | None:
        """The unfolded value of the first field called ``name`` (case-insensitive)."""
        wanted = name.upper()
        for f in self.fields:
            if f.name is not None and f.name.upper() == wanted:
                return f.value
        return None

    @cached_property
    def content_type(self) -> tuple[str, str, list[tuple[str, str]]]:
        """Upper-cased (type, subtype) and the parameters, as used for FETCH.

        A multipart without any recognisable body part, and any container type
        nested too deeply, is reported as text/plain so the output stays valid.
        """
        declared = self._declared_type
        if (declared[0] == "MULTIPART" and not self.children) or (
            self.depth >= MAX_MIME_DEPTH and declared[:2] == ("MESSAGE", "RFC822")
        ):
            return "TEXT", "PLAIN", [("CHARSET", "US-ASCII")]
        return declared

    @cached_property
    def _declared_type(self) -> tuple[str, str, list[tuple[str, str]]]:
        """The Content-Type header with RFC 2045 §5.2 defaults applied."""
        raw = self.get("Content-Type")
        if raw is not None:
            value, params = _parse_params(_text(raw))
            maintype, slash, subtype = value.partition("/")
            maintype, subtype = maintype.strip(), subtype.strip()
            if slash and _TOKEN.match(maintype) and _TOKEN.match(subtype):
                maintype, subtype = maintype.upper(), subtype.upper()
                if maintype == "TEXT" and not any(k == "CHARSET" for k, _ in params):
                    params.append(("CHARSET", "US-ASCII"))  # RFC 2046 §4.1.2
                if maintype != "MULTIPART" or self._boundary(params) is not None:
                    return maintype, subtype, params
            # RFC 2045 §5.2: an unparseable Content-Type means text/plain; us-ascii.
            return "TEXT", "PLAIN", [("CHARSET", "US-ASCII")]
        maintype, subtype = self._default_type
        if maintype == "TEXT":
            return maintype, subtype, [("CHARSET", "US-ASCII")]
        return maintype, subtype, []

    @staticmethod
    def _boundary(params: list[tuple[str, str]]) -> str | None:
        for key, value in params:
            # RFC 2046 §5.1.1: 1 to 70 characters.
            if key == "BOUNDARY" and 0 < len(value) <= 70:
                return value
        return None

    @property
    def is_multipart(self) -> bool:
        return self.content_type[0] == "MULTIPART"

    @property
    def is_message(self) -> bool:
        """message/rfc822 (RFC 2046 §5.2.1), whose body is itself a message."""
        return self.content_type[:2] == ("MESSAGE", "RFC822")

    @cached_property
    def children(self) -> list["MessageParts"]:
        """Body parts of a multipart entity; empty otherwise or when none are found."""
        maintype, subtype, params = self._declared_type
        boundary = self._boundary(params)
        if maintype != "MULTIPART" or boundary is None or self.depth >= MAX_MIME_DEPTH:
            return []
        # RFC 2046 §5.1.5: parts of multipart/digest default to message/rfc822.
        default = ("MESSAGE", "RFC822") if subtype == "DIGEST" else ("TEXT", "PLAIN")
        return [
            MessageParts(self.raw, a, b, default_type=default, depth=self.depth + 1)
            for a, b in _split_multipart(self.raw, self.body_start, self.end, _bytes(boundary))
        ]

    @cached_property
    def encapsulated(self) -> "MessageParts | None":
        """The message inside a message/rfc822 entity."""
        if not self.is_message:
            return None
        return MessageParts(self.raw, self.body_start, self.end, depth=self.depth + 1)


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Offsets of the body parts between delimiter lines (RFC 2046 §5.1.1).

    The CRLF before a delimiter belongs to the delimiter, so a part ends just
    before it.  Missing close-delimiter: the last part runs to the end.
    """
    dash = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while pos < end:
        hit = raw.find(dash, pos, end)
        if hit < 0:
            break
        pos = hit + len(dash)
        if hit != start and (hit - 2 < start or raw[hit - 2 : hit] != _CRLF):
            continue  # not at the beginning of a line
        close = raw.startswith(b"--", pos) and pos + 2 <= end
        after = pos + 2 if close else pos
        while after < end and raw[after] in b" \t":  # transport padding
            after += 1
        if after < end and not raw.startswith(_CRLF, after, end):
            continue  # "--boundaryX": some other line
        if part_start is not None:
            parts.append((part_start, max(part_start, hit - 2)))
        if close:
            return parts
        part_start = min(after + 2, end)
        pos = part_start
    if part_start is not None:
        parts.append((part_start, end))
    return parts


# ---------------------------------------------------------------------------
# Sections


def _part(root: MessageParts, path: tuple[int, ...]) -> MessageParts | None:
    """Walk a part path (RFC 3501 §6.4.5 part numbering)."""
    entity = root
    for step, n in enumerate(path):
        if step > 0 and not entity.is_multipart:
            # Below a message/rfc822 part, numbering continues in the enclosed message.
            if entity.encapsulated is None:
                return None
            entity = entity.encapsulated
        if entity.is_multipart:
            if n > len(entity.children):
                return None
            entity = entity.children[n - 1]
        elif n != 1:
            return None
        # A non-multipart message has exactly one part, "1": the message itself.
    return entity


def _header_fields(entity: MessageParts, names: tuple[str, ...], *, negate: bool) -> bytes:
    wanted = {n.upper() for n in names}
    picked = [
        f.raw
        for f in entity.fields
        if ((f.name is not None and f.name.upper() in wanted) != negate)
    ]
    # RFC 3501 §6.4.5: the subset of the header, ending with the blank line.
    return b"".join(picked) + _CRLF


def section_bytes(msg: MessageParts, section: Section) -> bytes:
    """The octets of ``BODY[section]``; empty for a section that does not exist."""
    if not section.part:
        entity: MessageParts | None = msg
    else:
        part = _part(msg, section.part)
        if part is None:
            return b""
        if section.text is None:
            return part.body
        if section.text == "MIME":
            return part.header
        # HEADER / TEXT after a part number only address a message/rfc822 part.
        entity = part.encapsulated
    if entity is None:
        return b""
    match section.text:
        case None:
            return entity.whole
        case "HEADER":
            return entity.header
        case "TEXT":
            return entity.body
        case "HEADER.FIELDS":
            return _header_fields(entity, section.fields, negate=False)
        case "HEADER.FIELDS.NOT":
            return _header_fields(entity, section.fields, negate=True)
    return b""


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    """Apply ``<offset.length>`` (RFC 3501 §6.4.5); beyond the end gives empty."""
    if partial is None:
        return data
    offset, length = partial
    return data[offset : offset + length]


# ---------------------------------------------------------------------------
# ENVELOPE


@dataclass(frozen=True)
class _Address:
    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    def render(self) -> bytes:
        def ns(v: str | None) -> bytes:
            return nstring(None if v is None else _bytes(v))

        return (
            b"(" + b" ".join(ns(v) for v in (self.name, self.adl, self.mailbox, self.host)) + b")"
        )


_SPECIALS = '()<>,:;@"[]\\'
# UW imapd's marker for an address without a domain: a NIL host would read as group syntax.
_MISSING_HOST = ".MISSING-HOST-NAME."


def _tokenize(text: str) -> list[tuple[str, str]]:
    """RFC 5322 §3.2 lexical tokens as (kind, value): kind is one of
    ``atom``, ``quoted``, ``comment``, ``literal`` (domain literal) or a special char.
    Unterminated constructs run to the end instead of failing."""
    tokens: list[tuple[str, str]] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            out: list[str] = []
            i += 1
            while i < n and text[i] != close:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            i += 1
            tokens.append(("quoted" if c == '"' else "literal", "".join(out)))
        elif c == "(":
            depth = 0
            out = []
            while i < n:
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    i += 1
                    ch = text[i]
                elif ch == "(":
                    depth += 1
                    if depth == 1:
                        i += 1
                        continue
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                out.append(ch)
                i += 1
            tokens.append(("comment", "".join(out)))
        elif c in _SPECIALS:
            tokens.append((c, c))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            tokens.append(("atom", text[i:j]))
            i = j
    return tokens


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    text = " ".join(v for k, v in tokens if k in ("atom", "quoted")).strip()
    return text or None


def _mailbox(tokens: list[tuple[str, str]]) -> _Address | None:
    """One mailbox: name-addr or addr-spec (RFC 5322 §3.4)."""
    comments = [v.strip() for k, v in tokens if k == "comment" and v.strip()]
    tokens = [t for t in tokens if t[0] != "comment"]
    if not tokens:
        return None
    adl = None
    if any(k == "<" for k, _ in tokens):
        lt = next(i for i, (k, _) in enumerate(tokens) if k == "<")
        name = _phrase(tokens[:lt])
        inner = [t for t in tokens[lt + 1 :] if t[0] != ">"]
        colon = next((i for i, (k, _) in enumerate(inner) if k == ":"), None)
        if inner and inner[0][0] == "@" and colon is not None:
            # RFC 5322 §4.4 obs-route, reported as the at-domain-list (RFC 3501 §7.4.2).
            adl = "".join(v for _, v in inner[:colon])
            inner = inner[colon + 1 :]
    else:
        name = None
        inner = tokens
    if name is None and comments:
        name = comments[-1]  # "user@host (Real Name)"
    at = max((i for i, (k, _) in enumerate(inner) if k == "@"), default=None)
    local_tokens = inner if at is None else inner[:at]
    local = "".join(v for _, v in local_tokens) or None
    if at is None:
        host = _MISSING_HOST if local else None
    else:
        host = "".join(f"[{v}]" if k == "literal" else v for k, v in inner[at + 1 :]) or None
        host = host or _MISSING_HOST
    if local is None and host is None and name is None:
        return None
    return _Address(name, adl, local, host)


def _address_list(value: bytes | None) -> bytes:
    """ENVELOPE address list (RFC 3501 §7.4.2), with group syntax, or NIL."""
    if value is None:
        return b"NIL"
    out: list[_Address] = []
    current: list[tuple[str, str]] = []
    angle = False
    in_group = False

    def flush() -> None:
        address = _mailbox(current)
        if address is not None:
            out.append(address)
        current.clear()

    for token in _tokenize(_text(value)):
        kind = token[0]
        if kind == "<":
            angle = True
        elif kind == ">":
            angle = False
        if angle or kind not in (",", ":", ";"):
            current.append(token)
        elif kind == ",":
            flush()
        elif kind == ":" and not in_group and not any(k in ("@", "<") for k, _ in current):
            # RFC 5322 §3.4 group: start marker has NIL host and the group name as mailbox.
            out.append(_Address(None, None, _phrase(current) or "", None))
            current.clear()
            in_group = True
        elif kind == ";" and in_group:
            flush()
            out.append(_Address(None, None, None, None))  # group end marker
            in_group = False
        else:
            current.append(token)
    flush()
    if in_group:
        out.append(_Address(None, None, None, None))
    if not out:
        return b"NIL"
    return b"(" + b"".join(a.render() for a in out) + b")"


def envelope(msg: MessageParts) -> bytes:
    """The ENVELOPE structure of ``msg`` (RFC 3501 §7.4.2)."""

    def addresses(name: str) -> bytes | None:
        value = msg.get(name)
        rendered = _address_list(value)
        return None if rendered == b"NIL" else rendered

    from_ = addresses("From")
    # RFC 3501 §7.4.2: absent or empty Sender / Reply-To default to From.
    sender = addresses("Sender") or from_
    reply_to = addresses("Reply-To") or from_
    items = [
        nstring(msg.get("Date")),
        nstring(msg.get("Subject")),
        from_ or b"NIL",
        sender or b"NIL",
        reply_to or b"NIL",
        addresses("To") or b"NIL",
        addresses("Cc") or b"NIL",
        addresses("Bcc") or b"NIL",
        nstring(msg.get("In-Reply-To")),
        nstring(msg.get("Message-ID")),
    ]
    return b"(" + b" ".join(items) + b")"


# ---------------------------------------------------------------------------
# BODY / BODYSTRUCTURE


def _params(params: list[tuple[str, str]]) -> bytes:
    # RFC 3501 §9 body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if not params:
        return b"NIL"
    return b"(" + b" ".join(quote(k) + b" " + quote(v) for k, v in params) + b")"


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _disposition(entity: MessageParts) -> bytes:
    # RFC 3501 §9 body-fld-dsp = "(" string SP body-fld-param ")" / nil (RFC 2183)
    raw = entity.get("Content-Disposition")
    if raw is None:
        return b"NIL"
    value, params = _parse_params(_text(raw))
    if not value:
        return b"NIL"
    return b"(" + quote(value.upper()) + b" " + _params(params) + b")"


def _language(entity: MessageParts) -> bytes:
    # RFC 3501 §9 body-fld-lang = nstring / "(" string *(SP string) ")" (RFC 3066 tags)
    raw = entity.get("Content-Language")
    if raw is None:
        return b"NIL"
    tags = [t.strip() for t in _text(raw).split(",") if t.strip()]
    if not tags:
        return b"NIL"
    if len(tags) == 1:
        return quote(tags[0])
    return b"(" + b" ".join(quote(t) for t in tags) + b")"


def _body(entity: MessageParts, extensible: bool) -> bytes:
    if entity.is_multipart:
        # RFC 3501 §9 body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        out = b"".join(_body(child, extensible) for child in entity.children)
        _, subtype, params = entity.content_type
        out += b" " + quote(subtype)
        if extensible:
            out += b" " + b" ".join(
                [
                    _params(params),
                    _disposition(entity),
                    _language(entity),
                    nstring(entity.get("Content-Location")),
                ]
            )
        return b"(" + out + b")"
    maintype, subtype, params = entity.content_type
    encoding = entity.get("Content-Transfer-Encoding")
    body = entity.body
    # RFC 3501 §9 body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP
    #                           body-fld-enc SP body-fld-octets
    fields = [
        quote(maintype),
        quote(subtype),
        _params(params),
        nstring(entity.get("Content-ID")),
        nstring(entity.get("Content-Description")),
        quote(_text(encoding).strip().upper() if encoding else "7BIT"),  # RFC 2045 §6.1
        b"%d" % len(body),
    ]
    inner = entity.encapsulated
    if inner is not None:
        # RFC 3501 §9 body-type-msg: ... SP envelope SP body SP body-fld-lines
        fields += [envelope(inner), _body(inner, extensible), b"%d" % _line_count(body)]
    elif maintype == "TEXT":
        fields.append(b"%d" % _line_count(body))  # body-type-text: body-fld-lines
    if extensible:
        # RFC 3501 §9 body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang
        #                              [SP body-fld-loc]]]
        fields += [
            nstring(entity.get("Content-MD5")),
            _disposition(entity),
            _language(entity),
            nstring(entity.get("Content-Location")),
        ]
    return b"(" + b" ".join(fields) + b")"


def bodystructure(msg: MessageParts, extensible: bool) -> bytes:
    """BODYSTRUCTURE (``extensible=True``) or BODY (``False``) of ``msg`` (RFC 3501 §7.4.2)."""
    return _body(msg, extensible)


# ---------------------------------------------------------------------------
# INTERNALDATE

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_internaldate(ts: float, offset_seconds: int = 0) -> bytes:
    """``"dd-Mon-yyyy hh:mm:ss +zzzz"`` with its quotes (RFC 3501 §9 date-time).

    ``offset_seconds`` is the zone's offset east of UTC; it is rounded to whole
    minutes since the zone field cannot express seconds.
    """
    minutes = round(offset_seconds / 60)
    t = time.gmtime(int(ts) + minutes * 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    # RFC 3501 §9 date-day-fixed = (SP DIGIT) / 2DIGIT
    text = (
        f'"{t.tm_mday:2d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} '
        f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{mins:02d}"'
    )
    return text.encode("ascii")
