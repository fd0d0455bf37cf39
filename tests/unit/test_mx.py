"""MX routing (RFC 5321 §5.1, RFC 7505) over a scripted dnspython resolver."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import pytest

from mailserver.queue.mx import MXHost, MXResolver, RouteError, parse_nameserver


@dataclass
class MXRecord:
    preference: int
    exchange: dns.name.Name


@dataclass
class AddressRecord:
    address: str


class FakeResolver:
    """Answers from {(name, type): records or an exception class}; records the queries."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.queries: list[tuple[str, str]] = []

    def resolve(self, name: str, rdtype: str, search: bool = True) -> list[Any]:
        assert search is False  # never the resolv.conf search list for mail domains
        self.queries.append((name, rdtype))
        answer = self.answers.get((name, rdtype), dns.resolver.NoAnswer)
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer()
        return answer


def mx(preference: int, host: str) -> MXRecord:
    return MXRecord(preference, dns.name.from_text(host))


def resolver(answers: dict[tuple[str, str], Any]) -> MXResolver:
    r = MXResolver(["127.0.0.1:5353"])
    r.resolver = FakeResolver(answers)  # type: ignore[assignment]
    return r


HOSTS = {
    ("a1.example.net", "A"): [AddressRecord("192.0.2.1")],
    ("a2.example.net", "A"): [AddressRecord("192.0.2.2")],
    ("b.example.net", "AAAA"): [AddressRecord("2001:db8::b")],
    ("b.example.net", "A"): [AddressRecord("192.0.2.3")],
}


def test_preference_order_with_equal_preferences_in_random_order() -> None:
    r = resolver(
        {
            ("example.net", "MX"): [
                mx(20, "b.example.net"),
                mx(10, "a1.example.net"),
                mx(10, "a2.example.net"),
            ],
            **HOSTS,
        }
    )
    orders = set()
    for seed in range(20):
        random.seed(seed)
        hosts = r.route_blocking("example.net")
        assert [h.preference for h in hosts] == [10, 10, 20]
        # IPv6 and IPv4 addresses of a host, IPv6 first.
        assert hosts[2] == MXHost("b.example.net", 20, ("2001:db8::b", "192.0.2.3"))
        orders.add(tuple(h.name for h in hosts[:2]))
    assert orders == {("a1.example.net", "a2.example.net"), ("a2.example.net", "a1.example.net")}


def test_no_mx_means_the_domain_itself() -> None:
    r = resolver({("example.net", "A"): [AddressRecord("192.0.2.9")]})
    assert r.route_blocking("example.net") == [MXHost("example.net", 0, ("192.0.2.9",))]


def test_null_mx_bounces_at_once() -> None:
    r = resolver({("example.net", "MX"): [MXRecord(0, dns.name.root)]})
    with pytest.raises(RouteError) as e:
        r.route_blocking("example.net")
    assert (e.value.reply.code, e.value.reply.enhanced) == (556, "5.1.10")
    assert e.value.reply.permanent
    assert r.resolver.queries == [("example.net", "MX")]  # type: ignore[attr-defined]


def test_no_such_domain_is_permanent_and_dns_failure_temporary() -> None:
    with pytest.raises(RouteError) as e:
        resolver({("example.net", "MX"): dns.resolver.NXDOMAIN}).route_blocking("example.net")
    assert (e.value.reply.code, e.value.reply.enhanced) == (550, "5.1.2")
    for failure in (dns.exception.Timeout, dns.resolver.NoNameservers):
        with pytest.raises(RouteError) as e:
            resolver({("example.net", "MX"): failure}).route_blocking("example.net")
        assert e.value.reply.code == 451 and not e.value.reply.permanent


def test_mx_hosts_without_addresses() -> None:
    # One host does not exist, another's lookup times out: the third is used.
    r = resolver(
        {
            ("example.net", "MX"): [
                mx(10, "gone.example.net"),
                mx(20, "slow.example.net"),
                mx(30, "a1.example.net"),
            ],
            ("gone.example.net", "A"): dns.resolver.NXDOMAIN,
            ("slow.example.net", "A"): dns.exception.Timeout,
            ("slow.example.net", "AAAA"): dns.exception.Timeout,
            **HOSTS,
        }
    )
    assert [h.name for h in r.route_blocking("example.net")] == ["a1.example.net"]
    # No host has an address: temporary if a lookup failed, permanent if none exists.
    r = resolver(
        {
            ("example.net", "MX"): [mx(10, "gone.example.net"), mx(20, "slow.example.net")],
            ("slow.example.net", "A"): dns.exception.Timeout,
        }
    )
    with pytest.raises(RouteError) as e:
        r.route_blocking("example.net")
    assert e.value.reply.code == 451
    r = resolver({("example.net", "MX"): [mx(10, "gone.example.net")]})
    with pytest.raises(RouteError) as e:
        r.route_blocking("example.net")
    assert (e.value.reply.code, e.value.reply.enhanced) == (550, "5.4.4")


def test_address_literals_skip_dns() -> None:
    r = resolver({})
    assert r.route_blocking("[192.0.2.7]") == [MXHost("[192.0.2.7]", 0, ("192.0.2.7",))]
    assert r.route_blocking("[IPv6:2001:db8::7]") == [
        MXHost("[IPv6:2001:db8::7]", 0, ("2001:db8::7",))
    ]
    assert r.resolver.queries == []  # type: ignore[attr-defined]


def test_nameserver_syntax() -> None:
    assert parse_nameserver("192.0.2.53") == ("192.0.2.53", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    for bad in ("ns.example.net", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)
