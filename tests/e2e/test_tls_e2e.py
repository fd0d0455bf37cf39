"""TLS and authenticated submission against the running server, with real clients."""

from __future__ import annotations

import os
import poplib
import smtplib
import socket
import ssl
import subprocess

from twisted.internet import threads

from tests.e2e.harness import ALICE, BOB, PASSWORD, ServerTestCase
from tests.e2e.test_pull_e2e import tool

MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: over TLS\r\n\r\nhi\r\n"


class TLSEndToEnd(ServerTestCase):
    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.directory, "run", "tls", "ca.pem")
        )
        return ctx

    def inbox(self, address: str) -> list[bytes]:
        out = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(self.maildir(address), sub))):
                with open(os.path.join(self.maildir(address), sub, name), "rb") as f:
                    out.append(f.read())
        return out

    async def test_submission_with_starttls_and_implicit_tls(self) -> None:
        await self.start_server()

        def submit() -> None:
            with smtplib.SMTP("localhost", self.ports["submission"], timeout=30) as client:
                client.ehlo()
                client.starttls(context=self.context())
                client.ehlo()
                self.assertIn("auth", client.esmtp_features)
                client.login(ALICE, PASSWORD)
                client.sendmail(ALICE, [BOB], MESSAGE)
            with smtplib.SMTP_SSL(
                "localhost", self.ports["submissions"], context=self.context(), timeout=30
            ) as client:
                client.login(ALICE, PASSWORD)
                client.sendmail(ALICE, [BOB], MESSAGE.replace(b"hi", b"implicit"))

        await threads.deferToThread(submit)
        messages = self.inbox(BOB)
        self.assertEqual(len(messages), 2)
        (first,) = [m for m in messages if m.endswith(b"\r\nhi\r\n")]
        self.assertIn(b"with ESMTPSA", first)
        self.assertIn(b"Message-ID: <", first)  # added by the MSA (RFC 6409 §8.3)
        self.assertIn(b"Date: ", first)
        self.assertTrue(any(m.endswith(b"\r\nimplicit\r\n") for m in messages))

    async def test_msa_rules(self) -> None:
        await self.start_server()

        def scenario() -> dict:
            results = {}
            with smtplib.SMTP("localhost", self.ports["submission"], timeout=30) as client:
                client.starttls(context=self.context())
                client.ehlo()
                results["mail_before_auth"] = client.mail(ALICE)
                client.rset()
                client.login(ALICE, PASSWORD)
                results["foreign_sender"] = client.mail(BOB)
                client.rset()
                client.mail(ALICE)
                results["remote_rcpt"] = client.rcpt("someone@elsewhere.example")
                results["local_rcpt"] = client.rcpt(BOB)
                results["forged_from"] = client.data(MESSAGE.replace(b"From: alice", b"From: bob"))
                client.rset()
                client.mail("postmaster@example.test")  # an alias that delivers to alice
                client.rcpt(BOB)
                results["alias_sender"] = client.data(
                    MESSAGE.replace(b"From: alice", b"From: postmaster")
                )
            return results

        r = await threads.deferToThread(scenario)
        self.assertEqual(r["mail_before_auth"][0], 530)
        self.assertEqual(r["foreign_sender"], (553, b"5.7.1 Sender address not owned by user"))
        self.assertEqual(r["remote_rcpt"][0], 250)  # queued for the outbound MTA
        self.assertEqual(r["local_rcpt"][0], 250)
        self.assertEqual(r["forged_from"][0], 550)
        self.assertEqual(r["alias_sender"][0], 250)
        self.assertEqual(len(self.inbox(BOB)), 1)

    async def test_mta_never_offers_auth_and_discards_injected_commands(self) -> None:
        await self.start_server()

        def scenario() -> tuple[dict, bytes]:
            raw = socket.create_connection(("127.0.0.1", self.ports["smtp"]), timeout=30)
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"EHLO c.example\r\n")
            while f.readline()[3:4] == b"-":
                pass
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
            self.assertEqual(f.readline(), b"220 2.0.0 Ready to start TLS\r\n")
            tls = self.context().wrap_socket(raw, server_hostname="localhost")
            tf = tls.makefile("rb")
            tls.sendall(b"EHLO c.example\r\n")
            features = []
            while True:
                line = tf.readline()
                features.append(line[4:].strip())
                if line[3:4] == b" ":
                    break
            tls.sendall(b"RCPT TO:<alice@example.test>\r\nQUIT\r\n")
            reply = tf.readline()
            tls.close()
            return features, reply

        features, reply = await threads.deferToThread(scenario)
        self.assertFalse(any(f.startswith(b"AUTH") for f in features))
        self.assertNotIn(b"STARTTLS", features)
        self.assertEqual(reply, b"503 5.5.1 Need MAIL before RCPT\r\n")

    async def test_pop3_over_tls_and_stls(self) -> None:
        await self.start_server()

        def scenario() -> tuple[bytes, bytes]:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                client.sendmail("x@example.org", [ALICE], b"Subject: pop\r\n\r\nbody\r\n")
            p = poplib.POP3_SSL("localhost", self.ports["pop3s"], context=self.context())
            p.user(ALICE)
            stat = p.pass_(PASSWORD)
            p.quit()
            p = poplib.POP3("localhost", self.ports["pop3"])
            p.stls(context=self.context())
            p.user(ALICE)
            stat2 = p.pass_(PASSWORD)
            p.quit()
            return stat, stat2

        stat, stat2 = await threads.deferToThread(scenario)
        self.assertTrue(stat.startswith(b"+OK 1 messages"))
        self.assertTrue(stat2.startswith(b"+OK 1 messages"))

    async def test_swaks_curl_and_openssl(self) -> None:
        swaks, curl, openssl = tool("swaks"), tool("curl"), tool("openssl")
        await self.start_server()
        ca = os.path.join(self.directory, "run", "tls", "ca.pem")

        def run(argv: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

        def scenario() -> dict:
            results = {}
            results["swaks"] = run(
                [
                    swaks,
                    "--server",
                    f"localhost:{self.ports['submission']}",
                    "--tls",
                    "--tls-verify",
                    "--tls-ca-path",
                    ca,
                    "--auth",
                    "PLAIN",
                    "--auth-user",
                    ALICE,
                    "--auth-password",
                    PASSWORD,
                    "--from",
                    ALICE,
                    "--to",
                    BOB,
                    "--header",
                    "From: alice@example.test",
                ]
            )
            results["curl_pop3s"] = run(
                [
                    curl,
                    "-sS",
                    "--cacert",
                    ca,
                    "-u",
                    f"{BOB}:{PASSWORD}",
                    f"pop3s://localhost:{self.ports['pop3s']}/1",
                ]
            )
            results["curl_pop3_stls"] = run(
                [
                    curl,
                    "-sS",
                    "--ssl-reqd",
                    "--cacert",
                    ca,
                    "-u",
                    f"{BOB}:{PASSWORD}",
                    f"pop3://localhost:{self.ports['pop3']}/1",
                ]
            )
            for version in ("-tls1", "-tls1_1", "-tls1_2", "-tls1_3"):
                # The client is told to allow old versions, so a refusal is the server's.
                results[version] = run(
                    [
                        openssl,
                        "s_client",
                        version,
                        "-cipher",
                        "DEFAULT:@SECLEVEL=0",
                        "-connect",
                        f"127.0.0.1:{self.ports['submissions']}",
                        "-CAfile",
                        ca,
                        "-verify_return_error",
                        "-servername",
                        "localhost",
                    ]
                )
            return results

        r = await threads.deferToThread(scenario)
        self.assertEqual(r["swaks"].returncode, 0, r["swaks"].stdout)
        (stored,) = self.inbox(BOB)
        self.assertEqual(r["curl_pop3s"].stdout, stored, r["curl_pop3s"].stderr)
        self.assertEqual(r["curl_pop3_stls"].stdout, stored, r["curl_pop3_stls"].stderr)
        for old in ("-tls1", "-tls1_1"):
            self.assertNotEqual(r[old].returncode, 0)
            self.assertIn(b"alert protocol version", r[old].stdout + r[old].stderr)
        self.assertEqual(r["-tls1_2"].returncode, 0, r["-tls1_2"].stdout[-500:])
        self.assertEqual(r["-tls1_3"].returncode, 0)
        self.assertIn(b"New, TLSv1.3", r["-tls1_3"].stdout)
        self.assertIn(b"Verification: OK", r["-tls1_3"].stdout)


class IMAPOverTLS(ServerTestCase):
    async def test_imaps_starttls_and_curl(self) -> None:
        import imaplib

        curl = tool("curl")
        await self.start_server()
        ca = os.path.join(self.directory, "run", "tls", "ca.pem")
        context = ssl.create_default_context(cafile=ca)

        def scenario() -> dict:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                client.sendmail("x@example.org", [ALICE], b"Subject: imap tls\r\n\r\nbody\r\n")
            results = {}
            m = imaplib.IMAP4_SSL("localhost", self.ports["imaps"], ssl_context=context)
            m.login(ALICE, PASSWORD)
            m.select("INBOX")
            results["imaps"] = m.fetch("1", "(BODY.PEEK[])")[1][0][1]
            m.logout()
            m = imaplib.IMAP4("localhost", self.ports["imap"])
            results["before"] = m.capabilities
            m.starttls(ssl_context=context)
            m.login(ALICE, PASSWORD)
            m.select("INBOX")
            results["starttls"] = m.fetch("1", "(BODY.PEEK[])")[1][0][1]
            m.logout()
            results["curl"] = subprocess.run(
                [
                    curl,
                    "-sS",
                    "--ssl-reqd",
                    "--cacert",
                    ca,
                    "-u",
                    f"{ALICE}:{PASSWORD}",
                    f"imap://localhost:{self.ports['imap']}/INBOX;UID=1",
                ],
                capture_output=True,
                timeout=60,
            ).stdout
            return results

        r = await threads.deferToThread(scenario)
        stored = self.inbox_message(ALICE)
        self.assertEqual(r["imaps"], stored)
        self.assertEqual(r["starttls"], stored)
        self.assertEqual(r["curl"], stored)
        self.assertIn("STARTTLS", r["before"])

    def inbox_message(self, address: str) -> bytes:
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.maildir(address), sub)):
                with open(os.path.join(self.maildir(address), sub, name), "rb") as f:
                    return f.read()
        raise AssertionError("no message")
