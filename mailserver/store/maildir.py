"""Maildir++ folders as Dovecot lays them out.

``<root>/<domain>/<user>/`` is INBOX with ``tmp/ new/ cur/``; folder ``Sent`` is the
sub-directory ``.Sent`` (hierarchy separator ``.``), each with a ``maildirfolder`` file;
``subscriptions`` lists subscribed folders. Flags live in the ``:2,`` suffix of the file
name (S seen, R answered, F flagged, T deleted, D draft; keywords are the letters a-z,
numbered in ``dovecot-keywords``). Messages are stored as received, with CRLF line ends.

Disk writes that need an fsync run in threads; everything else here runs on the reactor
thread, which owns the in-memory index of each open folder.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver.names import BadName, check_folder_name, split_address
from mailserver.store import uidlist
from mailserver.store.bus import Appended, ChangeBus, Expunged, FlagsChanged
from mailserver.store.commit import FileJob, GroupCommitter, commit_batch
from mailserver.store.durable import DirectorySyncer, fsync_dir, write_synced
from mailserver.store.files import (
    UNMEASURED_SIZE,
    Measured,
    MeasurePlan,
    MeasureResult,
    Rule,
    by_directory,
    from_numbers,
    measure_files,
    read_message_file,
    rename_files,
    screen_files,
)
from mailserver.store.worker import FileWorker

SYSTEM_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {v: k for k, v in SYSTEM_FLAG_LETTERS.items()}
SYSTEM_FLAGS = frozenset(SYSTEM_FLAG_LETTERS)  # issubset() of a dict makes a set each call
KEYWORDS_FILE = "dovecot-keywords"
MAX_KEYWORDS = 26  # Maildir keeps keywords as the letters a-z
DEFAULT_FOLDERS = ("Drafts", "Sent", "Trash", "Junk", "Archive")


@dataclass(slots=True)
class MessageInfo:
    """What the index knows of one message without opening its file."""

    uid: int
    base: str
    subdir: str  # "new" or "cur"
    flags: frozenset[str]
    size: int  # octets as served (CRLF line ends): IMAP RFC822.SIZE, POP3 LIST
    internal_date: float
    crlf: bool  # False for files written by other tools with bare LF line ends
    modseq: int = 1  # RFC 7162: the mod-sequence of the message's last metadata change


class NoSuchFolder(Exception):
    pass


class FolderExists(Exception):
    pass


class QuotaExceeded(Exception):
    pass


_counter = itertools.count(1)

UNMEASURED_DATE = 0.0

# Measuring this many files or more is split between a thread and the file worker.
SPLIT_MEASURING_ABOVE = 2000
# Screening this many files or more for a search is split the same way.
SPLIT_SCREENING_ABOVE = 1000
# A batch of this many renames or more runs in the file worker rather than a thread.
RENAME_IN_WORKER_FROM = 32

# How often a rescan in a thread is tried again when the index changed meanwhile, before
# the folder is scanned on the reactor (Folder._rescanned).
RESCAN_TRIES = 3

# How many checked user directories the store remembers (see user_path).
MAX_CACHED_PATHS = 10_000

log = Logger()
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def unique_base(hostname: str) -> str:
    """A Maildir base name unique across processes, restarts and hosts (maildir(5))."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    host = _host_part(hostname)
    # R: not a secret, only one more thing that differs (random reseeds after a fork).
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}R{random.getrandbits(32):08x}.{host}"


def _host_part(hostname: str) -> str:
    """maildir(5): "/" and ":" in the host name are written as \\057 and \\072."""
    return hostname.replace("/", "\\057").replace(":", "\\072")


def find_base(path: str, base: str) -> str | None:
    """The full base name (with its ",S=" fields) of the message in the folder at
    ``path`` whose base is ``base`` or starts with ``base`` and a comma; None if none.

    Blocks (it lists new/ and cur/): for the rare delivery that may be a repeat."""
    for subdir in ("new", "cur"):
        try:
            names = os.listdir(os.path.join(path, subdir))
        except FileNotFoundError:
            continue
        for name in names:
            found = parse_filename(name)[0]
            if found == base or found.startswith(base + ","):
                return found
    return None


def parse_filename(filename: str) -> tuple[str, str]:
    """Split a Maildir file name into (base, info), info being what follows ``:2,``."""
    base, sep, info = filename.partition(":2,")
    if not sep:
        base = filename.partition(":")[0]
    return base, info


def _base_fields(base: str) -> dict[str, int]:
    fields = {}
    for field in base.split(",")[1:]:
        key, sep, value = field.partition("=")
        if sep and value.isdigit():
            fields[key] = int(value)
    return fields


def crlf_from_base(base: str) -> bool | None:
    """From Dovecot's ``,S=<file size>,W=<CRLF size>``: does the file have CRLF line ends?"""
    fields = _base_fields(base)
    if "S" in fields and "W" in fields:
        return fields["S"] == fields["W"]
    return None


def _unlink_files(paths: list[str]) -> None:
    """Unlink expunged message files (one gone already is fine). Blocks: run in a thread."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _read_files(plan: list[tuple[int, str, bool]]) -> dict[int, bytes]:
    """Read message files by UID, leaving out those that cannot be read (the caller
    looks them up again: expunged, or renamed with new flags)."""
    found = {}
    for uid, path, crlf in plan:
        try:
            found[uid] = read_message_file(path, crlf)
        except OSError:
            continue
    return found


def _read_folder(path: str) -> tuple[tuple[int, int], uidlist.UidList, dict[str, tuple[str, str]]]:
    """What a scan reads of the folder at ``path``: the stamp of new/ and cur/ (taken
    first, so that a change made while they are listed shows as one later), the UID list,
    and each file's base name with its directory and info. Blocks on the disk."""
    stamp = _dir_stamp(path)
    stored = uidlist.load(path)
    found: dict[str, tuple[str, str]] = {}
    for subdir in ("new", "cur"):
        for filename in os.listdir(os.path.join(path, subdir)):
            if not filename.startswith("."):
                base, info = parse_filename(filename)
                found[base] = (subdir, info)
    return stamp, stored, found


def _dir_stamp(path: str) -> tuple[int, int]:
    return (
        os.stat(os.path.join(path, "new")).st_mtime_ns,
        os.stat(os.path.join(path, "cur")).st_mtime_ns,
    )


@dataclass
class _Scanned:
    """A scan's index of a folder (Folder._index), not yet the Folder's (Folder._apply)."""

    stamp: tuple[int, int]
    stored: uidlist.UidList
    messages: list[MessageInfo]
    by_uid: dict[int, MessageInfo]
    by_base: dict[str, MessageInfo]
    unmeasured: set[str]
    appended: list[uidlist.UidRecord]
    flag_changes: list[uidlist.UidRecord]
    gone: list[uidlist.UidRecord]  # the records of files no longer there
    # The UIDs that went and came since the index it was compared with (announced).
    removed_uids: list[int]
    added_uids: list[int]


class Keywords:
    """The folder's keyword ↔ letter table, stored as Dovecot's ``dovecot-keywords``."""

    def __init__(self, folder_path: str) -> None:
        self.path = os.path.join(folder_path, KEYWORDS_FILE)
        self.names: list[str] = []
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    index, _, name = line.strip().partition(" ")
                    if index.isdigit() and name and int(index) < MAX_KEYWORDS:
                        while len(self.names) <= int(index):
                            self.names.append("")
                        self.names[int(index)] = name
        except FileNotFoundError:
            pass

    def letter(self, keyword: str) -> str | None:
        """The letter for a keyword, adding it to the table if there is room."""
        for i, name in enumerate(self.names):
            if name.lower() == keyword.lower():
                return chr(ord("a") + i)
        if len(self.names) >= MAX_KEYWORDS:
            return None
        self.names.append(keyword)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{i} {n}\n" for i, n in enumerate(self.names) if n)
        os.replace(tmp, self.path)
        return chr(ord("a") + len(self.names) - 1)

    def keyword(self, letter: str) -> str | None:
        i = ord(letter) - ord("a")
        if 0 <= i < len(self.names) and self.names[i]:
            return self.names[i]
        return None


class Folder:
    """The open index of one Maildir folder, shared by every session that uses it."""

    def __init__(self, store: MaildirStore, owner: str, name: str, path: str) -> None:
        """Empty until scanned: MaildirStore._load_folder makes and scans each one."""
        self.store = store
        self.owner = owner
        self.name = name
        self.path = path
        self.keywords = Keywords(path)
        self.messages: list[MessageInfo] = []
        self._by_uid: dict[int, MessageInfo] = {}
        self._by_base: dict[str, MessageInfo] = {}
        self._uidlist = uidlist.UidList.fresh()
        self._dir_stamp: tuple[int, int] = (0, 0)
        # The change-bus key: the path it was opened at, kept when the folder is renamed.
        self.key = path
        self.deleted = False
        self._infos: dict[frozenset[str], str] = {}  # flags -> ":2," suffix (file_path)
        # Files whose size, line ends or date are not known yet (see measure()).
        self._unmeasured: set[str] = set()
        self._measuring: defer.Deferred[None] | None = None
        self._measure_waiters: list[defer.Deferred[None]] = []
        # The batches of renames in flight (set_flags_many) by the UIDs they move, who
        # waits for them all to be applied, and whether a refresh was put off until then.
        self._moving: dict[int, _RenameBatch] = {}
        self._moved_waiters = _Waiters()
        self._refresh_wanted = False
        # A rescan in a thread (refresh): who waits for it. And a counter of the changes
        # to the index, by which its result is known to be stale.
        self._rescanning: _Waiters | None = None
        self._version = 0
        # Expunged messages whose files are being unlinked (a scan must not find them).
        self._doomed: set[str] = set()
        self._unlinking = 0
        self._unlinked_waiters = _Waiters()

    # Identity and counters ---------------------------------------------------------
    @property
    def highest_modseq(self) -> int:
        """RFC 7162 §3.1.1 HIGHESTMODSEQ."""
        return self._uidlist.highest_modseq

    @property
    def uidvalidity(self) -> int:
        return self._uidlist.uidvalidity

    @property
    def uidnext(self) -> int:
        return self._uidlist.uidnext

    def by_uid(self, uid: int) -> MessageInfo | None:
        return self._by_uid.get(uid)

    def total_size(self) -> int:
        return sum(m.size for m in self.messages)

    # Scanning ------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int]:
        return _dir_stamp(self.path)

    def refresh(self) -> defer.Deferred[None]:
        """Rescan if another program changed new/ or cur/ since we last looked (after the
        batch of renames in flight, if any: its own renames are not news). The directories
        are read in a thread, so that a large folder does not hold the reactor; the
        Deferred fires once the index is up to date (at once if nothing changed)."""
        if self._moving:
            self._refresh_wanted = True
        elif not self.deleted and self._stamp() != self._dir_stamp:
            return self._rescan()
        return defer.succeed(None)

    def _rescan(self) -> defer.Deferred[None]:
        """Scan in a thread; the sessions that ask meanwhile share the one scan."""
        if self._rescanning is not None:
            return self._rescanning.wait(True)
        waiters = self._rescanning = _Waiters()
        done = waiters.wait(True)
        self._start_rescan(RESCAN_TRIES)  # (may be done already, if run_in_thread is inline)
        return done

    def _start_rescan(self, tries: int) -> None:
        # What the thread compares the disk with: taken here, as the index is only ever
        # changed on the reactor; _rescanned throws the result away if it changed since.
        flags = {uid: message.flags for uid, message in self._by_uid.items()}
        validity = self._uidlist.uidvalidity if self.messages else None
        version, path, doomed = self._version, self.path, frozenset(self._doomed)

        def scan_here() -> _Scanned | None:
            stamp, stored, found = _read_folder(path)
            if validity is not None and stored.uidvalidity != validity:
                return None  # the UID list was replaced: scan() keeps ours, on the reactor
            return self._index(stamp, stored, found, flags, doomed)

        d = self.store.run_in_thread(scan_here)
        d.addBoth(self._rescanned, version, path, tries)

    def _rescanned(
        self, scanned: _Scanned | Failure | None, version: int, path: str, tries: int
    ) -> None:
        if self.deleted:
            pass  # nothing left to bring up to date
        elif self._moving:
            self._refresh_wanted = True  # _renamed scans again once the renames are in
        elif self._version != version or self.path != path:
            if tries > 1:  # changed here meanwhile: what the thread made may be stale
                self._start_rescan(tries - 1)
                return
            self.scan()  # changed every time: once more, here
        elif isinstance(scanned, Failure):
            log.failure("rescanning {path} failed", scanned, path=path)
        elif scanned is None:
            self.scan()
        else:
            self._apply(scanned, announce=True)
        waiters, self._rescanning = self._rescanning, None
        assert waiters is not None
        waiters.fire()

    def scan(self, announce: bool = True) -> None:
        """Read new/ and cur/, keep UIDs from the UID list, give new files new UIDs, and
        announce files that appeared or disappeared behind our back (``announce=False``:
        not from here, a thread: the first scan of a folder being opened, which has
        nothing to announce to anyone but those listening, see MaildirStore._opened).
        Blocks on the disk: refresh() does the same in a thread."""
        stamp, stored, found = _read_folder(self.path)
        if stored.uidvalidity != self._uidlist.uidvalidity and self.messages:
            # The list was lost or replaced under us: keep ours, it is newer.
            stored = self._uidlist

        flags = {uid: message.flags for uid, message in self._by_uid.items()}
        self._apply(self._index(stamp, stored, found, flags, self._doomed), announce)

    def _index(
        self,
        stamp: tuple[int, int],
        stored: uidlist.UidList,
        found: dict[str, tuple[str, str]],
        flags_before: dict[int, frozenset[str]],
        doomed: set[str] | frozenset[str],
    ) -> _Scanned:
        """The index of what _read_folder found (``stored`` is updated to match): the
        files the UID list lacks get new UIDs, records of files gone go, and a message
        whose flags differ from ``flags_before`` (the index so far, by UID) gets a new
        mod-sequence. Changes nothing of this Folder (it may run in a thread)."""
        found = {base: place for base, place in found.items() if base not in doomed}
        appended: list[uidlist.UidRecord] = []
        file_sizes: dict[str, int] = {}  # the S= of files not measured yet, for the quota
        for base in sorted(base for base in found if base not in stored.records):
            # Not read here: SELECT needs no sizes. measure() reads them in a thread.
            fields = _base_fields(base)
            file_size, size = fields.get("S"), fields.get("W")
            if file_size is not None:
                file_sizes[base] = file_size
            stored.highest_modseq += 1
            record = uidlist.UidRecord(
                stored.uidnext,
                base,
                UNMEASURED_DATE,
                UNMEASURED_SIZE if size is None else size,
                stored.highest_modseq,
                None if file_size is None or size is None else file_size == size,
            )
            stored.uidnext += 1
            stored.records[base] = record
            appended.append(record)
        gone = [stored.records.pop(base) for base in list(stored.records) if base not in found]
        if gone:
            stored.highest_modseq += 1  # RFC 7162 §3.1.1: an expunge is a change too
        messages = []
        flag_changes = []
        flag_sets: dict[str, frozenset[str]] = {}  # most files share a few flag suffixes
        unmeasured = set()
        for record in sorted(stored.records.values(), key=lambda r: r.uid):
            subdir, info = found[record.base]
            crlf = record.crlf
            if crlf is None:
                crlf = record.crlf = crlf_from_base(record.base)
            size = record.size
            if size < 0 or crlf is None or record.internal_date == UNMEASURED_DATE:
                unmeasured.add(record.base)
                if size < 0:  # until measured, the file's size for the quota
                    size = file_sizes.get(record.base, 0)
                crlf = True if crlf is None else crlf
            flags = flag_sets.get(info) if subdir == "cur" else frozenset()
            if flags is None:
                flags = flag_sets[info] = self._flags_from_info(info)
            before = flags_before.get(record.uid)
            if before is not None and before != flags:
                # Another program renamed the file with other flags.
                stored.highest_modseq += 1
                record.modseq = stored.highest_modseq
                flag_changes.append(record)
            messages.append(
                MessageInfo(
                    uid=record.uid,
                    base=record.base,
                    subdir=subdir,
                    flags=flags,
                    size=size,
                    internal_date=record.internal_date,
                    crlf=crlf,
                    modseq=record.modseq,
                )
            )
        by_uid = {m.uid: m for m in messages}
        return _Scanned(
            stamp,
            stored,
            messages,
            by_uid,
            {m.base: m for m in messages},
            unmeasured,
            appended,
            flag_changes,
            gone,
            sorted(flags_before.keys() - by_uid.keys()),
            sorted(by_uid.keys() - flags_before.keys()),
        )

    def _apply(self, scanned: _Scanned, announce: bool) -> None:
        """Make a scan's index this Folder's, write the UID list, and announce."""
        stored, flag_changes = scanned.stored, scanned.flag_changes
        if scanned.gone or scanned.appended or flag_changes:
            uidlist.append(
                self.path,
                stored,
                scanned.appended + flag_changes,
                updated=bool(flag_changes),
                removed=scanned.gone,
            )
        self._version += 1
        self._dir_stamp = scanned.stamp
        self._uidlist = stored
        had_messages = bool(self._by_uid)
        self.messages = scanned.messages
        self._unmeasured = scanned.unmeasured
        self._by_uid = scanned.by_uid
        self._by_base = scanned.by_base
        if not announce:
            return
        bus = self.store.bus
        for uid in scanned.removed_uids:
            bus.publish(Expunged(self.key, uid))
        for record in flag_changes:
            bus.publish(FlagsChanged(self.key, record.uid, self._by_uid[record.uid].flags))
        if had_messages or bus.listeners(self.key):
            for uid in scanned.added_uids:
                bus.publish(Appended(self.key, uid))

    # Measuring ---------------------------------------------------------------------
    @property
    def unmeasured(self) -> bool:
        """Whether some message's RFC822.SIZE, line ends or INTERNALDATE is not known yet
        (files other programs put here; ours carry their sizes in their names)."""
        return bool(self._unmeasured)

    def measure(self) -> defer.Deferred[None]:
        """Fires once every message is measured: the files are read in a thread, as many
        sessions as ask share one job, and the results are kept in the UID list."""
        if not self._unmeasured:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._measure_waiters.append(waiter)
        self._start_measuring()
        return waiter

    def _start_measuring(self) -> None:
        if self._measuring is not None or not self._unmeasured:
            return
        # Planned once the renames in flight are applied, so that the paths hold.
        self._measuring = self.moved()
        self._measuring.addCallback(lambda _: self._measure_plan())
        self._measuring.addCallback(lambda plan: self.store.measure_files(plan))
        self._measuring.addBoth(self._measured)

    def _measure_plan(self) -> MeasurePlan:
        plan = []
        unmeasured, records = self._unmeasured, self._uidlist.records
        for message in self.messages:
            if message.base in unmeasured:
                record = records[message.base]
                read = record.size < 0 or record.crlf is None
                plan.append((message.base, self.file_path(message), read))
        return plan

    def _measured(self, result: MeasureResult | Failure) -> None:
        self._measuring = None
        waiters, self._measure_waiters = self._measure_waiters, []
        if isinstance(result, Failure):
            if not waiters:
                log.failure("measuring {path} failed", result, path=self.path)
            for waiter in waiters:
                waiter.errback(result)
            return None
        self._version += 1
        changed = []
        for base, path, found in result:
            message = self._by_base.get(base)
            record = self._uidlist.records.get(base)
            if message is None or record is None:
                continue  # expunged meanwhile
            if found is None:
                if self.file_path(message) != path or message.uid in self._moving:
                    continue  # renamed meanwhile (new flags): measured again below
                found = Measured(message.size, True, time.time())  # gone: the next scan drops it
            if record.size < 0 or record.crlf is None:
                record.size, record.crlf = found.size, found.crlf
            record.internal_date = found.mtime
            message.size, message.crlf = record.size, record.crlf
            message.internal_date = record.internal_date
            self._unmeasured.discard(base)
            changed.append(record)
        if changed:
            uidlist.append(self.path, self._uidlist, changed, updated=True)
            self._dir_stamp = self._stamp()
        for waiter in waiters:
            if self._unmeasured:
                self.measure().chainDeferred(waiter)
            else:
                waiter.callback(None)
        return None

    # Flags ---------------------------------------------------------------------------
    def _flags_from_info(self, info: str) -> frozenset[str]:
        flags = set()
        for letter in info:
            if letter in LETTER_FLAGS:
                flags.add(LETTER_FLAGS[letter])
            elif "a" <= letter <= "z":
                keyword = self.keywords.keyword(letter)
                if keyword:
                    flags.add(keyword)
        return frozenset(flags)

    def _info_from_flags(self, flags: Iterable[str]) -> str:
        letters = set()
        for flag in flags:
            if flag in SYSTEM_FLAG_LETTERS:
                letters.add(SYSTEM_FLAG_LETTERS[flag])
            elif not flag.startswith("\\"):
                letter = self.keywords.letter(flag)
                if letter:
                    letters.add(letter)
        return "".join(sorted(letters))

    def _filename(self, base: str, subdir: str, info: str) -> str:
        return base if subdir == "new" else f"{base}:2,{info}"

    def file_path(self, message: MessageInfo) -> str:
        if message.subdir == "new":
            return f"{self.path}/new/{message.base}"
        return self._cur_path(message.base, message.flags)

    def _cur_path(self, base: str, flags: frozenset[str]) -> str:
        # Reading 1000 messages asks 1000 times: most share a handful of flag sets.
        info = self._infos.get(flags)
        if info is None:
            info = self._infos[flags] = self._info_from_flags(flags)
        return f"{self.path}/cur/{base}:2,{info}"

    def set_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo | None:
        """Give a message exactly these flags (a rename into cur/); announce the change."""
        message = self._by_uid.get(uid)
        if message is None:
            return None
        new_flags = frozenset(f for f in flags if f != "\\Recent")
        if new_flags == message.flags and message.subdir == "cur":
            return message
        self._version += 1
        old_path = self.file_path(message)
        old_flags = message.flags
        message.flags = self._kept_flags(new_flags)
        message.subdir = "cur"
        try:
            os.rename(old_path, self.file_path(message))
        except FileNotFoundError:
            self.scan()
            return self._by_uid.get(uid)
        if message.flags == old_flags:
            self._dir_stamp = self._stamp()
            return message  # only moved from new/ to cur/: no metadata change
        record = self._new_modseq(message)
        if record is not None:
            uidlist.append(self.path, self._uidlist, [record], updated=True)
            self._dir_stamp = self._stamp()
        self.store.bus.publish(FlagsChanged(self.key, uid, message.flags))
        return message

    def _new_modseq(self, message: MessageInfo) -> uidlist.UidRecord | None:
        """RFC 7162: a flag change gets the next MODSEQ; the record to write, if listed."""
        self._uidlist.highest_modseq += 1
        message.modseq = self._uidlist.highest_modseq
        record = self._uidlist.records.get(message.base)
        if record is not None:
            record.modseq = message.modseq
        return record

    def set_flags_many(
        self,
        changes: Sequence[tuple[int, frozenset[str]]],
        then: Sequence[tuple[int, frozenset[str]]] = (),
    ) -> defer.Deferred[list[int]]:
        """Give each message exactly these flags, as set_flags does, with the renames done
        off the reactor (MaildirStore.rename_files): a STORE on 10,000 messages is 10,000
        renames, a fifth of a second the reactor would otherwise not serve anyone. Fires
        with the UIDs whose flags changed, once the index says so too.

        ``then`` is what the caller will ask for next: its renames start now and run
        while the caller reports these (a STORE asks a batch at a time). A message
        already in a batch in flight is changed once that batch is applied, as each
        batch plans from the paths the last one left."""
        waiting = {id(b): b for uid, _ in changes if (b := self._moving.get(uid)) is not None}
        if waiting:
            applied = defer.DeferredList([b.applied.wait(True) for b in waiting.values()])
            d = applied.addCallback(lambda _: self.set_flags_many(changes))
        else:
            d = self._start_renames(changes)
        if then:
            ahead = self._start_renames(
                [(uid, flags) for uid, flags in then if uid not in self._moving]
            )
            ahead.addErrback(lambda f: log.failure("renaming in {path}", f, path=self.path))
        return d

    def _start_renames(
        self, changes: Sequence[tuple[int, frozenset[str]]]
    ) -> defer.Deferred[list[int]]:
        """Send one batch of renames on its way; fires once the index has it."""
        moves = []
        for uid, flags in changes:
            message = self._by_uid.get(uid)
            if message is None:
                continue
            kept = self._kept_flags(flags)
            if kept == message.flags and message.subdir == "cur":
                continue
            target = self._cur_path(message.base, kept)
            moves.append((uid, kept, self.file_path(message), target))
        if not moves:
            return defer.succeed([])
        batch = _RenameBatch()
        for uid, _, _, _ in moves:
            self._moving[uid] = batch
        d = self.store.rename_files([(old, new) for _, _, old, new in moves])
        d.addBoth(self._renamed, moves, batch)
        return d

    def _renamed(
        self,
        done: list[bool] | Failure,
        moves: list[tuple[int, frozenset[str], str, str]],
        batch: _RenameBatch,
    ) -> list[int] | Failure:
        """Bring the index up to date with a batch of renames (set_flags_many)."""
        self._version += 1
        for uid, _, _, _ in moves:
            del self._moving[uid]
        changed: list[int] = []
        applied: list[int] = []  # changed here, not by set_flags (which announces its own)
        try:
            if isinstance(done, Failure):
                self._refresh_wanted = True  # a bug struck: see what is there
                return done
            records = []
            retry = []
            for (uid, flags, _, target), renamed in zip(moves, done, strict=True):
                message = self._by_uid.get(uid)
                if not renamed:
                    retry.append((uid, flags))
                    continue
                if message is None:
                    # Expunged while renamed: the expunge removed the name it had before.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target)
                    continue
                old_flags = message.flags
                message.flags, message.subdir = flags, "cur"
                if flags == old_flags:
                    continue  # only moved from new/ to cur/: no metadata change
                record = self._new_modseq(message)
                if record is not None:
                    records.append(record)
                changed.append(uid)
                applied.append(uid)
            if records:
                uidlist.append(self.path, self._uidlist, records, updated=True)
            for uid in applied:
                self.store.bus.publish(FlagsChanged(self.key, uid, self._by_uid[uid].flags))
            for uid, flags in retry:
                # Another session renamed or expunged it meanwhile: one at a time (last,
                # as this may rescan the folder).
                if self._by_uid.get(uid) is not None and self.set_flags(uid, flags) is not None:
                    changed.append(uid)
            return changed
        finally:
            if not self._moving:  # the last batch in flight: the directories hold still
                refresh, self._refresh_wanted = self._refresh_wanted, False
                if refresh:
                    self._rescan()  # someone asked meanwhile: see what is there
                else:
                    self._dir_stamp = self._stamp()
            batch.applied.fire()
            if not self._moving:
                self._moved_waiters.fire()

    def moved(self) -> defer.Deferred[None]:
        """Fires once no batch of renames is in flight (at once if none is)."""
        return self._moved_waiters.wait(bool(self._moving))

    def _kept_flags(self, flags: Iterable[str]) -> frozenset[str]:
        """The flags a file can carry: system flags and keywords with a letter."""
        if isinstance(flags, frozenset) and flags <= SYSTEM_FLAGS:
            return flags  # the common case, without building a new set
        return frozenset(
            f
            for f in flags
            if f != "\\Recent" and (f in SYSTEM_FLAG_LETTERS or self.keywords.letter(f))
        )

    # \Recent (RFC 3501 §2.3.2) ----------------------------------------------------------
    def recent_uids(self) -> list[int]:
        """The messages no read-write session has been told of yet, in UID order."""
        first = self._uidlist.first_recent_uid
        if first is None:  # never claimed: those still in new/, as maildir(5) has it
            return [m.uid for m in self.messages if m.subdir == "new"]
        recent = []
        for message in reversed(self.messages):
            if message.uid < first:
                break
            recent.append(message.uid)
        recent.reverse()
        return recent

    def claim_recent(self) -> list[int]:
        """A read-write session is told of the recent messages: they are recent for it
        alone. The claim is recorded in the UID list; the files stay where they are."""
        recent = self.recent_uids()
        if recent:
            self._version += 1
            self._uidlist.first_recent_uid = recent[-1] + 1
            uidlist.claim_recent(self.path, self._uidlist)
        return recent

    # Expunge -------------------------------------------------------------------------
    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove these messages from the index and announce each; return the UIDs
        removed. Their files are unlinked in a thread (10,000 unlinks would hold the
        reactor for a sixth of a second), and the UID list notes the expunge after that:
        a crash in between brings the messages back, never loses one. ``expunged()``
        fires once the files are gone."""
        removed = []
        paths = []
        bases = set()
        records = []
        for uid in sorted(set(uids)):
            message = self._by_uid.pop(uid, None)
            if message is None:
                continue
            paths.append(self.file_path(message))
            del self._by_base[message.base]
            record = self._uidlist.records.pop(message.base, None)
            if record is not None:
                records.append(record)
            self._unmeasured.discard(message.base)
            bases.add(message.base)
            removed.append(uid)
        if not removed:
            return removed
        self._version += 1
        gone = set(removed)
        self.messages = [m for m in self.messages if m.uid not in gone]
        self._uidlist.highest_modseq += 1  # RFC 7162 §3.1.1: an expunge is a change
        self._doomed |= bases
        self._unlinking += 1
        d = self.store.run_in_thread(_unlink_files, paths)
        d.addBoth(self._unlinked, bases, records)
        for uid in removed:
            self.store.bus.publish(Expunged(self.key, uid))
        return removed

    def _unlinked(self, result: object, bases: set[str], records: list[uidlist.UidRecord]) -> None:
        self._version += 1
        self._unlinking -= 1
        self._doomed -= bases
        if isinstance(result, Failure):
            log.failure("removing expunged files in {path} failed", result, path=self.path)
            self.scan()  # what is left on disk comes back, under new UIDs
        elif not self.deleted:
            try:
                uidlist.append(self.path, self._uidlist, [], removed=records)
                self._dir_stamp = self._stamp()
            except FileNotFoundError:
                pass  # the folder itself was removed meanwhile
        if not self._unlinking:
            self._unlinked_waiters.fire()

    def expunged(self) -> defer.Deferred[None]:
        """Fires once the files of every expunge so far are unlinked."""
        return self._unlinked_waiters.wait(bool(self._unlinking))

    # Reading -------------------------------------------------------------------------
    def read(self, uid: int) -> defer.Deferred[bytes]:
        """The message's bytes (CRLF line ends), read in a thread."""
        message = self._by_uid.get(uid)
        if message is None:
            return defer.fail(KeyError(uid))
        path = self.file_path(message)
        in_thread = self.store.run_in_thread

        def retry_if_renamed(failure):  # type: ignore[no-untyped-def]
            failure.trap(FileNotFoundError)
            current = self._by_uid.get(uid)
            if current is None or self.file_path(current) == path:
                return failure
            return in_thread(read_message_file, self.file_path(current), message.crlf)

        d = in_thread(read_message_file, path, message.crlf)
        d.addErrback(lambda failure: self.moved().addCallback(lambda _: failure))
        d.addErrback(retry_if_renamed)
        return d

    def read_many(self, uids: Sequence[int]) -> defer.Deferred[dict[int, bytes]]:
        """The bytes (CRLF line ends) of these messages by UID, read in one thread job:
        a FETCH or SEARCH asks for a batch, as a thread hop costs more than a read. A
        message expunged meanwhile, or whose file cannot be read, is left out."""
        plan = [
            (uid, self.file_path(message), message.crlf)
            for uid in uids
            if (message := self._by_uid.get(uid)) is not None
        ]
        d = self.store.run_in_thread(_read_files, plan)
        d.addCallback(self._read_renamed, plan)
        return d

    def screen(self, uids: Sequence[int], rule: Rule) -> defer.Deferred[set[int]]:
        """The UIDs of these messages that the rule does not rule out from their raw
        headers (files.ruled_out): a SEARCH then reads and parses only those. A message
        renamed or expunged meanwhile is not ruled out; the search looks again."""
        listed = [(uid, m) for uid in uids if (m := self._by_uid.get(uid)) is not None]
        d = self.store.screen_files([(self.file_path(m), m.crlf) for _, m in listed], rule)
        d.addCallback(lambda kept: {u for (u, _), keep in zip(listed, kept, strict=True) if keep})
        return d

    def _read_renamed(
        self, found: dict[int, bytes], plan: list[tuple[int, str, bool]]
    ) -> dict[int, bytes] | defer.Deferred[dict[int, bytes]]:
        """Read again, at their new paths, the files renamed (new flags) while read; and
        leave out those expunged meanwhile, whose files may have been read before their
        unlink (it runs in another thread)."""
        if self._moving and any(uid not in found for uid, _, _ in plan):
            return self.moved().addCallback(lambda _: self._read_renamed(found, plan))
        again = [
            (uid, self.file_path(message), message.crlf)
            for uid, path, _ in plan
            if uid not in found
            and (message := self._by_uid.get(uid)) is not None
            and self.file_path(message) != path
        ]
        if not again:
            return self._still_listed(found)
        d = self.store.run_in_thread(_read_files, again)
        d.addCallback(lambda more: self._still_listed({**found, **more}))
        return d

    def _still_listed(self, found: dict[int, bytes]) -> dict[int, bytes]:
        by_uid = self._by_uid
        if all(uid in by_uid for uid in found):
            return found
        return {uid: data for uid, data in found.items() if uid in by_uid}

    # Delivery bookkeeping --------------------------------------------------------------
    def adopt(
        self,
        base: str,
        subdir: str,
        flags: frozenset[str],
        size: int,
        date: float,
        crlf: bool = True,
    ) -> int:
        """Index a message that was just written into this folder; return its UID."""
        known = self._by_base.get(base)
        if known is not None:
            return known.uid
        self._version += 1
        uid = self._uidlist.uidnext
        self._uidlist.uidnext += 1
        self._uidlist.highest_modseq += 1
        modseq = self._uidlist.highest_modseq
        record = uidlist.UidRecord(uid, base, date, size, modseq, crlf)
        self._uidlist.records[base] = record
        uidlist.append(self.path, self._uidlist, [record])
        kept = frozenset(f for f in flags if f in SYSTEM_FLAG_LETTERS or self.keywords.letter(f))
        message = MessageInfo(uid, base, subdir, kept, size, date, crlf, modseq)
        self.messages.append(message)
        self._by_uid[uid] = message
        self._by_base[base] = message
        self._dir_stamp = self._stamp()
        self.store.bus.publish(Appended(self.key, uid))
        return uid

    def copy_plan(self, uids: Iterable[int], dest: Folder) -> list[_CopyItem]:
        """What copying these messages into ``dest`` involves (computed on the reactor)."""
        plan = []
        for uid in uids:
            message = self._by_uid.get(uid)
            if message is None:
                continue
            fields = _base_fields(message.base)
            suffix = f",S={fields['S']},W={fields['W']}" if "S" in fields and "W" in fields else ""
            base = unique_base(self.store.hostname) + suffix
            subdir = "cur" if message.flags else "new"
            info = dest._info_from_flags(message.flags)
            target = os.path.join(dest.path, subdir, dest._filename(base, subdir, info))
            plan.append(_CopyItem(message, self.file_path(message), target, base, subdir))
        return plan

    def _forget(self) -> None:
        """The folder is gone from disk: every session that has it open hears it emptied."""
        self.deleted = True
        uids = [m.uid for m in self.messages]
        self.messages, self._by_uid, self._by_base = [], {}, {}
        for uid in uids:
            self.store.bus.publish(Expunged(self.key, uid))


class _Waiters:
    """The callers waiting for some work in flight to be done."""

    def __init__(self) -> None:
        self._waiting: list[defer.Deferred[None]] = []

    def wait(self, busy: bool) -> defer.Deferred[None]:
        """Fires when the work is done: at once if it is not ``busy``."""
        if not busy:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def fire(self) -> None:
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)


class _RenameBatch:
    """One job of renames in flight: who waits for the index to have it."""

    def __init__(self) -> None:
        self.applied = _Waiters()


@dataclass(frozen=True)
class _CopyItem:
    message: MessageInfo
    source: str
    target: str
    base: str
    subdir: str


def _link_or_copy(source: str, target: str, tmp_dir: str) -> None:
    """Put the file at ``target`` as a hard link (Maildir allows it), else a synced copy."""
    try:
        os.link(source, target)
        return
    except FileNotFoundError:
        raise
    except OSError:
        pass  # a file system without hard links
    with open(source, "rb") as f:
        data = f.read()
    tmp = os.path.join(tmp_dir, os.path.basename(target).partition(":")[0])
    write_synced(tmp, [data])
    stat = os.stat(source)
    os.utime(tmp, (stat.st_mtime, stat.st_mtime))
    os.rename(tmp, target)


@dataclass(frozen=True)
class Stored:
    """The result of a durable write into a folder."""

    folder: str
    base: str
    uid: int | None  # known when the folder is open (always for APPEND)


class MaildirStore:
    """All users' mailboxes under one root directory."""

    def __init__(
        self,
        root: str,
        bus: ChangeBus | None = None,
        hostname: str | None = None,
        quota_bytes: int = 0,
        run_in_thread: Callable[..., defer.Deferred[Any]] | None = None,
        worker: FileWorker | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.bus = bus if bus is not None else ChangeBus()
        self.hostname = hostname or socket.gethostname()
        self.quota_bytes = quota_bytes
        # Where blocking disk work runs: threads, new messages in batches (commit.py).
        # Tests may run it inline instead, one message at a time.
        self.run_in_thread: Callable[..., defer.Deferred[Any]]
        self.commit: Callable[[FileJob], defer.Deferred[float]]
        if run_in_thread is None:
            self.run_in_thread = threads.deferToThread
            self.commit = GroupCommitter().commit
        else:
            self.run_in_thread = run_in_thread
            self.commit = lambda job: run_in_thread(_commit_one, job)
        # A process that reads files beside the threads (worker.py); None: threads only.
        self.worker = worker
        self.syncer = DirectorySyncer()
        self._open: dict[str, Folder] = {}
        # Folders being loaded in a thread (open_folder), and who waits for each; and how
        # many folders were deleted or renamed so far (a load that saw one is redone).
        self._loading: dict[str, list[defer.Deferred[Folder]]] = {}
        self._folder_renames = 0
        # Checked addresses and their directories: every delivery asks several times.
        self._user_paths: dict[str, str] = {}
        # Users whose INBOX and default folders are known to exist (ensure_user).
        self._made_users: set[str] = set()

    def rename_files(self, moves: list[tuple[str, str]]) -> defer.Deferred[list[bool]]:
        """Rename files, a long batch in the file worker: a rename thread beside a busy
        reactor waits for the interpreter lock after each rename, so a STORE's renames
        and its replies would take turns instead of running side by side."""
        if self.worker is None or len(moves) < RENAME_IN_WORKER_FROM:
            return self.run_in_thread(rename_files, moves)
        d = self.worker.call("rename_files", moves)
        # Without the worker: in a thread (what it renamed before failing is then not
        # found, and set_flags_many looks again, one at a time).
        d.addErrback(lambda _: self.run_in_thread(rename_files, moves))
        return d

    def measure_files(self, plan: MeasurePlan) -> defer.Deferred[MeasureResult]:
        """Measure files in a thread; a long plan is split with the file worker, which
        reads its half at the same time on the other core (worker.py says why)."""
        if self.worker is None or len(plan) < SPLIT_MEASURING_ABOVE:
            return self.run_in_thread(measure_files, plan)
        worker = self.worker

        def in_worker(part: MeasurePlan) -> defer.Deferred[MeasureResult]:
            d = worker.call("measure_names", by_directory(part))
            return d.addCallback(lambda numbers: from_numbers(part, numbers))

        return self._halves(plan, partial(self.run_in_thread, measure_files), in_worker)

    def screen_files(self, plan: list[tuple[str, bool]], rule: Rule) -> defer.Deferred[list[bool]]:
        """Which of these message files (path, crlf) may match a search
        (files.screen_file); a long list is split with the file worker, as
        measure_files does."""
        if self.worker is None or len(plan) < SPLIT_SCREENING_ABOVE:
            return self.run_in_thread(screen_files, plan, rule)
        worker = self.worker
        return self._halves(
            plan,
            lambda part: self.run_in_thread(screen_files, part, rule),
            lambda part: worker.call("screen_files", part, rule),
        )

    def _halves(
        self,
        items: list[_Item],
        in_thread: Callable[[list[_Item]], defer.Deferred[list[_Result]]],
        in_worker: Callable[[list[_Item]], defer.Deferred[list[_Result]]],
    ) -> defer.Deferred[list[_Result]]:
        """The first half of the items in a thread, the second in the file worker, at
        the same time; its half in a thread too when the worker cannot (it exited)."""
        half = len(items) // 2
        theirs = items[half:]
        here = in_thread(items[:half])
        there = in_worker(theirs)
        there.addErrback(lambda _: in_thread(theirs))
        both = defer.gatherResults([here, there], consumeErrors=True)
        both.addCallbacks(
            lambda halves: halves[0] + halves[1],
            lambda failure: failure.value.subFailure,  # FirstError: the half that failed
        )
        return both

    # Paths -----------------------------------------------------------------------------
    def user_path(self, address: str) -> str:
        """The user's directory; BadName for an address that may not become a path."""
        path = self._user_paths.get(address)
        if path is None:
            local, domain = split_address(address)
            if local.startswith("."):
                raise BadName("local part may not start with a dot")
            path = os.path.join(self.root, domain, local)
            if len(self._user_paths) >= MAX_CACHED_PATHS:
                self._user_paths.clear()
            self._user_paths[address] = path
        return path

    def folder_path(self, address: str, name: str) -> str:
        user = self.user_path(address)
        if name.upper() == "INBOX":
            return user
        check_folder_name(name)
        return os.path.join(user, "." + name)

    def ensure_user(self, address: str) -> None:
        """Create the user's INBOX and default folders if they do not exist yet; blocks
        on the disk the first time (prepare_user runs it in a thread)."""
        user = self.user_path(address)
        if not os.path.isdir(os.path.join(user, "cur")):
            made = {_make_maildir(user, folder=False)}
            for name in DEFAULT_FOLDERS:
                made.add(_make_maildir(os.path.join(user, "." + name), folder=True))
            with open(os.path.join(user, "subscriptions"), "w", encoding="utf-8") as f:
                f.writelines(f"{name}\n" for name in DEFAULT_FOLDERS)
            _fsync_dirs(made)
        self._made_users.add(user)

    # Folders ---------------------------------------------------------------------------
    def folder(self, address: str, name: str = "INBOX") -> Folder:
        """The open folder (shared), loading it on first use; NoSuchFolder if absent.
        Loading blocks on the disk: the sessions use open_folder."""
        path = self.folder_path(address, name)
        folder = self._open.get(path)
        if folder is None:
            folder = self._open[path] = self._load_folder(address, name, path, True)
        return folder

    def open_folder(self, address: str, name: str = "INBOX") -> defer.Deferred[Folder]:
        """The open folder, at once, or once it is loaded: its first scan lists new/ and
        cur/ and reads the UID list in a thread, 0.5-0.7 s for 100,000 messages that
        would otherwise hold every session. Sessions that ask meanwhile share the load.
        Fails with NoSuchFolder if absent, BadName for a name that cannot be one."""
        try:
            path = self.folder_path(address, name)
        except BadName:
            return defer.fail()
        folder = self._open.get(path)
        if folder is not None:
            return defer.succeed(folder)
        d: defer.Deferred[Folder] = defer.Deferred()
        waiting = self._loading.get(path)
        if waiting is not None:
            waiting.append(d)
            return d
        self._loading[path] = [d]
        self._start_loading(address, name, path)
        return d

    def _start_loading(self, address: str, name: str, path: str) -> None:
        renames = self._folder_renames
        loaded = self.run_in_thread(self._load_folder, address, name, path, False)
        loaded.addBoth(self._opened, address, name, path, renames)

    def _load_folder(self, address: str, name: str, path: str, announce: bool) -> Folder:
        """A new Folder for ``path``, scanned (blocks on the disk); INBOX is made if the
        user has none."""
        if not os.path.isdir(os.path.join(path, "cur")):
            if name.upper() == "INBOX":
                self.ensure_user(address)
            else:
                raise NoSuchFolder(name)
        canonical = "INBOX" if name.upper() == "INBOX" else name
        folder = Folder(self, address, canonical, path)
        folder.scan(announce)
        return folder

    def _opened(
        self, loaded: Folder | Failure, address: str, name: str, path: str, renames: int
    ) -> None:
        if renames != self._folder_renames:
            # A folder was deleted or renamed while this one loaded: what was read may be
            # of a directory now gone, or elsewhere. Read it again.
            self._start_loading(address, name, path)
            return
        waiting = self._loading.pop(path)
        if isinstance(loaded, Failure):
            for d in waiting:
                d.errback(loaded)
            return
        folder = self._open.get(path)  # opened meanwhile by folder(): that one is shared
        if folder is None:
            folder = self._open[path] = loaded
            if self.bus.listeners(folder.key):  # as the first scan on the reactor would
                for message in folder.messages:
                    self.bus.publish(Appended(folder.key, message.uid))
        for d in waiting:
            d.callback(folder)

    def usage_if_open(self, address: str) -> int | None:
        """Bytes used by the user's INBOX if it is open, else None (and it starts to load,
        so that the next time it is known): a check that cannot wait, such as the quota
        at RCPT, leaves the decision to the delivery (_write waits for the folder)."""
        try:
            folder = self._open.get(self.folder_path(address, "INBOX"))
        except BadName:
            return None
        if folder is not None:
            return folder.total_size()
        self.open_folder(address).addErrback(lambda f: log.failure("opening INBOX", f))
        return None

    def list_folders(self, address: str) -> list[str]:
        """INBOX and every Maildir++ folder of the user, by name."""
        user = self.user_path(address)
        names = ["INBOX"]
        try:
            entries = sorted(os.listdir(user))
        except FileNotFoundError:
            return names
        for entry in entries:
            if entry.startswith(".") and entry not in (".", ".."):
                if os.path.isdir(os.path.join(user, entry, "cur")):
                    names.append(entry[1:])
        return names

    def create_folder(self, address: str, name: str) -> defer.Deferred[None]:
        """Create a folder and, as RFC 3501 §6.3.3 suggests, its missing parents; fires
        once they are durable (the directories are made here, their entries synced in a
        thread). FolderExists, BadName at once."""
        path = self.folder_path(address, name)
        if name.upper() == "INBOX" or os.path.exists(path):
            raise FolderExists(name)
        self.ensure_user(address)
        made = set()
        levels = name.split(".")
        for depth in range(1, len(levels)):
            parent = self.folder_path(address, ".".join(levels[:depth]))
            if not os.path.isdir(os.path.join(parent, "cur")):
                made.add(_make_maildir(parent, folder=True))
        made.add(_make_maildir(path, folder=True))
        return self.run_in_thread(_fsync_dirs, made)

    def delete_folder(self, address: str, name: str) -> None:
        """Remove a folder and its messages (not its sub-folders, which stay as they are).

        The directory is first renamed out of the way (atomic: no half-deleted folder is
        ever listed), then removed in a thread.
        """
        if name.upper() == "INBOX":
            raise BadName("INBOX cannot be deleted")
        path = self.folder_path(address, name)
        if not os.path.isdir(os.path.join(path, "cur")):
            raise NoSuchFolder(name)
        doomed = os.path.join(self.user_path(address), "tmp", f".deleted-{secrets.token_hex(8)}")
        os.rename(path, doomed)
        self._folder_renames += 1
        folder = self._open.pop(path, None)
        if folder is not None:
            folder._forget()
        self.run_in_thread(shutil.rmtree, doomed, True)

    def rename_folder(self, address: str, old: str, new: str) -> defer.Deferred[None]:
        """Rename a folder and its sub-folders (RFC 3501 §6.3.5); not for INBOX. Fires
        once the renames are durable (the user's directory synced in a thread);
        NoSuchFolder, FolderExists, BadName at once."""
        if old.upper() == "INBOX":
            raise BadName("INBOX is renamed by moving its messages")
        old_path = self.folder_path(address, old)
        new_path = self.folder_path(address, new)
        if not os.path.isdir(os.path.join(old_path, "cur")):
            raise NoSuchFolder(old)
        if new.upper() == "INBOX" or os.path.exists(new_path):
            raise FolderExists(new)
        if new.startswith(old + "."):
            raise BadName("a folder cannot become its own child")
        moves = [(old, new)] + [
            (name, new + name[len(old) :])
            for name in self.list_folders(address)
            if name.startswith(old + ".")
        ]
        for name, _ in moves:
            self.folder_path(address, new + name[len(old) :])  # all new names valid first
        levels = new.split(".")
        for depth in range(1, len(levels)):
            parent = self.folder_path(address, ".".join(levels[:depth]))
            if not os.path.isdir(os.path.join(parent, "cur")):
                _make_maildir(parent, folder=True)  # in the user's directory, synced below
        for name, target in moves:
            source_path = self.folder_path(address, name)
            target_path = self.folder_path(address, target)
            os.rename(source_path, target_path)
            self._folder_renames += 1
            folder = self._open.pop(source_path, None)
            if folder is not None:
                folder.name, folder.path = target, target_path
                folder.keywords.path = os.path.join(target_path, KEYWORDS_FILE)
                self._open[target_path] = folder
        return self.run_in_thread(_fsync_dirs, {self.user_path(address)})

    # Subscriptions (the ``subscriptions`` file, one name a line) ----------------------
    def subscriptions(self, address: str) -> list[str]:
        path = os.path.join(self.user_path(address), "subscriptions")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def set_subscribed(self, address: str, name: str, subscribed: bool) -> None:
        """Add or remove a name; the file is replaced atomically (write, rename)."""
        names = self.subscriptions(address)
        if subscribed == (name in names):
            return
        names = [*names, name] if subscribed else [n for n in names if n != name]
        self.ensure_user(address)
        path = os.path.join(self.user_path(address), "subscriptions")
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(f"{n}\n" for n in names)
        os.replace(tmp, path)

    # Copies -------------------------------------------------------------------------
    def copy_messages(
        self, source: Folder, uids: Iterable[int], dest: Folder
    ) -> defer.Deferred[list[tuple[int, int]]]:
        """Copy messages (flags and internal date kept) durably into ``dest``.

        Each file is hard-linked (or copied) under a new name and the target directories
        are fsynced in a thread; then the copies get UIDs. The result pairs each source
        UID with its new UID, in source UID order; a message expunged meanwhile is left out.
        """
        # The copies keep the sources' sizes and dates: learn them first.
        d = source.measure()
        d.addCallback(lambda _: self._copy_measured(source, sorted(set(uids)), dest))
        return d

    def _copy_measured(
        self, source: Folder, uids: list[int], dest: Folder
    ) -> defer.Deferred[list[tuple[int, int]]]:
        plan = source.copy_plan(uids, dest)
        tmp_dir = os.path.join(dest.path, "tmp")

        def work() -> list[_CopyItem]:
            done = []
            for item in plan:
                try:
                    _link_or_copy(item.source, item.target, tmp_dir)
                except FileNotFoundError:
                    continue
                done.append(item)
            for subdir in {item.subdir for item in done}:
                self.syncer.sync(os.path.join(dest.path, subdir))
            return done

        def adopt(done: list[_CopyItem]) -> list[tuple[int, int]]:
            pairs = []
            for item in done:
                m = item.message
                uid = dest.adopt(item.base, item.subdir, m.flags, m.size, m.internal_date, m.crlf)
                pairs.append((m.uid, uid))
            return pairs

        d = self.run_in_thread(work)
        d.addCallback(adopt)
        return d

    # Delivery --------------------------------------------------------------------------
    def deliver(
        self,
        address: str,
        chunks: Sequence[bytes],
        folder: str = "INBOX",
        flags: Iterable[str] = (),
        internal_date: float | None = None,
        unique: str | None = None,
    ) -> defer.Deferred[Stored]:
        """Write a message durably into a folder; the Deferred fires once it is on disk.

        The message is written to tmp/, fsynced, renamed into new/ (or cur/ when it has
        flags) and the directory is fsynced, all in a thread; a crash at any point leaves
        no partial file in new/ or cur/.

        ``unique`` ("time.unique", safe in a file name) is for a delivery the caller may
        repeat after a crash, such as a report whose sending is recorded only after it
        is delivered: the base name is made from it, and when the folder already holds
        that base nothing is written again.
        """
        try:
            path = self.folder_path(address, folder)
            inbox = folder.upper() == "INBOX"
            if not inbox and not os.path.isdir(os.path.join(path, "cur")):
                raise NoSuchFolder(folder)
        except Exception as e:
            return defer.fail(e)

        def write(chosen_base: str | None = None) -> defer.Deferred[Stored]:
            def attempt() -> defer.Deferred[Stored]:
                return self._write(address, path, folder, chunks, flags, internal_date, chosen_base)

            d = attempt()
            if inbox:
                d.addErrback(self._remade_user, address, attempt)  # once: no loop
            return d

        if unique is None and (not inbox or self.user_path(address) in self._made_users):
            # The common case: nothing to wait for first (and an error still a Deferred's).
            return defer.maybeDeferred(write)
        d = self.prepare_user(address) if inbox else defer.succeed(None)
        if unique is not None:
            base = f"{unique}.{_host_part(self.hostname)}"
            d.addCallback(lambda _: self.run_in_thread(find_base, path, base))
            d.addCallback(
                lambda found: self._already_stored(path, folder, found) if found else write(base)
            )
            return d
        return d.addCallback(lambda _: write())

    def prepare_user(self, address: str) -> defer.Deferred[None]:
        """Fires once the user's INBOX and default folders exist: made in a thread the
        first time (directories made and fsynced), then known, so that a delivery or a
        login does not look again (at once, without a thread, for a known user)."""
        if self.user_path(address) in self._made_users:
            return defer.succeed(None)
        return self.run_in_thread(self.ensure_user, address)

    def _remade_user(
        self, failure: Failure, address: str, retry: Callable[[], defer.Deferred[Stored]]
    ) -> defer.Deferred[Stored] | Failure:
        """A Maildir removed while we ran (its tmp/ is gone): made again, and the
        delivery tried once more."""
        user = self.user_path(address)
        if not failure.check(FileNotFoundError) or user not in self._made_users:
            return failure
        self._made_users.discard(user)
        return self.prepare_user(address).addCallback(lambda _: retry())

    def _already_stored(self, path: str, folder: str, base: str) -> Stored:
        log.info("store: {base} is already in {path}, not delivered again", base=base, path=path)
        current = self._open.get(path)
        message = current._by_base.get(base) if current else None
        return Stored(folder, base, message.uid if message else None)

    def _write(
        self,
        address: str,
        path: str,
        folder: str,
        chunks: Sequence[bytes],
        flags: Iterable[str],
        internal_date: float | None,
        chosen_base: str | None = None,
    ) -> defer.Deferred[Stored]:
        size = sum(len(c) for c in chunks)
        if self.quota_bytes:
            d = self.open_folder(address)
            d.addCallback(self._check_quota, address, size)
            return d.addCallback(
                lambda _: self._write_file(
                    path, folder, chunks, size, flags, internal_date, chosen_base
                )
            )
        return self._write_file(path, folder, chunks, size, flags, internal_date, chosen_base)

    def _check_quota(self, inbox: Folder, address: str, size: int) -> None:
        """Raise QuotaExceeded if ``size`` more bytes do not fit in the user's INBOX (the
        folder the quota protects from floods)."""
        if inbox.total_size() + size > self.quota_bytes:
            raise QuotaExceeded(address)

    def _write_file(
        self,
        path: str,
        folder: str,
        chunks: Sequence[bytes],
        size: int,
        flags: Iterable[str],
        internal_date: float | None,
        chosen_base: str | None,
    ) -> defer.Deferred[Stored]:
        base = f"{chosen_base or unique_base(self.hostname)},S={size},W={size}"
        flag_set = frozenset(flags)
        open_folder = self._open.get(path)
        info = open_folder._info_from_flags(flag_set) if open_folder else _plain_info(flag_set)
        subdir = "cur" if flag_set else "new"
        filename = f"{base}:2,{info}" if subdir == "cur" else base

        job = FileJob(
            os.path.join(path, "tmp", base),
            os.path.join(path, subdir, filename),
            chunks,
            internal_date,
        )

        def written(date: float) -> Stored:
            current = self._open.get(path)
            uid = current.adopt(base, subdir, flag_set, size, date) if current else None
            return Stored(folder, base, uid)

        d = self.commit(job)
        d.addCallback(written)
        return d


def _commit_one(job: FileJob) -> float:
    commit_batch([job])
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result


def _plain_info(flags: frozenset[str]) -> str:
    return "".join(sorted(SYSTEM_FLAG_LETTERS[f] for f in flags if f in SYSTEM_FLAG_LETTERS))


def _make_maildir(path: str, folder: bool) -> str:
    """Make the Maildir's tmp/, new/ and cur/ (and a folder's marker); the directory that
    holds its entry, to be synced to make it durable (_fsync_dirs)."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    if folder:
        marker = os.path.join(path, "maildirfolder")
        if not os.path.exists(marker):
            open(marker, "wb").close()
    return os.path.dirname(path.rstrip("/")) or "."


def _fsync_dirs(directories: Iterable[str]) -> None:
    """fsync each directory once; blocks, so run it in a thread."""
    for directory in sorted(set(directories)):
        fsync_dir(directory)
