"""The whole outbound path in one server: a user submits over the MSA, the queue finds the
recipient's MX in a loopback DNS and hands the message to the peer there; a local
NOTIFY=SUCCESS gets a delivery report."""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import ssl
import time

from twisted.internet import reactor, task, threads

from mailserver.trace import TraceEvent
from tests.e2e.dns_peer import a, listen_dns, mx
from tests.e2e.harness import ALICE, BOB, PASSWORD, ServerTestCase
from tests.e2e.smtp_peers import Peer, common_port, listen_peer
from tests.e2e.test_outbound_e2e import QUEUE_TOML

MESSAGE = (
    b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\nSubject: out\r\n\r\n"
    b".\r\nline after a lone dot\r\n"
)


class RelayEndToEnd(ServerTestCase):
    async def start_with_peer(self) -> Peer:
        port = common_port(["127.0.0.2"])
        dns = listen_dns(
            reactor,
            "remote.test",
            {"remote.test": [mx(10, "mx.remote.test")], "mx.remote.test": [a("127.0.0.2")]},
        )
        self.addCleanup(dns.stopListening)
        peer = Peer()
        listening = listen_peer(reactor, "127.0.0.2", port, peer)
        self.addCleanup(listening.stopListening)
        self.extra_config = QUEUE_TOML.format(dns=dns.getHost().port, port=port)
        await self.start_server()
        return peer

    def submit(self, to: list[str], rcpt_options: list[str] = ()) -> None:  # type: ignore[assignment]
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.directory, "run", "tls", "ca.pem")
        )
        with smtplib.SMTP_SSL("localhost", self.ports["submissions"], context=ctx, timeout=30) as c:
            c.login(ALICE, PASSWORD)
            c.ehlo()
            assert "dsn" in c.esmtp_features
            c.sendmail(
                ALICE, to, MESSAGE, mail_options=["RET=HDRS"], rcpt_options=list(rcpt_options)
            )

    async def test_submission_to_a_remote_domain_reaches_its_mx(self) -> None:
        self.trace = True
        peer = await self.start_with_peer()
        assert self.server.tracer is not None
        events: list[TraceEvent] = []
        self.server.tracer.sinks.append(events.append)
        await threads.deferToThread(self.submit, ["carol@remote.test"])
        deadline = time.monotonic() + 20
        while not peer.received and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        (received,) = peer.received
        self.assertEqual(received.mail_from, ALICE)
        self.assertEqual(received.rcpt_to, ["carol@remote.test"])
        # Dot-stuffed on the way out, unstuffed by the peer: byte-exact.
        self.assertTrue(received.data.endswith(b"\r\n\r\n.\r\nline after a lone dot\r\n"))
        self.assertIn(b"Message-ID: <", received.data)
        # Trace mode shows the queue's side of the conversation as the "OUT" role.
        outbound = [(e.dir, e.line) for e in events if e.role == "OUT"]
        self.assertTrue(
            any(d == "C" and line.startswith(f"MAIL FROM:<{ALICE}>") for d, line in outbound)
        )
        self.assertTrue(any(d == "S" and line.startswith("220 ") for d, line in outbound))
        self.assertTrue(any(d == "*" and "connection to 127.0.0.2" in line for d, line in outbound))

    async def test_notify_success_for_a_local_recipient(self) -> None:
        await self.start_with_peer()
        await threads.deferToThread(
            self.submit, [BOB], ["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@example.test"]
        )
        names = []
        deadline = time.monotonic() + 10
        while len(names) < 1 and time.monotonic() < deadline:
            names = os.listdir(os.path.join(self.maildir(ALICE), "new"))
            await task.deferLater(reactor, 0.05, lambda: None)
        (name,) = names
        with open(os.path.join(self.maildir(ALICE), "new", name), "rb") as f:
            report = email.message_from_bytes(f.read(), policy=email.policy.compat32)
        self.assertEqual(report["Return-Path"], "<>")
        self.assertEqual(report.get_content_type(), "multipart/report")
        status = report.get_payload(1)
        fields = status.get_payload()
        self.assertEqual(fields[1]["Action"], "delivered")
        self.assertEqual(fields[1]["Final-Recipient"], "rfc822; bob@example.test")
        self.assertEqual(fields[1]["Original-Recipient"], "rfc822; bob@example.test")
        self.assertEqual(fields[1]["Status"], "2.0.0")
