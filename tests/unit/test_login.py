"""Login throttling driven by a fake clock: progressive delays, lock-out, reset."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from mailserver.accounts import Directory
from mailserver.config import AuthConfig
from mailserver.login import LoginService, TooManyFailures, client_key


class FakeThreadsDirectory(Directory):
    """The passwd-file directory, with the hash check answered at once (no thread)."""

    def check_password(self, address, password):  # type: ignore[no-untyped-def]
        from twisted.internet import defer

        account = self.account(address)
        ok = account is not None and account.password_hash == "{PLAIN}" + password
        return defer.succeed(account.address if ok else None)


class ThrottleTests(unittest.TestCase):
    def setUp(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alice@example.test:{PLAIN}secret\n")
        self.clock = MemoryReactorClock()
        config = AuthConfig(
            delay_step=1.0, max_delay=3.0, max_failures=4, failure_window=60, lockout=300
        )
        self.service = LoginService(
            FakeThreadsDirectory(("example.test",), path), self.clock, config
        )

    def attempt(self, password: str, peer: str = "192.0.2.1") -> list:
        results: list = []
        d = self.service.login("alice@example.test", password, "IMAP", peer)
        d.addBoth(results.append)
        return results

    def test_failures_are_answered_later_and_later(self) -> None:
        for expected_delay in (1.0, 2.0, 3.0):
            results = self.attempt("wrong")
            self.clock.advance(expected_delay - 0.01)
            self.assertEqual(results, [])
            self.clock.advance(0.02)
            self.assertEqual(results, [None])

    def test_lockout_after_too_many_failures_then_it_expires(self) -> None:
        for _ in range(4):
            self.attempt("wrong")
            self.clock.advance(5)
        results = self.attempt("secret")  # even the right password is not checked now
        self.assertTrue(results[0].check(TooManyFailures))
        other = self.attempt("secret", peer="192.0.2.2")  # other clients are not affected
        self.assertEqual(other, ["alice@example.test"])
        self.clock.advance(300)
        self.assertEqual(self.attempt("secret"), ["alice@example.test"])

    def test_success_resets_the_count(self) -> None:
        for _ in range(3):
            self.attempt("wrong")
            self.clock.advance(5)
        self.assertEqual(self.attempt("secret"), ["alice@example.test"])
        results = self.attempt("wrong")
        self.clock.advance(1.01)  # back to the first delay
        self.assertEqual(results, [None])

    def test_old_failures_leave_the_window(self) -> None:
        for _ in range(3):
            self.attempt("wrong")
            self.clock.advance(61)
        results = self.attempt("wrong")
        self.clock.advance(1.01)
        self.assertEqual(results, [None])
        self.assertEqual(self.attempt("secret"), ["alice@example.test"])

    def test_stale_records_are_forgotten(self) -> None:
        throttle = self.service.throttle
        throttle.prune_above = throttle._prune_at = 3
        self.attempt("wrong", peer="192.0.2.100")
        for _ in range(4):
            self.attempt("wrong", peer="192.0.2.101")  # locked out for 300 s
        self.clock.advance(61)  # both leave the window; .101 is still locked out
        self.attempt("wrong", peer="198.51.100.1")
        self.assertEqual(len(throttle), 3)
        self.attempt("wrong", peer="198.51.100.2")  # over the bound: a pruning pass
        self.assertEqual(len(throttle), 3)  # .100 forgotten, the lock-out kept
        self.assertTrue(throttle.locked("192.0.2.101"))

    def test_ipv6_failures_count_per_64(self) -> None:
        for n in range(4):
            self.attempt("wrong", peer=f"2001:db8:1:2::{n + 1}")
            self.clock.advance(5)
        results = self.attempt("secret", peer="2001:db8:1:2:ffff::9")  # same /64
        self.assertTrue(results[0].check(TooManyFailures))
        self.assertEqual(self.attempt("secret", peer="2001:db8:1:3::1"), ["alice@example.test"])
        # An IPv4 client seen through an IPv6 socket is the IPv4 address.
        self.assertEqual(client_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(client_key("::1"), "::1")
