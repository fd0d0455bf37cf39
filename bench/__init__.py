"""Side-by-side benchmarks of our server against Postfix + Dovecot and aiosmtpd (issue 7).

Run ``make bench`` (or ``.venv/bin/python -m bench --help``).
"""
