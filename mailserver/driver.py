"""The thin Twisted protocol that moves bytes between a transport and a session.

It owns what a state machine must not: the transport, TLS, the idle timer, and the
pause while an effect (a password check, a durable delivery) is pending. Because the
session is asked for its next action only after the previous effect finished, pipelined
commands are answered strictly in order.

It is also the transport's streaming producer: while the transport says its write buffer
is full (a client reading a large FETCH slowly), the session is not asked for more, so a
long reply waits in the session instead of piling up in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer, ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.session import Close, Effect, Send, Session, StartTLS

if TYPE_CHECKING:
    from mailserver.trace import ConnectionTrace

EffectRunner = Callable[[Effect], Any]

# Stop reading from a client that keeps sending while its session is busy.
PAUSE_ABOVE = 1 << 20
# Replies that follow each other in one turn of the pump go out in one write, up to this
# many bytes (a long FETCH is sent in pieces of this size as it is built).
WRITE_ABOVE = 1 << 16


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data``, sending at once what the kernel takes when nothing waits before it.

    Twisted's ``write`` only buffers: it registers the socket for writability
    (``epoll_ctl``) and sends on the reactor's next turn, after another ``epoll_wait``,
    then unregisters it. For a reply to one command that is two system calls and a turn
    of the loop more than the send, and the client waits for all of them. asyncio's
    transports try ``send`` first for the same reason. Only a plain TCP connection
    qualifies: under TLS the bytes must go through the TLS layer, and whatever is already
    buffered (``dataBuffer``, ``_tempDataLen``) must go first.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # otherwise the connection is lost: write() finds out
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


@implementer(IPushProducer)
class SessionProtocol(Protocol, TimeoutMixin):
    """Drive one session over one connection."""

    log = Logger()

    def __init__(
        self,
        session: Session,
        run_effect: EffectRunner,
        idle_timeout: float | None,
        tls_context: Any = None,
        on_lost: list[Callable[[], None]] | None = None,
        trace: ConnectionTrace | None = None,
    ) -> None:
        self.session = session
        # The protocol trace (mailserver.trace) sees every byte in and out; None: off.
        self.trace = trace
        self.on_lost = on_lost or []
        self.run_effect = run_effect
        self.idle_timeout = idle_timeout
        self.tls_context = tls_context
        self._pending = False
        self._paused = False
        self._closing = False
        self._writes_blocked = False  # the transport's write buffer is full
        self._output: list[bytes] = []  # this turn's replies, not yet written
        self._output_size = 0

    # Twisted callbacks -------------------------------------------------------------
    def connectionMade(self) -> None:
        self.setTimeout(self.idle_timeout)
        # Every reply is written whole, so Nagle's algorithm only holds back the last
        # segment of a long one until the client's delayed ACK (up to 40 ms on Linux).
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.transport.registerProducer(self, True)
        if self.trace is not None:
            peer, host = self.transport.getPeer(), self.transport.getHost()
            self.trace.opened(str(getattr(peer, "host", peer)), getattr(host, "port", None))
        attach = getattr(self.session, "attach", None)
        if attach is not None:
            # Sessions that speak without being spoken to (IMAP IDLE) get a way to
            # ask for their pending output to be sent.
            attach(self._pump)
        self._pump()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        if self.trace is not None:
            self.trace.client_data(data)
        self.session.receive_data(data)
        self._pump()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self._closing = True
        self.session.connection_lost()
        if self.trace is not None:
            self.trace.closed()
        for callback in self.on_lost:
            callback()

    def timeoutConnection(self) -> None:
        if self._closing:
            return
        if self._pending:
            # The client is waiting for us (a slow disk, a delayed login answer), not
            # idle: the idle period starts again once the effect has been answered.
            # (TimeoutMixin has dropped its timer by now: set a new one.)
            self.setTimeout(self.idle_timeout)
            return
        reply = self.session.timed_out()
        if self.trace is not None:
            self.trace.server_data(reply)
        self.transport.write(reply)
        self._close()

    # IPushProducer: the transport's view of our output ---------------------------------
    def pauseProducing(self) -> None:
        self._writes_blocked = True

    def resumeProducing(self) -> None:
        if self._writes_blocked:
            self._writes_blocked = False
            self._pump()

    def stopProducing(self) -> None:
        self._writes_blocked = True

    # The pump -----------------------------------------------------------------------
    def _pump(self) -> None:
        try:
            self._pump_actions()
        except Exception:
            # A bug in a session must cost only its own connection.
            self.log.failure("session failed; closing its connection")
            self._close()

    def _pump_actions(self) -> None:
        try:
            while not self._pending and not self._closing and not self._writes_blocked:
                action = self.session.next_action()
                if action is None:
                    break
                if isinstance(action, Send):
                    if self.trace is not None:
                        self.trace.server_data(action.data)
                    self._output.append(action.data)
                    self._output_size += len(action.data)
                    if self._output_size >= WRITE_ABOVE:
                        self._flush()
                elif isinstance(action, Close):
                    self._flush()
                    self._close()
                elif isinstance(action, StartTLS):
                    self._flush()
                    self._start_tls()
                else:
                    self._run(action)
        finally:
            self._flush()
        self._flow_control()

    def _flush(self) -> None:
        """Write what the pump has collected (a write may pause us: _writes_blocked)."""
        if not self._output:
            return
        data = self._output[0] if len(self._output) == 1 else b"".join(self._output)
        self._output = []
        self._output_size = 0
        write_now(self.transport, data)

    def _run(self, effect: Effect) -> None:
        """Run an effect. A result that is there at once (a plain value, or a Deferred
        that has fired: a message read ahead, a lookup in memory) resumes the session
        here, and the pump's loop goes on: resuming from the callback would nest one
        pump in another for each such effect in a row, and a long FETCH would run out
        of stack."""
        self._pending = True
        try:
            result = self.run_effect(effect)
        except Exception:
            result = Failure()
        if not isinstance(result, defer.Deferred):
            self._resume(result)
            return
        at_once: list[Any] = []
        waiting = False

        def done(result: Any) -> None:
            if waiting:
                self._effect_done(result)
            else:
                at_once.append(result)

        result.addBoth(done)
        if at_once:
            self._resume(at_once[0])
        else:
            waiting = True
            self._flush()  # what the session said before it waits goes out now

    def _effect_done(self, result: Any) -> None:
        if self._resume(result):
            self._pump()

    def _resume(self, result: Any) -> bool:
        """Hand an effect's result to the session; whether the connection goes on."""
        self._pending = False
        if self._closing:
            return False
        self.resetTimeout()
        try:
            self.session.resume(result)
        except Exception:
            self.log.failure("session failed; closing its connection")
            self._close()
            return False
        return True

    def _flow_control(self) -> None:
        if self._closing:
            return
        # Nor from one that keeps sending while it does not read what we send.
        busy = (self._pending or self._writes_blocked) and self.session.buffered() > PAUSE_ABOVE
        if busy and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not busy and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def _start_tls(self) -> None:
        if self.tls_context is None or not ITLSTransport.providedBy(self.transport):
            self._close()
            return
        if self.trace is not None:
            self.trace.tls_started()
        self.transport.startTLS(self.tls_context)

    def close(self) -> None:
        """Close the connection from the server's side (at shutdown)."""
        if not self._closing:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self.setTimeout(None)
        self.transport.loseConnection()
