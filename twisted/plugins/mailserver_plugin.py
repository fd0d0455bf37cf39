"""The twistd plugin: only declares, so that ``twistd --help`` stays fast."""

from twisted.application.service import ServiceMaker

mailserver = ServiceMaker(
    "mailserver",
    "mailserver.tap",
    "Small-office mail server: SMTP (MTA, MSA), IMAP and POP3 on one Maildir store",
    "mailserver",
)
