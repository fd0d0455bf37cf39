"""The MTA's policy: inbound mail from anywhere, for the local domains only, never relayed."""

from __future__ import annotations

from mailserver.accounts import Directory
from mailserver.names import BadName, split_address
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import Envelope
from mailserver.store.maildir import MaildirStore

ACCEPTED = Reply(250, "2.1.5", "Recipient OK")


class InboundPolicy:
    def __init__(self, directory: Directory, store: MaildirStore) -> None:
        self.directory = directory
        self.store = store

    def check_recipient(self, envelope: Envelope, address: str) -> Reply:
        try:
            _, domain = split_address(address)
        except BadName:
            return Reply(550, "5.7.1", "Relaying denied")
        if not self.directory.is_local_domain(domain):
            # RFC 5321 §3.6.2 / RFC 5068: no open relay.
            return Reply(550, "5.7.1", "Relaying denied")
        mailboxes = self.directory.resolve(address)
        if not mailboxes:
            return Reply(550, "5.1.1", "No such user here")
        quota = self.store.quota_bytes
        if quota and any(self.store.folder(m).total_size() >= quota for m in mailboxes):
            return Reply(452, "4.2.2", "Mailbox full")
        return ACCEPTED
