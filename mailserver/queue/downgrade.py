"""Conversion of an 8-bit message to 7 bits, for a peer that does not announce 8BITMIME.

RFC 6152 §3 lets a client convert instead of bouncing; RFC 1652 §3 and RFC 2045/2046 say
how: every 8-bit or binary body part is re-encoded as quoted-printable (text) or base64
(the rest), and its Content-Transfer-Encoding field is replaced. The work is done on the
bytes: whatever needs no conversion (header order and folding, the other parts, preamble,
epilogue, line ends) is kept byte for byte; the `email` package only reads single header
sections. What cannot be converted without guessing (8-bit headers, which would need
SMTPUTF8, RFC 6532) makes the whole conversion fail, and the message is bounced.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

MAX_DEPTH = 50  # nested multiparts and message/rfc822 parts; deeper is refused

_DIRTY = re.compile(rb"[\x00\x80-\xff]")  # not allowed in 7bit data (RFC 2045 §2.7)
_LABELLED = re.compile(rb"(?im)^content-transfer-encoding:(?:\s|\([^()]*\))*(?:8bit|binary)")
_HEADER_END = re.compile(rb"(?:\A|(?<=\n))\r?\n")  # the first empty line
_FIELD = re.compile(rb"[^\n]*(?:\n|\Z)(?:[ \t][^\n]*(?:\n|\Z))*")  # a field and its folds
_CTE_FIELD = re.compile(rb"(?i)content-transfer-encoding[ \t]*:")
_MIME_VERSION_FIELD = re.compile(rb"(?i)mime-version[ \t]*:")
_LINE_END = re.compile(rb"\r?\n")
_QP_ESCAPED = re.compile(rb"[^\t !-<>-~]+")  # all but tab, space and printables other than =
_IDENTITY = ("7bit", "8bit", "binary")


def to_7bit(message: bytes) -> bytes | None:
    """The message with every 8-bit or binary MIME body part re-encoded in 7 bits;
    None when it cannot be done (8-bit octets in a header section, in a multipart
    preamble/epilogue, in a multipart without a usable boundary, nesting deeper than
    MAX_DEPTH, a message/global or any message/* but message/rfc822 that would need a
    change, 8-bit octets in a part with an unknown Content-Transfer-Encoding).

    A message with nothing to convert (no octet > 0x7F or NUL, no part labelled 8bit or
    binary) is returned as it is. Otherwise, part by part:

    - text/* (or no Content-Type, RFC 2045 §5.2) labelled 7bit/8bit or unlabelled:
      quoted-printable. Each line end of the message's convention (CRLF; LF if its first
      line ends in a bare LF) becomes a hard line break; every other octet, any other CR
      or LF included, is kept or escaped, so decoding gives back exactly the same octets.
    - labelled binary, or any other type: base64 of the body's bytes, in 76-character lines.
    - multipart/* and message/rfc822: converted recursively; an 8bit or binary label on
      them is removed (7bit is the default).
    - labelled base64 or quoted-printable, yet with 8-bit octets (broken, but sent): base64
      loses those octets, since decoders ignore octets outside its alphabet (RFC 2045 §6.8);
      quoted-printable is decoded as readers do (a stray 8-bit octet stands for itself)
      and encoded again as above. Either way the reader sees what it would have seen.

    A part whose header section gets a new Content-Transfer-Encoding gets it at the end;
    a message header (top level or message/rfc822) without MIME-Version also gets
    ``MIME-Version: 1.0``, without which the encoding means nothing (RFC 2045 §4). A
    multipart without its close delimiter is taken to run to the end, as MTAs do; if
    something in it is converted, the close delimiter is added.
    """
    if _DIRTY.search(message) is None and _LABELLED.search(message) is None:
        return message
    first_lf = message.find(b"\n")
    nl = b"\n" if first_lf != -1 and message[first_lf - 1 : first_lf] != b"\r" else b"\r\n"
    return _entity(message, nl, 0, "text/plain", is_message=True)


def _entity(raw: bytes, nl: bytes, depth: int, default_type: str, is_message: bool) -> bytes | None:
    """One entity (a message or a body part) converted, or None."""
    if depth > MAX_DEPTH:
        return None
    end = _HEADER_END.search(raw)
    header, sep, body = (raw[: end.start()], end[0], raw[end.end() :]) if end else (raw, b"", b"")
    if _DIRTY.search(header):
        return None
    fields = BytesHeaderParser(policy=compat32).parsebytes(header)
    fields.set_default_type(default_type)
    ctype = fields.get_content_type()
    cte = re.sub(r"\([^()]*\)|\s", "", str(fields.get("Content-Transfer-Encoding", ""))).lower()
    cte = cte or "7bit"
    dirty = _DIRTY.search(body) is not None

    if ctype.startswith(("multipart/", "message/")):
        if cte not in _IDENTITY or (ctype != "message/rfc822" and ctype.startswith("message/")):
            # RFC 2045 §6.4: composite types are never encoded; message/global needs SMTPUTF8.
            return raw if cte not in ("8bit", "binary") and not dirty else None
        if ctype == "message/rfc822":
            new = _entity(body, nl, depth + 1, "text/plain", is_message=True)
        else:
            new = _multipart(body, fields, nl, depth)
        if new is None:
            return None
        if cte == "7bit" and new == body:
            return raw
        return _replace_cte(header, None, nl, is_message) + sep + new

    if cte in ("quoted-printable", "base64"):
        if not dirty:
            return raw
        if cte == "base64":
            return header + sep + _DIRTY.sub(b"", body)
        body, cte = binascii.a2b_qp(body), "8bit"
    elif cte not in _IDENTITY:
        return None if dirty else raw  # an encoding we do not know cannot be redone
    elif cte == "7bit" and not dirty:
        return raw
    if ctype.startswith("text/") and cte != "binary":
        name, encoded = b"quoted-printable", _quoted_printable(body, nl)
    else:
        name, b64 = b"base64", base64.b64encode(body)
        encoded = nl.join(b64[i : i + 76] for i in range(0, len(b64), 76))
        if encoded and body.endswith(b"\n"):
            encoded += nl  # the part ends with a line end, as it did
    return _replace_cte(header, name, nl, is_message) + sep + encoded


def _multipart(body: bytes, fields: Message, nl: bytes, depth: int) -> bytes | None:
    """A multipart body with each body part converted (RFC 2046 §5.1.1), or None."""
    boundary = fields.get_boundary()
    # Lenient about the 70-character limit, but a delimiter line must fit in 998 octets.
    if not boundary or not re.fullmatch(r"[ -~]{1,994}", boundary):
        return None if _DIRTY.search(body) else body
    default = "message/rfc822" if fields.get_content_subtype() == "digest" else "text/plain"
    # The line end before a delimiter belongs to it, the one after it to the part. A CRLF
    # message may have LF line ends too; in an LF message a CR before the LF is the part's.
    line_end = rb"\r?\n" if nl == b"\r\n" else rb"\n"
    delimiter = re.compile(
        rb"(?:\A|" + line_end + rb")--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?=\r?\n|\Z)"
    )
    delimiters: list[re.Match[bytes]] = []
    for found in delimiter.finditer(body):
        delimiters.append(found)
        if found[1]:
            break
    if not delimiters:
        return None if _DIRTY.search(body) else body
    closed = delimiters[-1][1] is not None
    preamble = body[: delimiters[0].start()]
    epilogue = body[delimiters[-1].end() :] if closed else b""
    if _DIRTY.search(preamble) or _DIRTY.search(epilogue):
        return None
    out = [preamble]
    changed = False
    tail = b""  # a line end that ends an unclosed multipart
    for found, after in zip(delimiters, [*delimiters[1:], None], strict=True):
        out.append(found[0])
        if found[1]:
            break
        part = body[found.end() : after.start() if after else len(body)]
        lead = _LINE_END.match(part)
        if lead:
            out.append(lead[0])
            part = part[lead.end() :]
        last_end = re.search(line_end + rb"\Z", part) if after is None else None
        if last_end:  # no close delimiter: the rest is the last part, its line end the delimiter's
            tail, part = last_end[0], part[: last_end.start()]
        new = _entity(part, nl, depth + 1, default, is_message=False)
        if new is None:
            return None
        changed = changed or new != part
        out.append(new)
    if not changed:
        return body
    if closed:
        out.append(epilogue)
    else:
        out += (nl, b"--", boundary.encode(), b"--", tail)
    return b"".join(out)


def _replace_cte(header: bytes, cte: bytes | None, nl: bytes, is_message: bool) -> bytes:
    """The header section without its Content-Transfer-Encoding fields, then `cte` if any."""
    fields = [f for f in _FIELD.findall(header) if f and not _CTE_FIELD.match(f)]
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += nl
    if cte is not None:
        if is_message and not any(_MIME_VERSION_FIELD.match(f) for f in fields):
            fields.append(b"MIME-Version: 1.0" + nl)
        fields.append(b"Content-Transfer-Encoding: " + cte + nl)
    return b"".join(fields)


def _quoted_printable(data: bytes, nl: bytes) -> bytes:
    """`data` in quoted-printable (RFC 2045 §6.7), each `nl` in it a hard line break.

    Encoded lines have at most 76 characters, no trailing space or tab, and never start
    with "-", so that no line can be taken for a multipart delimiter."""
    out: list[bytes] = []
    lines = data.split(nl)
    for number, line in enumerate(lines):
        enc = _QP_ESCAPED.sub(lambda run: b"=" + binascii.hexlify(run[0], b"=").upper(), line)
        if enc.endswith((b" ", b"\t")):
            enc = enc[:-1] + b"=%02X" % enc[-1]
        pos = 0
        while True:
            head, room = b"", 76
            if enc[pos : pos + 1] == b"-":
                head, room, pos = b"=2D", 73, pos + 1
            if len(enc) - pos <= room:
                out += (head, enc[pos:], nl if number < len(lines) - 1 else b"")
                break
            cut = pos + room - 1  # room for the "=" of the soft line break
            escape = enc.rfind(b"=", cut - 2, cut)  # do not split an "=XX"
            cut = escape if escape != -1 else cut
            out += (head, enc[pos:cut], b"=", nl)
            pos = cut
    return b"".join(out)
