"""The MSA's policy (RFC 6409): authenticated users send to anyone, as themselves only.

The login must own the envelope sender and every address in the From header (an alias
that delivers to the user counts as theirs). Messages get a Message-ID and a Date when
they lack one (RFC 6409 §8.3, §8.2). Local recipients go to the MDA, remote ones to the
outbound queue; the 250 comes once every copy is durable.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Mapping, Sequence
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.accounts import Directory
from mailserver.mda import MDA
from mailserver.message import header_section
from mailserver.mta import RECIPIENT_OK, SENDER_OK, accepted, check_local_recipient, domain_of
from mailserver.queue import dsn
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import Envelope
from mailserver.store.maildir import MaildirStore

log = Logger()


class OutboundQueue(Protocol):
    def enqueue(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        params: Mapping[str, str | None] | None = None,
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> defer.Deferred[str]: ...


class SubmissionPolicy:
    def __init__(
        self,
        directory: Directory,
        store: MaildirStore,
        mda: MDA,
        hostname: str,
        queue: OutboundQueue | None = None,
    ) -> None:
        self.directory = directory
        self.store = store
        self.mda = mda
        self.hostname = hostname
        self.queue = queue

    def owns(self, user: str, address: str) -> bool:
        mailboxes = self.directory.resolve(address) or []
        return user.lower() in (m.lower() for m in mailboxes)

    def check_sender(self, envelope: Envelope, address: str) -> Reply:
        user = envelope.auth_user
        if user is None:
            return Reply(530, "5.7.0", "Authentication required")
        if not address or not self.owns(user, address):
            return Reply(553, "5.7.1", "Sender address not owned by user")
        return SENDER_OK

    def check_recipient(self, envelope: Envelope, address: str) -> Reply:
        domain = domain_of(address)
        if domain is None:
            return Reply(550, "5.1.3", "Bad recipient address")
        if self.directory.is_local_domain(domain):
            return check_local_recipient(self.directory, self.store, address)
        if self.queue is None:
            return Reply(451, "4.3.0", "Mail for other domains cannot be queued yet, try later")
        return RECIPIENT_OK

    def deliver(self, envelope: Envelope, chunks: Sequence[bytes]) -> defer.Deferred[Reply]:
        trace, *message = chunks
        headers = BytesHeaderParser(policy=compat32).parsebytes(header_section(message))
        user = envelope.auth_user or ""
        senders = email.utils.getaddresses(headers.get_all("From", []))
        if not senders or not all(self.owns(user, address) for _, address in senders):
            return defer.succeed(Reply(550, "5.7.1", "From header not owned by authenticated user"))
        added = b""
        if headers.get("Message-ID") is None:
            added += f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>\r\n".encode()
        if headers.get("Date") is None:
            added += f"Date: {email.utils.formatdate(localtime=True)}\r\n".encode()
        parts = (trace, added, *message) if added else tuple(chunks)
        local = [r for r in envelope.rcpt_to if self.directory.is_local_domain(domain_of(r) or "")]
        remote = [r for r in envelope.rcpt_to if r not in local]
        copies = []
        if local:
            d = self.mda.deliver(envelope.mail_from, local, parts, envelope.session_id)
            d.addCallback(lambda _: self._report_success(envelope, local, parts))
            copies.append(d)
        if remote:
            assert self.queue is not None
            rcpt_params = {r: envelope.rcpt_params.get(r, {}) for r in remote}
            copies.append(
                self.queue.enqueue(envelope.mail_from, remote, parts, envelope.params, rcpt_params)
            )
        d = defer.gatherResults(copies, consumeErrors=True)
        d.addCallback(lambda _: accepted(envelope))
        return d

    def _report_success(
        self, envelope: Envelope, local: list[str], parts: Sequence[bytes]
    ) -> defer.Deferred[None] | None:
        """RFC 3461 §4.1 NOTIFY=SUCCESS for local recipients: a "delivered" report to
        the (local, authenticated) sender, through the MDA with the null reverse-path.

        The 250 waits for it, so that a crash cannot take a report whose message was
        acknowledged. The message is already durable: a failure of the report is
        logged, not reported back."""
        wanted = [
            r for r in local if dsn.wants(_notify(envelope.rcpt_params.get(r, {})), dsn.DELIVERED)
        ]
        if not wanted:
            return None
        now = time.time()
        report = dsn.build_report(
            self.hostname,
            envelope.mail_from,
            [
                dsn.ReportedRecipient(
                    r, dsn.DELIVERED, "2.0.0", orcpt=envelope.rcpt_params[r].get("ORCPT")
                )
                for r in wanted
            ],
            b"".join(parts[1:]),
            arrival=now,
            now=now,
            envid=envelope.params.get("ENVID"),
            ret=envelope.params.get("RET"),
            utf8="SMTPUTF8" in envelope.params,
        )
        d = self.mda.deliver("", [envelope.mail_from], [report], envelope.session_id)
        d.addCallbacks(
            lambda _: None, lambda f: log.failure("MSA: success report not delivered", f)
        )
        return d


def _notify(params: Mapping[str, str | None]) -> list[str] | None:
    value = params.get("NOTIFY")
    return value.split(",") if value else None
