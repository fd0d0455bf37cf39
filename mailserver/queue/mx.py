"""Where mail for a domain goes: MX lookup (RFC 5321 §5.1, RFC 7505) with dnspython.

dnspython's resolver blocks, so each lookup runs in a thread. We chose that over
``twisted.names.client``: dnspython follows CNAMEs, tells NXDOMAIN from "no records" from
"server failure" cleanly, does EDNS and TCP fallback, and reads resolv.conf when no
nameserver is configured; a delivery makes a handful of lookups, so a thread each costs
nothing that matters. The threads are the resolver's own pool, not the reactor's: a
nameserver that never answers holds lookups for up to the DNS timeout, and must not
hold the threads that local deliveries and the spool fsync in.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from mailserver.smtp.reply import Reply


@dataclass(frozen=True)
class MXHost:
    name: str
    preference: int
    addresses: tuple[str, ...]


class RouteError(Exception):
    """No way to the domain; ``reply.permanent`` says whether to bounce or try later."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply)
        self.reply = reply


def parse_nameserver(text: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353`` as (address, port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    ipaddress.ip_address(host)  # raises ValueError for a name: nameservers are addresses
    if port and not port.isdigit():
        raise ValueError(f"bad port in {text!r}")
    return host, int(port or 53)


class MXResolver:
    """Resolves a domain to its mail hosts, in the order to try them."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        timeout: float = 10.0,
        threads: int = 10,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.threads = threads
        self.pool: ThreadPool | None = None  # started at the first lookup
        if nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(n)) for n in nameservers
            ]
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = timeout

    def stop(self) -> None:
        """Let the lookups under way finish (each within the DNS timeout), end the threads."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.stop()

    def _in_thread(self, function: Any, *args: Any) -> defer.Deferred[Any]:
        if self.pool is None:
            self.pool = ThreadPool(minthreads=0, maxthreads=self.threads, name="mailserver-dns")
            self.pool.start()
        return threads.deferToThreadPool(self.reactor, self.pool, function, *args)

    def route(self, domain: str) -> defer.Deferred[list[MXHost]]:
        """The hosts to try, best first; fails with RouteError."""
        return self._in_thread(self.route_blocking, domain)

    def route_blocking(self, domain: str) -> list[MXHost]:
        if domain.startswith("[") and domain.endswith("]"):
            # RFC 5321 §4.1.3: an address literal is delivered to that address.
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            return [MXHost(domain, 0, (literal,))]
        try:
            answer = self.resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise RouteError(Reply(550, "5.1.2", f"no such domain {domain}")) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX: the domain itself is the host (the implicit MX).
            hosts = [(0, domain)]
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            raise RouteError(Reply(451, "4.4.3", f"MX lookup for {domain} failed: {e}")) from e
        else:
            records = [(r.preference, r.exchange) for r in answer]
            if any(exchange == dns.name.root for _, exchange in records):
                # RFC 7505 §3: "MX 0 ." says the domain accepts no mail at all.
                raise RouteError(Reply(556, "5.1.10", f"{domain} accepts no mail (null MX)"))
            # RFC 5321 §5.1: lowest preference first, equal preferences in random order.
            random.shuffle(records)
            records.sort(key=lambda r: r[0])
            hosts = [(pref, exchange.to_text(omit_final_dot=True)) for pref, exchange in records]
        found = []
        temporary: Exception | None = None
        for preference, name in hosts:
            try:
                addresses = self.addresses(name)
            except RouteError as e:
                temporary = e
                continue
            if addresses:
                found.append(MXHost(name, preference, addresses))
        if not found:
            if temporary is not None:
                raise temporary
            raise RouteError(Reply(550, "5.4.4", f"no address for any mail host of {domain}"))
        return found

    def lookup_relay(self, name: str) -> defer.Deferred[tuple[str, ...]]:
        """The addresses of a configured host (the smarthost) through the system's
        resolver, in a thread: unlike MX routing, an admin's host name may live in
        /etc/hosts (``localhost``, a name on the LAN)."""
        return self._in_thread(system_addresses, name)

    def addresses(self, name: str) -> tuple[str, ...]:
        """IPv6 then IPv4 addresses of a host; empty when it has none."""
        found: list[str] = []
        failure: Exception | None = None
        for rdtype in ("AAAA", "A"):
            try:
                found.extend(r.address for r in self.resolver.resolve(name, rdtype, search=False))
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                pass
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
                failure = e
        if not found and failure is not None:
            raise RouteError(Reply(451, "4.4.3", f"address lookup for {name} failed: {failure}"))
        return tuple(found)


def system_addresses(name: str) -> tuple[str, ...]:
    """getaddrinfo's addresses of a host, in its order (RFC 6724), each once."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return ()
    found: list[str] = []
    for _, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return tuple(found)
