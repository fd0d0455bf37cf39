"""The log lines: format_line writes what Twisted's classic formatter writes, faster;
observer_for picks the file twistd would, and twistd logs through it."""

from __future__ import annotations

import gc
import io
import signal
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from mailserver import tap
from mailserver.textlog import TurnWriter, format_line, observer_for
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
    assert isinstance(observer, TurnWriter)


class CountingFile(io.StringIO):
    """A file that counts its writes (each one a write(2) on a real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class FullDisk(io.StringIO):
    """A file on a disk with no space left."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def running_reactor() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.running = True
    return reactor


@pytest.fixture(autouse=True)
def reactor_thread():
    """This thread is the reactor's, as a running reactor registers its own."""
    before = threadable.ioThread
    threadable.registerAsIOThread()
    yield
    threadable.ioThread = before


def test_the_lines_of_one_turn_go_out_in_one_write_when_it_ends() -> None:
    reactor, out = running_reactor(), CountingFile()
    writer = TurnWriter(out, reactor)
    for n in range(3):
        writer(event(log_format="line {n}", n=n))
    assert out.getvalue() == ""  # not before the turn ends
    reactor.advance(0)
    assert out.writes == 1
    assert [line.split("] ")[1] for line in out.getvalue().splitlines()] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    writer(event(log_format="next turn"))
    reactor.advance(0)
    assert out.writes == 2 and out.getvalue().endswith("] next turn\n")


def test_the_last_turn_is_written_when_the_reactor_stops() -> None:
    reactor, out = running_reactor(), CountingFile()
    writer = TurnWriter(out, reactor)
    writer(event(log_format="last words"))
    [(trigger, args, kwargs)] = reactor.triggers["after"]["shutdown"]
    trigger(*args, **kwargs)
    assert out.getvalue().endswith("] last words\n")


def test_a_line_is_written_at_once_off_the_reactor_or_from_a_thread() -> None:
    out = CountingFile()
    stopped = MemoryReactorClock()  # running is False: before start-up, after shutdown
    TurnWriter(out, stopped)(event(log_format="before start"))
    assert out.getvalue().endswith("] before start\n")
    writer = TurnWriter(out, running_reactor())
    thread = threading.Thread(target=writer, args=(event(log_format="from a thread"),))
    thread.start()
    thread.join()
    assert out.getvalue().endswith("] from a thread\n")
    assert out.writes == 2


def test_a_line_from_a_thread_follows_what_the_turn_has_kept() -> None:
    reactor, out = running_reactor(), CountingFile()
    writer = TurnWriter(out, reactor)
    writer(event(log_format="earlier, on the reactor"))
    thread = threading.Thread(target=writer, args=(event(log_format="later, from a thread"),))
    thread.start()
    thread.join()
    reactor.advance(0)
    assert [line.split("] ")[1] for line in out.getvalue().splitlines()] == [
        "earlier, on the reactor",
        "later, from a thread",
    ]
    assert out.writes == 1


def test_a_line_from_a_thread_that_cannot_be_written_is_said_on_stderr(capfd) -> None:
    writer = TurnWriter(FullDisk(), running_reactor())
    thread = threading.Thread(target=writer, args=(event(log_format="lost"),))
    thread.start()
    thread.join()
    assert "cannot write the log: [Errno 28] No space left on device" in capfd.readouterr().err


def test_a_log_that_cannot_be_written_is_said_on_stderr(capfd) -> None:
    reactor = running_reactor()
    writer = TurnWriter(FullDisk(), reactor)
    writer(event(log_format="lost"))
    reactor.advance(0)  # raises nothing into the reactor
    assert "cannot write the log: [Errno 28] No space left on device" in capfd.readouterr().err
    assert not reactor.getDelayedCalls()
