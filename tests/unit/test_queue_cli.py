"""``mailserver queue``: on a spool with no server (the command acts on the files) and
with a server holding the spool (the command leaves a request and wakes it)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from typing import Any

import pytest

from mailserver.cli import main
from mailserver.config import load
from mailserver.queue.service import spool_dir
from mailserver.queue.spool import FAILED, WAKE_SIGNAL, Entry, RecipientState, Spool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUEUED = "0000000000000AAAA"
OTHER = "0000000000000BBBB"


@pytest.fixture
def setup(tmp_path: Any) -> tuple[str, Spool]:
    """The embedded default copied next to a fresh run directory, with two entries."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(os.path.join(ROOT, "etc", "mailserver.toml"), etc / "mailserver.toml")
    shutil.copy(os.path.join(ROOT, "etc", "passwd"), etc / "passwd")
    config = str(etc / "mailserver.toml")
    spool = Spool(spool_dir(load(config)))
    spool.ensure()
    later = time.time() + 3600
    first = Entry(
        QUEUED,
        "alice@example.test",
        [RecipientState("a@example.net"), RecipientState("b@example.net")],
        created=time.time(),
        next_attempt=later,
        size=42,
        attempts=2,
        ret="HDRS",
        envid="E1",
    )
    first.recipients[1].status = FAILED
    first.recipients[1].diagnostic = "550 5.1.1 no such user"
    first.recipients[1].remote = "mx.example.net [192.0.2.1]"
    assert spool.create(first, [b"Subject: x\r\n\r\nx\r\n"])
    second = Entry(OTHER, "", [RecipientState("c@example.org")], time.time(), later)
    assert spool.create(second, [b"Subject: y\r\n\r\ny\r\n"])
    return config, spool


def test_list_on_the_embedded_default() -> None:
    """The shipped configuration works as it is (its run directory may hold a queue)."""
    assert main(["queue", "list", "--config", os.path.join(ROOT, "etc", "mailserver.toml")]) == 0


def test_list_and_show(setup: tuple[str, Spool], capsys: Any) -> None:
    config, _ = setup
    assert main(["queue", "list", "--config", config]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0].startswith(f"{QUEUED}         42  ") and "<alice@example.test>  1 pending" in out[0]
    )
    assert out[1] == "    a@example.net"
    assert out[2].startswith(f"{OTHER}") and "<>  1 pending" in out[2]
    assert out[-1] == "2 queued"
    assert main(["queue", "show", QUEUED, "--config", config]) == 0
    shown = capsys.readouterr().out
    assert f"id:           {QUEUED}\n" in shown
    assert "attempts:     2\n" in shown
    assert "dsn:          RET=HDRS ENVID=E1\n" in shown
    assert "  <a@example.net> pending\n" in shown
    assert (
        "  <b@example.net> failed (mx.example.net [192.0.2.1]: 550 5.1.1 no such user)\n" in shown
    )


def test_bad_and_unknown_ids(setup: tuple[str, Spool], capsys: Any) -> None:
    config, spool = setup
    for command in ("show", "retry", "delete"):
        assert main(["queue", command, "../state/x", "--config", config]) == 1
        assert "bad queue id" in capsys.readouterr().err
        assert main(["queue", command, "0000000000000CCCC", "--config", config]) == 1
        assert "no queued message 0000000000000CCCC" in capsys.readouterr().err
    assert spool.ids() == [QUEUED, OTHER]


def test_without_a_server_the_command_changes_the_files(setup: tuple[str, Spool]) -> None:
    config, spool = setup
    before = time.time()
    assert main(["queue", "retry", QUEUED, "--config", config]) == 0
    assert spool.load(QUEUED).next_attempt >= before
    assert spool.load(OTHER).next_attempt > before + 3000
    assert main(["queue", "flush", "--config", config]) == 0
    assert spool.load(OTHER).next_attempt <= time.time()
    assert main(["queue", "delete", OTHER, "--config", config]) == 0
    assert spool.ids() == [QUEUED]
    assert os.listdir(spool.data) == [QUEUED]
    assert os.listdir(spool.ctl) == []


def test_with_a_server_the_command_leaves_a_request_and_wakes_it(
    setup: tuple[str, Spool], capsys: Any
) -> None:
    config, spool = setup
    woken: list[int] = []
    previous = signal.signal(WAKE_SIGNAL, lambda number, frame: woken.append(number))
    spool.lock()  # this process plays the server: the lock file names our pid
    try:
        assert main(["queue", "retry", QUEUED, "--config", config]) == 0
        assert main(["queue", "delete", OTHER, "--config", config]) == 0
        assert main(["queue", "flush", "--config", config]) == 0
    finally:
        spool.unlock()
        signal.signal(WAKE_SIGNAL, previous)
    assert woken == [WAKE_SIGNAL] * 3
    assert "retry 0000000000000AAAA: handed to the running server" in capsys.readouterr().out
    # Nothing changed behind the server's back; it finds the requests in order.
    assert spool.ids() == [QUEUED, OTHER]
    assert spool.take_requests() == [("retry", QUEUED), ("delete", OTHER), ("flush", "all")]


def test_a_server_that_cannot_be_signalled_reads_the_request_at_its_scan(
    setup: tuple[str, Spool], capsys: Any
) -> None:
    config, spool = setup
    spool.lock()
    try:
        with open(os.path.join(spool.root, "lock"), "w") as f:
            f.write("not a pid\n")
        assert main(["queue", "flush", "--config", config]) == 0
    finally:
        spool.unlock()
    assert "at its next scan" in capsys.readouterr().out
    assert spool.take_requests() == [("flush", "all")]
