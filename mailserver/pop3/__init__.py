"""POP3 (RFC 1939, with RFC 2449 CAPA/RESP-CODES and RFC 3206 response codes)."""
