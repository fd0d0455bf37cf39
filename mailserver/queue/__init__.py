"""The outbound queue: spool (crash-safe files), scheduler (retries, limits, reports),
mx (routing), dsn (RFC 3464 reports), transport (SMTP to MX hosts or a smarthost),
service (the twisted.application Service with ``enqueue``) and cli (``mailserver queue``)."""
