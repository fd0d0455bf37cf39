"""``make demo`` as a class runs it: the whole scenario with real clients against two
real servers, every step traced, nothing left behind, and the excerpts quoted in
docs/push-pull.md are lines the demo really prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import PASSWORD, ROOT

DOC = os.path.join(ROOT, "docs", "push-pull.md")
TRACE_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ")  # the human form starts with the time


def normalise(line: str) -> str:
    """A trace line without what changes between runs: time, ids, tags, ports, names."""
    line = TRACE_LINE.sub("", line)
    line = re.sub(r"^(\S+ +)\S+ ", r"\1ID ", line)  # the session id after the role
    line = re.sub(r"\b\d{10}\.M\d+P\d+Q\d+R[0-9a-z]+\.[\w.]+(,S=\d+,W=\d+)?", "FILE", line)
    line = re.sub(r"\b[0-9a-fA-F]{12,}\b", "ID", line)  # queue ids, Message-ID
    line = re.sub(r"\b[A-P]{4}\d+\b", "TAG", line)  # imaplib's random tags
    line = re.sub(r"\bport \d+", "port N", line)
    line = re.sub(r"\(port \d+\)", "(port N)", line)
    line = re.sub(r"UIDVALIDITY \d+", "UIDVALIDITY N", line)
    line = re.sub(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", "DATE", line)
    return " ".join(line.split())


def trace_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if TRACE_LINE.match(line)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("demo-tmp")
    done = subprocess.run(
        [sys.executable, "-m", "mailserver.demo"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, tmp


def test_the_demo_plays_every_step_and_cleans_up(demo: tuple[str, Path]) -> None:
    output, tmp = demo
    assert list(tmp.iterdir()) == []  # its temporary directory is gone
    running = [
        p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()
    ]  # the servers it started, recognised by their configuration in its directory
    assert not [c for c in running if str(tmp).encode() in c]
    lines = trace_lines(output)
    assert len(re.findall(r"^=== \d\. ", output, re.M)) == 6
    roles = {line.split()[1] for line in lines}
    assert roles == {"MSA", "MTA", "MDA", "IMAP", "POP3", "OUT"}
    text = "\n".join(lines)
    assert PASSWORD not in text and "***" in text
    # The push reaches bob's IDLE session before alice's 250 (the delivery is durable).
    pushed = next(i for i, x in enumerate(lines) if "pushed during IDLE" in x)
    stored = next(i for i, x in enumerate(lines) if "MSA" in x and "250 2.0.0 OK" in x)
    assert pushed < stored
    assert any(" OUT " in x and " C: RCPT TO:<carol@remote.test>" in x for x in lines)
    assert any(" MDA " in x and "delivered to carol@remote.test" in x for x in lines)


def test_the_tutorial_quotes_what_the_demo_prints(demo: tuple[str, Path]) -> None:
    printed = {normalise(line) for line in trace_lines(demo[0])}
    with open(DOC, encoding="utf-8") as f:
        quoted = trace_lines(f.read())
    assert len(quoted) >= 20
    missing = [line for line in quoted if normalise(line) not in printed]
    assert not missing, "docs/push-pull.md quotes lines the demo no longer prints"
