"""Connection limits shared by every listener: overall and per client address.

A connection over a limit gets the protocol's standard refusal (SMTP 421 4.7.0, IMAP
BYE, POP3 -ERR) and is closed at once, before any session is built for it.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from mailserver.driver import SessionProtocol
from mailserver.session import Session
from mailserver.trace import ConnectionTrace, Tracer

log = Logger()


def peer_host(addr: IAddress) -> str:
    return str(getattr(addr, "host", addr))


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """Whether a peer's address is a loopback one (kept for the last peers: ipaddress
    takes some 5 µs to parse one, for every connection)."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def new_session_id() -> str:
    return secrets.token_hex(6)


class Refuse(Protocol):
    """Says one line and hangs up."""

    def __init__(self, line: bytes) -> None:
        self.line = line

    def connectionMade(self) -> None:
        self.transport.write(self.line)
        self.transport.loseConnection()


@dataclass
class SessionSpec:
    """What a factory needs to connect a new client to its session."""

    session: Session
    run_effect: Any
    idle_timeout: float
    on_lost: list[Any] = field(default_factory=list)


class LimitedFactory(Factory):
    """Counts connections; subclasses say how to build a session (``build_session``)."""

    refusal = b""
    tls: Any = None  # offered for STARTTLS when set
    noisy = False  # our own connect/disconnect events say more than "Starting factory"
    tracer: Tracer | None = None  # set by the service when trace mode is on
    implicit_tls = False  # set by the service for the 465/993/995 listeners

    def __init__(self, role: str, max_connections: int, max_connections_per_client: int) -> None:
        self.role = role
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.connections: Counter[str] = Counter()
        # The live connections, each with a Deferred that fires when it is gone.
        self.live: dict[SessionProtocol, defer.Deferred[None]] = {}

    def build_session(self, addr: IAddress, session_id: str) -> SessionSpec:
        raise NotImplementedError

    def buildProtocol(self, addr: IAddress) -> Protocol:
        peer = peer_host(addr)
        total = sum(self.connections.values())
        if (
            total >= self.max_connections
            or self.connections[peer] >= self.max_connections_per_client
        ):
            log.warn(
                "{role} refused connection from {peer}: too many connections",
                role=self.role,
                peer=peer,
            )
            refuse = Refuse(self.refusal)
            refuse.factory = self
            return refuse
        session_id = new_session_id()
        spec = self.build_session(addr, session_id)
        self.connections[peer] += 1
        log.info(
            "{role} connect session={session} peer={peer}",
            role=self.role,
            session=session_id,
            peer=peer,
        )

        def release() -> None:
            self.connections[peer] -= 1
            if self.connections[peer] <= 0:
                del self.connections[peer]
            log.info("{role} disconnect session={session}", role=self.role, session=session_id)
            gone = self.live.pop(proto, None)
            if gone is not None:
                gone.callback(None)

        proto = SessionProtocol(
            spec.session,
            spec.run_effect,
            spec.idle_timeout,
            tls_context=self.tls,
            on_lost=[release, *spec.on_lost],
            trace=self._trace(session_id),
        )
        proto.factory = self
        self.live[proto] = defer.Deferred()
        return proto

    def close_all(self, clock: IReactorTime, grace: float = 5.0) -> defer.Deferred[None]:
        """Close every live connection (at shutdown); fires once all are gone.

        Each is closed cleanly first (what was written is flushed, TLS says close_notify);
        one that is still open after ``grace`` seconds is aborted.
        """
        waiting = list(self.live.values())
        for proto in list(self.live):
            proto.close()
        if not waiting:
            return defer.succeed(None)
        done = defer.DeferredList(waiting)

        def abort() -> None:
            for proto in list(self.live):
                proto.transport.abortConnection()

        timer = clock.callLater(grace, abort)
        done.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return done

    def _trace(self, session_id: str) -> ConnectionTrace | None:
        if self.tracer is None:
            return None
        # SMTPFactory keeps its SMTPRole in ``role``; the trace wants the name.
        return self.tracer.connection(self.role, session_id, self.implicit_tls)
