"""The Twisted glue: ordering while an effect is pending, timeouts, flow control."""

from __future__ import annotations

import socket

from twisted.internet import defer, tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mailserver.driver import PAUSE_ABOVE, SessionProtocol, write_now
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import (
    CheckRecipient,
    CheckSender,
    DeliverMessage,
    SMTPLimits,
    SMTPSession,
)


def make(timeout: float | None = 300.0):  # type: ignore[no-untyped-def]
    clock = MemoryReactorClock()
    pending: list[tuple[object, defer.Deferred]] = []

    def run(effect: object) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        pending.append((effect, d))
        return d

    session = SMTPSession("mx.test", "127.0.0.1", "s1", SMTPLimits(), "postmaster@example.test")
    proto = SessionProtocol(session, run, timeout)
    proto.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, pending


def test_pipelined_commands_wait_for_a_pending_check() -> None:
    proto, transport, _, pending = make()
    transport.clear()
    proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nNOOP\r\n")
    ((effect, d),) = pending
    assert isinstance(effect, CheckSender)
    d.callback(Reply(250, "2.1.0", "Sender OK"))
    out = transport.value()
    assert out.endswith(b"250 2.1.0 Sender OK\r\n")  # NOOP waits behind the RCPT check
    effect, d = pending[1]
    assert isinstance(effect, CheckRecipient)
    transport.clear()
    d.callback(Reply(250, "2.1.5", "OK"))
    assert transport.value() == b"250 2.1.5 OK\r\n250 2.0.0 OK\r\n"


def test_a_failed_effect_becomes_a_temporary_error() -> None:
    proto, transport, _, pending = make()
    proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\n")
    pending[0][1].callback(Reply(250, "2.1.0", "OK"))
    pending[1][1].callback(Reply(250, "2.1.5", "OK"))
    transport.clear()
    proto.dataReceived(b"DATA\r\nhello\r\n.\r\n")
    effect, d = pending[2]
    assert isinstance(effect, DeliverMessage)
    assert transport.value() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    transport.clear()
    d.errback(OSError("disk full"))
    assert transport.value() == b"451 4.3.0 Local error in processing, try again later\r\n"


def test_idle_timeout_says_421_and_closes() -> None:
    proto, transport, clock, _ = make(timeout=300)
    clock.advance(299)
    assert not transport.disconnecting
    proto.dataReceived(b"NOOP\r\n")  # activity resets the timer
    clock.advance(299)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.value().endswith(b"421 4.4.2 mx.test Timeout, closing connection\r\n")
    assert transport.disconnecting


def test_no_idle_timeout_while_the_server_is_busy() -> None:
    proto, transport, clock, pending = make(timeout=300)
    proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\n")
    clock.advance(1000)  # the sender check takes long: the client is not idle
    assert not transport.disconnecting
    transport.clear()
    pending[0][1].callback(Reply(250, "2.1.0", "OK"))
    assert transport.value() == b"250 2.1.0 OK\r\n"
    clock.advance(299)  # a whole idle period from the answer
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.value().endswith(b"421 4.4.2 mx.test Timeout, closing connection\r\n")
    assert transport.disconnecting


def test_reading_pauses_while_a_busy_session_has_much_buffered() -> None:
    proto, transport, _, pending = make()
    proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\n")
    proto.dataReceived(b"NOOP\r\n" * (PAUSE_ABOVE // 6 + 10))
    assert transport.producerState == "paused"
    pending[0][1].callback(Reply(250, "2.1.0", "OK"))
    assert transport.producerState == "paused"  # now the RCPT check is pending
    pending[1][1].callback(Reply(250, "2.1.5", "OK"))
    assert transport.producerState == "producing"


def test_the_session_waits_while_the_transport_cannot_take_more() -> None:
    proto, transport, _, _ = make()
    assert transport.producer is proto and transport.streaming
    transport.clear()
    proto.pauseProducing()  # what the transport does when its write buffer is full
    proto.dataReceived(b"NOOP\r\nNOOP\r\n")
    assert transport.value() == b""
    proto.resumeProducing()
    assert transport.value() == b"250 2.0.0 OK\r\n" * 2


def test_quit_closes_after_the_reply() -> None:
    proto, transport, _, _ = make()
    transport.clear()
    proto.dataReceived(b"QUIT\r\nNOOP\r\n")
    assert transport.value() == b"221 2.0.0 mx.test closing connection\r\n"
    assert transport.disconnecting


def test_effects_answered_at_once_do_not_nest() -> None:
    """Thousands of effects whose results are there at once (checks answered from
    memory, messages read ahead) run in the pump's loop, not one inside the other."""
    checked: list[object] = []

    def run(effect: object) -> Reply:
        checked.append(effect)
        if isinstance(effect, CheckSender):
            return Reply(250, "2.1.0", "OK")
        return Reply(250, "2.1.5", "OK")

    session = SMTPSession("mx.test", "127.0.0.1", "s1", SMTPLimits(), "postmaster@example.test")
    proto = SessionProtocol(session, run, None)
    transport = StringTransport()
    proto.makeConnection(transport)
    count = 3000  # far past Python's recursion limit if each resume nested a pump
    proto.dataReceived(b"EHLO c.test\r\n" + b"MAIL FROM:<>\r\nRSET\r\n" * count)
    assert len(checked) == count
    assert transport.value().count(b"250 2.1.0 OK\r\n") == count
    assert transport.connected


def test_an_effect_that_raises_or_has_fired_resumes_the_session_at_once() -> None:
    """The effect runner may return a value, a Deferred (fired or not), or raise: an
    exception is a failed effect, as an errback would be."""

    def run(effect: object) -> object:
        if isinstance(effect, CheckSender):
            return defer.succeed(Reply(250, "2.1.0", "OK"))
        raise OSError("directory unavailable")

    session = SMTPSession("mx.test", "127.0.0.1", "s1", SMTPLimits(), "postmaster@example.test")
    proto = SessionProtocol(session, run, None)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nNOOP\r\n")
    assert transport.value().split(b"\r\n")[-4:] == [
        b"250 2.1.0 OK",
        b"451 4.3.0 Local error in processing, try again later",
        b"250 2.0.0 OK",
        b"",
    ]


class _TCPTransport(StringTransport):
    no_delay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


def test_nagle_is_off_so_the_end_of_a_long_reply_is_not_held_back() -> None:
    session = SMTPSession("mx.test", "127.0.0.1", "s1", SMTPLimits(), "postmaster@example.test")
    proto = SessionProtocol(session, lambda effect: None, 300.0)
    proto.callLater = MemoryReactorClock().callLater  # type: ignore[method-assign]
    transport = _TCPTransport()
    proto.makeConnection(transport)
    assert transport.no_delay is True


def _socket_connection() -> tuple[tcp.Connection, socket.socket, MemoryReactorClock]:
    """A real TCP-transport object over one end of a socket pair, on a memory reactor."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reactor = MemoryReactorClock()
    conn = tcp.Connection(ours, None, reactor)  # type: ignore[arg-type]
    conn.connected = 1
    return conn, theirs, reactor


def _received(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        chunks.append(chunk)


def test_write_now_sends_at_once_when_nothing_is_buffered() -> None:
    conn, theirs, reactor = _socket_connection()
    write_now(conn, b"250 OK\r\n")
    assert _received(theirs) == b"250 OK\r\n"
    assert conn not in reactor.getWriters()  # no writability round trip through epoll


def test_write_now_queues_behind_what_is_already_buffered() -> None:
    conn, theirs, _ = _socket_connection()
    conn.write(b"first ")
    write_now(conn, b"second")
    assert _received(theirs) == b""  # order first: nothing may overtake the buffer
    conn.doWrite()
    assert _received(theirs) == b"first second"


def test_write_now_buffers_what_the_kernel_does_not_take() -> None:
    conn, theirs, reactor = _socket_connection()
    data = bytes(range(256)) * 40_000  # ~10 MB, more than a socket buffer
    write_now(conn, data)
    assert conn in reactor.getWriters()
    got = [_received(theirs)]
    while conn in reactor.getWriters():
        conn.doWrite()
        got.append(_received(theirs))
    assert b"".join(got) == data


def test_write_now_leaves_a_tls_connection_to_its_tls_layer() -> None:
    conn, theirs, _ = _socket_connection()
    written: list[bytes] = []
    conn.TLS = True
    conn.protocol = type("TLS", (), {"write": lambda self, data: written.append(data)})()
    write_now(conn, b"secret")
    assert written == [b"secret"]
    assert _received(theirs) == b""


def test_replies_of_one_turn_go_out_in_one_write() -> None:
    proto, transport, _, _ = make()
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign]
    proto.dataReceived(b"EHLO c.test\r\nNOOP\r\nNOOP\r\n")
    assert len(writes) == 1
    assert writes[0].startswith(b"250-mx.test") and writes[0].endswith(b"250 2.0.0 OK\r\n" * 2)
