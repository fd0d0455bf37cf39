"""Read-ahead: one thread job reads the wanted message and those the session names next."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from mailserver.store.maildir import MaildirStore
from mailserver.store.readahead import ReadAhead

ALICE = "alice@example.test"


def message(n: int, size: int = 100) -> bytes:
    head = b"Subject: %d\r\n\r\n" % n
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


class ReadAheadTests(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.jobs = 0

        def counted(f: Any, *args: Any) -> defer.Deferred[Any]:
            self.jobs += 1
            return threads.deferToThread(f, *args)

        self.store = MaildirStore(self.mktemp(), hostname="host.example", run_in_thread=counted)
        self.folder = self.store.folder(ALICE)
        for n in range(1, 11):
            await self.store.deliver(ALICE, [message(n)])
        self.uids = [m.uid for m in self.folder.messages]
        self.jobs = 0

    async def read_all(self, reader: ReadAhead, uids: list[int]) -> list[bytes]:
        out = []
        for i, uid in enumerate(uids):
            out.append(await reader.read(self.folder, uid, tuple(uids[i + 1 :])))
        return out

    async def test_one_thread_job_serves_a_batch_byte_exact(self) -> None:
        got = await self.read_all(ReadAhead(max_messages=4), self.uids)
        self.assertEqual(got, [message(n) for n in range(1, 11)])
        self.assertEqual(self.jobs, 3)  # 4 + 4 + 2 messages

    async def test_the_byte_budget_bounds_a_batch(self) -> None:
        got = await self.read_all(ReadAhead(max_messages=64, max_bytes=250), self.uids)
        self.assertEqual(got, [message(n) for n in range(1, 11)])
        self.assertEqual(self.jobs, 5)  # two 100-byte messages fit in 250 bytes

    async def test_without_upcoming_each_read_is_its_own_job(self) -> None:
        reader = ReadAhead()
        for uid in self.uids[:3]:
            await reader.read(self.folder, uid)
        self.assertEqual(self.jobs, 3)

    async def test_only_the_latest_batch_is_kept(self) -> None:
        reader = ReadAhead(max_messages=3)
        await reader.read(self.folder, self.uids[0], tuple(self.uids[1:]))
        # The session went elsewhere: the next miss drops what it did not use.
        await reader.read(self.folder, self.uids[5], tuple(self.uids[6:]))
        self.assertEqual(self.jobs, 2)
        await reader.read(self.folder, self.uids[1])
        self.assertEqual(self.jobs, 3)

    async def test_a_message_renamed_meanwhile_is_still_read(self) -> None:
        held: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []
        run = self.store.run_in_thread

        def hold(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append((f, args, d))
            return d

        self.store.run_in_thread = hold
        reader = ReadAhead()
        d = reader.read(self.folder, self.uids[0], tuple(self.uids[1:]))
        # Another session flags the message after the batch was planned: a new file name.
        self.folder.set_flags(self.uids[0], {"\\Flagged"})
        self.store.run_in_thread = run
        f, args, job = held.pop()
        job.callback(f(*args))
        self.assertEqual(await d, message(1))
        self.assertEqual(await reader.read(self.folder, self.uids[1]), message(2))

    async def test_an_expunged_upcoming_message_is_skipped(self) -> None:
        reader = ReadAhead()
        self.folder.expunge([self.uids[1]])
        await self.folder.expunged()
        self.jobs = 0  # the unlinking
        got = await reader.read(self.folder, self.uids[0], tuple(self.uids[1:]))
        self.assertEqual(got, message(1))
        self.assertEqual(await reader.read(self.folder, self.uids[2]), message(3))
        self.assertEqual(self.jobs, 1)
