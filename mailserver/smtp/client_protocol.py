"""Twisted glue for the SMTP client: connect, move bytes, start TLS, time out.

``mailserver.driver.SessionProtocol`` is built around a server session (a fixed idle
timeout, a reply to send on timeout, effects); the client needs a different timeout for
each reply it waits for and a Deferred with the outcome, so it has this small protocol.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mailserver.session import Close, Send, StartTLS
from mailserver.smtp.client import ClientSession, Outcome
from mailserver.trace import ConnectionTrace


class ClientProtocol(Protocol, TimeoutMixin):
    """Drives one ClientSession; ``done`` fires with its Outcome when the connection ends."""

    def __init__(
        self,
        session: ClientSession,
        tls_options: Any,
        trace: ConnectionTrace | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.session = session
        self.implicit_tls = implicit_tls
        self.tls_options = tls_options
        self.trace = trace  # the protocol trace: we are the client, the peer the server
        self.done: defer.Deferred[Outcome] = defer.Deferred()
        self._closing = False
        self._timing = False  # the reply timer has been started

    def connectionMade(self) -> None:
        if self.trace is not None:
            peer = self.transport.getPeer()
            self.trace.opened(str(getattr(peer, "host", peer)), getattr(peer, "port", None))
        if self.implicit_tls:
            # RFC 8314 §3.3: the handshake comes first; the greeting arrives inside TLS.
            self.transport.startTLS(self.tls_options)
            if self.trace is not None:
                self.trace.tls_started()
        self._pump()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.trace is not None:
            self.trace.server_data(data)
        self.session.receive_data(data)
        self._pump()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self._closing = True
        if self.trace is not None:
            self.trace.closed()
        self.session.connection_lost(f"connection lost: {reason.getErrorMessage()}")
        self.done.callback(self.session.outcome)

    def timeoutConnection(self) -> None:
        self.session.timed_out()
        self._pump()

    def _pump(self) -> None:
        replies = self.session.replies
        sent = False
        while not self._closing:
            action = self.session.next_action()
            if action is None:
                break
            if isinstance(action, Send):
                if self.trace is not None:
                    self.trace.client_data(action.data)
                self.transport.write(action.data)
                sent = True
            elif isinstance(action, StartTLS):
                # Bytes written from now on go out inside TLS, after the handshake.
                self.transport.startTLS(self.tls_options)
                if self.trace is not None:
                    self.trace.tls_started()
                self.session.tls_started()
            elif isinstance(action, Close):
                self._closing = True
                self.setTimeout(None)
                self.transport.loseConnection()
        if not self._closing and (sent or replies != self.session.replies or not self._timing):
            # RFC 5321 §4.5.3.2: the timeout is for a whole reply, and depends on which
            # reply we wait for; bytes of a reply that is still incomplete do not
            # restart it (a tarpit trickling a byte at a time would hold us forever).
            self._timing = True
            self.setTimeout(self.session.timeout())


def deliver(
    reactor: Any,
    address: str,
    port: int,
    session: ClientSession,
    tls_options: Any,
    connect_timeout: float,
    trace: ConnectionTrace | None = None,
    implicit_tls: bool = False,
) -> defer.Deferred[Outcome]:
    """Connect to ``address`` (IPv4 or IPv6) and run ``session``; never fails: a refused
    connection is an Outcome whose recipients are all to be tried again."""
    if ipaddress.ip_address(address).version == 6:
        endpoint: Any = TCP6ClientEndpoint(reactor, address, port, timeout=connect_timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, address, port, timeout=connect_timeout)
    protocol = ClientProtocol(session, tls_options, trace, implicit_tls)
    d = endpoint.connect(Factory.forProtocol(lambda: protocol))

    def failed(failure: Failure) -> Outcome:
        session.connection_lost(f"cannot connect to {address}: {failure.getErrorMessage()}")
        return session.outcome

    d.addCallbacks(lambda _: protocol.done, failed)
    return d
