"""The persistent UID list of one folder (RFC 3501 §2.3.1.1: UIDs are strictly ascending
and never reused while UIDVALIDITY stays the same).

The file is ``mailserver-uidlist`` in the folder's directory, in the layout of Dovecot's
``dovecot-uidlist`` version 3, so an admin can read it::

    3 V<uidvalidity> N<uidnext>
    <uid> T<internal date> W<size> :<maildir base name>

New messages are appended; the file is rewritten (atomically, by rename) when expunged
entries are dropped. If the file is lost, the folder gets a new UIDVALIDITY, which tells
clients to forget their cached UIDs, as the RFC requires.
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


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int
    records: dict[str, UidRecord]

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
        uidlist = UidList(int(fields["V"]), int(fields["N"]), {})
    except (KeyError, ValueError):
        return UidList.fresh()
    for line in lines[1:]:
        record = _parse_record(line)
        if record is not None:
            uidlist.records[record.base] = record
            uidlist.uidnext = max(uidlist.uidnext, record.uid + 1)
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
    internal_date, size = 0.0, -1
    for ext in parts[1:]:
        try:
            if ext[0] == "T":
                internal_date = float(ext[1:])
            elif ext[0] == "W":
                size = int(ext[1:])
        except (IndexError, ValueError):
            continue
    return UidRecord(uid, base, internal_date, size)


def _format_record(record: UidRecord) -> str:
    return f"{record.uid} T{int(record.internal_date)} W{record.size} :{record.base}\n"


def _header(uidlist: UidList) -> str:
    return f"3 V{uidlist.uidvalidity} N{uidlist.uidnext}\n"


def rewrite(folder_path: str, uidlist: UidList) -> None:
    """Write the whole list to a temporary file and rename it over the old one."""
    path = os.path.join(folder_path, FILENAME)
    tmp = f"{path}.tmp{os.getpid()}"
    ordered = sorted(uidlist.records.values(), key=lambda r: r.uid)
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(_header(uidlist))
        f.writelines(_format_record(r) for r in ordered)
    os.replace(tmp, path)


def append(folder_path: str, uidlist: UidList, records: list[UidRecord]) -> None:
    """Add records at the end of the file (the header's N is advisory: load() takes the max)."""
    path = os.path.join(folder_path, FILENAME)
    if not os.path.exists(path):
        rewrite(folder_path, uidlist)
        return
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(_format_record(r) for r in records)
