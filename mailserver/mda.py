"""Local delivery: expand recipients to mailboxes and store one durable copy in each."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.accounts import Directory
from mailserver.store.maildir import MaildirStore, Stored
from mailserver.trace import NOTE, Tracer

log = Logger()


class MDA:
    tracer: Tracer | None = None  # set by the service when trace mode is on

    def __init__(self, store: MaildirStore, directory: Directory) -> None:
        self.store = store
        self.directory = directory

    def mailboxes(self, recipients: Sequence[str]) -> list[str]:
        """Each mailbox the recipients deliver to, once (aliases and subaddresses resolved)."""
        found: list[str] = []
        for recipient in recipients:
            for mailbox in self.directory.resolve(recipient) or ():
                if mailbox not in found:
                    found.append(mailbox)
        return found

    def deliver(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        session_id: str,
        unique: str | None = None,
    ) -> defer.Deferred[list[Stored]]:
        """Store the message in every recipient's INBOX; fires when all copies are durable.

        RFC 5321 §4.4: the delivering server adds ``Return-Path`` with the envelope sender.
        ``unique`` makes a repeated delivery (after a crash) a no-op; see
        ``MaildirStore.deliver``.
        """
        # RFC 6531 §3.7.3: a UTF-8 sender (SMTPUTF8 checked that it may be) stays UTF-8.
        return_path = f"Return-Path: <{mail_from}>\r\n".encode()
        message = (return_path, *chunks)
        copies = []
        for mailbox in self.mailboxes(recipients):
            d = self.store.deliver(mailbox, message, unique=unique)
            d.addCallback(self._delivered, mailbox, session_id)
            copies.append(d)
        if not copies:
            return defer.fail(LookupError("no local mailbox for " + ", ".join(recipients)))
        if len(copies) == 1:  # the common case, without a DeferredList around it
            return copies[0].addCallback(lambda stored: [stored])
        gathered = defer.gatherResults(copies, consumeErrors=True)
        gathered.addErrback(lambda f: f.value.subFailure)
        return gathered

    def _delivered(self, stored: Stored, mailbox: str, session_id: str) -> Stored:
        log.info(
            "MDA delivered session={session} to={mailbox} file={base}",
            session=session_id,
            mailbox=mailbox,
            base=stored.base,
        )
        if self.tracer is not None:
            self.tracer.emit(
                "MDA",
                session_id,
                NOTE,
                f"delivered to {mailbox} INBOX as {stored.base}",
                "RFC 5321 §4.4",
                "Return-Path added; written, fsynced, renamed into new/",
            )
        return stored
