"""The contract between an I/O-free protocol session and the Twisted glue that drives it.

A session (SMTP, IMAP, POP3) is a state machine in the style of h11: bytes go in with
``receive_data``; ``next_action`` hands out what the session wants done next, one at a
time. Most actions are plain (send these bytes, close, start TLS). An :class:`Effect` is
a request for work the session cannot do itself (check a password, deliver a message);
the driver runs it, and while it runs the session is not asked for anything else, so
pipelined input waits its turn. The effect's outcome comes back through ``resume``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Send:
    """Write these bytes to the peer."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """Close the connection once everything before it has been written."""


@dataclass(frozen=True)
class StartTLS:
    """Start the TLS handshake now; the session has already discarded buffered input."""


class Effect:
    """Base for work the driver runs on the session's behalf (a login, a delivery...).

    The driver passes the effect to its runner and feeds the result (or the Failure)
    back with ``Session.resume``.
    """


Action = Send | Close | StartTLS | Effect


class Session(Protocol):
    """What the driver needs from a protocol state machine."""

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer (they are buffered until the session reads them)."""

    def next_action(self) -> Action | None:
        """The next thing to do, or None when the session needs more input."""

    def resume(self, result: Any) -> None:
        """The outcome of the last Effect: its value, or a twisted Failure."""

    def timed_out(self) -> bytes:
        """The reply to send before closing an idle connection (e.g. SMTP 421)."""

    def connection_lost(self) -> None:
        """The peer is gone: release whatever the session holds (locks, subscriptions)."""

    def buffered(self) -> int:
        """How many received bytes are waiting to be read (for flow control)."""


@dataclass(frozen=True)
class Authenticate(Effect):
    """Check a user name and password; the result is the canonical address or None."""

    username: str
    password: str
