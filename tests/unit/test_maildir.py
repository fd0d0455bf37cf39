"""The Maildir++ store: durable delivery, UIDs that survive restarts, flags, foreign files."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from mailserver.mta import RECIPIENT_OK, check_local_recipient
from mailserver.names import BadName
from mailserver.store import uidlist
from mailserver.store.bus import Appended, Expunged, FlagsChanged
from mailserver.store.maildir import (
    Folder,
    MaildirStore,
    NoSuchFolder,
    QuotaExceeded,
    crlf_from_base,
    parse_filename,
)

ALICE = "alice@example.test"
MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


def record_scans_on_main_thread(test: unittest.TestCase) -> list[bool]:
    """For each Folder.scan from now on (the test's patch), whether it ran on the main
    thread, the reactor's."""
    on_main: list[bool] = []
    real_scan = Folder.scan

    def scan(folder: Folder, announce: bool = True) -> None:
        on_main.append(threading.current_thread() is threading.main_thread())
        real_scan(folder, announce)

    test.patch(Folder, "scan", scan)
    return on_main


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, hostname="host.example")

    def reopen(self) -> MaildirStore:
        return MaildirStore(self.root, hostname="host.example")

    async def test_delivery_lands_whole_in_new_with_size_in_name(self) -> None:
        stored = await self.store.deliver(ALICE, [b"Subject: hello\r\n", b"\r\nbody\r\n"])
        user = os.path.join(self.root, "example.test", "alice")
        (name,) = os.listdir(os.path.join(user, "new"))
        self.assertEqual(name, stored.base)
        self.assertIn(f",S={len(MESSAGE)},W={len(MESSAGE)}", name)
        with open(os.path.join(user, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertEqual(os.listdir(os.path.join(user, "tmp")), [])
        # New users get Maildir++ default folders, each marked as a folder.
        for folder in ("Drafts", "Sent", "Trash", "Junk", "Archive"):
            self.assertTrue(os.path.exists(os.path.join(user, "." + folder, "maildirfolder")))

    async def test_a_new_users_maildir_is_made_in_a_thread_once(self) -> None:
        """Making it mkdirs and fsyncs: not on the reactor. Later deliveries do not look."""
        made_in: list[bool] = []
        real_ensure = self.store.ensure_user

        def ensure_user(address: str) -> None:
            made_in.append(threading.current_thread() is threading.main_thread())
            real_ensure(address)

        self.patch(self.store, "ensure_user", ensure_user)
        for _ in range(3):
            await self.store.deliver(ALICE, [MESSAGE])
        self.assertEqual(made_in, [False])
        user = os.path.join(self.root, "example.test", "alice")
        self.assertEqual(len(os.listdir(os.path.join(user, "new"))), 3)

    async def test_a_maildir_removed_while_running_is_made_again(self) -> None:
        await self.store.deliver(ALICE, [MESSAGE])
        user = os.path.join(self.root, "example.test", "alice")
        shutil.rmtree(user)
        stored = await self.store.deliver(ALICE, [MESSAGE])
        self.assertEqual(os.listdir(os.path.join(user, "new")), [stored.base])
        self.assertTrue(os.path.isdir(os.path.join(user, ".Trash", "cur")))

    async def test_a_maildir_that_stays_broken_fails_the_delivery(self) -> None:
        """Tried again once, not in a loop: here tmp/ is gone but cur/ is there, so making
        the user again changes nothing."""
        await self.store.deliver(ALICE, [MESSAGE])
        os.rmdir(os.path.join(self.root, "example.test", "alice", "tmp"))
        with self.assertRaises(FileNotFoundError):
            await self.store.deliver(ALICE, [MESSAGE])

    async def test_a_folder_is_opened_in_a_thread_once_for_all_who_ask(self) -> None:
        """Its first scan (every file of new/ and cur/, the UID list) is not done on the
        reactor; two sessions asking at the same time share one."""
        for _ in range(3):
            await self.store.deliver(ALICE, [MESSAGE])
        store = self.reopen()
        store.ensure_user(ALICE)
        scanned_in = record_scans_on_main_thread(self)
        first, second = await defer.gatherResults(
            [store.open_folder(ALICE), store.open_folder(ALICE)]
        )
        self.assertIs(first, second)
        self.assertIs(store.folder(ALICE), first)
        self.assertEqual(scanned_in, [False])
        self.assertEqual([m.uid for m in first.messages], [1, 2, 3])
        self.assertIs(await store.open_folder(ALICE), first)

    async def test_opening_a_folder_that_is_not_there_fails(self) -> None:
        self.store.ensure_user(ALICE)
        with self.assertRaises(NoSuchFolder):
            await self.store.open_folder(ALICE, "Nope")
        with self.assertRaises(BadName):
            await self.store.open_folder(ALICE, "a/../../b")
        self.assertIsNotNone(await self.store.open_folder(ALICE, "Trash"))

    async def test_a_folder_renamed_while_it_loads_is_read_again(self) -> None:
        """What the thread read is of a directory that moved meanwhile: not kept (a later
        SELECT would find messages that are elsewhere now); it is read again, and there
        is no folder there any more."""
        self.store.ensure_user(ALICE)
        await self.store.create_folder(ALICE, "Old")
        await self.store.deliver(ALICE, [MESSAGE], "Old")
        held: list[tuple[defer.Deferred[Folder], Callable[..., Folder], tuple[object, ...]]] = []
        real = self.store.run_in_thread

        def hold(f: Callable[..., Folder], *args: object) -> defer.Deferred[Folder]:
            d: defer.Deferred[Folder] = defer.Deferred()
            held.append((d, f, args))
            return d

        self.store.run_in_thread = hold
        opening = self.store.open_folder(ALICE, "Old")
        self.store.run_in_thread = real
        d, f, args = held.pop()
        loaded = f(*args)  # read before the rename...
        renamed = self.store.rename_folder(ALICE, "Old", "New")
        d.callback(loaded)  # ...handed over after it
        with self.assertRaises(NoSuchFolder):
            await opening
        await renamed
        self.assertEqual(len((await self.store.open_folder(ALICE, "New")).messages), 1)

    async def test_unique_names(self) -> None:
        bases = {(await self.store.deliver(ALICE, [MESSAGE])).base for _ in range(50)}
        self.assertEqual(len(bases), 50)

    async def test_a_named_delivery_is_stored_once(self) -> None:
        """A delivery given ``unique`` (a report sent again after a crash) finds the
        copy it made before, in new/ or, once read, in cur/, and writes nothing."""
        folder = self.store.folder(ALICE)
        first = await self.store.deliver(ALICE, [MESSAGE], unique="1700000000.Q1R1")
        self.assertTrue(first.base.startswith("1700000000.Q1R1.host.example,S="))
        changed = MESSAGE + b"changed\r\n"
        again = await self.store.deliver(ALICE, [changed], unique="1700000000.Q1R1")
        self.assertEqual((again.base, again.uid), (first.base, first.uid))
        folder.set_flags(first.uid, ["\\Seen"])
        await folder.moved()
        after_restart = self.reopen()
        once_more = await after_restart.deliver(ALICE, [MESSAGE], unique="1700000000.Q1R1")
        self.assertEqual(once_more.base, first.base)
        other = await after_restart.deliver(ALICE, [MESSAGE], unique="1700000000.Q1R2")
        self.assertNotEqual(other.base, first.base)
        user = os.path.join(self.root, "example.test", "alice")
        names = os.listdir(os.path.join(user, "cur")) + os.listdir(os.path.join(user, "new"))
        self.assertEqual(len(names), 2)
        # A name that only begins the same way is another message.
        prefix = await after_restart.deliver(ALICE, [MESSAGE], unique="1700000000.Q1")
        self.assertNotIn(prefix.base, (first.base, other.base))

    async def test_uids_survive_a_restart_and_grow(self) -> None:
        folder = self.store.folder(ALICE)
        for _ in range(3):
            await self.store.deliver(ALICE, [MESSAGE])
        uids = [m.uid for m in folder.messages]
        self.assertEqual(uids, [1, 2, 3])
        validity = folder.uidvalidity
        folder.expunge([3])
        await folder.expunged()
        again = self.reopen().folder(ALICE)
        self.assertEqual([m.uid for m in again.messages], [1, 2])
        self.assertEqual(again.uidvalidity, validity)
        self.assertEqual(again.uidnext, 4)  # UID 3 is never reused

    async def test_an_expunge_adds_to_the_uid_list_without_rewriting_it(self) -> None:
        """Rewriting 100,000 records holds the reactor some 60 ms: not for every expunge."""
        folder = self.store.folder(ALICE)
        for _ in range(3):
            await self.store.deliver(ALICE, [MESSAGE])
        rewrites: list[str] = []
        self.patch(uidlist, "rewrite", lambda path, listed: rewrites.append(path))
        folder.expunge([2])
        await folder.expunged()
        highest = folder.highest_modseq
        name = folder.messages[0].base  # and one removed by another program
        os.unlink(os.path.join(folder.path, "new", name))
        folder.scan()
        self.assertEqual(rewrites, [])
        again = self.reopen().folder(ALICE)
        self.assertEqual([m.uid for m in again.messages], [3])
        self.assertEqual(again.uidnext, 4)
        # RFC 7162 §3.1.1: each expunge was a change; a restart does not go back on it.
        self.assertEqual(again.highest_modseq, folder.highest_modseq)
        self.assertGreater(folder.highest_modseq, highest)

    async def test_delivery_into_open_folder_is_announced(self) -> None:
        folder = self.store.folder(ALICE)
        seen = []
        self.store.bus.subscribe(folder.key, seen.append)
        stored = await self.store.deliver(ALICE, [MESSAGE])
        self.assertEqual(seen, [Appended(folder.key, stored.uid)])

    async def test_flags_live_in_the_file_name_and_base_stays(self) -> None:
        folder = self.store.folder(ALICE)
        stored = await self.store.deliver(ALICE, [MESSAGE])
        seen = []
        self.store.bus.subscribe(folder.key, seen.append)
        folder.set_flags(stored.uid, {"\\Seen", "\\Flagged", "$Forwarded"})
        (name,) = os.listdir(os.path.join(folder.path, "cur"))
        self.assertEqual(parse_filename(name), (stored.base, "FSa"))
        self.assertIsInstance(seen[0], FlagsChanged)
        again = self.reopen().folder(ALICE)
        self.assertEqual(again.messages[0].flags, {"\\Seen", "\\Flagged", "$Forwarded"})
        self.assertEqual(again.messages[0].base, stored.base)
        self.assertEqual(await again.read(stored.uid), MESSAGE)

    async def test_expunge_removes_file_and_announces(self) -> None:
        folder = self.store.folder(ALICE)
        stored = await self.store.deliver(ALICE, [MESSAGE])
        seen = []
        self.store.bus.subscribe(folder.key, seen.append)
        self.assertEqual(folder.expunge([stored.uid, 99]), [stored.uid])
        self.assertEqual(seen, [Expunged(folder.key, stored.uid)])  # at once
        folder.scan()  # the file, maybe not unlinked yet, does not come back
        self.assertEqual(folder.messages, [])
        await folder.expunged()
        self.assertEqual(os.listdir(os.path.join(folder.path, "new")), [])
        self.assertEqual(uidlist.load(folder.path).records, {})

    async def test_read_follows_a_rename(self) -> None:
        folder = self.store.folder(ALICE)
        stored = await self.store.deliver(ALICE, [MESSAGE])
        d = folder.read(stored.uid)
        folder.set_flags(stored.uid, {"\\Seen"})
        self.assertEqual(await d, MESSAGE)

    async def test_read_many_follows_renames_and_leaves_out_the_expunged(self) -> None:
        meanwhile = []  # run on the reactor after the batch is planned, before it is read

        def run_in_thread(f, *args):  # type: ignore[no-untyped-def]
            while meanwhile:
                meanwhile.pop(0)()
            return threads.deferToThread(f, *args)

        store = MaildirStore(self.mktemp(), hostname="host.example", run_in_thread=run_in_thread)
        folder = store.folder(ALICE)
        bodies = [MESSAGE + b"%d\r\n" % i for i in range(3)]
        uids = [(await store.deliver(ALICE, [body])).uid for body in bodies]
        meanwhile.append(lambda: folder.set_flags(uids[1], {"\\Seen"}))
        meanwhile.append(lambda: folder.expunge([uids[2]]))
        got = await folder.read_many([*uids, 99])
        self.assertEqual(got, {uids[0]: bodies[0], uids[1]: bodies[1]})

    def test_a_delivery_that_fails_at_once_fails_its_deferred(self) -> None:
        """The common case (a known user, no repeat key) writes without waiting first: an
        error on the way is still the Deferred's, never raised at the caller."""
        store = MaildirStore(self.mktemp(), hostname="host.example", run_in_thread=Meanwhile())
        self.successResultOf(store.deliver(ALICE, [MESSAGE]))  # alice is known now

        def broken(job: object) -> defer.Deferred[float]:
            raise OSError("disk gone")

        store.commit = broken
        self.failureResultOf(store.deliver(ALICE, [MESSAGE]), OSError)

    async def test_foreign_lf_file_is_picked_up_and_served_with_crlf(self) -> None:
        folder = self.store.folder(ALICE)
        path = os.path.join(folder.path, "cur", "123.foreign.host:2,S")
        with open(path, "wb") as f:
            f.write(b"Subject: x\n\nline\n")
        os.utime(path, (1_700_000_000, 1_700_000_000))
        os.utime(os.path.join(folder.path, "cur"), ns=(1, 1))
        await folder.refresh()
        (message,) = folder.messages
        self.assertEqual(message.flags, {"\\Seen"})
        # Listing it reads nothing: its size, line ends and date wait for measure().
        self.assertTrue(folder.unmeasured)
        await folder.measure()
        self.assertFalse(folder.unmeasured)
        self.assertEqual(message.size, len(b"Subject: x\r\n\r\nline\r\n"))
        self.assertEqual(message.internal_date, 1_700_000_000)
        self.assertFalse(message.crlf)
        self.assertEqual(await folder.read(message.uid), b"Subject: x\r\n\r\nline\r\n")
        # The measures are kept: a restart does not read the file again.
        self.store._open.clear()
        again = self.store.folder(ALICE)
        self.assertFalse(again.unmeasured)
        self.assertEqual(again.messages[0].size, message.size)
        self.assertFalse(again.messages[0].crlf)

    def test_file_removed_behind_our_back_is_expunged(self) -> None:
        folder = self.store.folder(ALICE)
        name = "1.x.host"
        with open(os.path.join(folder.path, "new", name), "wb") as f:
            f.write(MESSAGE)
        folder.scan()
        seen = []
        self.store.bus.subscribe(folder.key, seen.append)
        os.unlink(os.path.join(folder.path, "new", name))
        folder.scan()
        self.assertEqual(seen, [Expunged(folder.key, 1)])

    def test_lost_uidlist_gives_new_uidvalidity(self) -> None:
        folder = self.store.folder(ALICE)
        with open(os.path.join(folder.path, "new", "1.x.host"), "wb") as f:
            f.write(MESSAGE)
        folder.scan()
        os.unlink(os.path.join(folder.path, uidlist.FILENAME))
        again = self.reopen().folder(ALICE)
        self.assertEqual([m.uid for m in again.messages], [1])
        self.assertNotEqual(again.uidvalidity, 0)
        self.assertEqual(uidlist.load(folder.path).records["1.x.host"].uid, 1)

    def test_names_from_the_network_are_checked(self) -> None:
        for bad in (
            "../x@example.test",
            "a/b@example.test",
            "alice@../etc",
            ".hidden@example.test",
        ):
            self.assertRaises(BadName, self.store.user_path, bad)
        for bad in ("../x", "a/b", "a..b", ".x", "x.", "a\x00b", "x" * 300):
            self.assertRaises(BadName, self.store.folder_path, ALICE, bad)
        self.assertRaises(NoSuchFolder, self.store.folder, ALICE, "Nope")

    async def test_quota(self) -> None:
        store = MaildirStore(self.root, quota_bytes=len(MESSAGE) + 5)
        await store.deliver(ALICE, [MESSAGE])
        with self.assertRaises(QuotaExceeded):
            await store.deliver(ALICE, [MESSAGE])

    async def test_the_quota_at_rcpt_is_checked_when_the_inbox_is_open(self) -> None:
        """RCPT cannot wait for a folder to load: an INBOX not open yet passes there, and
        starts loading, and the delivery (which waits for it) refuses what does not fit."""
        await MaildirStore(self.root).deliver(ALICE, [MESSAGE])
        store = MaildirStore(self.root, quota_bytes=len(MESSAGE))
        directory: Any = SimpleNamespace(resolve=lambda address: [ALICE])
        self.assertEqual(check_local_recipient(directory, store, ALICE), RECIPIENT_OK)
        await store.open_folder(ALICE)  # the load the check started
        self.assertEqual(check_local_recipient(directory, store, ALICE).code, 452)
        with self.assertRaises(QuotaExceeded):
            await store.deliver(ALICE, [MESSAGE])

    async def test_recent_is_claimed_once_and_survives_a_restart(self) -> None:
        folder = self.store.folder(ALICE)
        first = await self.store.deliver(ALICE, [MESSAGE])
        # Before any claim, what is in new/ is recent (maildir(5)).
        self.assertEqual(folder.recent_uids(), [first.uid])
        self.assertEqual(folder.claim_recent(), [first.uid])
        self.assertEqual(folder.recent_uids(), [])
        self.assertEqual(folder.claim_recent(), [])
        # The file stays in new/: claiming is recorded in the UID list, not by renaming.
        self.assertEqual(len(os.listdir(os.path.join(folder.path, "new"))), 1)
        second = await self.store.deliver(ALICE, [MESSAGE], flags={"\\Seen"})
        self.assertEqual(folder.recent_uids(), [second.uid])  # in cur/, yet never told
        again = self.reopen().folder(ALICE)
        self.assertEqual(again.recent_uids(), [second.uid])
        self.assertEqual(again.claim_recent(), [second.uid])
        self.assertEqual(self.reopen().folder(ALICE).recent_uids(), [])
        # The claims survive a compaction of the list too.
        again.expunge([first.uid])
        self.assertEqual(uidlist.load(again.path).first_recent_uid, second.uid + 1)
        self.assertEqual(self.reopen().folder(ALICE).recent_uids(), [])


def test_crlf_from_base() -> None:
    assert crlf_from_base("1.M2P3.host,S=10,W=10") is True
    assert crlf_from_base("1.M2P3.host,S=10,W=12") is False
    assert crlf_from_base("1.M2P3.host") is None


def test_unique_base_differs_across_restarts_with_the_same_pid_and_time(monkeypatch) -> None:
    """A restarted process may get the same pid within the same microsecond, and its
    counter starts again at 1: the random part still keeps the names apart."""
    import itertools

    from mailserver.store import maildir

    monkeypatch.setattr(maildir.time, "time", lambda: 1_800_000_000.25)
    monkeypatch.setattr(maildir.os, "getpid", lambda: 4242)
    names = set()
    for _ in range(20):
        monkeypatch.setattr(maildir, "_counter", itertools.count(1))  # a "restart"
        names.add(maildir.unique_base("mail.example.test"))
    assert len(names) == 20
    assert all(n.startswith("1800000000.M250000P4242Q1R") for n in names)
    # maildir(5): "/" and ":" in the host name are escaped, so flags stay parseable.
    assert maildir.unique_base("a/b:c").endswith(".a\\057b\\072c")


class MeasuringTests(unittest.TestCase):
    """Files other programs put in a folder are listed at once and measured later, in
    one thread job that every caller shares."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.jobs: list[tuple[defer.Deferred[object], object, tuple[object, ...]]] = []
        self.store = MaildirStore(self.root, hostname="host.example", run_in_thread=self.later)
        self.folder = self.store.folder(ALICE)

    def later(self, function: object, *args: object) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        self.jobs.append((d, function, args))
        return d

    def run_jobs(self) -> None:
        while self.jobs:
            d, function, args = self.jobs.pop(0)
            d.callback(function(*args))  # type: ignore[operator]

    def foreign(self, name: str, data: bytes, subdir: str = "new") -> str:
        path = os.path.join(self.folder.path, subdir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (1_600_000_000, 1_600_000_000))
        return path

    def test_listing_reads_nothing_and_one_job_serves_every_caller(self) -> None:
        self.foreign("1.a.other", b"Subject: a\n\nx\n")
        self.foreign("2.b.other,S=9,W=9", b"S: b\r\n\r\n\r\n")
        self.folder.scan()
        self.assertEqual([m.uid for m in self.folder.messages], [1, 2])
        self.assertTrue(self.folder.unmeasured)
        self.assertEqual(self.jobs, [])  # the scan itself started no read
        first, second = self.folder.measure(), self.folder.measure()
        self.assertEqual(len(self.jobs), 1)
        self.assertFalse(first.called or second.called)
        self.run_jobs()
        self.assertTrue(first.called and second.called)
        a, b = self.folder.messages
        self.assertEqual((a.size, a.crlf, a.internal_date), (17, False, 1_600_000_000))
        # The name gave b's size: only its date had to be looked up.
        self.assertEqual((b.size, b.crlf, b.internal_date), (9, True, 1_600_000_000))
        self.assertTrue(self.folder.measure().called)
        self.assertEqual(self.jobs, [])

    def test_a_message_expunged_while_measuring_is_left_out(self) -> None:
        self.foreign("1.a.other", b"a\n")
        self.foreign("2.b.other", b"b\n")
        self.folder.scan()
        done = self.folder.measure()
        self.folder.expunge([1])
        self.run_jobs()
        self.assertTrue(done.called)
        self.assertFalse(self.folder.unmeasured)
        self.assertEqual([(m.uid, m.size) for m in self.folder.messages], [(2, 3)])

    def test_a_message_renamed_while_measuring_is_measured_again(self) -> None:
        self.foreign("1.a.other", b"a\n")
        self.folder.scan()
        done = self.folder.measure()
        self.folder.set_flags(1, {"\\Seen"})  # new/ -> cur/: the job's path is stale
        d, function, args = self.jobs.pop(0)
        d.callback(function(*args))  # type: ignore[operator]
        self.assertFalse(done.called)
        self.assertTrue(self.folder.unmeasured)
        self.run_jobs()
        self.assertTrue(done.called)
        self.assertEqual(self.folder.messages[0].size, 3)

    def test_a_failed_job_fails_the_callers_and_a_later_call_tries_again(self) -> None:
        self.foreign("1.a.other", b"a\n")
        self.folder.scan()
        done = self.folder.measure()
        d, _, _ = self.jobs.pop(0)
        d.errback(OSError("disk"))
        self.assertIsInstance(self.failureResultOf(done).value, OSError)
        again = self.folder.measure()
        self.run_jobs()
        self.assertTrue(again.called)
        self.assertFalse(self.folder.unmeasured)

    def test_measures_survive_a_restart_and_a_crash_before_them_does_not_stick(self) -> None:
        self.foreign("1.a.other", b"a\n")
        self.folder.scan()
        # A crash now: the UID list has the UID, not the size; the next start measures.
        reopened = MaildirStore(self.root, hostname="host.example", run_in_thread=self.later)
        folder = reopened.folder(ALICE)
        self.assertEqual(folder.messages[0].uid, 1)
        self.assertTrue(folder.unmeasured)
        folder.measure()
        self.run_jobs()
        again = MaildirStore(self.root, hostname="host.example", run_in_thread=self.later)
        message = again.folder(ALICE).messages[0]
        self.assertEqual((message.uid, message.size, message.crlf), (1, 3, False))
        self.assertFalse(again.folder(ALICE).unmeasured)


class PipelinedFlagTests(unittest.TestCase):
    """set_flags_many(changes, then): the next batch is renamed while this one is
    reported, and whatever else touches a message in flight waits for its batch."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        delivering = MaildirStore(self.root, hostname="host", run_in_thread=Meanwhile())
        for i in range(4):
            self.successResultOf(delivering.deliver(ALICE, [MESSAGE + b"%d\r\n" % i]))
        self.jobs: list[tuple[defer.Deferred[object], object, tuple[object, ...]]] = []
        self.store = MaildirStore(self.root, hostname="host", run_in_thread=self.later)
        self.folder = self.store.folder(ALICE)
        self.uids = [m.uid for m in self.folder.messages]

    def later(self, function: object, *args: object) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.Deferred()
        self.jobs.append((d, function, args))
        return d

    def run_job(self) -> None:
        d, function, args = self.jobs.pop(0)
        d.callback(function(*args))  # type: ignore[operator]

    def flags(self, uid: int) -> frozenset[str]:
        message = self.folder.by_uid(uid)
        assert message is not None
        return message.flags

    def test_the_next_batch_is_renamed_while_this_one_is_reported(self) -> None:
        flagged = frozenset({"\\Flagged"})
        first = [(uid, flagged) for uid in self.uids[:2]]
        second = [(uid, flagged) for uid in self.uids[2:]]
        d = self.folder.set_flags_many(first, then=second)
        self.assertEqual(len(self.jobs), 2)  # both batches on their way at once
        self.run_job()
        self.assertEqual(self.successResultOf(d), self.uids[:2])
        self.assertEqual([self.flags(uid) for uid in self.uids], [flagged] * 2 + [set()] * 2)
        # Asked for next: it is in flight already, so this waits for it, renaming nothing.
        d = self.folder.set_flags_many(second)
        self.assertNoResult(d)
        self.assertEqual(len(self.jobs), 1)
        self.run_job()
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual([self.flags(uid) for uid in self.uids], [flagged] * 4)
        names = os.listdir(os.path.join(self.folder.path, "cur"))
        self.assertEqual(sorted(n.rsplit(":2,", 1)[1] for n in names), ["F"] * 4)

    def test_a_change_to_a_message_in_flight_waits_for_it_and_is_last(self) -> None:
        uid = self.uids[0]
        self.folder.set_flags_many([(uid, frozenset({"\\Flagged"}))])
        later = self.folder.set_flags_many([(uid, frozenset({"\\Seen"}))])
        self.assertEqual(len(self.jobs), 1)  # planned only once the first is applied
        self.run_job()
        self.assertNoResult(later)
        self.run_job()
        self.assertEqual(self.successResultOf(later), [uid])
        self.assertEqual(self.flags(uid), {"\\Seen"})
        again = MaildirStore(self.root, hostname="host").folder(ALICE)
        self.assertEqual(again.by_uid(uid).flags, {"\\Seen"})  # type: ignore[union-attr]

    def test_a_refresh_waits_for_the_last_batch_in_flight(self) -> None:
        seen = frozenset({"\\Seen"})
        self.folder.set_flags_many([(self.uids[0], seen)], then=[(self.uids[1], seen)])
        with open(os.path.join(self.folder.path, "new", "1.foreign.host"), "wb") as f:
            f.write(b"Subject: from elsewhere\r\n\r\n")
        self.folder.refresh()
        self.run_job()
        self.assertEqual(len(self.folder.messages), 4)  # one batch still in flight
        moved = self.folder.moved()
        self.assertNoResult(moved)
        self.run_job()
        self.successResultOf(moved)
        self.run_job()  # the rescan asked for meanwhile, in a thread
        self.assertEqual(len(self.folder.messages), 5)


class Meanwhile:
    """A run_in_thread that runs the job at once, and around it what other sessions do
    while a real thread would run it (``before`` the job, ``after`` it but before the
    reactor hears the result)."""

    def __init__(self) -> None:
        self.before: list[Callable[[], object]] = []
        self.after: list[Callable[[], object]] = []

    def __call__(self, f: Callable[..., object], *args: object) -> defer.Deferred[object]:
        while self.before:
            self.before.pop(0)()
        result = f(*args)
        while self.after:
            self.after.pop(0)()
        return defer.succeed(result)


class RescanTests(unittest.TestCase):
    """Folder.refresh: what other programs changed is read in a thread, and a result made
    stale by a change to the index meanwhile is not applied."""

    def setUp(self) -> None:
        self.meanwhile = Meanwhile()
        self.store = MaildirStore(self.mktemp(), hostname="host", run_in_thread=self.meanwhile)
        for i in range(3):
            self.successResultOf(self.store.deliver(ALICE, [MESSAGE + b"%d\r\n" % i]))
        self.folder = self.store.folder(ALICE)
        self.uids = [m.uid for m in self.folder.messages]
        self.changes: list[object] = []
        self.store.bus.subscribe(self.folder.key, self.changes.append)

    def put_foreign(self, name: str) -> None:
        with open(os.path.join(self.folder.path, "new", name), "wb") as f:
            f.write(b"Subject: from elsewhere\r\n\r\n")

    def test_the_rescan_runs_in_the_thread_runner_and_is_shared(self) -> None:
        held: list[tuple[defer.Deferred[object], Any, tuple[object, ...]]] = []

        def later(f: Any, *args: object) -> defer.Deferred[object]:
            held.append((defer.Deferred(), f, args))
            return held[-1][0]

        self.store.run_in_thread = later
        self.put_foreign("1.foreign.host")
        first, second = self.folder.refresh(), self.folder.refresh()
        self.assertEqual(len(held), 1)  # one scan for both
        self.assertNoResult(first)
        self.assertEqual(len(self.folder.messages), 3)  # nothing read on the reactor
        d, f, args = held.pop()
        d.callback(f(*args))
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual([m.uid for m in self.folder.messages], [*self.uids, self.uids[-1] + 1])
        self.assertEqual(self.changes, [Appended(self.folder.key, self.uids[-1] + 1)])
        self.successResultOf(self.folder.refresh())  # nothing changed since: no thread
        self.assertEqual(held, [])

    def test_a_result_made_stale_meanwhile_is_read_again(self) -> None:
        """A flag set while the thread scanned: the listing it made has the old file
        name; applied, it would undo the flag. The scan is done again instead, up to
        RESCAN_TRIES times, and then once more on the reactor."""
        self.put_foreign("1.foreign.host")
        uid = self.uids[0]
        flags = [{"\\Seen"}, {"\\Flagged"}, {"\\Answered"}]
        meanwhile = [partial(self.folder.set_flags, uid, wanted) for wanted in flags]

        def one_change_a_scan(f: Any, *args: object) -> defer.Deferred[object]:
            result = f(*args)
            meanwhile.pop(0)()
            return defer.succeed(result)

        self.store.run_in_thread = one_change_a_scan
        scans = record_scans_on_main_thread(self)
        self.successResultOf(self.folder.refresh())
        self.assertEqual(meanwhile, [])
        self.assertEqual(scans, [True])  # changed every time: the last scan on the reactor
        self.assertEqual(self.folder.by_uid(uid).flags, {"\\Answered"})  # type: ignore[union-attr]
        self.assertEqual(len(self.folder.messages), 4)
        self.assertEqual(
            [c for c in self.changes if isinstance(c, FlagsChanged)],
            [FlagsChanged(self.folder.key, uid, frozenset(f)) for f in flags],
        )

    def test_one_stale_result_costs_one_more_thread_scan(self) -> None:
        self.put_foreign("1.foreign.host")
        self.meanwhile.after.append(lambda: self.folder.claim_recent())
        scans = record_scans_on_main_thread(self)
        self.successResultOf(self.folder.refresh())
        self.assertEqual(scans, [])  # read again in the "thread", not on the reactor
        self.assertEqual(len(self.folder.messages), 4)


class FlagBatchTests(unittest.TestCase):
    """Folder.set_flags_many: renames in a thread while other sessions go on."""

    def setUp(self) -> None:
        self.meanwhile = Meanwhile()
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, hostname="host", run_in_thread=self.meanwhile)
        self.folder = self.store.folder(ALICE)
        self.bodies = [MESSAGE + b"%d\r\n" % i for i in range(3)]
        self.uids = []
        for body in self.bodies:
            stored = self.successResultOf(self.store.deliver(ALICE, [body]))
            self.uids.append(stored.uid)

    def files(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.folder.path, "new"))) + sorted(
            os.listdir(os.path.join(self.folder.path, "cur"))
        )

    def test_renames_update_the_index_and_the_uid_list(self) -> None:
        seen = []
        self.store.bus.subscribe(self.folder.key, seen.append)
        before = self.folder.highest_modseq
        changes = [(uid, frozenset({"\\Flagged"})) for uid in self.uids]
        self.assertEqual(self.successResultOf(self.folder.set_flags_many(changes)), self.uids)
        self.assertTrue(all(name.endswith(":2,F") for name in self.files()))
        self.assertEqual(seen, [FlagsChanged(self.folder.key, u, {"\\Flagged"}) for u in self.uids])
        self.assertEqual(self.folder.highest_modseq, before + 3)
        # Nothing to do the second time; and a restart reads the same flags and modseqs.
        self.assertEqual(self.successResultOf(self.folder.set_flags_many(changes)), [])
        again = MaildirStore(self.root, hostname="host").folder(ALICE)
        self.assertEqual([m.flags for m in again.messages], [{"\\Flagged"}] * 3)
        self.assertEqual(again.highest_modseq, self.folder.highest_modseq)

    def test_a_message_expunged_during_the_renames_stays_expunged(self) -> None:
        first, second, third = self.uids
        self.meanwhile.before.append(lambda: self.folder.expunge([first]))
        self.meanwhile.after.append(lambda: self.folder.expunge([second]))
        changes = [(uid, frozenset({"\\Seen"})) for uid in self.uids]
        self.assertEqual(self.successResultOf(self.folder.set_flags_many(changes)), [third])
        self.assertEqual(len(self.files()), 1)
        self.folder.scan()  # the renamed file of the second is not found again
        self.assertEqual([m.uid for m in self.folder.messages], [third])

    def test_a_rename_by_another_session_meanwhile_leaves_the_batch_last(self) -> None:
        uid = self.uids[0]
        self.meanwhile.before.append(lambda: self.folder.set_flags(uid, {"\\Answered"}))
        result = self.folder.set_flags_many([(uid, frozenset({"\\Flagged"}))])
        self.assertEqual(self.successResultOf(result), [uid])
        self.assertEqual(self.folder.by_uid(uid).flags, {"\\Flagged"})
        self.assertEqual(sum(name.endswith(":2,F") for name in self.files()), 1)

    def test_reads_and_refreshes_meanwhile_wait_for_the_batch(self) -> None:
        uid = self.uids[0]
        reads = []
        foreign = os.path.join(self.folder.path, "new", "1.foreign.host")

        def others() -> None:
            reads.append(self.folder.read_many([uid]))  # planned with the old name
            with open(foreign, "wb") as f:
                f.write(b"Subject: from elsewhere\r\n\r\n")
            self.folder.refresh()

        self.meanwhile.after.append(others)
        self.successResultOf(self.folder.set_flags_many([(uid, frozenset({"\\Seen"}))]))
        self.assertEqual(self.successResultOf(reads[0]), {uid: self.bodies[0]})
        self.assertEqual(len(self.folder.messages), 4)  # the put-off refresh found it

    def test_an_expunged_file_is_not_found_again_before_it_is_unlinked(self) -> None:
        first = self.uids[0]
        seen_meanwhile = []
        self.meanwhile.before.append(
            lambda: seen_meanwhile.append((self.folder.scan(), self.folder.by_uid(first))[1])
        )
        self.assertEqual(self.folder.expunge([first]), [first])
        self.assertEqual(seen_meanwhile, [None])  # the scan before the unlink skipped it
        self.successResultOf(self.folder.expunged())
        self.assertEqual(len(self.files()), 2)
        again = MaildirStore(self.root, hostname="host").folder(ALICE)
        self.assertEqual([m.uid for m in again.messages], self.uids[1:])
