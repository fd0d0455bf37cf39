"""Reading, screening and renaming message files: the blocking part, kept free of Twisted
so that the file worker process (worker.py) can import it without the rest of the server."""

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
    renamed or expunged it first). Blocks: run in a thread or the file worker.

    Each rename is relative to its directories, opened once for the batch, so that the
    kernel does not walk both paths from the root again for every file (a tenth of a
    rename's time in a maildir eight levels down)."""
    done = []
    fds: dict[str, int] = {}
    try:
        for old, new in moves:
            old_dir, _, old_name = old.rpartition(os.sep)
            new_dir, _, new_name = new.rpartition(os.sep)
            try:
                src = fds.get(old_dir)
                if src is None:
                    src = fds[old_dir] = os.open(old_dir, os.O_RDONLY | os.O_DIRECTORY)
                dst = fds.get(new_dir)
                if dst is None:
                    dst = fds[new_dir] = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY)
                os.rename(old_name, new_name, src_dir_fd=src, dst_dir_fd=dst)
            except FileNotFoundError:
                done.append(False)
            else:
                done.append(True)
    finally:
        for fd in fds.values():
            os.close(fd)
    return done


# Screening (SEARCH): a rule that rules a message out from the raw bytes of its header,
# without parsing it. ("word", w): the header has no w, in any case, where that is safe
# to tell from the bytes; ("and", rules): one of the rules rules it out; ("or", rules):
# all of them do. A message not ruled out may still not match: the search then parses it.
Rule = tuple[str, bytes] | tuple[str, tuple["Rule", ...]]
# How much of a file screening reads: a header that does not end within it is not ruled
# out by anything.
SCREEN_BYTES = 64 * 1024


def ruled_out(header: bytes, rule: Rule) -> bool:
    """Whether the rule rules out a message with this header (or more than its header).

    A word is ruled out only for an ASCII header without encoded words, where the
    decoded, case-folded field values are the bytes lowered, and only a word without
    spaces is asked for, which no folding can split."""
    kind, arg = rule
    if kind == "word":
        return header.isascii() and b"=?" not in header and arg not in header.lower()  # type: ignore[operator]
    if kind == "and":
        return any(ruled_out(header, r) for r in arg)  # type: ignore[union-attr]
    return all(ruled_out(header, r) for r in arg)  # type: ignore[union-attr]


def screen_file(path: str, crlf: bool, rule: Rule) -> bool:
    """Whether the message in this file may match (True also when it is gone: the
    search then finds it renamed, or expunged). ``crlf`` as for read_message_file: the
    header ends where it will end once served. Blocks: run in a thread or the worker."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        data = os.read(fd, SCREEN_BYTES)
    finally:
        os.close(fd)
    header = _header_of(data, crlf)
    return header is None or not ruled_out(header, rule)


def _header_of(data: bytes, crlf: bool) -> bytes | None:
    """All of the header in the first bytes of a file (with a line end more), or None
    when it may go on past them. Served as it is (``crlf``), the header ends at the first
    CRLF CRLF; a file whose line ends all become CRLF has its blank line at LF LF or
    LF CRLF."""
    if data.startswith(b"\r\n" if crlf else (b"\n", b"\r\n")):
        return b""
    found = (data.find(b"\r\n\r\n"),) if crlf else (data.find(b"\n\n"), data.find(b"\n\r\n"))
    ends = [i for i in found if i >= 0]
    if ends:
        return data[: min(ends) + 1]
    return None if len(data) == SCREEN_BYTES else data


def screen_files(plan: list[tuple[str, bool]], rule: Rule) -> list[bool]:
    """screen_file for each (path, crlf)."""
    return [screen_file(path, crlf, rule) for path, crlf in plan]
