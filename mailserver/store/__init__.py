"""The Maildir++ store: the one source of truth every protocol reads and writes."""
