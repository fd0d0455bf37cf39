"""Crash-safe file writes: write to tmp/, fsync, rename into place, fsync the directory.

These functions block on the disk and must run in a thread, never on the reactor.
A crash at any moment leaves either no file in the target directory or the whole file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Callable, Iterable


def _find_syncfs() -> Callable[[int], int] | None:
    """syncfs(2) where it reports write-back errors: Linux 5.8 and later. Before that it
    returned 0 even when a write failed, which would make a lost message look durable."""
    if platform.system() != "Linux":
        return None
    try:
        major, minor = (int(n) for n in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs  # type: ignore[no-any-return]


_syncfs = _find_syncfs()
# Whether sync_filesystem can be called here.
CAN_SYNC_FILESYSTEM = _syncfs is not None


def sync_filesystem(fd: int) -> None:
    """Make everything written to the filesystem holding ``fd`` durable, in one flush of
    the disk's cache, where an fsync of each file flushes it once per file (syncfs(2)).
    Raises OSError if any write-back on that filesystem failed since ``fd`` was opened.
    Only where CAN_SYNC_FILESYSTEM."""
    assert _syncfs is not None
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The most buffers one writev takes (POSIX guarantees 16; Linux takes 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16


def write_all(fd: int, chunks: Iterable[bytes]) -> int:
    """Write every chunk, in order, in as few system calls as the kernel takes (writev:
    a message is its Return-Path, its Received field and the data, one call, not four;
    from a thread, each call is one more wait for the interpreter lock). The size."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    size = first = 0  # views[first] is the first not wholly written
    while first < len(views):
        written = os.writev(fd, views[first : first + IOV_MAX])
        size += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:  # a partial write ended inside this one
            views[first] = views[first][written:]
    return size


def create_written(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> tuple[int, int]:
    """Create ``path`` exclusively and write the chunks: the open fd and the size. If the
    writing fails, the file is closed and removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        return fd, write_all(fd, chunks)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise


def write_synced(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """Create ``path`` exclusively, write the chunks, fsync; return the size written."""
    fd, size = create_written(path, chunks, mode)
    try:
        os.fsync(fd)
    except BaseException:
        unlink_quietly(path)
        raise
    finally:
        os.close(fd)
    return size


def unlink_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    try:
        os.unlink(path)
    except OSError:
        pass


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
