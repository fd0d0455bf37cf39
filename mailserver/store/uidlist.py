"""The persistent UID list of one folder (RFC 3501 §2.3.1.1: UIDs are strictly ascending
and never reused while UIDVALIDITY stays the same).

The file is ``mailserver-uidlist`` in the folder's directory, in the layout of Dovecot's
``dovecot-uidlist`` version 3, so an admin can read it::

    3 V<uidvalidity> N<uidnext> M<highest modseq> R<first recent uid>
    <uid> T<internal date> W<size> M<modseq> [C0] :<maildir base name>
    R<first recent uid>
    X<uid> M<modseq> :<maildir base name>

``M`` is the message's RFC 7162 mod-sequence; ``C0`` marks a file with bare LF line ends
(written by another tool), so that it need not be read again to find out. ``W-1`` and
``T0`` mark a file listed but not measured yet (Folder.measure reads it when a size or
date is first asked for). ``R`` is the
first UID that no read-write session has been told of yet (RFC 3501 §2.3.2 \\Recent), as
in Dovecot's index: claiming the recent messages appends an ``R`` line, so that they
need not be renamed from new/ to cur/ at SELECT (Dovecot's ``maildir_empty_new = no``).
New messages
are appended, and so is a message's record again when its flags change (the later line
wins on load). An expunged message gets an ``X`` line, with the folder's mod-sequence
after the expunge; it removes the record of that UID and base name, so a line cut short
by a crash removes nothing. The file is rewritten (atomically, by rename) only when the
lines beyond one a record pile up: rewriting 100,000 records holds the reactor some 50
ms, which an expunge of one message should not cost every time (its line: 0.01 ms). If
the file is lost, the folder gets a new UIDVALIDITY, which tells clients to forget their
cached UIDs, as the RFC requires.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

FILENAME = "mailserver-uidlist"


@dataclass(slots=True)
class UidRecord:
    uid: int
    base: str
    internal_date: float
    size: int
    modseq: int = 1
    crlf: bool | None = None  # None: not recorded (a file from an older version)


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int
    records: dict[str, UidRecord]
    # RFC 7162 §3.1.1: the highest mod-sequence of the folder, also counting expunges.
    highest_modseq: int = 1
    # Lines in the file beyond one per record (repeated records): when to compact.
    extra_lines: int = 0
    # RFC 3501 §2.3.2: messages from this UID on are \Recent. None until a session has
    # claimed any (and in files from before the field): then the messages in new/ are.
    first_recent_uid: int | None = None

    @classmethod
    def fresh(cls) -> UidList:
        return cls(uidvalidity=int(time.time()), uidnext=1, records={})


def load(folder_path: str) -> UidList:
    """Read the folder's UID list; a missing or unreadable one yields a fresh list."""
    path = os.path.join(folder_path, FILENAME)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return UidList.fresh()
    if not lines:
        return UidList.fresh()
    header = lines[0].split()
    if not header or header[0] != "3":
        return UidList.fresh()
    fields = {item[0]: item[1:] for item in header[1:] if item}
    try:
        uidlist = UidList(int(fields["V"]), int(fields["N"]), {}, int(fields.get("M", "1")))
        if "R" in fields:
            uidlist.first_recent_uid = int(fields["R"])
    except (KeyError, ValueError):
        return UidList.fresh()
    for line in lines[1:]:
        if line.startswith("R") and line[1:].isdigit():
            uidlist.first_recent_uid = max(uidlist.first_recent_uid or 1, int(line[1:]))
            uidlist.extra_lines += 1
            continue
        if line.startswith("X"):
            _apply_removal(uidlist, line)
            continue
        record = _parse_record(line)
        if record is not None:
            if record.base in uidlist.records:
                uidlist.extra_lines += 1
            uidlist.records[record.base] = record
            uidlist.uidnext = max(uidlist.uidnext, record.uid + 1)
            uidlist.highest_modseq = max(uidlist.highest_modseq, record.modseq)
    return uidlist


def _parse_record(line: str) -> UidRecord | None:
    head, sep, base = line.partition(" :")
    if not sep or not base:
        return None
    parts = head.split()
    try:
        uid = int(parts[0])
    except (IndexError, ValueError):
        return None
    internal_date, size, modseq, crlf = 0.0, -1, 1, None
    for ext in parts[1:]:
        try:
            if ext[0] == "T":
                internal_date = float(ext[1:])
            elif ext[0] == "W":
                size = int(ext[1:])
            elif ext[0] == "M":
                modseq = max(1, int(ext[1:]))
            elif ext[0] == "C":
                crlf = ext[1:] != "0"
        except (IndexError, ValueError):
            continue
    if crlf is None and "M" in {ext[:1] for ext in parts[1:]}:
        crlf = True  # written by this version, which marks only bare-LF files
    return UidRecord(uid, base, internal_date, size, modseq, crlf)


def _apply_removal(uidlist: UidList, line: str) -> None:
    """An ``X`` line: the record it names goes, if its UID and base name both match."""
    uidlist.extra_lines += 1
    removed = _parse_record(line[1:])
    if removed is None:
        return
    uidlist.highest_modseq = max(uidlist.highest_modseq, removed.modseq)
    uidlist.uidnext = max(uidlist.uidnext, removed.uid + 1)  # never reused
    record = uidlist.records.get(removed.base)
    if record is not None and record.uid == removed.uid:
        del uidlist.records[removed.base]
        uidlist.extra_lines += 1  # the record's own line is dead now too


def _format_record(record: UidRecord) -> str:
    lf = " C0" if record.crlf is False else ""
    return (
        f"{record.uid} T{int(record.internal_date)} W{record.size} M{record.modseq}{lf}"
        f" :{record.base}\n"
    )


def _header(uidlist: UidList) -> str:
    recent = f" R{uidlist.first_recent_uid}" if uidlist.first_recent_uid is not None else ""
    return f"3 V{uidlist.uidvalidity} N{uidlist.uidnext} M{uidlist.highest_modseq}{recent}\n"


def rewrite(folder_path: str, uidlist: UidList) -> None:
    """Write the whole list to a temporary file and rename it over the old one."""
    path = os.path.join(folder_path, FILENAME)
    tmp = f"{path}.tmp{os.getpid()}"
    ordered = sorted(uidlist.records.values(), key=lambda r: r.uid)
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(_header(uidlist))
        f.writelines(_format_record(r) for r in ordered)
    os.replace(tmp, path)
    uidlist.extra_lines = 0


def append(
    folder_path: str,
    uidlist: UidList,
    records: list[UidRecord],
    updated: bool = False,
    removed: Sequence[UidRecord] = (),
) -> None:
    """Add records at the end of the file (the header's N and M are advisory: load() takes
    the maxima). ``updated`` says the records are new versions of listed ones; ``removed``
    are records taken out of ``uidlist.records`` (expunged), which get an ``X`` line each
    at the folder's mod-sequence now. Once the lines beyond one a record outnumber the
    records, the file is compacted instead."""
    if updated:
        uidlist.extra_lines += len(records)
    uidlist.extra_lines += 2 * len(removed)
    lines = [f"X{r.uid} M{uidlist.highest_modseq} :{r.base}\n" for r in removed]
    lines += [_format_record(r) for r in records]
    _append_lines(folder_path, uidlist, lines)


def _append_lines(folder_path: str, uidlist: UidList, lines: list[str]) -> None:
    path = os.path.join(folder_path, FILENAME)
    if not os.path.exists(path) or uidlist.extra_lines > max(1000, len(uidlist.records)):
        rewrite(folder_path, uidlist)
        return
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(lines)


def claim_recent(folder_path: str, uidlist: UidList) -> None:
    """Record that the messages below ``uidlist.first_recent_uid`` are no longer recent."""
    uidlist.extra_lines += 1
    _append_lines(folder_path, uidlist, [f"R{uidlist.first_recent_uid}\n"])
