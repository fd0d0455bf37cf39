"""Sampling profiles of our server with py-spy while one workload runs.

``py-spy record --format raw`` writes collapsed stacks ("frame;frame;... count", each
frame "function (file:line)"); we sum them into the hottest lines (self time: the
innermost frame) and the hottest lines of our own code (inclusive time).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def py_spy() -> str | None:
    candidate = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return candidate if os.path.exists(candidate) else shutil.which("py-spy")


class Recorder:
    def __init__(self, pid: int, output: str, rate: int = 500) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.output = output
        self.log = open(output + ".log", "wb")  # closed in stop()
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", output, "--nonblocking"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def short(path: str) -> str:
    for prefix in (ROOT + os.sep, sys.prefix + os.sep, sys.base_prefix + os.sep):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    return re.sub(r"^lib/python3\.\d+/(site-packages/)?", "", path)


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{short(m['file'])}:{m['line']} {m['func']}"


# Leaf frames that mean "waiting", not working: a pool thread with nothing to do, the
# reactor in epoll_wait.  py-spy --nonblocking does not always tell them apart.
IDLE_LEAVES = (
    "Condition.wait (threading.py",
    "EPollReactor.doPoll (twisted/internet/epollreactor.py",
)


def function_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    return f"{short(m['file'])} {m['func']}" if m else frame.strip()


def summarize(raw_path: str, top: int = 8) -> dict[str, Any]:
    """Self time per line (innermost frame); per stack, the innermost frame of our own
    code (our line plus all it called); the reactor thread / thread pool split."""
    self_time: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = idle = 0
    with open(raw_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            raw = [x for x in stack.split(";") if x and "(" in x]
            if not raw:
                continue
            if raw[-1].startswith(IDLE_LEAVES):
                idle += n
                continue
            total += n
            self_time[frame_name(raw[-1])] += n
            threads["pool" if raw[0].startswith("Thread._bootstrap") else "reactor"] += n
            # Charge the stack to our innermost frame: "our code at file:line, with
            # everything it called".
            mine = [x for x in raw if function_name(x).startswith("mailserver/")]
            if mine:
                ours[frame_name(mine[-1])] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        if not total:
            return []
        return [
            {"frame": name, "percent": round(100.0 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "idle_samples": idle,
        "threads_percent": {k: round(100.0 * v / total, 1) for k, v in threads.items()}
        if total
        else {},
        "self": share(self_time),
        "mailserver_innermost": share(ours),
    }
