"""SMTP: the server session (MTA and MSA roles) and its Twisted glue."""
