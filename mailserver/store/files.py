"""Reading and renaming message files: the blocking part, kept free of Twisted so that
the file worker process (worker.py) can import it without the rest of the server."""

from __future__ import annotations

import os
from dataclasses import dataclass

# How the UID list marks a file not measured yet (see Folder.measure).
UNMEASURED_SIZE = -1


def read_file(path: str) -> tuple[bytes, os.stat_result]:
    """A whole file and its stat, in four system calls (``open()`` makes nine: a file
    object, a buffer, an isatty check, a seek), which counts when a FETCH reads 1000."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size)
        while len(data) < st.st_size:  # a short read: only on very large files
            chunk = os.read(fd, st.st_size - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data, st


def read_message_file(path: str, crlf: bool) -> bytes:
    """Read a message file; one written with bare LF line ends is served with CRLF."""
    data = read_file(path)[0]
    if not crlf:
        if b"\r" in data:  # mixed line ends: make every one CRLF
            data = data.replace(b"\r\n", b"\n")
        data = data.replace(b"\n", b"\r\n")
    return data


@dataclass(slots=True)
class Measured:
    """What reading a file told: its size as served, its line ends, its date."""

    size: int
    crlf: bool
    mtime: float


def measure_file(path: str, read: bool) -> Measured | None:
    """Stat a message file and, when ``read``, read it to find its size as served (CRLF
    line ends) and whether it has bare LFs; None if it is gone. Blocks: run in a thread."""
    try:
        if not read:
            return Measured(UNMEASURED_SIZE, True, os.stat(path).st_mtime)
        data, st = read_file(path)
    except FileNotFoundError:
        return None
    bare = data.count(b"\n")
    if b"\r" in data:  # counting one byte is much faster than counting a pair
        bare -= data.count(b"\r\n")
    return Measured(len(data) + bare, bare == 0, st.st_mtime)


MeasurePlan = list[tuple[str, str, bool]]  # (base name, path, whether to read it)
MeasureResult = list[tuple[str, str, Measured | None]]


def measure_files(plan: MeasurePlan) -> MeasureResult:
    return [(base, path, measure_file(path, read)) for base, path, read in plan]


# What the file worker is sent and answers (worker.py): the files grouped by directory,
# and for each only its numbers, which pickle in a tenth of the time of Measured objects.
NamesByDirectory = list[tuple[str, list[str], list[bool]]]
Numbers = tuple[int, bool, float] | None


def measure_names(groups: NamesByDirectory) -> list[Numbers]:
    numbers: list[Numbers] = []
    for directory, names, reads in groups:
        for name, read in zip(names, reads, strict=True):
            m = measure_file(os.path.join(directory, name), read)
            numbers.append(None if m is None else (m.size, m.crlf, m.mtime))
    return numbers


def by_directory(plan: MeasurePlan) -> NamesByDirectory:
    groups: NamesByDirectory = []
    for _, path, read in plan:
        # The paths are os.path.join's (Folder.file_path); rpartition is a third of split.
        directory, _, name = path.rpartition(os.sep)
        if not groups or groups[-1][0] != directory:
            groups.append((directory, [], []))
        groups[-1][1].append(name)
        groups[-1][2].append(read)
    return groups


def from_numbers(plan: MeasurePlan, numbers: list[Numbers]) -> MeasureResult:
    return [
        (base, path, None if n is None else Measured(*n))
        for (base, path, _), n in zip(plan, numbers, strict=True)
    ]


def rename_files(moves: list[tuple[str, str]]) -> list[bool]:
    """Rename each file; whether it was there to rename (another session may have
    renamed or expunged it first). Blocks: run in a thread or the file worker."""
    done = []
    for old, new in moves:
        try:
            os.rename(old, new)
        except FileNotFoundError:
            done.append(False)
        else:
            done.append(True)
    return done
