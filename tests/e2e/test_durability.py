"""Kill -9 the real server right after a 250 and in the middle of DATA, then restart."""

from __future__ import annotations

import os
import smtplib
import socket
import tempfile
import unittest

from tests.e2e.harness import ALICE, ServerProcess, free_ports


def files(path: str) -> list[str]:
    return [
        os.path.join(path, sub, name)
        for sub in ("new", "cur")
        if os.path.isdir(os.path.join(path, sub))
        for name in os.listdir(os.path.join(path, sub))
    ]


class CrashTests(unittest.TestCase):
    def test_kill_after_250_and_mid_data(self) -> None:
        with tempfile.TemporaryDirectory() as directory:
            (smtp,) = free_ports(1)
            server = ServerProcess(directory, {"smtp": smtp})
            server.start()
            try:
                whole = b"Subject: whole\r\n\r\n" + b"line of the whole message\r\n" * 2000
                with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
                    client.sendmail("a@example.org", [ALICE], whole)
                server.kill()  # right after the 250

                server.start()
                s = socket.create_connection(("127.0.0.1", smtp), timeout=30)
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"HELO c.example\r\nMAIL FROM:<a@example.org>\r\n")
                s.sendall(b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
                for _ in range(4):
                    f.readline()
                s.sendall(b"Subject: partial\r\n\r\n" + b"x" * 500 + b"\r\n" * 100)
                server.kill()  # mid-DATA
                s.close()

                server.start()
                maildir = os.path.join(directory, "run", "Maildir", "example.test", "alice")
                stored = files(maildir)
                self.assertEqual(len(stored), 1)
                with open(stored[0], "rb") as m:
                    data = m.read()
                self.assertTrue(data.endswith(whole))
                self.assertNotIn(b"partial", data)
                # The server still works after the crashes.
                with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
                    client.sendmail("a@example.org", [ALICE], b"Subject: after\r\n\r\nok\r\n")
                self.assertEqual(len(files(maildir)), 2)
            finally:
                server.stop()
