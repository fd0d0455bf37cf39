"""The file worker's child process (see worker.py): answers jobs read from its stdin.

Requests and answers are length-prefixed pickles on the child's stdin and stdout, a pipe
only the server that started it holds. Only the jobs in ``JOBS`` can be asked for. This
module imports no Twisted, so the child starts in a few tens of milliseconds.
"""

from __future__ import annotations

import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

from mailserver.store.files import measure_names, rename_files, screen_files

JOBS: dict[str, Callable[..., Any]] = {
    "measure_names": measure_names,
    "rename_files": rename_files,
    "screen_files": screen_files,
}
HEADER = struct.Struct("!I")


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def main() -> None:
    """Answer requests ``(call id, job name, args)`` until stdin closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while len(header := stdin.read(HEADER.size)) == HEADER.size:
        (length,) = HEADER.unpack(header)
        call_id, name, args = pickle.loads(stdin.read(length))
        try:
            answer = (call_id, True, JOBS[name](*args))
        except Exception as e:  # reported to the caller, which falls back to a thread
            answer = (call_id, False, f"{type(e).__name__}: {e}")
        stdout.write(frame(answer))
        stdout.flush()


if __name__ == "__main__":
    main()
