"""Read-ahead of message files for one POP3 session.

A POP3 client downloading its maildrop sends one RETR after the other. A thread hop
per message (read in a thread so that a cold disk never stalls the reactor) costs more
than the read itself, so the session says what it will read next, and a miss reads the
wanted message and those that follow, up to a budget, in one thread job. (An IMAP FETCH
or SEARCH names its whole batch at once: Folder.read_many.) What was read ahead is served
from memory; only the latest batch is kept, so memory stays bounded by the budget.
Message files never change once delivered (flags live in the name), so what is cached
is what a new read would return; an expunge is seen by the caller, who looks the
message up in the index after the read as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer

from mailserver.store.maildir import Folder

READ_AHEAD_MESSAGES = 256
READ_AHEAD_BYTES = 1 << 20  # beyond this, one message a thread job as before


class ReadAhead:
    """The batch of message bytes a session has read ahead, by (folder, UID)."""

    def __init__(
        self, max_messages: int = READ_AHEAD_MESSAGES, max_bytes: int = READ_AHEAD_BYTES
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._batch: dict[tuple[Folder, int], bytes] = {}

    def take(self, folder: Folder, uid: int) -> bytes | None:
        """The message's bytes if they were read ahead (they are then forgotten)."""
        return self._batch.pop((folder, uid), None)

    def read(self, folder: Folder, uid: int, upcoming: Sequence[int] = ()) -> defer.Deferred[bytes]:
        """The message's bytes (CRLF line ends); ``upcoming`` are the UIDs the caller will
        ask for next, in order, which a miss reads in the same thread job."""
        data = self._batch.pop((folder, uid), None)
        if data is not None:
            return defer.succeed(data)
        wanted = folder.by_uid(uid)
        if wanted is None or wanted.size > self.max_bytes or not upcoming:
            self._batch.clear()
            return folder.read(uid)
        batch = [uid]
        budget = self.max_bytes - wanted.size
        for next_uid in upcoming[: self.max_messages - 1]:
            message = folder.by_uid(next_uid)
            if message is None:
                continue
            if message.size > budget:
                break
            budget -= message.size
            batch.append(next_uid)

        def done(found: dict[int, bytes]) -> bytes | defer.Deferred[bytes]:
            first = found.pop(uid, None)
            self._batch = {(folder, u): data for u, data in found.items()}
            if first is None:
                return folder.read(uid)  # gone meanwhile: the single read says how
            return first

        d = folder.read_many(batch)
        d.addCallback(done)
        return d
