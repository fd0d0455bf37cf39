"""Modified UTF-7 mailbox name encoding (RFC 3501 §5.1.3).

IMAP4rev1 clients send and expect mailbox names in "modified UTF-7": printable
US-ASCII stands for itself (``&`` is written ``&-``), everything else is
UTF-16BE, base64-encoded with ``,`` instead of ``/`` and no padding, between
``&`` and ``-``.
"""

import binascii

__all__ = ["UTF7Error", "decode_mailbox", "encode_mailbox"]


class UTF7Error(ValueError):
    """A mailbox name is not valid modified UTF-7."""


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _is_direct(ch: str) -> bool:
    # RFC 3501 §5.1.3: printable US-ASCII (0x20-0x7e) represents itself.
    return "\x20" <= ch <= "\x7e"


def _encode_run(run: str) -> str:
    raw = run.encode("utf-16-be")
    b64 = binascii.b2a_base64(raw, newline=False).rstrip(b"=")
    return "&" + b64.replace(b"/", b",").decode("ascii") + "-"


def encode_mailbox(name: str) -> str:
    """Encode a Unicode mailbox name as modified UTF-7 for the wire."""
    out: list[str] = []
    run_start: int | None = None
    for i, ch in enumerate(name):
        if _is_direct(ch):
            if run_start is not None:
                out.append(_encode_run(name[run_start:i]))
                run_start = None
            # RFC 3501 §5.1.3: "&" is represented as "&-".
            out.append("&-" if ch == "&" else ch)
        elif run_start is None:
            run_start = i
    if run_start is not None:
        out.append(_encode_run(name[run_start:]))
    return "".join(out)


def _decode_run(b64: str) -> str:
    data = b64.encode("ascii")
    if not data or not set(data) <= _B64_ALPHABET:
        raise UTF7Error("invalid base64 in modified UTF-7 run")
    # No padding on the wire (RFC 3501 §5.1.3); a length of 1 mod 4 can never be valid.
    if len(data) % 4 == 1:
        raise UTF7Error("truncated modified UTF-7 run")
    padded = data.replace(b",", b"/") + b"=" * (-len(data) % 4)
    raw = binascii.a2b_base64(padded)
    # Re-encoding must reproduce the input exactly, which rejects non-zero pad bits.
    if binascii.b2a_base64(raw, newline=False).rstrip(b"=") != data.replace(b",", b"/"):
        raise UTF7Error("non-canonical modified UTF-7 run")
    if len(raw) % 2:
        raise UTF7Error("odd number of UTF-16 octets")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise UTF7Error("invalid UTF-16 in modified UTF-7 run") from exc
    # RFC 3501 §5.1.3: printable US-ASCII MUST NOT be base64-encoded.
    if any(_is_direct(ch) for ch in text):
        raise UTF7Error("printable ASCII encoded in modified UTF-7 run")
    return text


def decode_mailbox(wire: str) -> str:
    """Decode a modified UTF-7 mailbox name; raise UTF7Error if it is malformed.

    Only canonical encodings are accepted, so ``encode_mailbox(decode_mailbox(x)) == x``
    for every accepted ``x``: two spellings of one name cannot denote two mailboxes.
    """
    out: list[str] = []
    i = 0
    n = len(wire)
    previous_was_run = False
    while i < n:
        ch = wire[i]
        if ch == "&":
            end = wire.find("-", i + 1)
            if end < 0:
                raise UTF7Error("unterminated modified UTF-7 run")
            if end == i + 1:
                out.append("&")
                previous_was_run = False
            else:
                if previous_was_run:
                    # Adjacent runs must be merged into one by a canonical encoder.
                    raise UTF7Error("adjacent modified UTF-7 runs")
                out.append(_decode_run(wire[i + 1 : end]))
                previous_was_run = True
            i = end + 1
        elif _is_direct(ch):
            out.append(ch)
            previous_was_run = False
            i += 1
        else:
            raise UTF7Error(f"character {ch!r} not allowed in modified UTF-7")
    return "".join(out)
