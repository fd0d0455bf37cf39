"""A 100,000-message INBOX: SELECT and ``UID FETCH 1:* (UID FLAGS)`` work from the index
alone (no message file is opened) and the reply is produced in batches."""

from __future__ import annotations

import os

from mailserver.imap.session import FETCH_BATCH, Pause, ReadMessages
from tests.unit.test_imap_session import Mail, selected

COUNT = 100_000
MESSAGE = b"Subject: s\r\n\r\nbody\r\n"
LINKS_PER_FILE = 50_000  # below the file systems' limits on hard links


def fill(mail: Mail) -> None:
    """Put the message files in place directly (hard links to a few files: quicker than
    writing each), with Dovecot-style names that carry their size."""
    cur = os.path.join(mail.inbox_path, "cur")
    source = os.path.join(mail.inbox_path, "tmp", "message")
    size = len(MESSAGE)
    for i in range(1, COUNT + 1):
        if i % LINKS_PER_FILE == 1:
            if os.path.exists(source):
                os.unlink(source)
            with open(source, "wb") as f:
                f.write(MESSAGE)
        name = f"{1700000000 + i}.M{i}P1.test,S={size},W={size}:2,{'S' if i % 2 else ''}"
        os.link(source, os.path.join(cur, name))
    os.unlink(source)


def test_select_and_fetch_flags_of_100k_messages() -> None:
    mail = Mail()
    try:
        fill(mail)
        client = selected(mail)
        client.effects.clear()
        client.session.receive_data(b"f UID FETCH 1:* (UID FLAGS)\r\n")
        out = client.run()
        assert out.count(b" FETCH (UID ") == COUNT
        assert out.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n")
        assert out.endswith(b"* 100000 FETCH (UID 100000 FLAGS ())\r\nf OK FETCH completed\r\n")
        assert not any(isinstance(e, ReadMessages) for e in client.effects)
        pauses = sum(isinstance(e, Pause) for e in client.effects)
        assert pauses == COUNT // FETCH_BATCH
        # A second session opens the folder from the UID list, which now knows every file.
        other = selected(mail)
        assert b"* 100000 EXISTS\r\n" in other.send(b"n NOOP\r\n") + other.send(
            b"s SELECT INBOX\r\n"
        )
    finally:
        mail.cleanup()
