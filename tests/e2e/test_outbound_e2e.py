"""Outbound end to end: a DNS server on loopback whose MX records point at SMTP peers on
127.0.0.x; the queue service delivers, retries, times out and bounces; and kill -9 of a
process running the queue does not lose or duplicate a delivery."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailserver.config import load
from mailserver.queue.service import QueueService, spool_dir
from mailserver.queue.spool import Spool
from tests.e2e.dns_peer import a, aaaa, listen_dns, mx, null_mx
from tests.e2e.harness import ALICE, PASSWORD, ServerProcess, free_ports, write_config
from tests.e2e.smtp_peers import BrokenTLSFirst, Peer, common_port, listen_peer

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.7"]
REFUSING = "127.0.0.6"  # nothing listens there: connection refused
ZONE = {
    "accept.test": [mx(10, "mx.accept.test")],
    "mx.accept.test": [a("127.0.0.2")],
    "flaky.test": [mx(10, "mx.flaky.test")],
    "mx.flaky.test": [a("127.0.0.3")],
    "reject.test": [mx(10, "mx.reject.test")],
    "mx.reject.test": [a("127.0.0.4")],
    # The best MX never answers: the client times out and takes the next one.
    "backup.test": [mx(10, "tarpit.backup.test"), mx(20, "mx.accept.test")],
    "tarpit.backup.test": [a("127.0.0.5")],
    "silent.test": [mx(10, "tarpit.backup.test")],
    # RFC 5321 §5.1: the first MX refuses the connection, the second answers 451: the
    # third takes the message, in the same attempt.
    "fallback.test": [
        mx(10, "down.fallback.test"),
        mx(20, "busy.fallback.test"),
        mx(30, "mx.accept.test"),
    ],
    "down.fallback.test": [a(REFUSING)],
    "busy.fallback.test": [a("127.0.0.7")],
    "nullmx.test": [null_mx()],
    # No MX: the domain's own address (RFC 5321 §5.1 implicit MX).
    "amx.test": [a("127.0.0.2")],
}

QUEUE_TOML = """
[queue]
nameservers = ["127.0.0.1:{dns}"]
mx_port = {port}
mx_tls = "never"
min_backoff = 0.3
max_backoff = 0.6
delay_warning = 0
scan_interval = 0.2
connect_timeout = 2
greeting_timeout = 1
command_timeout = 2
data_init_timeout = 2
data_end_timeout = 2
"""


def subject(data: bytes) -> bytes:
    """The Subject line (the peer's session puts its Received: field first)."""
    return next((line for line in data.split(b"\r\n") if line.startswith(b"Subject:")), b"")


def pad_to(body: bytes, offset: int) -> bytes:
    """``body`` and lines of "x" (shorter than the 1000-octet limit) up to ``offset``."""
    need = offset - len(body)
    while need > 0:
        size = min(need, 900)
        if 0 < need - size < 2:
            size -= 2
        body += b"x" * (size - 2) + b"\r\n"
        need -= size
    assert len(body) == offset
    return body


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.05, lambda: None)


class LocalDeliveries(list[tuple[str, list[str], bytes]]):
    """The queue's local delivery (reports to local senders), recorded: (sender,
    recipients, message)."""

    def __call__(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        chunks: Sequence[bytes],
        sid: str,
        unique: str | None = None,
    ) -> defer.Deferred[None]:
        self.append((mail_from, list(rcpts), b"".join(chunks)))
        return defer.succeed(None)


class Outbound(unittest.TestCase):
    timeout = 60

    def start_network(self) -> dict[str, Peer]:
        dns_port = listen_dns(reactor, "test", ZONE)
        self.addCleanup(dns_port.stopListening)
        self.dns = dns_port.getHost().port
        self.port = common_port([*HOSTS, REFUSING])
        peers = {
            "127.0.0.2": Peer("accept"),
            "127.0.0.3": Peer("defer-once"),
            "127.0.0.4": Peer("reject"),
            "127.0.0.7": Peer("defer"),
        }
        for host in HOSTS:
            listening = listen_peer(reactor, host, self.port, peers.get(host))
            self.addCleanup(listening.stopListening)
        return peers

    async def test_routing_retries_timeouts_and_bounces(self) -> None:
        peers = self.start_network()
        directory = os.path.abspath(self.mktemp())
        config = load(
            write_config(directory, extra=QUEUE_TOML.format(dns=self.dns, port=self.port))
        )
        local = LocalDeliveries()
        service = QueueService(config, local, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.started

        # "." lines just before, at and just after 16 KiB boundaries, where twisted.mail's
        # client would have ended the message.
        body = b"Subject: dots\r\n\r\n"
        for offset in (16383, 2 * 16384, 3 * 16384 + 1):
            body = pad_to(body, offset) + b".\r\n"
        body += b".leading dot\r\nend\r\n"
        sender = "alice@example.test"
        await service.enqueue(sender, ["u1@accept.test", "u2@accept.test"], [body])
        await service.enqueue(sender, ["u@flaky.test"], [b"Subject: flaky\r\n\r\nhi\r\n"])
        await service.enqueue(sender, ["u@reject.test"], [b"Subject: reject\r\n\r\nhi\r\n"])
        await service.enqueue(sender, ["u@backup.test"], [b"Subject: backup\r\n\r\nhi\r\n"])
        fallback = await service.enqueue(
            sender, ["u@fallback.test"], [b"Subject: fallback\r\n\r\nhi\r\n"]
        )
        log: list[str] = []

        def observe(event: dict[str, object]) -> None:
            log.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        silent = await service.enqueue(sender, ["u@silent.test"], [b"Subject: s\r\n\r\nhi\r\n"])
        await service.enqueue(sender, ["u@nullmx.test"], [b"Subject: null\r\n\r\nhi\r\n"])
        await service.enqueue(sender, ["u@amx.test"], [b"Subject: amx\r\n\r\nhi\r\n"])
        # A remote sender's bounce travels through the queue itself, with MAIL FROM:<>.
        await service.enqueue("bob@accept.test", ["x@reject.test"], [b"Subject: r2\r\n\r\nhi\r\n"])

        accept, flaky = peers["127.0.0.2"], peers["127.0.0.3"]

        def subjects() -> list[bytes]:
            return [subject(r.data) for r in accept.received]

        await wait_for(
            lambda: (
                len(local) == 2
                and len(flaky.received) == 1
                and len(accept.received) == 5
                and service.scheduler.entries.keys() == {silent}
                and service.scheduler.entries[silent].attempts >= 1
            )
        )
        dots = accept.received[subjects().index(b"Subject: dots")]
        self.assertTrue(dots.data.endswith(body))  # byte-exact after stuffing, un-stuffing
        self.assertEqual(dots.rcpt_to, ["u1@accept.test", "u2@accept.test"])  # one transaction
        self.assertIn(b"Subject: backup", subjects())
        self.assertIn(b"Subject: fallback", subjects())
        # All three hosts in the first attempt, each logged with its address and reply.
        lines = [line for line in log if line.startswith(f"queue {fallback} to <u@fallback")]
        self.assertRegex(lines[0], r"via down.fallback.test \[127.0.0.6\]: temporary: .*refused")
        self.assertRegex(lines[1], r"via busy.fallback.test \[127.0.0.7\]: temporary: 451 4.3.0")
        self.assertRegex(lines[2], r"via mx.accept.test \[127.0.0.2\]: delivered: 250 2.0.0")
        self.assertRegex(
            lines[3], r"via mx.accept.test \[127.0.0.2\]: 250 2.0.0 .*attempt 1: delivered"
        )
        self.assertEqual(len(lines), 4)
        self.assertEqual(peers["127.0.0.7"].received, [])
        self.assertIn(b"Subject: amx", subjects())
        # The remote sender's bounce came through the queue with MAIL FROM:<>.
        bounce = next(r for r in accept.received if r.mail_from == "")
        self.assertEqual(bounce.rcpt_to, ["bob@accept.test"])
        report = email.message_from_bytes(bounce.data, policy=email.policy.default)
        self.assertEqual([a.addr_spec for a in report["To"].addresses], ["bob@accept.test"])
        self.assertEqual(report["Subject"], "Undelivered Mail Returned to Sender")
        per_message, per_rcpt = report.get_payload()[1].get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; mail.example.test")
        self.assertEqual(
            dict(per_rcpt.items()),
            {
                "Final-Recipient": "rfc822; x@reject.test",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx.reject.test",
                "Diagnostic-Code": "smtp; 550 5.1.1 No such user here",
                "Last-Attempt-Date": per_rcpt["Last-Attempt-Date"],
            },
        )
        returned = report.get_payload()[2]
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        self.assertIn(b"Subject: r2\r\n", returned.get_payload(decode=True))
        self.assertNotIn(b"hi", returned.get_payload(decode=True))
        self.assertEqual(flaky.received[0].rcpt_to, ["u@flaky.test"])

        reports = {}
        for mail_from, rcpts, data in local:
            self.assertEqual((mail_from, rcpts), ("", [sender]))
            parsed = email.message_from_bytes(data, policy=email.policy.default)
            per_rcpt = parsed.get_payload()[1].get_payload()[1]
            reports[per_rcpt["Final-Recipient"]] = dict(per_rcpt.items())
        self.assertEqual(
            reports["rfc822; u@reject.test"],
            {
                "Final-Recipient": "rfc822; u@reject.test",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx.reject.test",
                "Diagnostic-Code": "smtp; 550 5.1.1 No such user here",
                "Last-Attempt-Date": reports["rfc822; u@reject.test"]["Last-Attempt-Date"],
            },
        )
        # RFC 7505: bounced without a connection, so no Remote-MTA.
        self.assertEqual(
            reports["rfc822; u@nullmx.test"],
            {
                "Final-Recipient": "rfc822; u@nullmx.test",
                "Action": "failed",
                "Status": "5.1.10",
                "Diagnostic-Code": "smtp; 556 5.1.10 nullmx.test accepts no mail (null MX)",
                "Last-Attempt-Date": reports["rfc822; u@nullmx.test"]["Last-Attempt-Date"],
            },
        )
        self.assertEqual(len(reports), 2)
        entry = service.scheduler.entries[silent]
        self.assertGreaterEqual(entry.attempts, 1)
        self.assertIn("timeout", entry.recipients[0].diagnostic)

    async def test_delivery_over_ipv6(self) -> None:
        """An MX with only an AAAA record (RFC 5321 §5.1 works for IPv6 as for IPv4)."""
        dns_port = listen_dns(
            reactor, "six.test", {"six.test": [mx(10, "mx.six.test")], "mx.six.test": [aaaa("::1")]}
        )
        self.addCleanup(dns_port.stopListening)
        peer = Peer("accept")
        listening = listen_peer(reactor, "::1", 0, peer)
        self.addCleanup(listening.stopListening)
        directory = os.path.abspath(self.mktemp())
        extra = QUEUE_TOML.format(dns=dns_port.getHost().port, port=listening.getHost().port)
        service = QueueService(load(write_config(directory, extra=extra)), None, reactor)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        await service.enqueue("alice@example.test", ["u@six.test"], [b"Subject: v6\r\n\r\nhi\r\n"])
        await wait_for(lambda: len(peer.received) == 1)
        self.assertEqual(peer.received[0].rcpt_to, ["u@six.test"])

    async def test_8bit_message_to_an_mx_without_8bitmime_goes_in_7_bits(self) -> None:
        """RFC 6152 §3: a peer without 8BITMIME gets the message converted (text as
        quoted-printable, the rest base64); one with 8-bit header fields is returned."""
        dns_port = listen_dns(
            reactor,
            "old.test",
            {"old.test": [mx(10, "mx.old.test")], "mx.old.test": [a("127.0.0.9")]},
        )
        self.addCleanup(dns_port.stopListening)
        peer = Peer("accept", without=frozenset({"8BITMIME", "SMTPUTF8"}))
        listening = listen_peer(reactor, "127.0.0.9", 0, peer)
        self.addCleanup(listening.stopListening)
        extra = QUEUE_TOML.format(dns=dns_port.getHost().port, port=listening.getHost().port)
        local = LocalDeliveries()

        service = QueueService(
            load(write_config(os.path.abspath(self.mktemp()), extra=extra)), local, reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        text = "Grüße aus Köln\r\n".encode() * 3
        message = (
            b"Subject: eight\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text
        )
        await service.enqueue(ALICE, ["u@old.test"], [message])
        await service.enqueue(ALICE, ["v@old.test"], ["Subject: Grüße\r\n\r\nhi\r\n".encode()])
        await wait_for(lambda: len(peer.received) == 1 and len(local) == 1)
        (got,) = peer.received
        self.assertEqual(got.rcpt_to, ["u@old.test"])
        self.assertLess(max(got.data), 0x80)
        self.assertIn(b"Content-Transfer-Encoding: quoted-printable\r\n", got.data)
        parsed = email.message_from_bytes(got.data, policy=email.policy.default)
        self.assertEqual(parsed["Subject"], "eight")
        self.assertEqual(parsed.get_payload(decode=True), text)
        report = email.message_from_bytes(local[0][2], policy=email.policy.default)
        status = report.get_payload()[1].get_payload()[1]
        self.assertEqual(status["Final-Recipient"], "rfc822; v@old.test")
        self.assertEqual(status["Status"], "5.6.3")

    async def test_kill_9_with_messages_spooled(self) -> None:
        """The real server: messages submitted over the MSA are spooled (250), the server
        is killed while deliveries hang in DATA, and after a restart every recipient
        gets exactly one copy."""
        peers = self.start_network()
        accept = peers["127.0.0.2"]
        accept.mode = "hold"
        directory = os.path.abspath(self.mktemp())
        (submission,) = free_ports(1)
        server = ServerProcess(
            directory,
            {"submission": submission},
            extra=QUEUE_TOML.format(dns=self.dns, port=self.port),
        )
        self.addCleanup(server.stop)
        await threads.deferToThread(server.start)
        rcpts = [f"u{i}@accept.test" for i in range(3)]

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", submission, timeout=30) as client:
                client.login(ALICE, PASSWORD)  # plaintext on loopback in the test config
                for i in range(4):
                    message = f"From: {ALICE}\r\nSubject: message {i}\r\n\r\nbody {i}\r\n"
                    client.sendmail(ALICE, rcpts, message.encode())

        await threads.deferToThread(submit)
        await wait_for(lambda: len(accept.held) >= 1)
        await threads.deferToThread(server.kill)  # deliveries are in the middle of DATA
        accept.mode = "accept"
        await threads.deferToThread(server.start)
        state = os.path.join(spool_dir(load(server.config)), "state")
        await wait_for(lambda: os.path.isdir(state) and not os.listdir(state))
        for held in accept.held:
            self.assertFalse(held.called)
        copies: dict[tuple[bytes, str], int] = {}
        for received in accept.received:
            for rcpt in received.rcpt_to:
                key = (subject(received.data), rcpt)
                copies[key] = copies.get(key, 0) + 1
        self.assertEqual(len(copies), 4 * 3)
        self.assertEqual(set(copies.values()), {1})

    async def test_queue_command_on_a_running_server(self) -> None:
        """`mailserver queue` against the real server: list and show what waits; retry
        and delete reach it at once (its scan interval is an hour)."""
        peers = self.start_network()
        flaky, deferring = peers["127.0.0.3"], peers["127.0.0.4"]
        deferring.mode = "defer"
        directory = os.path.abspath(self.mktemp())
        (submission,) = free_ports(1)
        extra = QUEUE_TOML.format(dns=self.dns, port=self.port)
        for fast, slow in (
            ("min_backoff = 0.3", "min_backoff = 3600"),
            ("max_backoff = 0.6", "max_backoff = 3600"),
            ("scan_interval = 0.2", "scan_interval = 3600"),
        ):
            self.assertIn(fast, extra)
            extra = extra.replace(fast, slow)
        server = ServerProcess(directory, {"submission": submission}, extra)
        self.addCleanup(server.stop)
        await threads.deferToThread(server.start)

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", submission, timeout=30) as client:
                client.login(ALICE, PASSWORD)
                for to in ("u@flaky.test", "u@reject.test"):
                    client.sendmail(ALICE, [to], f"From: {ALICE}\r\nSubject: {to}\r\n\r\nhi\r\n")

        await threads.deferToThread(submit)
        spool = Spool(spool_dir(load(server.config)))

        def deferred_once() -> bool:
            entries = [spool.load(i) for i in spool.ids()]
            return len(entries) == 2 and all(e.attempts == 1 for e in entries)

        await wait_for(deferred_once)
        by_rcpt = {spool.load(i).recipients[0].address: i for i in spool.ids()}

        def queue(*args: str) -> subprocess.CompletedProcess[str]:
            command = [os.path.join(os.path.dirname(sys.executable), "mailserver"), "queue"]
            return subprocess.run(
                [*command, *args, "--config", server.config], capture_output=True, text=True
            )

        listing = await threads.deferToThread(queue, "list")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("2 queued", listing.stdout)
        shown = await threads.deferToThread(queue, "show", by_rcpt["u@flaky.test"])
        self.assertIn("mx.flaky.test [127.0.0.3]: 451 4.3.0 Try again later", shown.stdout)

        retried = await threads.deferToThread(queue, "retry", by_rcpt["u@flaky.test"])
        self.assertIn("handed to the running server", retried.stdout)
        await wait_for(lambda: len(flaky.received) == 1)
        deleted = await threads.deferToThread(queue, "delete", by_rcpt["u@reject.test"])
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        await wait_for(lambda: spool.ids() == [])
        self.assertEqual(deferring.received, [])  # deleted without delivery

    async def test_opportunistic_tls_falls_back_to_plaintext_after_a_failed_handshake(
        self,
    ) -> None:
        """RFC 7435: an MX whose STARTTLS is broken still gets the mail, in the clear, in
        the same attempt (with mx_tls = "opportunistic", the default)."""
        dns_port = listen_dns(
            reactor,
            "tls.test",
            {"tls.test": [mx(10, "mx.tls.test")], "mx.tls.test": [a("127.0.0.8")]},
        )
        self.addCleanup(dns_port.stopListening)
        peer = Peer("accept")
        broken = BrokenTLSFirst(peer)
        listening = reactor.listenTCP(0, broken, interface="127.0.0.8")
        self.addCleanup(listening.stopListening)
        extra = QUEUE_TOML.format(dns=dns_port.getHost().port, port=listening.getHost().port)
        for fast, slow in (
            ('mx_tls = "never"', 'mx_tls = "opportunistic"'),
            ("min_backoff = 0.3", "min_backoff = 3600"),  # no second attempt: the
            ("max_backoff = 0.6", "max_backoff = 3600"),  # fallback is in the first
        ):
            self.assertIn(fast, extra)
            extra = extra.replace(fast, slow)
        service = QueueService(
            load(write_config(os.path.abspath(self.mktemp()), extra=extra)), None, reactor
        )  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        queue_id = await service.enqueue(ALICE, ["u@tls.test"], [b"Subject: tls\r\n\r\nhi\r\n"])
        await wait_for(lambda: len(peer.received) == 1)
        self.assertEqual(broken.connections, 2)
        self.assertEqual(peer.received[0].rcpt_to, ["u@tls.test"])
        await wait_for(lambda: queue_id not in service.scheduler.entries)
