"""The crash-safe spool of the outbound queue.

Layout under the spool directory::

    tmp/          files being written; emptied at start-up
    data/ID       the message, exactly as accepted
    state/ID      the envelope and per-recipient state (JSON); its presence *is* the entry
    ctl/          requests from ``mailserver queue`` to a running server
    lock          held (flock) by the process that runs the queue; holds its pid, so
                  the command can wake it (SIGUSR2) to read ctl/ at once

A message is committed in this order: data written to tmp/, fsynced, renamed into
data/, data/ fsynced; then the state likewise into state/. A crash before the state's
rename leaves at most an orphan data file, which start-up removes; after it, the entry
exists whole. State updates replace the file by rename, so a reader sees the old or the
new state, never a mix. Removal unlinks the state first (the entry is gone), then the
data. Every method here blocks on the disk: call them from a thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from mailserver.store.durable import DirectorySyncer, write_synced

ID_RE = re.compile(r"^[0-9A-Za-z]{8,64}$")
FORMAT = 1

# The signal that tells a running queue to read its requests now. Not SIGUSR1: twistd
# rotates its log file on that one (SIGUSR2 is twistd's only with --debug).
WAKE_SIGNAL = signal.SIGUSR2

# Recipient states.
PENDING = "pending"  # not delivered yet: tried again at next_attempt
DELIVERED = "delivered"
FAILED = "failed"  # permanently, or expired


class SpoolBusy(Exception):
    """Another process runs the queue on this spool."""


def new_id() -> str:
    """A queue id: microseconds since the epoch (so ids sort by age) and randomness."""
    return f"{time.time_ns() // 1000:014X}{secrets.token_hex(4).upper()}"


@dataclass
class RecipientState:
    address: str
    status: str = PENDING
    # RFC 3461 §4.1, §4.2: NOTIFY (None: not given) and ORCPT ("rfc822;xtext").
    notify: list[str] | None = None
    orcpt: str | None = None
    # The last answer about this recipient: "550 5.1.1 text", its status code, from whom.
    diagnostic: str = ""
    status_code: str = ""
    remote: str = ""
    last_attempt: float = 0.0
    # A final report (failed/relayed) was sent, or none is due; a delay notice was sent.
    reported: bool = False
    delay_reported: bool = False


@dataclass
class Entry:
    id: str
    mail_from: str
    recipients: list[RecipientState]
    created: float
    next_attempt: float
    size: int = 0
    attempts: int = 0
    # RFC 3461 §4.3, §4.4: RET (FULL or HDRS) and ENVID (xtext), when given.
    ret: str | None = None
    envid: str | None = None
    # How many reports this entry has caused; numbers their queue ids (see Scheduler).
    reports: int = 0
    # RFC 6531: accepted with SMTPUTF8 (UTF-8 addresses or header fields may be in it).
    smtputf8: bool = False

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == PENDING]

    def finished(self) -> bool:
        return all(r.status != PENDING and r.reported for r in self.recipients)

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Entry:
        raw = json.loads(data)
        if raw.pop("format", None) != FORMAT:
            raise ValueError("unknown spool format")
        raw["recipients"] = [RecipientState(**r) for r in raw["recipients"]]
        return cls(**raw)


class Spool:
    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        self.data = os.path.join(root, "data")
        self.state = os.path.join(root, "state")
        self.ctl = os.path.join(root, "ctl")
        self.syncer = DirectorySyncer()
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        for path in (self.root, self.tmp, self.data, self.state, self.ctl):
            os.makedirs(path, mode=0o700, exist_ok=True)

    # Ownership --------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the spool for this process; SpoolBusy when another process has it."""
        self.ensure()
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(self.root) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # Entries ----------------------------------------------------------------------------
    def create(self, entry: Entry, chunks: Iterable[bytes]) -> bool:
        """Write a new entry durably; False (and nothing written) if the id exists."""
        if os.path.exists(os.path.join(self.state, entry.id)):
            return False
        self._install(self.data, entry.id, chunks)
        self._install(self.state, entry.id, [entry.to_json()])
        return True

    def save(self, entry: Entry) -> None:
        """Replace the state of an entry durably."""
        self._install(self.state, entry.id, [entry.to_json()])

    def load(self, queue_id: str) -> Entry:
        with open(os.path.join(self.state, queue_id), "rb") as f:
            return Entry.from_json(f.read())

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.state)
        except FileNotFoundError:
            return []  # no queue has run here yet
        return sorted(name for name in names if ID_RE.match(name))

    def read_data(self, queue_id: str, block: int = 1 << 16) -> list[bytes]:
        with open(os.path.join(self.data, queue_id), "rb") as f:
            return list(iter(lambda: f.read(block), b""))

    def remove(self, queue_id: str) -> None:
        """Remove an entry: the state first (then it is gone), then the data."""
        for directory in (self.state, self.data):
            try:
                os.unlink(os.path.join(directory, queue_id))
            except FileNotFoundError:
                pass
            self.syncer.sync(directory)

    def recover(self) -> list[str]:
        """At start-up, with the lock held: drop half-written files and orphan data; return
        the names removed."""
        removed = []
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
            removed.append(f"tmp/{name}")
        entries = set(os.listdir(self.state))
        for name in os.listdir(self.data):
            if name not in entries:
                os.unlink(os.path.join(self.data, name))
                removed.append(f"data/{name}")
        return removed

    def _install(self, directory: str, name: str, chunks: Iterable[bytes]) -> None:
        tmp = os.path.join(self.tmp, f"{name}.{secrets.token_hex(4)}")
        write_synced(tmp, chunks)
        os.rename(tmp, os.path.join(directory, name))
        self.syncer.sync(directory)

    # Requests from the command line -----------------------------------------------------
    def request(self, action: str, queue_id: str = "") -> None:
        """Ask the running queue to ``flush``, ``retry`` or ``delete``. The name starts
        with the time in nanoseconds, so requests are carried out in the order made."""
        name = f"{time.time_ns():020d}.{action}.{queue_id or 'all'}.{secrets.token_hex(4)}"
        tmp = os.path.join(self.ctl, f".{name}")  # not tmp/: a starting server empties it
        write_synced(tmp, [b""])
        os.rename(tmp, os.path.join(self.ctl, name))

    def wake(self) -> bool:
        """Signal the process that holds the lock to read its requests now; False when
        that cannot be done (it then reads them at its next scan)."""
        try:
            with open(os.path.join(self.root, "lock"), "rb") as f:
                pid = int(f.read().strip() or b"0")
            if pid <= 0:
                return False
            os.kill(pid, WAKE_SIGNAL)
        except (OSError, ValueError):
            return False
        return True

    def take_requests(self) -> list[tuple[str, str]]:
        """The pending requests as (action, id or "all"), oldest first; removes them."""
        found = []
        for name in sorted(n for n in os.listdir(self.ctl) if not n.startswith(".")):
            try:
                os.unlink(os.path.join(self.ctl, name))
            except FileNotFoundError:
                continue  # another scan took it
            parts = name.split(".")
            if len(parts) != 4:
                continue
            _, action, queue_id, _ = parts
            if action in ("flush", "retry", "delete") and (
                queue_id == "all" or ID_RE.match(queue_id)
            ):
                found.append((action, queue_id))
        return found
