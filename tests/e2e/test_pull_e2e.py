"""Push over SMTP, pull at once over IMAP and POP3, with real clients."""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess

from imapclient import IMAPClient
from twisted.internet import threads

from tests.e2e.harness import ALICE, BOB, PASSWORD, ServerTestCase

MESSAGE = (
    b"From: Teacher <teacher@example.org>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: push and pull\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe!\r\n"
    b".\r\n"
    b"..dots\r\n"
    b"last line\r\n"
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed (make test-tools installs it)")
    return path


class PushThenPull(ServerTestCase):
    def smtp_send(self, message: bytes = MESSAGE, to: str = ALICE) -> None:
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
            client.sendmail("teacher@example.org", [to], message)

    def stored(self, address: str = ALICE) -> bytes:
        (name,) = os.listdir(os.path.join(self.maildir(address), "new")) or os.listdir(
            os.path.join(self.maildir(address), "cur")
        )
        for sub in ("new", "cur"):
            path = os.path.join(self.maildir(address), sub, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    return f.read()
        raise AssertionError("message vanished")

    async def test_idle_sees_delivery_then_imaplib_and_poplib_fetch_byte_exact(self) -> None:
        await self.start_server()

        def idle_and_send() -> list:
            with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as client:
                client.login(ALICE, PASSWORD)
                client.select_folder("INBOX")
                client.idle()
                self.smtp_send()
                responses = client.idle_check(timeout=10)
                client.idle_done()
                return responses

        responses = await threads.deferToThread(idle_and_send)
        self.assertIn((1, b"EXISTS"), responses)
        stored = self.stored()
        self.assertTrue(stored.endswith(MESSAGE))

        def imap_fetch() -> tuple[bytes, bytes]:
            m = imaplib.IMAP4("127.0.0.1", self.ports["imap"])
            try:
                m.login(ALICE, PASSWORD)
                m.select("INBOX")
                _, peek = m.fetch("1", "(BODY.PEEK[])")
                _, data = m.uid("FETCH", "1", "(FLAGS BODY[])")
                _, flags = m.fetch("1", "(FLAGS)")
                return peek[0][1], data[0][1], flags[0]
            finally:
                m.logout()

        peek, body, flags = await threads.deferToThread(imap_fetch)
        self.assertEqual(peek, stored)
        self.assertEqual(body, stored)
        self.assertIn(b"\\Seen", flags)

        def pop_retr() -> tuple[bytes, list[bytes]]:
            p = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
            try:
                p.user(ALICE)
                p.pass_(PASSWORD)
                _, lines, _ = p.retr(1)
                _, uidl, _ = p.uidl()
                return b"".join(line + b"\r\n" for line in lines), uidl
            finally:
                p.quit()

        retrieved, uidl = await threads.deferToThread(pop_retr)
        self.assertEqual(retrieved, stored)
        (base,) = [
            name.split(":")[0] for name in os.listdir(os.path.join(self.maildir(ALICE), "cur"))
        ]
        self.assertEqual(uidl, [b"1 " + base.encode()])

    async def test_pop3_dele_applies_at_quit_and_imap_session_hears_the_expunge(self) -> None:
        await self.start_server()
        await threads.deferToThread(self.smtp_send)
        await threads.deferToThread(self.smtp_send)

        def scenario() -> tuple[list, list]:
            with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as client:
                client.login(ALICE, PASSWORD)
                client.select_folder("INBOX")
                p = poplib.POP3("127.0.0.1", self.ports["pop3"], timeout=30)
                p.user(ALICE)
                p.pass_(PASSWORD)
                p.dele(1)
                before = client.noop()[1]
                p.quit()
                after = client.noop()[1]
                return before, after

        before, after = await threads.deferToThread(scenario)
        self.assertEqual(before, [])
        self.assertIn((1, b"EXPUNGE"), after)

    async def test_imapclient_reads_structure_and_flags(self) -> None:
        await self.start_server()
        await threads.deferToThread(self.smtp_send)

        def read() -> dict:
            with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as client:
                client.login(ALICE, PASSWORD)
                folders = [name for _, _, name in client.list_folders()]
                client.select_folder("INBOX", readonly=True)
                data = client.fetch(
                    [1],
                    [
                        "ENVELOPE",
                        "BODYSTRUCTURE",
                        "RFC822.SIZE",
                        "FLAGS",
                        "BODY.PEEK[HEADER.FIELDS (SUBJECT)]",
                        "BODY.PEEK[]<0.4>",
                    ],
                )
                return {"folders": folders, **data[1]}

        result = await threads.deferToThread(read)
        self.assertEqual(
            sorted(result["folders"]), ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
        )
        self.assertEqual(result[b"ENVELOPE"].subject, b"push and pull")
        self.assertEqual(result[b"ENVELOPE"].from_[0].host, b"example.org")
        self.assertEqual(result[b"BODYSTRUCTURE"][0].lower(), b"text")
        self.assertEqual(result[b"RFC822.SIZE"], len(self.stored()))
        self.assertEqual(
            result[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: push and pull\r\n\r\n"
        )
        self.assertEqual(result[b"BODY[]<0>"], b"Retu")
        self.assertNotIn(b"\\Seen", result[b"FLAGS"])

    async def test_curl_reads_over_imap_and_pop3(self) -> None:
        curl = tool("curl")
        await self.start_server()
        await threads.deferToThread(self.smtp_send, MESSAGE, BOB)
        stored = self.stored(BOB)

        def run(url: str) -> bytes:
            result = subprocess.run(
                [curl, "-s", "-S", "--max-time", "30", "-u", f"{BOB}:{PASSWORD}", url],
                capture_output=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            return result.stdout

        imap = await threads.deferToThread(
            run, f"imap://127.0.0.1:{self.ports['imap']}/INBOX;UID=1"
        )
        self.assertEqual(imap, stored)
        pop = await threads.deferToThread(run, f"pop3://127.0.0.1:{self.ports['pop3']}/1")
        self.assertEqual(pop, stored)

    async def test_fetchmail_downloads_over_pop3(self) -> None:
        fetchmail = tool("fetchmail")
        await self.start_server()
        await threads.deferToThread(self.smtp_send)
        stored = self.stored()
        out = os.path.abspath(self.mktemp())
        os.makedirs(out)
        rc = os.path.join(out, "fetchmailrc")
        with open(rc, "w") as f:
            f.write(
                f"poll 127.0.0.1 port {self.ports['pop3']} proto POP3 auth password\n"
                f'  user "{ALICE}" password "{PASSWORD}" is "{ALICE}" here\n'
                f"  options keep sslproto '' mda \"cat > {out}/message\"\n"
            )
        os.chmod(rc, 0o600)
        result = await threads.deferToThread(
            subprocess.run,
            [
                fetchmail,
                "-f",
                rc,
                "--nosyslog",
                "--nodetach",
                "-v",
                "--pidfile",
                os.path.join(out, "pid"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": out, "FETCHMAILHOME": out},
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        with open(os.path.join(out, "message"), "rb") as f:
            fetched = f.read()
        # fetchmail hands the MDA LF line ends, adds its own Received line and moves
        # Return-Path to the top.
        return_path, rest = stored.split(b"\r\n", 1)
        self.assertTrue(fetched.startswith(return_path + b"\n"), fetched)
        self.assertTrue(fetched.endswith(rest.replace(b"\r\n", b"\n")), fetched)


def run_in_terminal(
    argv: list[str], script: list[tuple[bytes, bytes]], env: dict[str, str]
) -> bytes:
    """Run a full-screen program on a pseudo-terminal and return all it drew.

    ``script`` is a list of (text to wait for, keys to type then): each key is typed
    only once the program has drawn the awaited text since the previous key, like
    expect(1), so no step depends on timing. After the last keys the program is waited
    for until it exits. Every wait ends with an AssertionError after 30 seconds.
    """
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, env)
    screen = bytearray()
    deadline = time.monotonic() + 30

    def read() -> bool:
        """Wait for output; False at end of file (the program has exited)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{argv[0]} stalled; it drew: {bytes(screen)[-2000:]!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    return False
                screen.extend(data)
                return bool(data)

    exited = False
    try:
        for awaited, keys in script:
            start = len(screen)
            while awaited not in screen[start:]:
                if not read():
                    raise AssertionError(f"{argv[0]} exited before drawing {awaited!r}")
            os.write(fd, keys)
        while read():
            pass
        exited = True
    finally:
        if not exited:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    return bytes(screen)


class MuttReads(ServerTestCase):
    async def test_mutt_lists_and_reads_mail_over_imap(self) -> None:
        mutt = tool("mutt")
        await self.start_server()

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as client:
                client.sendmail(
                    "teacher@example.org",
                    [ALICE],
                    MESSAGE.replace(b"last line", b"mutt can read this"),
                )

        await threads.deferToThread(send)
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        rc = os.path.join(home, "muttrc")
        with open(rc, "w") as f:
            f.write(
                f'set folder="imap://127.0.0.1:{self.ports["imap"]}/"\n'
                'set spoolfile="+INBOX"\n'
                f'set imap_user="{ALICE}"\nset imap_pass="{PASSWORD}"\n'
                "set ssl_starttls=no\nset ssl_force_tls=no\nset imap_passive=no\n"
                "set pager_stop=yes\nset mark_old=no\nset move=no\nset charset=utf-8\n"
                "set header_cache=''\nset message_cachedir=''\n"
            )
        env = {"HOME": home, "TERM": "xterm", "LANG": "C.UTF-8", "PATH": os.environ["PATH"]}
        screen = await threads.deferToThread(
            run_in_terminal,
            [mutt, "-n", "-F", rc],
            # The index lists the message; Enter shows it; q back to the index, q quits.
            [(b"push and pull", b"\r"), (b"mutt can read this", b"q"), (b"[Msgs:1", b"q")],
            env,
        )
        self.assertIn(b"1 kept, 0 deleted.", screen)  # mutt ended cleanly
        stored = os.listdir(os.path.join(self.maildir(ALICE), "cur"))
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].endswith(":2,S"))  # mutt's read set \Seen
