"""Remote SMTP servers on 127.0.0.x for outbound tests, built on our own server session
(which refuses bare CR/LF and un-stuffs dots strictly), with scripted answers."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol

from mailserver.driver import SessionProtocol
from mailserver.session import Effect
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import CheckRecipient, DeliverMessage, SMTPLimits, SMTPSession


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes


@dataclass
class Peer:
    """``mode``: accept, reject (550 at RCPT), defer-once (451 at the end of DATA the
    first time), defer (451 always), hold (never answers the end of DATA)."""

    mode: str = "accept"
    # EHLO keywords this peer does not announce (an old server: {"8BITMIME"}).
    without: frozenset[str] = frozenset()
    received: list[Received] = field(default_factory=list)
    held: list[defer.Deferred[Reply]] = field(default_factory=list)
    deferred_once: bool = False

    def run_effect(self, effect: Effect) -> Any:
        if isinstance(effect, CheckRecipient):
            if self.mode == "reject":
                return Reply(550, "5.1.1", "No such user here")
            return Reply(250, "2.1.5", "OK")
        if not isinstance(effect, DeliverMessage):
            return Reply(250, "2.1.0", "OK")  # the sender check of our server session
        if self.mode == "defer" or (self.mode == "defer-once" and not self.deferred_once):
            self.deferred_once = True
            return Reply(451, "4.3.0", "Try again later")
        if self.mode == "hold":
            d: defer.Deferred[Reply] = defer.Deferred()
            self.held.append(d)
            return d
        env = effect.envelope
        self.received.append(Received(env.mail_from, list(env.rcpt_to), b"".join(effect.chunks)))
        return Reply(250, "2.0.0", "OK queued")


class _PeerFactory(Factory):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def buildProtocol(self, addr: Any) -> Protocol:
        session = _OldSession("peer.test", "client", "p", SMTPLimits(), "postmaster@peer.test")
        session.without = self.peer.without
        return SessionProtocol(session, self.peer.run_effect, 60)


class _OldSession(SMTPSession):
    """Our server session, announcing less than it can (an older server)."""

    without: frozenset[str] = frozenset()

    def extensions(self) -> list[str]:
        return [k for k in super().extensions() if k.split()[0] not in self.without]


class _Silent(Protocol):
    """Accepts the connection and never says a word (a tarpit)."""


class _HangUp(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


class Tarpit(Factory):
    """Silent connections the test can count and, at its end, close (and from then on,
    hang up on each new one)."""

    def __init__(self) -> None:
        self.connections: list[Protocol] = []
        self.hanging_up = False

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = _HangUp() if self.hanging_up else _Silent()
        protocol.factory = self
        self.connections.append(protocol)
        return protocol

    def open(self) -> int:
        return sum(1 for p in self.connections if p.connected)

    def close_all(self) -> None:
        self.hanging_up = True
        for protocol in self.connections:
            if protocol.connected:
                protocol.transport.loseConnection()


class _BrokenTLS(Protocol):
    """Offers STARTTLS, says 220 to it, then answers the handshake with garbage."""

    def connectionMade(self) -> None:
        self.transport.write(b"220 broken.test ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        if data.upper().startswith(b"EHLO"):
            self.transport.write(b"250-broken.test\r\n250 STARTTLS\r\n")
        elif data.upper().startswith(b"STARTTLS"):
            self.transport.write(b"220 go ahead\r\n")
        else:  # the client's TLS hello
            self.transport.write(b"this is not TLS\r\n" * 10)
            self.transport.loseConnection()


class BrokenTLSFirst(Factory):
    """The first connection gets a broken STARTTLS; later ones go to ``peer``."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connections += 1
        if self.connections == 1:
            protocol: Protocol = _BrokenTLS()
            protocol.factory = self
            return protocol
        return _PeerFactory(self.peer).buildProtocol(addr)


def listen_peer(reactor: Any, host: str, port: int, peer: Peer | None) -> IListeningPort:
    """An SMTP peer on host:port; ``peer`` None is a silent tarpit."""
    if peer is None:
        factory: Factory = Factory.forProtocol(_Silent)
    else:
        factory = _PeerFactory(peer)
    return reactor.listenTCP(port, factory, interface=host)


def common_port(hosts: list[str]) -> int:
    """A port free on every one of the loopback addresses (MX hosts share port 25)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind((hosts[0], 0))
        port = probe.getsockname()[1]
        others = []
        try:
            for host in hosts[1:]:
                s = socket.socket()
                others.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            probe.close()
            for s in others:
                s.close()
        return port
    raise RuntimeError("no common free port")
