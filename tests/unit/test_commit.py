"""Group commit of new message files (store/commit.py): every job ends durable at its
final name, or with its error and nothing left in tmp/; the jobs that wait are committed
together; closing waits for them. And durable.write_all, which writes their chunks."""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailserver.store import commit, durable
from mailserver.store.commit import FileJob, GroupCommitter, commit_batch


class _Folders:
    """A scratch folder or two with tmp/, new/ and cur/, and jobs that write into them."""

    def __init__(self, root: str) -> None:
        self.root = root
        for folder in ("a", "b"):
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(root, folder, sub))
        self._names = iter(range(1_000_000))

    def job(
        self,
        folder: str = "a",
        sub: str = "new",
        data: bytes = b"Subject: x\r\n\r\nhi\r\n",
        mtime: float | None = None,
    ) -> FileJob:
        name = f"{next(self._names)}.M1P1.host"
        return FileJob(
            os.path.join(self.root, folder, "tmp", name),
            os.path.join(self.root, folder, sub, name),
            [data[:5], data[5:]],
            mtime,
        )

    def tmp_files(self) -> list[str]:
        return [n for f in ("a", "b") for n in os.listdir(os.path.join(self.root, f, "tmp"))]


def _content(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class CommitBatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folders = _Folders(self.mktemp())

    def test_every_job_ends_at_its_final_name(self) -> None:
        jobs = [self.folders.job(data=b"message %d\r\n" % i) for i in range(3)]
        jobs.append(self.folders.job("b", "cur"))
        before = time.time()
        commit_batch(jobs)
        after = time.time()
        for i, job in enumerate(jobs[:3]):
            self.assertIsNone(job.error)
            self.assertEqual(_content(job.final), b"message %d\r\n" % i)
            # The message's date: when the batch was written.
            self.assertTrue(before <= job.result <= after)  # type: ignore[operator]
        self.assertTrue(os.path.exists(jobs[3].final))
        self.assertEqual(self.folders.tmp_files(), [])

    def test_a_given_date_becomes_the_files_date(self) -> None:
        job = self.folders.job(mtime=1_000_000_000.0)
        commit_batch([job])
        self.assertEqual(os.stat(job.final).st_mtime, 1_000_000_000.0)
        self.assertEqual(job.result, 1_000_000_000.0)

    def test_a_job_that_cannot_be_created_fails_alone(self) -> None:
        bad = self.folders.job()
        bad.tmp = os.path.join(self.folders.root, "gone", "tmp", "x")
        good = self.folders.job()
        commit_batch([bad, good])
        self.assertIsInstance(bad.error, FileNotFoundError)
        self.assertIsNone(bad.result)
        self.assertIsNone(good.error)
        self.assertTrue(os.path.exists(good.final))

    def test_a_failed_fsync_leaves_no_file_anywhere(self) -> None:
        bad, good = self.folders.job(), self.folders.job()
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(bad.tmp):
                raise OSError(errno.EIO, "I/O error")
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        self.patch(commit, "CAN_SYNC_FILESYSTEM", False)  # an fsync a file
        commit_batch([bad, good])
        self.assertEqual(bad.error.errno, errno.EIO)
        self.assertFalse(os.path.exists(bad.final))
        self.assertTrue(os.path.exists(good.final))
        self.assertEqual(self.folders.tmp_files(), [])

    def test_a_failed_rename_leaves_nothing_in_tmp(self) -> None:
        bad = self.folders.job()
        bad.final = os.path.join(self.folders.root, "a", "gone", "x")
        commit_batch([bad])
        self.assertIsInstance(bad.error, FileNotFoundError)
        self.assertEqual(self.folders.tmp_files(), [])

    def test_a_failed_directory_sync_fails_every_job_renamed_into_it(self) -> None:
        """Their files are in place, but not known to be durable: each is refused (a 451
        in SMTP), so a sender tries again, rather than a 250 a crash could take back."""
        into_a = [self.folders.job("a"), self.folders.job("a")]
        into_b = self.folders.job("b")
        failing = os.path.dirname(into_a[0].final)
        real_sync = commit.fsync_dir

        def fsync_dir(path: str) -> None:
            if path == failing:
                raise OSError(errno.EIO, "I/O error")
            real_sync(path)

        self.patch(commit, "fsync_dir", fsync_dir)
        self.patch(commit, "CAN_SYNC_FILESYSTEM", False)  # an fsync a directory
        commit_batch([*into_a, into_b])
        self.assertEqual([job.error.errno for job in into_a], [errno.EIO, errno.EIO])
        self.assertIsNone(into_b.error)


class FilesystemSyncTests(unittest.TestCase):
    """Where syncfs reports errors, one call makes a batch's files durable, and one more
    the directories they went into; a failure of either fails every job it served."""

    def setUp(self) -> None:
        if not durable.CAN_SYNC_FILESYSTEM:
            raise unittest.SkipTest("no syncfs(2) that reports errors here")
        self.folders = _Folders(self.mktemp())
        self.fsyncs: list[int] = []
        self.syncfs: list[str] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            self.fsyncs.append(fd)
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        self.patch(commit, "sync_filesystem", self._sync_filesystem)
        self.failing: str | None = None  # a path whose syncfs fails with EIO
        self.in_place: list[int] = []  # files in new/ and cur/ at each syncfs

    def _final_directories(self) -> list[str]:
        root = self.folders.root
        return [os.path.join(root, f, sub) for f in ("a", "b") for sub in ("new", "cur")]

    def _sync_filesystem(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.syncfs.append(path)
        self.in_place.append(sum(len(os.listdir(d)) for d in self._final_directories()))
        if path == self.failing:
            raise OSError(errno.EIO, "I/O error")
        durable.sync_filesystem(fd)

    def test_a_batch_takes_one_syncfs_for_its_files_and_one_for_its_directories(
        self,
    ) -> None:
        jobs = [self.folders.job("a"), self.folders.job("a"), self.folders.job("b", "cur")]
        commit_batch(jobs)
        # Nothing is in place before the files are durable; all of them are by the second.
        self.assertEqual(self.in_place, [0, 3])
        self.assertEqual(self.fsyncs, [])
        self.assertEqual(
            self.syncfs,
            [os.path.abspath(jobs[0].tmp), os.path.abspath(os.path.dirname(jobs[0].final))],
        )
        for job in jobs:
            self.assertIsNone(job.error)
        self.assertEqual(len({job.result for job in jobs}), 1)  # one moment for the batch
        self.assertEqual(self.folders.tmp_files(), [])

    def test_one_directory_is_fsynced_not_the_filesystem(self) -> None:
        jobs = [self.folders.job("a"), self.folders.job("a")]
        commit_batch(jobs)
        self.assertEqual(self.syncfs, [os.path.abspath(jobs[0].tmp)])
        self.assertEqual(len(self.fsyncs), 1)  # new/ of a

    def test_a_single_file_is_fsynced(self) -> None:
        job = self.folders.job()
        commit_batch([job])
        self.assertEqual(self.syncfs, [])
        self.assertEqual(len(self.fsyncs), 2)  # the file, then new/
        self.assertTrue(os.path.exists(job.final))

    def test_a_failed_syncfs_of_the_files_fails_every_job_and_leaves_no_file(self) -> None:
        jobs = [self.folders.job("a"), self.folders.job("b")]
        self.failing = os.path.abspath(jobs[0].tmp)
        commit_batch(jobs)
        for job in jobs:
            self.assertEqual(job.error.errno, errno.EIO)
            self.assertIsNone(job.result)
            self.assertFalse(os.path.exists(job.final))
        self.assertEqual(self.folders.tmp_files(), [])

    def test_a_failed_syncfs_of_the_directories_fails_every_job_renamed(self) -> None:
        """As with a failed fsync of a directory: in place, but not known durable."""
        jobs = [self.folders.job("a"), self.folders.job("b")]
        self.failing = os.path.abspath(os.path.dirname(jobs[0].final))
        commit_batch(jobs)
        self.assertEqual([job.error.errno for job in jobs], [errno.EIO, errno.EIO])

    def test_files_on_several_filesystems_are_fsynced_one_by_one(self) -> None:
        jobs = [self.folders.job("a"), self.folders.job("b")]
        elsewhere = os.path.dirname(jobs[1].tmp)
        real_device_of = commit._device_of

        def device_of(directory: str) -> int:
            return real_device_of(directory) + (directory == elsewhere)

        self.patch(commit, "_device_of", device_of)
        commit_batch(jobs)
        self.assertEqual(self.syncfs, [])
        self.assertEqual(len(self.fsyncs), 4)  # two files, two directories
        self.assertTrue(all(os.path.exists(job.final) for job in jobs))


class _Reactor:
    """The real reactor's callFromThread and callLater (counted); the shutdown hook only
    noted."""

    def __init__(self) -> None:
        self.triggers: list[tuple[Any, ...]] = []
        self.calls_later = 0

    def callFromThread(self, f: Any, *args: Any) -> None:
        reactor.callFromThread(f, *args)

    def callLater(self, delay: float, f: Any, *args: Any) -> Any:
        self.calls_later += 1
        return reactor.callLater(delay, f, *args)

    def addSystemEventTrigger(self, *args: Any) -> None:
        self.triggers.append(args)


class GroupCommitterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.folders = _Folders(self.mktemp())
        self.reactor = _Reactor()
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a thread is at the gate with its batch
        real_batch = commit.commit_batch

        self.at_gate: list[int] = []  # the size of each batch that reached the gate

        def gated_batch(jobs: list[FileJob]) -> None:
            self.at_gate.append(len(jobs))
            self.entered.set()
            self.gate.wait(10)
            self.batches.append(len(jobs))
            real_batch(jobs)

        self.patch(commit, "commit_batch", gated_batch)
        self.committer = GroupCommitter(self.reactor, threads=1)

    async def test_the_jobs_that_wait_go_together(self) -> None:
        self.gate.clear()
        first = self.folders.job()
        waiting = [self.folders.job() for _ in range(3)]
        ds = [self.committer.commit(first)]
        while not self.entered.is_set():
            await _turn()
        ds += [self.committer.commit(job) for job in waiting]
        self.gate.set()
        dates = await defer.gatherResults(ds)
        self.assertEqual(self.batches, [1, 3])
        self.assertTrue(dates[0] < dates[1] == dates[2] == dates[3])
        self.assertEqual([t[:2] for t in self.reactor.triggers], [("before", "shutdown")])

    async def test_the_jobs_of_one_turn_wake_the_idle_thread_once_when_it_ends(self) -> None:
        await self.committer.commit(self.folders.job())
        while not self.committer._idle:  # the thread is back waiting for work
            await _turn()
        ds = [self.committer.commit(self.folders.job()) for _ in range(3)]
        self.assertEqual(self.reactor.calls_later, 1)  # one wake-up, after this turn
        self.assertEqual(self.at_gate, [1])  # not woken yet
        await defer.gatherResults(ds)
        self.assertEqual(self.batches, [1, 3])

    async def _one_batch_at_the_gate(self, committer: GroupCommitter) -> defer.Deferred[float]:
        self.gate.clear()
        first = committer.commit(self.folders.job())
        while not self.entered.is_set():
            await _turn()
        return first

    async def test_a_few_waiting_jobs_wait_for_the_busy_thread(self) -> None:
        committer = GroupCommitter(self.reactor, threads=2)
        ds = [await self._one_batch_at_the_gate(committer)]
        ds += [committer.commit(self.folders.job()) for _ in range(commit.PARALLEL_FROM - 1)]
        for _ in range(20):
            await _turn()
        self.assertEqual(self.at_gate, [1])  # no second thread took them
        self.gate.set()
        await defer.gatherResults(ds)
        self.assertEqual(self.batches, [1, commit.PARALLEL_FROM - 1])

    async def test_enough_waiting_jobs_get_a_second_thread(self) -> None:
        committer = GroupCommitter(self.reactor, threads=2)
        ds = [await self._one_batch_at_the_gate(committer)]
        ds += [committer.commit(self.folders.job()) for _ in range(commit.PARALLEL_FROM)]
        for _ in range(2000):
            if len(self.at_gate) == 2:
                break
            await _turn()
        self.assertEqual(self.at_gate, [1, commit.PARALLEL_FROM])  # beside the first
        self.gate.set()
        await defer.gatherResults(ds)
        self.assertEqual(sorted(self.batches), [1, commit.PARALLEL_FROM])

    async def test_an_error_fails_only_its_job(self) -> None:
        bad, good = self.folders.job(), self.folders.job()
        bad.tmp = os.path.join(self.folders.root, "gone", "x")
        failed = self.committer.commit(bad)
        committed = self.committer.commit(good)
        with self.assertRaises(FileNotFoundError):
            await failed
        self.assertEqual(await committed, good.result)
        self.assertTrue(os.path.exists(good.final))

    async def test_a_bug_fails_its_batch_and_the_next_batch_goes_on(self) -> None:
        real_batch = commit.commit_batch
        calls = []

        def broken_once(jobs: list[FileJob]) -> None:
            calls.append(len(jobs))
            if len(calls) == 1:
                raise ValueError("a bug")
            real_batch(jobs)

        self.patch(commit, "commit_batch", broken_once)
        with self.assertRaises(ValueError):
            await self.committer.commit(self.folders.job())
        job = self.folders.job()
        await self.committer.commit(job)
        self.assertTrue(os.path.exists(job.final))

    async def test_closing_waits_for_the_jobs_and_refuses_new_ones(self) -> None:
        self.gate.clear()
        jobs = [self.folders.job() for _ in range(2)]
        ds = [self.committer.commit(job) for job in jobs]
        drained = self.committer.close()
        self.assertIsNotNone(drained)
        with self.assertRaises(RuntimeError):
            await self.committer.commit(self.folders.job())
        self.assertFalse(drained.called)
        self.gate.set()
        await drained
        self.assertTrue(all(d.called for d in ds))
        self.assertTrue(all(os.path.exists(job.final) for job in jobs))

    def test_closing_with_nothing_to_do_returns_at_once(self) -> None:
        self.assertIsNone(self.committer.close())


def _turn() -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.001, d.callback, None)
    return d


@given(
    chunks=st.lists(st.binary(max_size=300), max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=20),
    iov_max=st.integers(min_value=1, max_value=8),
)
@settings(max_examples=200, deadline=None)
def test_write_all_writes_every_chunk_in_order_through_partial_writes(
    chunks: list[bytes], cuts: list[int], iov_max: int
) -> None:
    """The kernel may take less than it is given, and at most IOV_MAX buffers a call."""
    out = bytearray()
    calls = iter(cuts * 1000)

    def writev(fd: int, buffers: list[memoryview]) -> int:
        assert 0 < len(buffers) <= iov_max and all(len(b) for b in buffers)
        data = b"".join(buffers)[: next(calls)]
        out.extend(data)
        return len(data)

    with (
        mock.patch.object(durable.os, "writev", writev),
        mock.patch.object(durable, "IOV_MAX", iov_max),
    ):
        size = durable.write_all(3, chunks)
    assert bytes(out) == b"".join(chunks)
    assert size == len(out)
