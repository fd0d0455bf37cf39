"""Brute force through the real protocol factories, on a fake clock (MemoryReactorClock).

Each wrong password is answered later than the one before (a timer, so the reactor goes
on serving others meanwhile); past ``max_failures`` the client address gets the
protocol's temporary refusal (SMTP 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR
[SYS/TEMP]) without its password being checked, until the lock-out is over.
"""

from __future__ import annotations

import base64

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from mailserver.config import AuthConfig, POP3Config
from mailserver.imap.protocol import IMAPFactory
from mailserver.imap.session import IMAPLimits
from mailserver.limits import LimitedFactory
from mailserver.login import LoginService
from mailserver.pop3.protocol import POP3Factory
from mailserver.smtp.protocol import SMTPFactory
from mailserver.smtp.session import SMTPLimits, SMTPRole
from mailserver.store.maildir import MaildirStore
from tests.unit.test_imap_session import inline
from tests.unit.test_login import FakeThreadsDirectory

AUTH = AuthConfig(delay_step=2.0, max_delay=4.0, max_failures=3, failure_window=60, lockout=100)
PEER = "192.0.2.9"


def plain(password: str) -> bytes:
    return base64.b64encode(f"\0alice@example.test\0{password}".encode())


# Per protocol: the factory, the lines to log in, and the replies expected.
def smtp(login: LoginService, clock: MemoryReactorClock, store: MaildirStore) -> LimitedFactory:
    role = SMTPRole("MSA", tls_active=True, auth=True, require_auth=True)
    return SMTPFactory(role, "mx.test", SMTPLimits(), 300, None, "postmaster@example.test", login)  # type: ignore[arg-type]


def imap(login: LoginService, clock: MemoryReactorClock, store: MaildirStore) -> LimitedFactory:
    return IMAPFactory(store, login, IMAPLimits(), 1800, "mx.test", clock, implicit_tls=True)


def pop3(login: LoginService, clock: MemoryReactorClock, store: MaildirStore) -> LimitedFactory:
    return POP3Factory(store, login, POP3Config(), "mx.test", implicit_tls=True)


CASES = {
    "smtp": (
        smtp,
        lambda pw: b"EHLO c.test\r\nAUTH PLAIN " + plain(pw) + b"\r\n",
        b"535 5.7.8 Authentication credentials invalid\r\n",
        b"454 4.7.0 Temporary authentication failure\r\n",
        b"235 2.7.0 Authentication successful\r\n",
    ),
    "imap": (
        imap,
        lambda pw: f"a LOGIN alice@example.test {pw}\r\n".encode(),
        b"a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n",
        b"a NO [UNAVAILABLE] Cannot check credentials now\r\n",
        b"] Logged in\r\n",
    ),
    "pop3": (
        pop3,
        lambda pw: b"AUTH PLAIN " + plain(pw) + b"\r\n",
        b"-ERR [AUTH] invalid user name or password\r\n",
        b"-ERR [SYS/TEMP] authentication unavailable, try again later\r\n",
        b"+OK ",
    ),
}


class Client:
    def __init__(self, factory: LimitedFactory, clock: MemoryReactorClock) -> None:
        self.proto = factory.buildProtocol(IPv4Address("TCP", PEER, 4321))
        self.proto.callLater = clock.callLater  # the idle timer, on the fake clock
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.transport.clear()  # the greeting

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_delay_then_lockout_then_reset(protocol: str, tmp_path) -> None:
    make, login_lines, wrong, locked, welcome = CASES[protocol]
    passwd = tmp_path / "passwd"
    passwd.write_text("alice@example.test:{PLAIN}secret\n")
    clock = MemoryReactorClock()
    login = LoginService(FakeThreadsDirectory(("example.test",), str(passwd)), clock, AUTH)
    store = MaildirStore(str(tmp_path / "Maildir"), hostname="test", run_in_thread=inline)
    factory = make(login, clock, store)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for delay in (2.0, 4.0):
            client = Client(factory, clock)
            client.send(login_lines("wrong"))
            clock.advance(delay - 0.5)
            assert wrong not in client.take()  # not answered yet: the delay runs
            clock.advance(0.5)
            assert client.take().endswith(wrong)
        # The third failure locks the address out; the right password is refused too.
        client = Client(factory, clock)
        client.send(login_lines("wrong"))
        clock.advance(4.0)
        client = Client(factory, clock)
        assert client.send(login_lines("secret")).endswith(locked)
        # The log names the client address and the user.
        texts = [e.get("log_format", "") for e in events]
        assert any("too many failures" in t for t in texts)
        refused = [e for e in events if "too many failures" in e.get("log_format", "")]
        assert refused[-1]["peer"] == PEER and refused[-1]["user"] == "alice@example.test"
        # After the lock-out the right password works and clears the record.
        clock.advance(AUTH.lockout)
        client = Client(factory, clock)
        assert welcome in client.send(login_lines("secret"))
        assert login.throttle.locked(PEER) is False
        client = Client(factory, clock)
        client.send(login_lines("wrong"))
        clock.advance(2.0)  # the first delay again
        assert client.take().endswith(wrong)
    finally:
        globalLogPublisher.removeObserver(events.append)
