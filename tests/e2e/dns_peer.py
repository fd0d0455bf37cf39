"""A DNS server on loopback serving a test zone (twisted.names), for outbound routing."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.names import authority, dns, server
from twisted.python.failure import Failure


class ZoneAuthority(authority.FileAuthority):
    """An authority for ``origin`` with records given as {name: [Record_*]}.

    Queries for names under ``hold`` get no answer until :meth:`release` (a nameserver
    that hangs), and are then answered NXDOMAIN."""

    def __init__(self, origin: str, records: dict[str, list[Any]], hold: str = "") -> None:
        self._origin = origin
        self._given = records
        self._hold = hold.encode()
        self.held: list[tuple[bytes, defer.Deferred[Any]]] = []
        super().__init__(origin)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        if self._hold and name.lower().endswith(self._hold):
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((name.lower(), d))
            return d
        return super()._lookup(name, cls, type, timeout)

    def release(self) -> None:
        """Stop holding; answer every held query: no such domain."""
        self._hold = b""
        held, self.held = self.held, []
        for name, d in held:
            d.errback(Failure(dns.AuthoritativeDomainError(name)))

    def loadFile(self, filename: str) -> None:
        origin = self._origin.encode()
        soa = dns.Record_SOA(
            mname=b"ns." + origin, rname=b"root." + origin, serial=1, minimum=60, expire=3600
        )
        self.soa = (origin, soa)
        self.records = {origin: [soa]}
        for name, records in self._given.items():
            self.records.setdefault(name.lower().encode(), []).extend(records)


def mx(preference: int, host: str) -> dns.Record_MX:
    return dns.Record_MX(preference, host.encode())


def a(address: str) -> dns.Record_A:
    return dns.Record_A(address)


def aaaa(address: str) -> dns.Record_AAAA:
    return dns.Record_AAAA(address)


def null_mx() -> dns.Record_MX:
    """RFC 7505: ``MX 0 .``"""
    return dns.Record_MX(0, b"")


def listen_dns(reactor: Any, origin: str, records: dict[str, list[Any]]) -> IListeningPort:
    """Serve the zone over UDP on 127.0.0.1 at an ephemeral port."""
    return listen_authority(reactor, ZoneAuthority(origin, records))


def listen_authority(reactor: Any, zone: ZoneAuthority) -> IListeningPort:
    factory = server.DNSServerFactory(authorities=[zone])
    return reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
