"""The log lines: format_line writes what Twisted's classic formatter writes, faster;
observer_for picks the file twistd would, and twistd logs through it."""

from __future__ import annotations

import gc
import signal
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from mailserver import tap
from mailserver.textlog import format_line, observer_for
from tests.e2e.harness import write_config


def twisted_line(event: dict) -> str | None:
    return formatEventAsClassicLogText(event)


def event(**fields: object) -> dict:
    base: dict = {
        "log_time": 1796313587.25,
        "log_namespace": "mailserver.smtp.protocol",
        "log_level": LogLevel.info,
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    "fields",
    [
        {"log_format": "MTA data session={session} size={size}", "session": "ab1", "size": 4096},
        {
            "log_format": "{role} auth {result} user={user!r}",
            "role": "IMAP",
            "result": "ok",
            "user": "alice@example.test",
        },
        {"log_format": "took {seconds:.3f} s, {n:,} files", "seconds": 0.123456, "n": 100000},
        {"log_format": "two lines: {a}\nand {b}", "a": 1, "b": 2},
        {"log_format": "{a.real} {b[0]} {{braces}}", "a": 3, "b": ["x"]},
        {"log_format": "(TCP Port 25 Closed)", "log_system": "-"},
        {"log_format": "no level", "log_level": None},
        {"log_format": "no namespace", "log_namespace": None},
        {"log_format": "no time", "log_time": None},
        {"log_format": "missing {key}"},
        {"log_format": "a call {thing()}", "thing": lambda: "made"},
        {"log_format": "bad spec {n:q}", "n": 1},
        {"log_format": b"bytes format"},
        {"log_format": "", "x": 1},
        {"log_format": None},
        {"x": 1},
    ],
)
def test_a_line_reads_as_twisted_writes_it(fields: dict) -> None:
    e = event(**fields)
    if e.get("log_level", 0) is None:
        del e["log_level"]
    if e.get("log_namespace", 0) is None:
        del e["log_namespace"]
    assert format_line(e) == twisted_line(e)


def test_a_failure_has_its_traceback() -> None:
    try:
        raise ZeroDivisionError("no messages to divide")
    except ZeroDivisionError:
        failure = Failure()
    e = event(log_format="delivery failed session={session}", session="s1", log_failure=failure)
    line = format_line(e)
    assert line == twisted_line(e)
    assert "ZeroDivisionError" in line


def test_the_stamp_follows_the_clock_second_by_second() -> None:
    now = time.time()
    for when in (now, now + 0.5, now + 1, now + 61, now + 3600 * 24 * 200):
        e = event(log_format="at {when}", when=when, log_time=when)
        assert format_line(e) == twisted_line(e)


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(
    parts=st.lists(st.tuples(text, st.sampled_from(["", "!r", "!s", ":>8", ":^5"])), max_size=5),
    values=st.lists(
        st.one_of(text, st.integers(), st.floats(allow_nan=False), st.none()),
        min_size=5,
        max_size=5,
    ),
)
def test_any_format_of_named_fields_reads_the_same(parts, values) -> None:
    fields = {}
    pieces = []
    for i, (literal, spec) in enumerate(parts):
        pieces.append(literal.replace("{", "{{").replace("}", "}}"))
        pieces.append(f"{{f{i}{spec}}}")
        fields[f"f{i}"] = values[i]
    e = event(log_format="".join(pieces), **fields)
    assert format_line(e) == twisted_line(e)


def test_twistd_options_choose_the_file(capsys) -> None:
    assert observer_for({"syslog": True, "nodaemon": True}) is None
    assert observer_for({"logger": "x.y", "nodaemon": True}) is None
    assert observer_for({"logfile": "-", "nodaemon": False}) is None  # twistd refuses
    for options in ({"logfile": "-", "nodaemon": True}, {"logfile": None, "nodaemon": True}):
        observer = observer_for(options)
        observer(event(log_format="to {where}", where="stdout"))
        assert capsys.readouterr().out.endswith("] to stdout\n")


def test_a_log_file_gets_the_lines_and_rotates_on_sigusr1(tmp_path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        path = tmp_path / "server.log"
        observer = observer_for({"logfile": str(path), "nodaemon": False})
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
        observer(event(log_format="hello {who}", who="world"))
        assert path.read_text().endswith("[mailserver.smtp.protocol#info] hello world\n")
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_twistd_logs_through_it(tmp_path, capsys) -> None:
    """As twistd runs the plugin: its options, makeService, the application it makes."""
    config = ServerOptions()
    config.parseOptions(["-n", "mailserver", "--config", write_config(str(tmp_path))])
    thresholds = gc.get_threshold()
    try:
        server = tap.makeService(config.subOptions)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    application = Application("mailserver")
    server.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    observer(event(log_format="through {what}", what="ours"))
    assert capsys.readouterr().out.endswith(" [mailserver.smtp.protocol#info] through ours\n")
    assert observer.formatEvent is format_line
