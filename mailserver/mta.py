"""The MTA's policy: inbound mail from anywhere, for the local domains only, never relayed."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer

from mailserver.accounts import Directory
from mailserver.mda import MDA
from mailserver.names import BadName, split_address
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import Envelope
from mailserver.store.maildir import MaildirStore

SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")


def accepted(envelope: Envelope) -> Reply:
    return Reply(250, "2.0.0", f"OK queued as {envelope.queue_id}")


def check_local_recipient(directory: Directory, store: MaildirStore, address: str) -> Reply:
    """The reply for a recipient in one of our domains: does it exist, is there room?"""
    mailboxes = directory.resolve(address)
    if not mailboxes:
        return Reply(550, "5.1.1", "No such user here")
    quota = store.quota_bytes
    # Only a mailbox already open is checked here; the delivery checks every one.
    if quota and any((store.usage_if_open(m) or 0) >= quota for m in mailboxes):
        return Reply(452, "4.2.2", "Mailbox full")
    return RECIPIENT_OK


def domain_of(address: str) -> str | None:
    try:
        return split_address(address)[1]
    except BadName:
        return None


class InboundPolicy:
    def __init__(self, directory: Directory, store: MaildirStore, mda: MDA) -> None:
        self.directory = directory
        self.store = store
        self.mda = mda

    def check_sender(self, envelope: Envelope, address: str) -> Reply:
        return SENDER_OK

    def check_recipient(self, envelope: Envelope, address: str) -> Reply:
        domain = domain_of(address)
        if domain is None or not self.directory.is_local_domain(domain):
            # RFC 5321 §3.6.2 / RFC 5068: no open relay.
            return Reply(550, "5.7.1", "Relaying denied")
        return check_local_recipient(self.directory, self.store, address)

    def deliver(self, envelope: Envelope, chunks: Sequence[bytes]) -> defer.Deferred[Reply]:
        d = self.mda.deliver(envelope.mail_from, envelope.rcpt_to, chunks, envelope.session_id)
        d.addCallback(lambda _: accepted(envelope))
        return d
