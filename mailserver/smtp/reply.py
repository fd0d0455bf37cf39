"""SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str  # "" when the reply carries no enhanced status code (greeting, EHLO)
    text: str | tuple[str, ...]
    # The reply on the wire, made once: the common ones (250 to MAIL and RCPT, 354) are
    # module constants, sent for every message.
    encoded: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", self._encode())

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    def encode(self) -> bytes:
        """``code-text`` continuation lines and a final ``code text`` (RFC 5321 §4.2.1)."""
        return self.encoded

    def _encode(self) -> bytes:
        lines = self.lines()
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            prefix = f"{self.enhanced} " if self.enhanced else ""
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8")


OK = Reply(250, "2.0.0", "OK")
