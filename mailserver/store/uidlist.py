"""The persistent UID list of one folder (RFC 3501 §2.3.1.1: UIDs are strictly ascending
and never reused while UIDVALIDITY stays the same).

The file is ``mailserver-uidlist`` in the folder's directory, in the layout of Dovecot's
``dovecot-uidlist`` version 3, so an admin can read it::

    3 V<uidvalidity> N<uidnext> M<highest modseq> R<first recent uid>
    <uid> T<internal date> W<size> M<modseq> [C0] :<maildir base name>
    R<first recent uid>

``M`` is the message's RFC 7162 mod-sequence; ``C0`` marks a file with bare LF line ends
(written by another tool), so that it need not be read again to find out. ``W-1`` and
``T0`` mark a file listed but not measured yet (Folder.measure reads it when a size or
date is first asked for). ``R`` is the
first UID that no read-write session has been told of yet (RFC 3501 §2.3.2 \\Recent), as
in Dovecot's index: claiming the recent messages appends an ``R`` line, so that they
need not be renamed from new/ to cur/ at SELECT (Dovecot's ``maildir_empty_new = no``).
New messages
are appended, and so is a message's record again when its flags change (the later line
wins on load); the file is rewritten (atomically, by rename) when expunged entries are
dropped or the repeated records pile up. If the file is lost, the folder gets a new
UIDVALIDITY, which tells clients to forget their cached UIDs, as the RFC requires.
"""

from __future__ import annotations

import os
import time
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
    folder_path: str, uidlist: UidList, records: list[UidRecord], updated: bool = False
) -> None:
    """Add records at the end of the file (the header's N and M are advisory: load() takes
    the maxima). ``updated`` says the records are new versions of listed ones; once those
    outnumber the records, the file is compacted."""
    path = os.path.join(folder_path, FILENAME)
    if updated:
        uidlist.extra_lines += len(records)
    if not os.path.exists(path) or uidlist.extra_lines > max(1000, len(uidlist.records)):
        rewrite(folder_path, uidlist)
        return
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(_format_record(r) for r in records)


def claim_recent(folder_path: str, uidlist: UidList) -> None:
    """Record that the messages below ``uidlist.first_recent_uid`` are no longer recent."""
    path = os.path.join(folder_path, FILENAME)
    uidlist.extra_lines += 1
    if not os.path.exists(path) or uidlist.extra_lines > max(1000, len(uidlist.records)):
        rewrite(folder_path, uidlist)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"R{uidlist.first_recent_uid}\n")
