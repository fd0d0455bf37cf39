"""Stopping the service closes the sessions still open and waits until they are gone."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from tests.e2e.harness import ServerTestCase


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.greeted: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.greeted.called:
            self.greeted.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class Shutdown(ServerTestCase):
    async def connect(self, role: str) -> Recorder:
        client = Recorder()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[role]), client)
        return client

    async def test_stop_closes_open_sessions(self) -> None:
        server = await self.start_server()
        # One of each kind, and a client on the IMAPS port that never starts its handshake.
        clients = [await self.connect(role) for role in ("smtp", "imap", "pop3", "imaps")]
        for client in clients[:3]:
            await client.greeted
        self.assertEqual(sum(len(f.live) for f in server.factories), 4)
        server.shutdown_grace = 0.2  # the silent TLS client is aborted after it
        await server.stopService()
        self.assertEqual([f.live for f in server.factories], [{}] * len(server.factories))
        for client in clients:
            await client.lost
        self.assertTrue(clients[0].received.startswith(b"220 "))
