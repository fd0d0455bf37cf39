"""mailserver: a small-office mail server (SMTP, IMAP, POP3 on one Maildir store) on Twisted."""

__version__ = "0.1.0"
