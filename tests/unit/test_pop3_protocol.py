"""The POP3 factory and protocol against a real Maildir store."""

from __future__ import annotations

import os
import poplib
import shutil
import tempfile
import threading
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailserver.config import POP3Config
from mailserver.pop3.protocol import POP3Factory
from mailserver.store.maildir import MaildirStore
from tests.unit.test_maildir import record_scans_on_main_thread

ALICE = "alice@example.test"
BOB = "bob@example.test"
HOST = "mx.example.test"
MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
TRICKY = b".leading dot\r\nSubject: dots\r\n\r\n.\r\n..x\r\nlast line without CRLF"


class FakeLogin:
    """The LoginService interface with two fixed accounts."""

    accounts = {("alice", "secret"): ALICE, ("bob", "hunter2"): BOB}

    def login(self, username: str, password: str, role: str, peer: str) -> defer.Deferred:
        assert role == "POP3"
        return defer.succeed(self.accounts.get((username, password)))


class Client:
    """One client connection over a StringTransport, with its own idle-timer clock."""

    def __init__(self, factory: POP3Factory, port: int = 40000) -> None:
        self.clock = Clock()
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.protocol.makeConnection(self.transport)

    async def reply(self, ending: bytes = b"\r\n", lines: int = 1) -> bytes:
        """Everything written until the output ends with ``ending`` and holds at least
        ``lines`` lines (reads use threads)."""
        for _ in range(2000):
            data = self.transport.value()
            if data.endswith(ending) and data.count(b"\r\n") >= lines:
                self.transport.clear()
                return data
            await deferLater(reactor, 0.005, lambda: None)
        raise AssertionError(f"no reply ending with {ending!r}: {self.transport.value()!r}")

    async def command(self, line: bytes, ending: bytes = b"\r\n") -> bytes:
        self.protocol.dataReceived(line + b"\r\n")
        return await self.reply(ending)

    async def login(self, user: bytes = b"alice", password: bytes = b"secret") -> bytes:
        """USER and PASS pipelined: both replies (the second may come from a thread)."""
        await self.reply()  # the greeting
        self.protocol.dataReceived(b"USER " + user + b"\r\nPASS " + password + b"\r\n")
        return await self.reply(lines=2)

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class POP3ProtocolTests(unittest.TestCase):
    def setUp(self) -> None:
        root = tempfile.mkdtemp(prefix="pop3-test-")
        self.addCleanup(shutil.rmtree, root)
        self.store = MaildirStore(root, hostname=HOST)
        self.folder = self.store.folder(ALICE)
        self.factory = POP3Factory(
            self.store,
            FakeLogin(),  # type: ignore[arg-type]
            POP3Config(),
            HOST,
            allow_plaintext_on_loopback=True,
        )
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def deliver(self, message: bytes = MESSAGE) -> str:
        stored = await self.store.deliver(ALICE, [message])
        return stored.base

    def files(self) -> list[str]:
        names = []
        for sub in ("new", "cur"):
            names += os.listdir(os.path.join(self.store.user_path(ALICE), sub))
        return sorted(names)

    def pop3_events(self) -> list[str]:
        return [
            e["log_format"].split(" ", 2)[1]
            for e in self.events
            if e.get("role") == "POP3" and e.get("log_namespace") == "mailserver.pop3.protocol"
        ]

    async def test_poplib_over_loopback(self) -> None:
        base = await self.deliver(TRICKY)
        await self.deliver()
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def session() -> dict[str, Any]:
            pop = poplib.POP3("127.0.0.1", number, timeout=10)
            results: dict[str, Any] = {"welcome": pop.getwelcome(), "capa": pop.capa()}
            pop.user("alice")
            results["pass"] = pop.pass_("secret")
            results["stat"] = pop.stat()
            results["list"] = pop.list()[1]
            results["uidl"] = pop.uidl(1)
            results["retr"] = pop.retr(1)[1]
            results["top"] = pop.top(1, 1)[1]
            results["dele"] = pop.dele(1)
            results["quit"] = pop.quit()
            return results

        results = await threads.deferToThread(session)
        size = len(TRICKY)
        total = size + len(MESSAGE)
        assert results["welcome"] == b"+OK mx.example.test POP3 ready"
        assert set(results["capa"]) == {
            "SASL",
            "USER",
            "TOP",
            "UIDL",
            "PIPELINING",
            "RESP-CODES",
            "AUTH-RESP-CODE",
        }
        assert results["pass"] == f"+OK 2 messages ({total} octets)".encode()
        assert results["stat"] == (2, total)
        assert results["list"] == [f"1 {size}".encode(), f"2 {len(MESSAGE)}".encode()]
        assert results["uidl"] == f"+OK 1 {base}".encode()
        assert b"\r\n".join(results["retr"]) == TRICKY
        assert results["top"] == [b".leading dot", b"Subject: dots", b"", b"."]
        assert results["dele"] == b"+OK message 1 deleted"
        assert results["quit"] == b"+OK mx.example.test POP3 server signing off (1 messages left)"
        assert not any(name.startswith(base) for name in self.files())
        assert len(self.files()) == 1
        await self.until_unlocked()

    async def test_poplib_dropped_connection_keeps_messages(self) -> None:
        await self.deliver()
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def session() -> bytes:
            pop = poplib.POP3("127.0.0.1", number, timeout=10)
            pop.user("alice")
            pop.pass_("secret")
            reply = pop.dele(1)
            pop.close()  # no QUIT
            return reply

        assert await threads.deferToThread(session) == b"+OK message 1 deleted"
        await self.until_unlocked()
        assert len(self.files()) == 1

    async def until_unlocked(self) -> None:
        for _ in range(2000):
            if not self.factory.locks:
                return
            await deferLater(reactor, 0.005, lambda: None)
        raise AssertionError(f"still locked: {self.factory.locks}")

    async def test_retr_is_byte_exact(self) -> None:
        await self.deliver(TRICKY)
        client = Client(self.factory)
        assert await client.login() == f"+OK\r\n+OK 1 messages ({len(TRICKY)} octets)\r\n".encode()
        assert await client.command(b"RETR 1", b"\r\n.\r\n") == (
            f"+OK {len(TRICKY)} octets\r\n".encode()
            + b"..leading dot\r\nSubject: dots\r\n\r\n..\r\n...x\r\nlast line without CRLF\r\n"
            + b".\r\n"
        )
        assert await client.command(b"TOP 1 0", b"\r\n.\r\n") == (
            b"+OK 31 octets\r\n..leading dot\r\nSubject: dots\r\n\r\n.\r\n"
        )
        client.drop()

    async def test_uidl_is_the_base_name_and_survives_flag_changes(self) -> None:
        base = await self.deliver()
        client = Client(self.factory)
        await client.login()
        assert await client.command(b"UIDL 1") == f"+OK 1 {base}\r\n".encode()
        uid = self.folder.messages[0].uid
        self.folder.set_flags(uid, {"\\Seen"})
        assert self.files() == [f"{base}:2,S"]
        # The file moved to cur/ under the session: RETR still finds it.
        assert await client.command(b"RETR 1", b"\r\n.\r\n") == (
            f"+OK {len(MESSAGE)} octets\r\n".encode() + MESSAGE + b".\r\n"
        )
        await client.command(b"QUIT")
        client.drop()
        again = Client(self.factory)
        await again.login()
        assert await again.command(b"UIDL", b"\r\n.\r\n") == (
            f"+OK unique-id listing follows\r\n1 {base}\r\n.\r\n".encode()
        )
        again.drop()

    async def test_dele_is_applied_at_quit_only(self) -> None:
        await self.deliver()
        await self.deliver(TRICKY)
        client = Client(self.factory)
        await client.login()
        assert await client.command(b"DELE 1") == b"+OK message 1 deleted\r\n"
        assert len(self.files()) == 2
        assert await client.command(b"QUIT") == (
            b"+OK mx.example.test POP3 server signing off (1 messages left)\r\n"
        )
        assert client.transport.disconnecting
        assert len(self.files()) == 1
        assert [m.size for m in self.folder.messages] == [len(TRICKY)]
        assert self.factory.locks == set()
        client.drop()

    async def test_dropped_connection_deletes_nothing_and_unlocks(self) -> None:
        await self.deliver()
        client = Client(self.factory)
        await client.login()
        assert self.factory.locks == {ALICE}
        await client.command(b"DELE 1")
        client.drop()
        assert self.factory.locks == set()
        assert len(self.files()) == 1
        again = Client(self.factory)
        assert await again.login() == f"+OK\r\n+OK 1 messages ({len(MESSAGE)} octets)\r\n".encode()
        again.drop()

    async def test_second_login_is_in_use(self) -> None:
        await self.deliver()
        first = Client(self.factory, port=40001)
        await first.login()
        second = Client(self.factory, port=40002)
        assert await second.login() == b"+OK\r\n-ERR [IN-USE] maildrop already locked\r\n"
        assert second.transport.disconnecting
        second.drop()
        assert self.factory.locks == {ALICE}  # the refused session did not take the lock
        other_user = Client(self.factory, port=40003)
        assert await other_user.login(b"bob", b"hunter2") == (
            b"+OK\r\n+OK 0 messages (0 octets)\r\n"
        )
        await first.command(b"QUIT")
        first.drop()
        third = Client(self.factory, port=40004)
        assert await third.login() == f"+OK\r\n+OK 1 messages ({len(MESSAGE)} octets)\r\n".encode()
        for client in (other_user, third):
            client.drop()

    async def test_a_first_login_makes_the_maildir_in_a_thread(self) -> None:
        """Bob never received mail: his Maildir is made (mkdir, fsync) off the reactor."""
        made_on_main: list[bool] = []
        real_ensure = self.store.ensure_user

        def ensure_user(address: str) -> None:
            made_on_main.append(threading.current_thread() is threading.main_thread())
            real_ensure(address)

        self.patch(self.store, "ensure_user", ensure_user)
        client = Client(self.factory)
        assert await client.login(b"bob", b"hunter2") == b"+OK\r\n+OK 0 messages (0 octets)\r\n"
        assert made_on_main == [False]
        assert os.path.isdir(os.path.join(self.store.user_path(BOB), "cur"))
        client.drop()

    async def test_a_maildrop_not_open_is_listed_in_a_thread(self) -> None:
        """PASS opens the maildrop: a folder no session has open is scanned (every file of
        new/ and cur/) off the reactor, and the +OK waits for it."""
        await self.deliver()
        scanned_on_main = record_scans_on_main_thread(self)
        self.factory.store = store = MaildirStore(self.store.root, hostname=HOST)
        client = Client(self.factory)
        assert await client.login() == f"+OK\r\n+OK 1 messages ({len(MESSAGE)} octets)\r\n".encode()
        assert scanned_on_main == [False]
        assert store.folder(ALICE).messages
        client.drop()

    async def test_wrong_password(self) -> None:
        client = Client(self.factory)
        assert await client.login(password=b"nope") == (
            b"+OK\r\n-ERR [AUTH] invalid user name or password\r\n"
        )
        assert self.factory.locks == set()
        client.drop()

    async def test_idle_timeout_unlocks(self) -> None:
        await self.deliver()
        client = Client(self.factory)
        await client.login()
        await client.command(b"DELE 1")
        client.clock.advance(POP3Config().idle_timeout)
        assert client.transport.value() == b"-ERR autologout; idle for too long\r\n"
        assert client.transport.disconnecting
        client.drop()
        assert self.factory.locks == set()
        assert len(self.files()) == 1

    async def test_events_are_logged(self) -> None:
        await self.deliver()
        bad = Client(self.factory, port=40005)
        await bad.login(password=b"nope")
        bad.drop()
        client = Client(self.factory, port=40006)
        await client.login()
        await client.command(b"RETR 1", b"\r\n.\r\n")
        await client.command(b"DELE 1\r\nQUIT")
        client.drop()
        # One line when the maildrop is released sums up what was read and deleted.
        assert self.pop3_events() == ["login", "login", "maildrop"]
        ours = [e for e in self.events if e.get("log_namespace") == "mailserver.pop3.protocol"]
        assert [e["peer"] for e in ours] == ["127.0.0.1"] * 3
        assert ours[0]["log_format"].startswith("{role} login failed")
        assert ours[1]["user"] == ALICE
        assert (ours[2]["user"], ours[2]["retr"], ours[2]["octets"], ours[2]["dele"]) == (
            ALICE,
            1,
            len(MESSAGE),
            1,
        )
        assert len({e["session"] for e in ours[1:]}) == 1
        assert ours[0]["session"] != ours[1]["session"]
