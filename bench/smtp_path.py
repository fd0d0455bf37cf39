"""Our SMTP server's own work per message, in-process: ``python -m bench.smtp_path``.

The real MTA (the factory, sessions, policy, MDA and store ``make run`` builds) is driven
through in-memory transports, with the store's commit answered at once and its thread
jobs run inline: no sockets, no disk syncs, no load generator sharing the CPUs. What is
left is the Python a message costs on the reactor (the log lines included, written to
/dev/null), measured without the noise of a shared machine; ``make bench`` says what that
buys against Postfix. ``--profile`` prints where the time goes (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import FileLogObserver, globalLogBeginner
from twisted.python.failure import Failure

from mailserver import config
from mailserver.service import MailServer
from mailserver.store.commit import FileJob
from mailserver.textlog import format_line
from tests.e2e.harness import write_config

CONNECTIONS = 10
# A message of some 4 KiB, as the ingest workloads of make bench send, and its end.
MESSAGE = (
    b"Subject: load\r\nMessage-ID: <x@smtp-path.test>\r\n\r\n"
    + (b"x" * 70 + b"\r\n") * 56
    + b".\r\n"
)
TRANSACTION = (
    b"MAIL FROM:<load@client.test>\r\n",
    b"RCPT TO:<alice@example.test>\r\n",
    b"DATA\r\n",
    MESSAGE,
)


class SMTPPath:
    """The MTA of a server on a temporary store, clients connected in memory."""

    def __init__(self, workdir: str) -> None:
        self.server = MailServer(config.load(write_config(workdir)), MemoryReactorClock())
        store = self.server.store
        store.commit = _committed_at_once
        store.run_in_thread = lambda f, *args: defer.maybeDeferred(f, *args)
        self.factory = self.server._mta_factory(False)
        self.factory.startFactory()
        self.port = 40000

    def connect(self) -> tuple[Any, StringTransport]:
        self.port = self.port + 1 if self.port < 60000 else 40000
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def transactions(self, messages: int) -> float:
        """µs a message, CONNECTIONS clients sending in turn on their connections."""
        clients = []
        for _ in range(CONNECTIONS):
            proto, transport = self.connect()
            proto.dataReceived(b"EHLO client.test\r\n")
            clients.append((proto, transport))
        start = time.perf_counter()
        for i in range(messages):
            proto, transport = clients[i % CONNECTIONS]
            transport.clear()
            for line in TRANSACTION:
                proto.dataReceived(line)
            _expect(transport, b"250 2.0.0 ")
        took = time.perf_counter() - start
        for proto, _ in clients:
            proto.connectionLost(Failure(ConnectionDone()))
        return took / messages * 1e6

    def connections(self, messages: int) -> float:
        """µs a message, each sent on a connection of its own (greeting to QUIT)."""
        start = time.perf_counter()
        for _ in range(messages):
            proto, transport = self.connect()
            for line in (b"EHLO client.test\r\n", *TRANSACTION, b"QUIT\r\n"):
                proto.dataReceived(line)
            _expect(transport, b"221 ")
            proto.connectionLost(Failure(ConnectionDone()))
        return (time.perf_counter() - start) / messages * 1e6


def _committed_at_once(job: FileJob) -> defer.Deferred[float]:
    return defer.succeed(time.time())


def _expect(transport: StringTransport, reply: bytes) -> None:
    if reply not in transport.value():
        raise RuntimeError(f"expected {reply!r}, got {transport.value()[-300:]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="per run (default 3000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run of each")
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory() as workdir:
        observer = FileLogObserver(devnull, format_line)
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        path = SMTPPath(workdir)
        modes: list[tuple[str, Callable[[int], float]]] = [
            (f"{CONNECTIONS} connections", path.transactions),
            ("a connection a message", path.connections),
        ]
        for name, run in modes:
            run(max(1, args.messages // 10))  # warm up
            times = sorted(run(args.messages) for _ in range(args.runs))
            print(f"{name}: {times[len(times) // 2]:.1f} µs a message (median of {args.runs})")
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(run, args.messages)
                pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
