"""Connection limits per listener and per client address."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mailserver.limits import LimitedFactory, Refuse, SessionSpec, is_loopback
from mailserver.smtp.session import SMTPLimits, SMTPSession

CLOCK = MemoryReactorClock()


class Factory(LimitedFactory):
    refusal = b"421 4.7.0 Too many connections, try again later\r\n"

    def build_session(self, addr, session_id):  # type: ignore[no-untyped-def]
        session = SMTPSession("mx.test", addr.host, session_id, SMTPLimits(), "postmaster@x.test")
        return SessionSpec(session, lambda effect: None, 300)


def connect(factory: Factory, host: str):  # type: ignore[no-untyped-def]
    proto = factory.buildProtocol(IPv4Address("TCP", host, 1234))
    proto.callLater = CLOCK.callLater  # idle timers on a fake clock, not the reactor
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_per_client_and_total_limits() -> None:
    factory = Factory("MTA", max_connections=3, max_connections_per_client=2)
    first, _ = connect(factory, "192.0.2.1")
    connect(factory, "192.0.2.1")
    refused, transport = connect(factory, "192.0.2.1")
    assert isinstance(refused, Refuse)
    assert transport.value() == b"421 4.7.0 Too many connections, try again later\r\n"
    assert transport.disconnecting
    connect(factory, "192.0.2.2")
    refused, _ = connect(factory, "192.0.2.3")  # the listener is full
    assert isinstance(refused, Refuse)
    first.connectionLost(None)  # a slot is free again
    again, transport = connect(factory, "192.0.2.1")
    assert not isinstance(again, Refuse)
    assert transport.value().startswith(b"220 ")


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.5.6.7") and is_loopback("::1")
    assert not is_loopback("192.0.2.1") and not is_loopback("not an address")
