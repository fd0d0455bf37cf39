"""Password logins for every protocol, through twisted.cred, slowed down for guessers.

Failed logins from one client address are answered progressively later (a timer on the
reactor, never a sleep), and past a limit within a window the address is refused for a
while without its passwords being checked at all. A successful login clears the record.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from twisted.cred import error
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mailserver.accounts import Directory, IMailUser, MailRealm, PasswdChecker
from mailserver.config import AuthConfig

log = Logger()


def client_key(peer: str) -> str:
    """Whose failures these are: the IPv4 address, or the /64 of an IPv6 address (one
    host usually has a whole /64 to pick addresses from)."""
    try:
        address = ipaddress.ip_address(peer.split("%")[0])
    except ValueError:
        return peer
    if address.version == 6 and not address.is_loopback:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class TooManyFailures(Exception):
    """The client address is locked out for now: answer with a temporary error."""


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginThrottle:
    """Bookkeeping of failed logins per client address."""

    # Past this many addresses on record, those with nothing left to remember (no
    # failure in the window, no lock-out running) are forgotten, so that guessers on
    # many addresses cannot grow the table without bound.
    prune_above = 10_000

    def __init__(self, clock: IReactorTime, config: AuthConfig) -> None:
        self.clock = clock
        self.config = config
        self._records: dict[str, _Record] = {}
        self._prune_at = self.prune_above

    def locked(self, peer: str) -> bool:
        record = self._records.get(client_key(peer))
        return record is not None and record.locked_until > self.clock.seconds()

    def failed(self, peer: str) -> float:
        """Note a failure; return how long to wait before answering it."""
        now = self.clock.seconds()
        record = self._records.setdefault(client_key(peer), _Record())
        window_start = now - self.config.failure_window
        record.failures = [t for t in record.failures if t > window_start] + [now]
        if len(record.failures) >= self.config.max_failures:
            record.locked_until = now + self.config.lockout
        if len(self._records) > self._prune_at:
            self._prune(now)
        return min(self.config.delay_step * len(record.failures), self.config.max_delay)

    def _prune(self, now: float) -> None:
        window_start = now - self.config.failure_window
        self._records = {
            peer: record
            for peer, record in self._records.items()
            if record.locked_until > now or (record.failures and record.failures[-1] > window_start)
        }
        # Amortised: the next pass waits until the table has grown by as much again.
        self._prune_at = max(self.prune_above, 2 * len(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def succeeded(self, peer: str) -> None:
        self._records.pop(client_key(peer), None)


class LoginService:
    """Answers 'is this user name and password right?' with the canonical address."""

    def __init__(self, directory: Directory, clock: IReactorTime, config: AuthConfig) -> None:
        self.portal = Portal(MailRealm(), [PasswdChecker(directory)])
        self.clock = clock
        self.throttle = LoginThrottle(clock, config)

    def login(self, username: str, password: str, role: str, peer: str) -> defer.Deferred:
        """Fires with the user's canonical address, or None when the login failed; fails
        with TooManyFailures while the client address is locked out."""
        if self.throttle.locked(peer):
            log.warn(
                "{role} login refused, too many failures peer={peer} user={user!r}",
                role=role,
                peer=peer,
                user=username,
            )
            return defer.fail(TooManyFailures(peer))
        d = self.portal.login(UsernamePassword(username, password), None, IMailUser)

        def succeeded(result):  # type: ignore[no-untyped-def]
            _, avatar, _ = result
            self.throttle.succeeded(peer)
            return avatar.address

        def failed(failure):  # type: ignore[no-untyped-def]
            failure.trap(error.UnauthorizedLogin)
            delay = self.throttle.failed(peer)
            log.info(
                "{role} login failed peer={peer} user={user!r}, answering in {delay}s",
                role=role,
                peer=peer,
                user=username,
                delay=delay,
            )
            return task.deferLater(self.clock, delay, lambda: None)

        d.addCallbacks(succeeded, failed)
        return d
