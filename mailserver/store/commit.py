"""Group commit of new message files: one thread makes every waiting message durable.

Each message still takes the crash-safe steps of durable.py before its Deferred fires:
written to tmp/, fsynced, renamed into new/ or cur/, that directory fsynced. What changes
is who does it: the messages that arrive while a batch is being committed wait and go
into the next batch together, which is written first and synced after (one syncfs for
the batch where the kernel allows), and each directory is fsynced once for the whole
batch. One thread, one wake-up and one call back into the reactor per batch, not per
message. With ten SMTP sessions delivering at once, ten pool threads creating files in
the same tmp/ and renaming them into the same new/ spent more CPU waiting on each other
(the kernel's directory locks, the GIL) than on the disk; perf showed it.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from mailserver.store.durable import (
    CAN_SYNC_FILESYSTEM,
    create_written,
    fsync_dir,
    sync_filesystem,
    unlink_quietly,
)

# A batch takes at most this many messages, so that the first of them are not held back
# by a flood behind them.
MAX_BATCH = 256
# An idle committer thread ends after this many seconds (the next message starts one).
IDLE_SECONDS = 5.0
# While one thread commits a batch, the next batch waits for it unless at least this many
# messages are waiting: only then does a second thread commit them beside it. Two
# threads each syncing a message or two cost more system time (and hand-offs of the
# interpreter lock) than the second batch gains by not waiting. In 6 interleaved rounds
# of 3,000 messages (make bench's SMTP ingest, ours alone), a second thread at once: 1,643
# msg/s with a connection a message, 2,506 with 10 connections; from 3 waiting: 1,790 and
# 2,736, and 9 % less CPU a message (from 4: 1,775 and 2,683; one thread: 1,812 and 2,347).
PARALLEL_FROM = 3


@dataclass
class FileJob:
    """One message file to make durable: ``tmp`` becomes ``final``."""

    tmp: str
    final: str
    chunks: Sequence[bytes]
    mtime: float | None = None  # set the file's date (IMAP APPEND's INTERNALDATE)
    # Filled in by commit_batch: the file's mtime once durable, or what went wrong.
    result: float | None = None
    error: BaseException | None = None


def commit_batch(jobs: Sequence[FileJob]) -> None:
    """Make every job's file durable at its final path; blocks, so run it in a thread.

    A job that fails gets its ``error`` and leaves no file behind in tmp/; the others go
    on. A file is renamed into place only after its data is on disk, and a job succeeds
    only after the directory it was renamed into is synced too.
    """
    written: list[tuple[FileJob, int]] = []
    for job in jobs:
        try:
            written.append((job, create_written(job.tmp, job.chunks)[0]))
        except Exception as e:
            job.error = e
    try:
        on_disk = _sync_files(written)
    finally:
        for _, fd in written:
            os.close(fd)
    by_directory: defaultdict[str, list[tuple[FileJob, int]]] = defaultdict(list)
    for job, device in on_disk:
        try:
            os.rename(job.tmp, job.final)
        except OSError as e:
            job.error = e
            unlink_quietly(job.tmp)
        else:
            by_directory[os.path.dirname(job.final)].append((job, device))
    _sync_directories(by_directory)


def _sync_files(written: Sequence[tuple[FileJob, int]]) -> list[tuple[FileJob, int]]:
    """Make the written files durable: the jobs that are, each with its file's device.

    Files of several jobs on one filesystem get one syncfs rather than an fsync each: an
    fsync waits for its own flush of the disk's cache, one syncfs flushes it once for
    all (a batch of four, here: 1.0 ms instead of 1.8). It also writes whatever else is
    waiting on that filesystem, which is why the Maildir is best on a filesystem of its
    own. A job that fails gets its error, and its file is removed from tmp/.

    A message's date is the moment it was written (or the one asked for, set on the
    file), and a file's device is its tmp/ directory's: an fstat of each file would be
    one more system call in the thread, and each of those waits for the interpreter lock
    the reactor holds (without it the commit threads' CPU a message fell by about a fifth
    in interleaved runs; the messages a second stayed within the noise)."""
    written_at = time.time()
    dated: list[tuple[FileJob, int, float, int]] = []
    for job, fd in written:
        try:
            if job.mtime is not None:
                os.utime(fd, (job.mtime, job.mtime))
            device = _device_of(os.path.dirname(job.tmp))
        except OSError as e:
            _fail(job, e)
        else:
            dated.append((job, fd, written_at if job.mtime is None else job.mtime, device))
    if len(dated) > 1 and _one_filesystem(device for _, _, _, device in dated):
        try:
            sync_filesystem(dated[0][1])
        except OSError as e:
            for job, _, _, _ in dated:
                _fail(job, e)
            return []
        synced = dated
    else:
        synced = []
        for entry in dated:
            try:
                os.fsync(entry[1])
            except OSError as e:
                _fail(entry[0], e)
            else:
                synced.append(entry)
    for job, _, date, _ in synced:
        job.result = date
    return [(job, device) for job, _, _, device in synced]


@functools.lru_cache(maxsize=10_000)
def _device_of(directory: str) -> int:
    """The device of a tmp/ directory, remembered: a directory does not move to another
    filesystem while we run."""
    return os.stat(directory).st_dev


def _sync_directories(by_directory: dict[str, list[tuple[FileJob, int]]]) -> None:
    """fsync each directory the jobs were renamed into, or syncfs once for several on one
    filesystem; the jobs of one that fails get its error."""
    entries = [entry for renamed in by_directory.values() for entry in renamed]
    if len(by_directory) > 1 and _one_filesystem(device for _, device in entries):
        try:
            fd = os.open(next(iter(by_directory)), os.O_RDONLY | os.O_DIRECTORY)
            try:
                sync_filesystem(fd)
            finally:
                os.close(fd)
        except OSError as e:
            for job, _ in entries:
                job.error = e
        return
    for directory, renamed in by_directory.items():
        try:
            fsync_dir(directory)
        except OSError as e:
            for job, _ in renamed:
                job.error = e


def _one_filesystem(devices: Iterable[int]) -> bool:
    """Whether one syncfs can serve files on these devices."""
    return CAN_SYNC_FILESYSTEM and len(set(devices)) == 1


def _fail(job: FileJob, error: OSError) -> None:
    job.error = error
    unlink_quietly(job.tmp)


class GroupCommitter:
    """Runs commit_batch over whatever jobs are waiting, in up to two threads: while one
    waits for the disk to finish its batch, the other writes the next one, once enough
    wait for it (PARALLEL_FROM).

    An idle thread is woken when the reactor's turn ends, not at the first job: woken at
    once, it wants the interpreter lock while the reactor still holds it for the rest of
    the turn (the other sessions whose data came in with it); woken after it, it finds the
    turn's jobs waiting together. In three sets of 5-6 interleaved rounds of 3,000 messages
    (ours alone): 1.08, 0.99 and 1.11 times the messages a second with a connection a
    message, 1.24, 1.09 and 1.08 with 10 connections, and 1 to 19 % less CPU a message.
    ``commit`` is called on the reactor thread.
    """

    def __init__(self, reactor: Any = None, threads: int = 2) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.max_threads = threads
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[tuple[FileJob, defer.Deferred[float]]] = deque()
        self._threads = 0  # running
        self._idle = 0  # of those, waiting for work
        self._closing = False
        self._drained: defer.Deferred[None] | None = None
        self._shutdown_hooked = False
        self._wake_pending = False  # a call to _wake_idle is scheduled

    def commit(self, job: FileJob) -> defer.Deferred[float]:
        """Fires with the file's mtime once it is durable at ``job.final``."""
        d: defer.Deferred[float] = defer.Deferred()
        with self._lock:
            if self._closing:
                return defer.fail(RuntimeError("the store is shutting down"))
            self._waiting.append((job, d))
            if self._threads > self._idle and len(self._waiting) < PARALLEL_FROM:
                pass  # the busy thread takes them with its next batch
            elif self._idle:
                self._wake_at_end_of_turn()
            elif self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._run, name="mailserver-commit", daemon=True).start()
        if not self._shutdown_hooked:
            self._shutdown_hooked = True
            self.reactor.addSystemEventTrigger("before", "shutdown", self.close)
        return d

    def _wake_at_end_of_turn(self) -> None:
        """Have an idle thread take the waiting jobs once this turn of the reactor is over
        (called with the lock held)."""
        if not self._wake_pending:
            self._wake_pending = True
            self.reactor.callLater(0, self._wake_idle)

    def _wake_idle(self) -> None:
        with self._lock:
            self._wake_pending = False
            if self._waiting and self._idle:
                self._wake.notify()

    def close(self) -> defer.Deferred[None] | None:
        """Take no more jobs; the Deferred fires once those waiting are committed."""
        with self._lock:
            self._closing = True
            if not self._threads:
                return None
            self._drained = defer.Deferred()
            self._wake.notify_all()
            return self._drained

    def _next_batch(self) -> list[tuple[FileJob, defer.Deferred[float]]] | None:
        """The jobs waiting, once there are any; None when this thread should end."""
        with self._lock:
            while not self._waiting:
                if self._closing:
                    break
                self._idle += 1
                woken = self._wake.wait(IDLE_SECONDS)
                self._idle -= 1
                if not woken and not self._waiting:
                    break
            if not self._waiting:
                self._threads -= 1
                if not self._threads and self._drained is not None:
                    self.reactor.callFromThread(self._drained.callback, None)
                return None
            return [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                commit_batch([job for job, _ in batch])
            except Exception as e:  # a bug, not a disk error: fail the batch, keep going
                for job, _ in batch:
                    job.error = job.error or e
            self.reactor.callFromThread(_settle, batch)


def _settle(batch: list[tuple[FileJob, defer.Deferred[float]]]) -> None:
    for job, d in batch:
        if job.error is not None:
            d.errback(job.error)
        else:
            assert job.result is not None
            d.callback(job.result)
