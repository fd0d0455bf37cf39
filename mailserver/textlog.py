"""The server's log lines as twistd writes them, without Twisted's pure-Python formatter.

twistd writes each event with ``formatEventAsClassicLogText``, which parses the format
with ``string.Formatter`` in Python (so that ``{method()}`` can call) and works out the
time zone again for every line: 91 µs an event. An SMTP transaction logs two, four with
its connection, so under load that was a sixth of the server's time. The same line comes
out of ``str.format_map`` and a timestamp kept for the second in about a tenth of that.
An event the fast path cannot format (a failure and its traceback, a call or a missing
key in the format, a flattened event) goes to Twisted's formatter, so a line reads the
same either way.

The lines of one turn of the reactor are written together at its end (TurnWriter): a
connection a message logs four lines, and a write(2) each was as much system time again
as formatting them. What a turn logged is on its way to the file before the reactor
waits for the next event, and a line logged from a thread, or while the reactor is not
running, is written at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from twisted.python.threadable import isInIOThread
from zope.interface import implementer


class _Stamps:
    """``formatTime`` of a time, kept for the second it falls in (the format has no
    fractions, and the offset from UTC is the same all through one second). The second and
    its text are one tuple, so that a thread that logs never pairs one with the other's."""

    def __init__(self) -> None:
        self._kept: tuple[int, str] | None = None

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        kept = self._kept
        if kept is None or kept[0] != second:
            kept = self._kept = (second, formatTime(second))
        return kept[1]


_stamp = _Stamps()


def format_line(event: LogEvent) -> str | None:
    """``formatEventAsClassicLogText(event)``: one line (continuations indented)."""
    text_format = event.get("log_format")
    if type(text_format) is not str or "log_failure" in event or "log_flattened" in event:
        return formatEventAsClassicLogText(event, formatTime=_stamp)
    try:
        text = text_format.format_map(event)
    except Exception:  # let Twisted say why it cannot format the event
        return formatEventAsClassicLogText(event, formatTime=_stamp)
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
    else:
        try:
            system = str(system)
        except Exception:
            system = "UNFORMATTABLE"
    line = f"{_stamp(event.get('log_time'))} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n"


@implementer(ILogObserver)
class TurnWriter:
    """Writes format_line's lines to a file, those of one turn of the reactor in one write
    when the turn ends (a ``callLater(0)``), and flushes it then.

    A line logged from a thread, or while the reactor is not running, is written at once,
    after what the turn has kept so far, so that the file keeps the order of the events.
    The lock keeps a thread's write and the reactor's from interleaving in the file."""

    def __init__(self, out: IO[Any], reactor: Any = None) -> None:
        self.out = out
        self._reactor = reactor
        self._lines: list[str] = []
        self._lock = threading.RLock()  # a write that logs must not wait for itself
        self._hooked = False

    def __call__(self, event: LogEvent) -> None:
        line = format_line(event)
        if not line:
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = self._reactor = installed
        with self._lock:
            if not reactor.running or not isInIOThread():
                self._lines.append(line)
                self._write_kept()
                return
            if not self._lines:
                reactor.callLater(0, self.flush)
                if not self._hooked:  # the lines of the last turn before the reactor stops
                    self._hooked = True
                    reactor.addSystemEventTrigger("after", "shutdown", self.flush)
            self._lines.append(line)

    def flush(self) -> None:
        """Write the lines kept so far."""
        with self._lock:
            self._write_kept()

    def _write_kept(self) -> None:
        """Write and empty the kept lines (with the lock held)."""
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines = []
        try:
            self.out.write(text)
            self.out.flush()
        except OSError as e:
            # A full disk: the lines are lost, as Twisted's observer would lose them. Not
            # logged (that would write to this file again, each turn), said on stderr.
            print(f"mailserver: cannot write the log: {e}", file=sys.__stderr__)


def observer_for(twistd_options: Mapping[str, Any]) -> ILogObserver | None:
    """The observer twistd would make from its options, writing with format_line: to
    stdout when it runs in the foreground without ``--logfile`` (or with ``-``), else to
    the log file (``twistd.log`` by default), reopened on SIGUSR1 as twistd does. None
    for ``--syslog`` and ``--logger``, which stay twistd's."""
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    filename = twistd_options.get("logfile") or ""
    if filename == "-" and not twistd_options.get("nodaemon"):
        return None  # twistd refuses: a daemon cannot log to stdout
    if filename == "-" or (not filename and twistd_options.get("nodaemon")):
        return TurnWriter(sys.stdout)
    log_file = LogFile.fromFullPath(filename or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return TurnWriter(log_file)
