"""With plaintext logins off (production), no password crosses a clear connection:
IMAP says LOGINDISABLED, POP3 and the MSA refuse, and all of them work after STARTTLS."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import ssl

from twisted.internet import threads

from tests.e2e.harness import ALICE, PASSWORD, ServerTestCase


class NoCleartextLogins(ServerTestCase):
    plaintext_on_loopback = False

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(
            cafile=os.path.join(self.directory, "run", "tls", "ca.pem")
        )

    def imap(self) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
        with imaplib.IMAP4("localhost", self.ports["imap"]) as m:
            before = m.capabilities
            try:
                m.login(ALICE, PASSWORD)
                refused = "logged in"
            except imaplib.IMAP4.error as e:
                refused = str(e)
            m.starttls(self.context())
            after = m.capabilities
            m.login(ALICE, PASSWORD)
            return before, refused, after

    def pop3(self) -> tuple[dict, str, bytes]:
        client = poplib.POP3("localhost", self.ports["pop3"])
        try:
            before = client.capa()
            try:
                client.user(ALICE)
                refused = "accepted"
            except poplib.error_proto as e:
                refused = str(e)
            client.stls(self.context())
            client.user(ALICE)
            welcome = client.pass_(PASSWORD)
            return before, refused, welcome
        finally:
            client.quit()

    def smtp(self) -> tuple[bool, tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("localhost", self.ports["submission"]) as client:
            client.ehlo()
            offered = client.has_extn("auth")
            refused = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
            mail = client.docmd("MAIL", f"FROM:<{ALICE}>")
            client.starttls(context=self.context())
            client.ehlo()
            self.assertTrue(client.has_extn("auth"))
            client.login(ALICE, PASSWORD)
            return offered, refused, mail

    async def test_imap_pop3_and_msa_refuse_cleartext_passwords(self) -> None:
        await self.start_server()
        before, refused, after = await threads.deferToThread(self.imap)
        self.assertIn("LOGINDISABLED", before)
        self.assertNotIn("AUTH=PLAIN", before)
        self.assertIn("PRIVACYREQUIRED", refused)
        self.assertNotIn("LOGINDISABLED", after)
        self.assertIn("AUTH=PLAIN", after)

        capa, refused, welcome = await threads.deferToThread(self.pop3)
        self.assertNotIn("USER", capa)
        self.assertNotIn("SASL", capa)
        self.assertIn("STLS", capa)
        self.assertIn("[AUTH] plaintext authentication disallowed", refused)
        self.assertTrue(welcome.startswith(b"+OK"))

        offered, auth, mail = await threads.deferToThread(self.smtp)
        self.assertFalse(offered)
        self.assertEqual(auth[0], 538)
        self.assertEqual(mail, (530, b"5.7.0 Authentication required"))
