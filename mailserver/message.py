"""Facts about a message's octets that several roles need (the MSA, the SMTP client)."""

from __future__ import annotations

from collections.abc import Iterable


def header_section(chunks: Iterable[bytes]) -> bytes:
    """The header section of a message given in chunks, up to and including the CRLF
    that ends its last field, joining only the chunks it takes; the whole message when
    it has no empty line."""
    seen = b""
    for chunk in chunks:
        start = max(len(seen) - 3, 0)
        seen += chunk
        end = seen.find(b"\r\n\r\n", start)
        if end >= 0:
            return seen[: end + 2]
    return seen
