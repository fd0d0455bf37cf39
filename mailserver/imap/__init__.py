"""IMAP4rev1/rev2 protocol support: command grammar, FETCH rendering, mailbox name encoding."""
