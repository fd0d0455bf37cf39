"""A tarpitting MX and a nameserver that never answers do not slow anything else: while
they hold the queue's connections and lookups, local delivery and delivery to another
domain go through."""

from __future__ import annotations

import os
import smtplib

from twisted.internet import reactor, threads

from tests.e2e.dns_peer import ZoneAuthority, a, listen_authority, mx
from tests.e2e.harness import ALICE, ServerTestCase
from tests.e2e.smtp_peers import Peer, Tarpit, common_port, listen_peer
from tests.e2e.test_outbound_e2e import wait_for

HOLES = 12  # more lookups at once than the reactor's thread pool has threads (10)

ISOLATION_TOML = """
[queue]
nameservers = ["127.0.0.1:{dns}"]
mx_port = {port}
mx_tls = "never"
min_backoff = 3600
max_backoff = 3600
delay_warning = 0
max_deliveries = 20
max_deliveries_per_domain = 2
dns_timeout = 60
greeting_timeout = 120
"""


class Isolation(ServerTestCase):
    timeout = 60

    async def test_tarpit_and_hanging_dns_do_not_slow_local_or_other_mail(self) -> None:
        zone = ZoneAuthority(
            "test",
            {
                "accept.test": [mx(10, "mx.accept.test")],
                "mx.accept.test": [a("127.0.0.2")],
                "tarpit.test": [mx(10, "mx.tarpit.test")],
                "mx.tarpit.test": [a("127.0.0.5")],
            },
            hold=".hole.test",
        )
        dns_port = listen_authority(reactor, zone)
        self.addCleanup(dns_port.stopListening)
        port = common_port(["127.0.0.2", "127.0.0.5"])
        accept, tarpit = Peer("accept"), Tarpit()
        for listening in (
            listen_peer(reactor, "127.0.0.2", port, accept),
            reactor.listenTCP(port, tarpit, interface="127.0.0.5"),
        ):
            self.addCleanup(listening.stopListening)
        self.addCleanup(tarpit.close_all)
        self.addCleanup(zone.release)
        self.extra_config = ISOLATION_TOML.format(dns=dns_port.getHost().port, port=port)
        await self.start_server()
        queue = self.server.queue
        await queue.started

        stuck = []
        for i in range(4):
            stuck.append(
                await queue.enqueue(
                    ALICE, ["u@tarpit.test"], [f"Subject: t{i}\r\n\r\nx\r\n".encode()]
                )
            )
        for i in range(HOLES):
            stuck.append(
                await queue.enqueue(ALICE, [f"u@d{i}.hole.test"], [b"Subject: h\r\n\r\nx\r\n"])
            )
        # Every lookup for the hanging domains is under way, and the tarpit holds as
        # many connections as one domain may have.
        await wait_for(lambda: len({name for name, _ in zone.held}) >= HOLES and tarpit.open() == 2)

        await queue.enqueue(ALICE, ["u@accept.test"], [b"Subject: other domain\r\n\r\nx\r\n"])

        def submit_locally() -> None:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                client.sendmail("x@remote.example", [ALICE], b"Subject: local\r\n\r\nhi\r\n")

        await threads.deferToThread(submit_locally)  # the 250 means it is in the Maildir
        self.assertEqual(len(os.listdir(os.path.join(self.maildir(ALICE), "new"))), 1)
        await wait_for(lambda: len(accept.received) == 1)
        # ...while the slow ones are all still stuck, none of them tried to the end.
        self.assertEqual(tarpit.open(), 2)
        self.assertEqual(len(tarpit.connections), 2)  # the other two wait their turn
        for queue_id in stuck:
            self.assertEqual(queue.scheduler.entries[queue_id].attempts, 0)

        # Let them go: the hanging domains turn out not to exist (reports to alice, a
        # local sender), the tarpit hangs up (tried again in an hour).
        zone.release()
        tarpit.close_all()
        await wait_for(
            lambda: (
                all(queue.scheduler.entries[i].attempts >= 1 for i in stuck[:4])
                and not any(i in queue.scheduler.entries for i in stuck[4:])
            )
        )
