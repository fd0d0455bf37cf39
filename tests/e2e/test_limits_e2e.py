"""Connection limits on the real listeners: the connection over the per-client limit
gets the protocol's refusal (SMTP 421 4.7.0, IMAP BYE, POP3 -ERR), also over TLS."""

from __future__ import annotations

import os
import socket
import ssl

from twisted.internet import threads

from tests.e2e.harness import ServerTestCase

# The first line each listener sends: a session's greeting, or the refusal.
GREETING = {"smtp": b"220 ", "imap": b"* OK ", "pop3": b"+OK "}
REFUSAL = {
    "smtp": b"421 4.7.0 Too many connections, try again later\r\n",
    "imap": b"* BYE Too many connections, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
}
KIND = {
    "smtp": "smtp",
    "submissions": "smtp",
    "imap": "imap",
    "imaps": "imap",
    "pop3": "pop3",
    "pop3s": "pop3",
}


class ConnectionLimits(ServerTestCase):
    extra_config = "\n".join(
        f"[{section}]\nmax_connections_per_client = 1\n" for section in ("smtp", "imap", "pop3")
    )

    def open(self, listener: str) -> tuple[socket.socket, bytes]:
        """Connect (with TLS on the implicit-TLS ports); the socket and its first line."""
        sock = socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=10)
        if listener.endswith("s"):
            context = ssl.create_default_context(
                cafile=os.path.join(self.directory, "run", "tls", "ca.pem")
            )
            sock = context.wrap_socket(sock, server_hostname="localhost")
        line = sock.makefile("rb").readline()
        return sock, line

    def check(self, listener: str) -> None:
        kind = KIND[listener]
        first, greeting = self.open(listener)
        try:
            self.assertTrue(greeting.startswith(GREETING[kind]), greeting)
            second, refusal = self.open(listener)
            self.assertEqual(refusal, REFUSAL[kind])
            # ...and the server hangs up on it.
            self.assertEqual(second.recv(100), b"")
            second.close()
        finally:
            first.close()

    async def test_one_connection_per_client(self) -> None:
        await self.start_server()
        for listener in KIND:
            await threads.deferToThread(self.check, listener)


class MaildropLock(ServerTestCase):
    """RFC 2449 §8.1.2: one session per maildrop, whichever POP3 port it came by."""

    def scenario(self) -> tuple[bytes, bytes]:
        plain = socket.create_connection(("127.0.0.1", self.ports["pop3"]), timeout=10)
        context = ssl.create_default_context(
            cafile=os.path.join(self.directory, "run", "tls", "ca.pem")
        )
        with (
            plain,
            context.wrap_socket(
                socket.create_connection(("127.0.0.1", self.ports["pop3s"]), timeout=10),
                server_hostname="localhost",
            ) as tls,
        ):
            first, second = plain.makefile("rb"), tls.makefile("rb")
            first.readline()
            second.readline()
            plain.sendall(b"USER alice@example.test\r\nPASS secret\r\n")
            first.readline()
            logged_in = first.readline()
            tls.sendall(b"USER alice@example.test\r\nPASS secret\r\n")
            second.readline()
            return logged_in, second.readline()

    async def test_pop3_and_pop3s_share_the_lock(self) -> None:
        await self.start_server()
        logged_in, refused = await threads.deferToThread(self.scenario)
        self.assertTrue(logged_in.startswith(b"+OK "), logged_in)
        self.assertEqual(refused, b"-ERR [IN-USE] maildrop already locked\r\n")
