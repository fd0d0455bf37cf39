"""Smarthost mode end to end: an office server relays everything through a provider's
submission port, with STARTTLS required, the provider's certificate verified and AUTH
with the account's password (the "app password" case). The provider is a second
instance of our own server."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable

from twisted.internet import reactor, task
from twisted.trial import unittest

from mailserver.config import load
from mailserver.service import MailServer
from mailserver.trace import TraceEvent, format_event
from tests.e2e.dns_peer import a, listen_dns, mx
from tests.e2e.harness import ALICE, BOB, PASSWORD, write_config

MESSAGE = (
    b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: via smarthost\r\n\r\nhi\r\n"
)


class Smarthost(unittest.TestCase):
    timeout = 60

    async def start(
        self, directory: str, domain: str, extra: str = "", trace: bool = False
    ) -> MailServer:
        config = load(write_config(directory, extra=extra, domain=domain, trace=trace))
        server = MailServer(config)
        server.startService()
        self.addCleanup(server.stopService)
        for listeners in server.listeners.values():
            await listeners[0].listening
        return server

    async def wait_until(self, condition: Callable[[], object], what: str) -> None:
        """Let the reactor run until ``condition`` holds; fail after 20 s with ``what``."""
        deadline = time.monotonic() + 20
        while not condition():
            self.assertLess(time.monotonic(), deadline, what)
            await task.deferLater(reactor, 0.05, lambda: None)

    async def relay_through(
        self, listener: str, tls: str, events: list[TraceEvent] | None = None
    ) -> bytes:
        """Relay one message through the provider's ``listener``; the stored copy. With
        ``events``, the office runs in trace mode and its trace events go there."""
        provider_dir = os.path.abspath(self.mktemp())
        provider = await self.start(provider_dir, "example.test")
        port = provider.listeners[listener][0].port.getHost().port
        # The office's own domain is office.test: example.test is remote for it.
        office = await self.start(
            os.path.abspath(self.mktemp()),
            "office.test",
            extra=(
                "[queue]\n"
                f'relay_host = "localhost:{port}"\n'
                f'relay_tls = "{tls}"\n'
                f'relay_username = "{ALICE}"\n'
                f'relay_password = "{PASSWORD}"\n'
                f'tls_ca_file = "{provider_dir}/run/tls/ca.pem"\n'
                "min_backoff = 0.5\nscan_interval = 0.2\n"
            ),
            trace=events is not None,
        )
        if events is not None:
            assert office.tracer is not None
            office.tracer.sinks.append(events.append)
        await office.queue.started
        await office.queue.enqueue(ALICE, [BOB], [MESSAGE])
        inbox = os.path.join(provider_dir, "run", "Maildir", "example.test", "bob", "new")
        await self.wait_until(
            lambda: os.path.isdir(inbox) and os.listdir(inbox), "not relayed in time"
        )
        (name,) = os.listdir(inbox)
        with open(os.path.join(inbox, name), "rb") as f:
            stored = f.read()
        self.assertTrue(stored.endswith(MESSAGE))
        return stored

    async def test_office_relays_through_the_providers_submission_port(self) -> None:
        events: list[TraceEvent] = []
        stored = await self.relay_through("submission", "starttls", events)
        # The provider saw TLS and AUTH (RFC 3848 "ESMTPSA").
        self.assertIn(b"with ESMTPSA", stored)
        # Trace mode shows the office's queue logging in as OUT, the password masked.
        outbound = [format_event(e) + e.to_json() for e in events if e.role == "OUT"]
        self.assertTrue(any(f"AUTH PLAIN *** (PLAIN authcid {ALICE}" in x for x in outbound))
        for secret in (PASSWORD, base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()):
            self.assertFalse([x for x in outbound if secret in x])

    async def test_relay_over_implicit_tls(self) -> None:
        """RFC 8314 §3.3: the provider's port 465, TLS from the first byte."""
        stored = await self.relay_through("submissions", "implicit")
        self.assertIn(b"with ESMTPSA", stored)

    async def test_an_unverified_certificate_stops_the_relay_before_auth(self) -> None:
        """The provider's certificate does not chain to a trusted root (no tls_ca_file:
        the system's store, which does not know the dev CA): nothing is sent, not even
        the password; the message waits in the queue with the reason."""
        provider_dir = os.path.abspath(self.mktemp())
        provider = await self.start(provider_dir, "example.test")
        port = provider.listeners["submission"][0].port.getHost().port
        office = await self.start(
            os.path.abspath(self.mktemp()),
            "office.test",
            extra=(
                "[queue]\n"
                f'relay_host = "localhost:{port}"\n'
                f'relay_username = "{ALICE}"\n'
                f'relay_password = "{PASSWORD}"\n'
                "min_backoff = 3600\nmax_backoff = 3600\n"
            ),
        )
        await office.queue.started
        queue_id = await office.queue.enqueue(ALICE, [BOB], [MESSAGE])
        entries = office.queue.scheduler.entries
        await self.wait_until(lambda: entries[queue_id].attempts >= 1, "no attempt in time")
        (rcpt,) = entries[queue_id].recipients
        self.assertEqual(rcpt.status, "pending")
        self.assertIn("certificate verify failed", rcpt.diagnostic)
        inbox = os.path.join(provider_dir, "run", "Maildir", "example.test", "bob", "new")
        self.assertFalse(os.path.isdir(inbox) and os.listdir(inbox))

    async def deliver_to_verified_mx(self, mx_name: str) -> tuple[str, str, MailServer]:
        """The office sends to bob@example.test, whose MX is ``mx_name`` (on 127.0.0.1:
        the provider's port 25), with mx_tls = "verify"; returns the provider's inbox,
        the queue id and the office."""
        provider_dir = os.path.abspath(self.mktemp())
        provider = await self.start(provider_dir, "example.test")
        port = provider.listeners["smtp"][0].port.getHost().port
        dns_port = listen_dns(
            reactor, "example.test", {"example.test": [mx(10, mx_name)], mx_name: [a("127.0.0.1")]}
        )
        self.addCleanup(dns_port.stopListening)
        office = await self.start(
            os.path.abspath(self.mktemp()),
            "office.test",
            extra=(
                "[queue]\n"
                f'nameservers = ["127.0.0.1:{dns_port.getHost().port}"]\n'
                f"mx_port = {port}\n"
                'mx_tls = "verify"\n'
                f'tls_ca_file = "{provider_dir}/run/tls/ca.pem"\n'
                "min_backoff = 3600\nmax_backoff = 3600\n"
            ),
        )
        await office.queue.started
        queue_id = await office.queue.enqueue(ALICE, [BOB], [MESSAGE])
        inbox = os.path.join(provider_dir, "run", "Maildir", "example.test", "bob", "new")
        return inbox, queue_id, office

    async def test_mx_tls_verify_delivers_over_verified_tls(self) -> None:
        # The provider's certificate names its host name, mail.example.test.
        inbox, _, _ = await self.deliver_to_verified_mx("mail.example.test")
        await self.wait_until(
            lambda: os.path.isdir(inbox) and os.listdir(inbox), "not delivered in time"
        )
        (name,) = os.listdir(inbox)
        with open(os.path.join(inbox, name), "rb") as f:
            stored = f.read()
        self.assertIn(b"with ESMTPS", stored)  # RFC 3848: TLS, no AUTH
        self.assertTrue(stored.endswith(MESSAGE))

    async def test_mx_tls_verify_refuses_a_certificate_for_another_name(self) -> None:
        inbox, queue_id, office = await self.deliver_to_verified_mx("mx.example.test")
        entries = office.queue.scheduler.entries
        await self.wait_until(lambda: entries[queue_id].attempts >= 1, "no attempt in time")
        (rcpt,) = entries[queue_id].recipients
        self.assertEqual(rcpt.status, "pending")
        self.assertIn("mx.example.test [127.0.0.1]", rcpt.remote)
        self.assertIn("DNSMismatch", rcpt.diagnostic)  # no fallback to plaintext here
        self.assertFalse(os.path.isdir(inbox) and os.listdir(inbox))
