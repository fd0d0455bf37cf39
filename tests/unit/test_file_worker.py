"""The file worker: a child process that measures files beside a thread (store/worker.py)."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailserver.store import maildir
from mailserver.store.files import by_directory, from_numbers, measure_files, rename_files
from mailserver.store.maildir import MaildirStore
from mailserver.store.worker import PIPE_BYTES, FileWorker, WorkerGone


def _plan(root: str, count: int) -> list[tuple[str, str, bool]]:
    """Files with bare LF, with CRLF, in two directories, one that is gone, one not read."""
    plan = []
    for sub in ("new", "cur"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(count):
        path = os.path.join(root, "new" if i % 2 else "cur", f"{i}.M1P1.host")
        body = b"Subject: %d\n\nline\nline\n" % i if i % 3 else b"Subject: %d\r\n\r\nx\r\n" % i
        with open(path, "wb") as f:
            f.write(body)
        plan.append((f"{i}.M1P1.host", path, i != 4))
    plan.append(("gone", os.path.join(root, "cur", "gone"), True))
    return plan


class GoneWorker:
    """A file worker whose child has exited: every call fails with WorkerGone."""

    def call(self, *args: Any) -> defer.Deferred[Any]:
        return defer.fail(WorkerGone("exited"))


def recording_worker(test: unittest.TestCase) -> tuple[FileWorker, list[tuple[Any, ...]]]:
    """A real file worker, stopped after the test, and the calls made to it."""
    worker = FileWorker(reactor)
    test.addCleanup(worker.stop)
    calls: list[tuple[Any, ...]] = []
    real_call = worker.call
    worker.call = lambda *a: calls.append(a) or real_call(*a)  # type: ignore[method-assign]
    return worker, calls


class FileWorkerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.worker = FileWorker(reactor)
        self.addCleanup(self.worker.stop)

    async def test_the_child_measures_as_a_thread_does(self) -> None:
        plan = _plan(self.mktemp(), 12)
        numbers = await self.worker.call("measure_names", by_directory(plan))
        self.assertEqual(from_numbers(plan, numbers), measure_files(plan))
        self.assertIsNone(numbers[-1])  # the file that is gone

    async def test_a_failing_job_fails_its_call_and_the_child_goes_on(self) -> None:
        with self.assertRaises(RuntimeError):
            await self.worker.call("measure_names", [("/nonexistent", ["a"], [True, False])])
        plan = _plan(self.mktemp(), 3)
        self.assertEqual(len(await self.worker.call("measure_names", by_directory(plan))), 4)

    async def test_a_dead_child_fails_what_it_had_and_the_next_call_starts_another(self) -> None:
        self.worker.start()
        first = self.worker.pid
        assert first is not None
        plan = _plan(self.mktemp(), 2000)
        pending = self.worker.call("measure_names", by_directory(plan))
        os.kill(first, signal.SIGKILL)
        with self.assertRaises(WorkerGone):
            await pending
        numbers = await self.worker.call("measure_names", by_directory(plan))
        self.assertEqual(len(numbers), len(plan))
        self.assertNotEqual(self.worker.pid, first)

    async def test_stop_waits_for_the_child_to_exit(self) -> None:
        self.worker.start()
        pid = self.worker.pid
        await self.worker.stop()
        self.assertIsNone(self.worker.pid)
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)  # reaped: gone


class SplitMeasuringTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(maildir, "SPLIT_MEASURING_ABOVE", 2)

    async def test_a_long_plan_is_split_between_a_thread_and_the_worker(self) -> None:
        worker, calls = recording_worker(self)
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=worker)
        plan = _plan(self.mktemp(), 10)
        self.assertEqual(await store.measure_files(plan), measure_files(plan))
        ((name, groups),) = calls
        self.assertEqual(name, "measure_names")
        self.assertEqual(sum(len(names) for _, names, _ in groups), len(plan) - len(plan) // 2)

    async def test_without_the_worker_its_half_is_measured_in_a_thread(self) -> None:
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=GoneWorker())  # type: ignore[arg-type]
        plan = _plan(self.mktemp(), 10)
        self.assertEqual(await store.measure_files(plan), measure_files(plan))


def _moves(root: str, count: int) -> list[tuple[str, str]]:
    """Files to move from new/ to cur/ with a flag, and one that is not there."""
    for sub in ("new", "cur"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    moves = []
    for i in range(count):
        old = os.path.join(root, "new", f"{i}.M1P1.host")
        with open(old, "wb") as f:
            f.write(b"Subject: %d\r\n\r\n" % i)
        moves.append((old, os.path.join(root, "cur", f"{i}.M1P1.host:2,S")))
    moves.append((os.path.join(root, "new", "gone"), os.path.join(root, "cur", "gone:2,S")))
    return moves


class RenamingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(maildir, "RENAME_IN_WORKER_FROM", 2)

    def test_renames_in_and_across_directories_and_from_gone_ones(self) -> None:
        root = self.mktemp()
        moves = _moves(root, 2)
        cur = os.path.join(root, "cur")
        moves.append((moves[0][1], os.path.join(cur, "0.M1P1.host:2,FS")))  # within cur/
        moves.append((os.path.join(root, "gone", "x"), os.path.join(cur, "x")))
        self.assertEqual(rename_files(moves), [True, True, False, True, False])
        self.assertEqual(sorted(os.listdir(cur)), ["0.M1P1.host:2,FS", "1.M1P1.host:2,S"])

    async def test_a_long_batch_is_renamed_in_the_worker(self) -> None:
        worker, calls = recording_worker(self)
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=worker)
        moves = _moves(self.mktemp(), 3)
        self.assertEqual(await store.rename_files(moves), [True, True, True, False])
        self.assertEqual([name for name, _ in calls], ["rename_files"])
        self.assertTrue(all(os.path.exists(new) for _, new in moves[:3]))
        self.assertFalse(any(os.path.exists(old) for old, _ in moves))

    async def test_without_the_worker_the_batch_is_renamed_in_a_thread(self) -> None:
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=GoneWorker())  # type: ignore[arg-type]
        moves = _moves(self.mktemp(), 3)
        self.assertEqual(await store.rename_files(moves), [True, True, True, False])
        self.assertTrue(all(os.path.exists(new) for _, new in moves[:3]))

    def test_the_pipes_to_the_child_hold_a_whole_job(self) -> None:
        if not sys.platform.startswith("linux"):
            raise unittest.SkipTest("F_SETPIPE_SZ is Linux's")
        worker = FileWorker(reactor)
        self.addCleanup(worker.stop)
        worker.start()
        pipes = worker._protocol.transport.pipes  # type: ignore[union-attr]
        sizes = {fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) for pipe in pipes.values()}
        self.assertEqual(sizes, {PIPE_BYTES})
