"""A helper process that reads and renames message files beside the reactor's threads.

The reactor and the threads share one interpreter lock: a thread that reads 100,000
files takes it back after every system call, so a second thread only takes turns with
the first (measured: 12.6 µs a file against 10.1 with one). A process has its own lock.
When a folder first has to measure thousands of files that other programs wrote
(``UID FETCH 1:* RFC822.SIZE`` after SELECT), or a SEARCH screens thousands of headers,
the store gives half of them to this process and half to a thread, and the halves are
read at the same time on two cores. A STORE's renames run here too, a batch ahead of the
reactor, which meanwhile reports the batch before (Folder.set_flags_many).

The child runs :mod:`mailserver.store.jobs`. When it is not there, or dies, the caller
gets :class:`WorkerGone` and does the job in a thread; the next call starts a new child.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pickle
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.store.jobs import HEADER, frame

log = Logger()

# How long a stopping child may take to finish its last job before it is killed.
STOP_SECONDS = 5.0


# A pipe holds 64 KiB; a job of 1000 renames is twice that. The reactor writes the rest
# only when it next polls, so a job sent before a long stretch of work on the reactor
# would wait for it, half read, instead of running beside it.
PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Let the pipe hold PIPE_BYTES, where Linux allows it (else it keeps its size)."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class WorkerGone(Exception):
    """The helper process is not running (exited or killed)."""


class FileWorker:
    """The server's side: starts the child, sends it jobs, fires their Deferreds."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._protocol: _WorkerProtocol | None = None
        self._ids = itertools.count(1)

    def start(self) -> None:
        """Start the child now, if it is not running (it takes ~30 ms to come up)."""
        if self._protocol is not None:
            return
        proto = _WorkerProtocol(self)
        process = self.reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-m", "mailserver.store.jobs"],
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: 2},
        )
        for pipe in getattr(process, "pipes", {}).values():
            _widen(pipe.fileno())
        self._protocol = proto

    def stop(self) -> defer.Deferred[None]:
        """Close the child's stdin; fires once it has exited (it answers what it was sent
        first), or has been killed after STOP_SECONDS."""
        proto, self._protocol = self._protocol, None
        if proto is None or proto.ended.called:
            return defer.succeed(None)
        proto.transport.closeStdin()
        kill = self.reactor.callLater(STOP_SECONDS, proto.kill)
        proto.ended.addBoth(lambda _: kill.cancel() if kill.active() else None)
        return proto.ended

    @property
    def pid(self) -> int | None:
        proto = self._protocol
        return None if proto is None or proto.transport is None else proto.transport.pid

    def call(self, name: str, *args: Any) -> defer.Deferred[Any]:
        """Fires with ``jobs.JOBS[name](*args)`` as run in the child."""
        self.start()
        proto = self._protocol
        assert proto is not None and proto.transport is not None
        d: defer.Deferred[Any] = defer.Deferred()
        call_id = next(self._ids)
        proto.pending[call_id] = d
        proto.transport.write(frame((call_id, name, args)))
        return d

    def _ended(self, proto: _WorkerProtocol) -> None:
        if self._protocol is proto:
            self._protocol = None


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, worker: FileWorker) -> None:
        self.worker = worker
        self.pending: dict[int, defer.Deferred[Any]] = {}
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = bytearray()

    def kill(self) -> None:
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess("KILL")

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            end = HEADER.size + length
            if len(self._buffer) < end:
                return
            call_id, ok, result = pickle.loads(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            d = self.pending.pop(call_id, None)
            if d is None:
                continue
            if ok:
                d.callback(result)
            else:
                d.errback(RuntimeError(f"file worker: {result}"))

    def processEnded(self, reason: Failure) -> None:
        self.worker._ended(self)
        pending, self.pending = self.pending, {}
        if pending:
            log.warn("the file worker exited: {reason}", reason=reason.value)
        for d in pending.values():
            d.errback(WorkerGone(str(reason.value)))
        self.ended.callback(None)
