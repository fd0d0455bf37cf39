"""Crash-safe file writes: write to tmp/, fsync, rename into place, fsync the directory.

These functions block on the disk and must run in a thread, never on the reactor.
A crash at any moment leaves either no file in the target directory or the whole file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """Create ``path`` exclusively, write the chunks, fsync; return the size written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                size += written
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return size


class DirectorySyncer:
    """Group commit for directory fsyncs.

    Many deliveries finishing at the same moment into the same directory need only one
    ``fsync`` of it, as long as that fsync starts after their renames. A caller renames
    its file, then calls :meth:`sync`; if another thread's fsync of that directory is
    already running (it may have started before our rename), we wait for the next round,
    which one of the waiters performs for all of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, _DirState] = {}

    def sync(self, path: str) -> None:
        with self._lock:
            state = self._state.setdefault(path, _DirState())
            my_round = state.requested = state.started + 1
            if state.running:
                leader = False
            else:
                state.running = True
                leader = True
        if not leader:
            with state.cond:
                while state.done < my_round and state.running:
                    state.cond.wait()
            if state.done < my_round:
                fsync_dir(path)  # the leader failed before our round: sync it ourselves
            return
        self._lead(path, state)

    def _lead(self, path: str, state: _DirState) -> None:
        try:
            while True:
                with self._lock:
                    target = state.requested
                    state.started = target
                fsync_dir(path)
                with state.cond:
                    state.done = target
                    state.cond.notify_all()
                with self._lock:
                    if state.requested <= target:
                        state.running = False
                        break
        except BaseException:
            with self._lock:
                state.running = False
            with state.cond:
                state.cond.notify_all()
            raise


class _DirState:
    def __init__(self) -> None:
        self.requested = 0
        self.started = 0
        self.done = 0
        self.running = False
        self.cond = threading.Condition()
