"""The MTA on a real loopback port, driven by smtplib and swaks."""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import socket
import subprocess

from twisted.internet import threads

from tests.e2e.harness import ALICE, BOB, ServerTestCase


def delivered(path: str) -> list[bytes]:
    out = []
    for sub in ("new", "cur"):
        directory = os.path.join(path, sub)
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                out.append(f.read())
    return out


def body_of(stored: bytes) -> bytes:
    """The message as the client sent it: what follows our Return-Path and Received."""
    assert stored.startswith(b"Return-Path: <")
    received = stored.index(b"Received: ")
    end = stored.index(b"\r\n", stored.index(b";\r\n\t", received) + 4)
    return stored[end + 2 :]


class SMTPEndToEnd(ServerTestCase):
    def send(self, message: bytes, to: list[str], sender: str = "someone@example.org") -> dict:
        def go() -> dict:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                return client.sendmail(sender, to, message)

        return threads.deferToThread(go)

    async def test_smtplib_delivers_byte_exact(self) -> None:
        await self.start_server()
        message = b"From: x@example.org\r\nSubject: t\r\n\r\n.\r\n..two\r\nend\r\n"
        # smtplib dot-stuffs; the store must hold the original lines.
        await self.send(message, [ALICE])
        (stored,) = delivered(self.maildir(ALICE))
        self.assertTrue(stored.startswith(b"Return-Path: <someone@example.org>\r\n"))
        self.assertEqual(body_of(stored), message)

    async def test_alias_subaddress_and_refusals(self) -> None:
        await self.start_server()
        refused = await self.send(
            b"Subject: x\r\n\r\nhi\r\n",
            ["office@example.test", "alice+news@example.test", "nobody@example.test"],
        )
        self.assertEqual(refused, {"nobody@example.test": (550, b"5.1.1 No such user here")})
        self.assertEqual(len(delivered(self.maildir(ALICE))), 1)  # one copy for alice
        self.assertEqual(len(delivered(self.maildir(BOB))), 1)

        with self.assertRaises(smtplib.SMTPRecipientsRefused) as e:
            await self.send(b"Subject: x\r\n\r\nhi\r\n", ["someone@elsewhere.example"])
        self.assertEqual(
            e.exception.recipients["someone@elsewhere.example"], (550, b"5.7.1 Relaying denied")
        )

    async def test_smtputf8_to_a_utf8_alias_with_smtplib_then_imap(self) -> None:
        """RFC 6531 end to end: smtplib sends UTF-8 paths and a UTF-8 header with
        SMTPUTF8; without it the UTF-8 recipient is refused; imaplib reads it back."""
        await self.start_server()
        message = "From: pelé@bücher.example\r\nSubject: Grüße\r\n\r\nhallo\r\n".encode()

        def go() -> tuple[dict, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                client.ehlo()
                self.assertTrue(client.has_extn("smtputf8"))
                refused = client.sendmail(
                    "pelé@bücher.example", ["büro@example.test"], message, ["SMTPUTF8"]
                )
                client.command_encoding = "utf-8"
                client.putcmd("MAIL", "FROM:<pelé@bücher.example>")
                without = client.getreply()
                return refused, without

        refused, without = await threads.deferToThread(go)
        self.assertEqual(refused, {})
        self.assertEqual(without[0], 553)
        self.assertTrue(without[1].startswith(b"5.6.7 "))
        (stored,) = delivered(self.maildir(ALICE))
        self.assertTrue(stored.startswith("Return-Path: <pelé@xn--bcher-kva.example>\r\n".encode()))
        self.assertIn(b" with UTF8SMTP id ", stored)
        self.assertIn("for <büro@example.test>;".encode(), stored)
        self.assertEqual(body_of(stored), message)

        def fetch() -> bytes:
            with imaplib.IMAP4("127.0.0.1", self.ports["imap"]) as imap:
                imap.login(ALICE, "secret")
                imap.select("INBOX")
                _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                return data[0][1]

        self.assertEqual(await threads.deferToThread(fetch), "Subject: Grüße\r\n\r\n".encode())

    async def test_ten_mebibyte_eight_bit_message(self) -> None:
        await self.start_server()
        line = "Grüße aus Köln, ünïcödé ✓ ".encode() * 3 + b"\r\n"
        message = b"Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        message += line * (10 * 1024 * 1024 // len(line) + 1)
        self.assertGreater(len(message), 10 * 1024 * 1024)

        def go() -> None:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=60) as client:
                client.ehlo()
                self.assertIn("8bitmime", client.esmtp_features)
                client.sendmail("s@example.org", [ALICE], message, mail_options=["BODY=8BITMIME"])

        await threads.deferToThread(go)
        (stored,) = delivered(self.maildir(ALICE))
        self.assertEqual(body_of(stored), message)

    async def test_pipelined_session_over_a_socket(self) -> None:
        await self.start_server()

        def go() -> bytes:
            with socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=30) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"EHLO client.example\r\n")
                while f.readline()[3:4] == b"-":
                    pass
                s.sendall(
                    b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"RCPT TO:<bob@example.test>\r\nDATA\r\n"
                )
                replies = [f.readline() for _ in range(4)]
                s.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                replies += [f.readline(), f.readline()]
                return b"".join(replies)

        replies = await threads.deferToThread(go)
        codes = [line[:3] for line in replies.splitlines()]
        self.assertEqual(codes, [b"250", b"250", b"250", b"354", b"250", b"221"])
        self.assertEqual(len(delivered(self.maildir(BOB))), 1)

    async def test_swaks(self) -> None:
        if shutil.which("swaks") is None:
            self.fail("swaks is not installed (make test-tools installs it)")
        await self.start_server()
        result = await threads.deferToThread(
            subprocess.run,
            [
                "swaks",
                "--server",
                f"127.0.0.1:{self.ports['smtp']}",
                "--to",
                ALICE,
                "--from",
                "teacher@example.org",
                "--pipeline",
                "--header",
                "Subject: swaks",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        (stored,) = delivered(self.maildir(ALICE))
        self.assertIn(b"Subject: swaks", stored)

    async def test_curl_sends_utf8_addresses_with_smtputf8(self) -> None:
        """curl speaks SMTPUTF8 when the server announces it: its MAIL carries the
        parameter and the UTF-8 recipient (an alias of alice) is accepted."""
        curl = shutil.which("curl")
        if curl is None:
            self.fail("curl is not installed (make test-tools installs it)")
        await self.start_server()
        message = "From: pelé@example.org\r\nSubject: Grüße\r\n\r\nhallo\r\n".encode()
        result = await threads.deferToThread(
            subprocess.run,
            [
                curl,
                "-sv",
                "--url",
                f"smtp://127.0.0.1:{self.ports['smtp']}",
                "--mail-from",
                "pelé@example.org",
                "--mail-rcpt",
                "büro@example.test",
                "--upload-file",
                "-",
            ],
            input=message,
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode(errors="replace"))
        self.assertIn("> MAIL FROM:<pelé@example.org> SMTPUTF8\r\n".encode(), result.stderr)
        (stored,) = delivered(self.maildir(ALICE))
        self.assertEqual(body_of(stored), message)
        self.assertIn("for <büro@example.test>;".encode(), stored)
