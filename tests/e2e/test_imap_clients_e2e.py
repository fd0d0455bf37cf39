"""Real IMAP clients against the real server: imapclient, imaplib, mbsync, curl, mutt."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import time

from imapclient import IMAPClient
from twisted.internet import threads

from tests.e2e.harness import ALICE, PASSWORD, ServerTestCase
from tests.e2e.test_pull_e2e import run_in_terminal

MESSAGE = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: Gr\xc3\xbc\xc3\x9fe from Bob\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <e2e-1@example.test>\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Alice, the quarterly numbers.\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<b>html</b>\r\n"
    b"--inner--\r\n"
    b"--outer--\r\n"
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed (make test-tools installs it)")
    return path


class IMAPClients(ServerTestCase):
    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30)
        client.login(ALICE, PASSWORD)
        return client

    async def test_imapclient_folders_append_copy_move_search(self) -> None:
        await self.start_server()

        def scenario() -> None:
            with self.client() as c, self.client() as watcher:
                caps = c.capabilities()
                for cap in (b"UIDPLUS", b"MOVE", b"CONDSTORE", b"ENABLE", b"SPECIAL-USE"):
                    self.assertIn(cap, caps)
                c.create_folder("Projects.2024")
                c.subscribe_folder("Projects.2024")
                self.assertIn("Projects.2024", [f[2] for f in c.list_sub_folders()])
                c.create_folder("Entwürfe")  # imapclient encodes modified UTF-7
                self.assertIn("Entwürfe", [f[2] for f in c.list_folders()])
                self.assertTrue(os.path.isdir(self.maildir(ALICE, ".Entw&APw-rfe")))
                special = {f[2]: f[0] for f in c.list_folders()}
                self.assertIn(b"\\Sent", special["Sent"])

                appended = c.append("INBOX", MESSAGE, flags=[b"$Work"])
                self.assertIn(b"[APPENDUID ", appended)
                watcher.select_folder("INBOX")
                info = c.select_folder("INBOX")
                self.assertEqual(info[b"EXISTS"], 1)
                (uid,) = c.search(["SUBJECT", "Grüße"], charset="UTF-8")
                self.assertEqual(c.search(["BODY", "quarterly", "KEYWORD", "$Work"]), [uid])
                self.assertEqual(c.search(["NOT", "SEEN"]), [uid])
                # More RFC 3501 §6.4.4 keys: OR, sizes, dates, HEADER, TEXT, sets, UID.
                self.assertEqual(c.search(["OR", "LARGER", "100000", "SMALLER", "2000"]), [uid])
                self.assertEqual(c.search(["SENTON", "1-Jan-2024", "SINCE", "1-Jan-2020"]), [uid])
                self.assertEqual(c.search(["HEADER", "Message-ID", "<e2e-1@example.test>"]), [uid])
                self.assertEqual(c.search(["TEXT", "html", "1:*", "UID", str(uid)]), [uid])
                self.assertEqual(c.search(["BEFORE", "1-Jan-2020"]), [])
                fetched = c.fetch([uid], ["BODY.PEEK[]", "BODYSTRUCTURE", "BODY.PEEK[2.2.MIME]"])
                self.assertEqual(fetched[uid][b"BODY[]"], MESSAGE)
                self.assertEqual(
                    fetched[uid][b"BODY[2.2.MIME]"], b"Content-Type: text/html\r\n\r\n"
                )
                self.assertTrue(fetched[uid][b"BODYSTRUCTURE"].is_multipart)

                c.copy([uid], "Projects.2024")
                status = c.folder_status("Projects.2024", ["MESSAGES"])
                self.assertEqual(status[b"MESSAGES"], 1)
                c.move([uid], "Archive")
                self.assertEqual(c.search(["ALL"]), [])
                # The watcher hears of the move at its next poll.
                self.assertIn((1, b"EXPUNGE"), watcher.noop()[1])
                self.assertEqual(c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"], 1)

                c.unselect_folder()
                c.enable("CONDSTORE")
                c.select_folder("Archive")
                (auid,) = c.search(["ALL"])
                before = c.fetch([auid], ["MODSEQ"])
                c.add_flags([auid], [b"\\Flagged"])
                after = c.fetch(
                    [auid], ["FLAGS"], modifiers=[f"CHANGEDSINCE {before[auid][b'MODSEQ'][0]}"]
                )
                self.assertIn(b"\\Flagged", after[auid][b"FLAGS"])

                c.delete_messages([auid])
                c.uid_expunge([auid])
                self.assertEqual(c.search(["ALL"]), [])
                c.rename_folder("Projects.2024", "Done")
                c.delete_folder("Done")
                self.assertNotIn("Done", [f[2] for f in c.list_folders()])

        await threads.deferToThread(scenario)

    async def test_imaplib_uid_commands_and_status(self) -> None:
        await self.start_server()

        def scenario() -> None:
            m = imaplib.IMAP4("127.0.0.1", self.ports["imap"])
            try:
                m.login(ALICE, PASSWORD)
                date = imaplib.Time2Internaldate(time.mktime((2024, 2, 5, 10, 0, 0, 0, 0, -1)))
                typ, data = m.append("Sent", r"(\Seen)", date, MESSAGE)
                self.assertEqual(typ, "OK")
                self.assertIn(b"APPENDUID", data[0])
                typ, data = m.append("Nowhere", None, None, MESSAGE)
                self.assertEqual(typ, "NO")
                self.assertIn(b"TRYCREATE", data[0])
                m.select("Sent")
                typ, data = m.uid("SEARCH", "CHARSET", "UTF-8", "SEEN", "FROM", "bob")
                self.assertEqual(data, [b"1"])
                typ, data = m.uid("FETCH", "1", "(BODY.PEEK[1] RFC822.SIZE)")
                self.assertEqual(data[0][1], b"Hello Alice, the quarterly numbers.")
                typ, _ = m.uid("COPY", "1", "Trash")
                self.assertEqual(typ, "OK")
                # imaplib files the tagged response code under its name.
                self.assertRegex(m.response("COPYUID")[1][0], rb"^\d+ 1 1$")
                typ, data = m.status("Trash", "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
                self.assertRegex(data[0], rb"MESSAGES 1 UIDNEXT 2 HIGHESTMODSEQ \d+")
                typ, data = m.create("../escape")
                self.assertEqual(typ, "NO")
                # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves it empty.
                m.append("INBOX", None, None, MESSAGE)
                self.assertEqual(m.rename("INBOX", "Old-Inbox")[0], "OK")
                typ, data = m.status("Old-Inbox", "(MESSAGES)")
                self.assertIn(b"MESSAGES 1", data[0])
                self.assertIn(b"MESSAGES 0", m.status("INBOX", "(MESSAGES)")[1][0])
                m.logout()
            finally:
                m.shutdown() if m.state != "LOGOUT" else None

        await threads.deferToThread(scenario)

    async def test_idle_session_hears_flags_and_expunges_of_another(self) -> None:
        await self.start_server()

        def scenario() -> tuple[list, list]:
            with self.client() as c, self.client() as idler:
                c.append("INBOX", MESSAGE)
                c.append("INBOX", b"Subject: two\r\n\r\ntwo\r\n")
                idler.select_folder("INBOX")
                c.select_folder("INBOX")
                idler.idle()
                c.add_flags([1], [b"\\Flagged"])
                flagged = idler.idle_check(timeout=10)
                c.delete_messages([1])
                c.expunge()
                expunged: list = []
                while (1, b"EXPUNGE") not in expunged:  # the \Deleted FETCH comes first
                    more = idler.idle_check(timeout=10)
                    self.assertTrue(more, expunged)
                    expunged += more
                idler.idle_done()
                return flagged, expunged

        flagged, expunged = await threads.deferToThread(scenario)
        # The idler selected INBOX first, so \Recent is its own (RFC 3501 §2.3.2).
        flags = (b"\\Flagged", b"\\Recent")
        self.assertEqual(flagged, [(1, b"FETCH", (b"UID", 1, b"FLAGS", flags))])
        self.assertIn((1, b"EXPUNGE"), expunged)

    async def test_curl_fetches_by_uid(self) -> None:
        curl = tool("curl")
        await self.start_server()

        def scenario() -> bytes:
            with self.client() as c:
                c.append("Archive", MESSAGE)
                c.append("Archive", b"Subject: second\r\n\r\nsecond\r\n")
            result = subprocess.run(
                [
                    curl,
                    "-s",
                    "--user",
                    f"{ALICE}:{PASSWORD}",
                    f"imap://127.0.0.1:{self.ports['imap']}/Archive;UID=2",
                ],
                capture_output=True,
                timeout=30,
            )
            return result.stdout

        self.assertEqual(
            await threads.deferToThread(scenario), b"Subject: second\r\n\r\nsecond\r\n"
        )


class LargeFolder(ServerTestCase):
    """A folder of files another program wrote, large enough that the STORE's renames and
    the SEARCH's screening go to the server's file worker (a process of its own)."""

    COUNT = 1500

    async def test_store_and_search_over_the_file_worker(self) -> None:
        await self.start_server()
        inbox = self.maildir(ALICE)
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        for i in range(self.COUNT):
            eol = b"\n" if i % 2 else b"\r\n"  # bare LF files are screened by their own rule
            body = b"Message-ID: <m%d@example.test>\nSubject: n%d\n\nbody\n" % (i, i)
            with open(os.path.join(inbox, "new", f"{1700000000 + i}.M{i}P1.elsewhere"), "wb") as f:
                f.write(body.replace(b"\n", eol))

        def scenario() -> tuple[object, ...]:
            with (
                IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=60) as c,
                IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=60) as idler,
            ):
                c.login(ALICE, PASSWORD)
                idler.login(ALICE, PASSWORD)
                idler.select_folder("INBOX")
                c.select_folder("INBOX")
                idler.idle()
                ids = c.search("ALL")  # imapclient lists them: 7 KB, under the line limit
                stored = c.add_flags(ids, [b"\\Flagged"])
                heard: list = []
                while len(heard) < self.COUNT:
                    more = idler.idle_check(timeout=10)
                    if not more:
                        break
                    heard += [r for r in more if r[1] == b"FETCH"]
                idler.idle_done()
                found = c.search(["HEADER", "Message-ID", "<m1234@example.test>"])
                subject = c.search(["SUBJECT", "n1499"])  # a bare-LF file
                flags = c.get_flags(ids)
                return stored, heard, found, subject, flags

        stored, heard, found, subject, flags = await threads.deferToThread(scenario)
        self.assertEqual(len(stored), self.COUNT)  # type: ignore[arg-type]
        self.assertEqual(len(heard), self.COUNT)  # type: ignore[arg-type]
        self.assertEqual(len(found), 1)  # type: ignore[arg-type]
        self.assertEqual(len(subject), 1)  # type: ignore[arg-type]
        self.assertTrue(all(b"\\Flagged" in f for f in flags.values()))  # type: ignore[attr-defined]
        names = os.listdir(os.path.join(inbox, "cur"))
        self.assertEqual(len(names), self.COUNT)
        self.assertTrue(all(name.endswith(":2,F") for name in names))
        self.assertEqual(os.listdir(os.path.join(inbox, "new")), [])


class MbsyncSyncs(ServerTestCase):
    async def test_mbsync_both_ways_twice(self) -> None:
        mbsync = tool("mbsync")
        await self.start_server()
        home = os.path.abspath(self.mktemp())
        local = os.path.join(home, "mail")
        os.makedirs(local)
        rc = os.path.join(home, "mbsyncrc")
        with open(rc, "w") as f:
            f.write(
                f"IMAPAccount test\nHost 127.0.0.1\nPort {self.ports['imap']}\n"
                f"User {ALICE}\nPass {PASSWORD}\nSSLType None\nAuthMechs LOGIN\n\n"
                "IMAPStore remote\nAccount test\n\n"
                f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
                "Channel test\nFar :remote:\nNear :local:\nPatterns *\n"
                "Sync All\nCreate Both\nExpunge Both\nSyncState *\n"
            )

        def seed() -> None:
            with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as c:
                c.login(ALICE, PASSWORD)
                c.append("INBOX", MESSAGE)
                c.append("Sent", b"Subject: sent\r\n\r\nsent\r\n", flags=[b"\\Seen"])

        def run() -> str:
            result = subprocess.run(
                # -Dn: show the IMAP commands, to see what was transferred.
                [mbsync, "-c", rc, "-a", "-Dn"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "HOME": home},
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            return result.stdout + result.stderr

        await threads.deferToThread(seed)
        await threads.deferToThread(run)
        with open(self._only_file(os.path.join(local, "INBOX")), "rb") as f:
            local_copy = re.sub(rb"X-TUID: \S+\n", b"", f.read())  # mbsync's own header
        self.assertEqual(local_copy, MESSAGE.replace(b"\r\n", b"\n"))  # and LF line ends
        # A message written on the local side goes up with APPEND; a flag set on each
        # side reaches the other.
        drafts_new = os.path.join(local, "Drafts", "new")
        with open(os.path.join(drafts_new, "1700000000.local.host"), "wb") as f:
            f.write(b"Subject: local draft\r\n\r\ndraft\r\n")
        synced = self._only_file(os.path.join(local, "INBOX"))
        base = os.path.basename(synced).split(":2,")[0]
        os.rename(synced, os.path.join(local, "INBOX", "cur", base + ":2,S"))
        await threads.deferToThread(self._flag_remotely)
        output = await threads.deferToThread(run)
        self.assertEqual(len(re.findall(r"APPEND \"?Drafts", output)), 1, output)
        self.assertTrue(self._only_file(os.path.join(local, "INBOX")).endswith(":2,FS"))
        (remote_inbox,) = os.listdir(os.path.join(self.maildir(ALICE), "cur"))
        self.assertTrue(remote_inbox.endswith(":2,FS"), remote_inbox)
        remote = os.listdir(os.path.join(self.maildir(ALICE, ".Drafts"), "new")) + os.listdir(
            os.path.join(self.maildir(ALICE, ".Drafts"), "cur")
        )
        self.assertEqual(len(remote), 1)
        # A third run has nothing to do on either side: no message goes up or down, no
        # flag changes, nothing is expunged.
        output = await threads.deferToThread(run)
        commands = " ".join(re.findall(r">>> \d+ (.*)", output))
        for command in ("APPEND", "BODY.PEEK[]", "STORE", "EXPUNGE", "CREATE"):
            self.assertNotIn(command, commands)

    def _flag_remotely(self) -> None:
        with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as c:
            c.login(ALICE, PASSWORD)
            c.select_folder("INBOX")
            c.add_flags(c.search(["ALL"]), [b"\\Flagged"])

    @staticmethod
    def _only_file(maildir: str) -> str:
        files = [
            os.path.join(maildir, sub, name)
            for sub in ("new", "cur")
            for name in os.listdir(os.path.join(maildir, sub))
        ]
        assert len(files) == 1, files
        return files[0]


class MuttReadsFolders(ServerTestCase):
    async def test_mutt_opens_a_folder_and_reads(self) -> None:
        mutt = tool("mutt")
        await self.start_server()

        def seed() -> None:
            with IMAPClient("127.0.0.1", port=self.ports["imap"], ssl=False, timeout=30) as c:
                c.login(ALICE, PASSWORD)
                c.append("Archive", MESSAGE.replace(b"quarterly", b"mutt-visible"))

        await threads.deferToThread(seed)
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        rc = os.path.join(home, "muttrc")
        with open(rc, "w") as f:
            f.write(
                f'set folder="imap://127.0.0.1:{self.ports["imap"]}/"\n'
                'set spoolfile="+Archive"\n'
                f'set imap_user="{ALICE}"\nset imap_pass="{PASSWORD}"\n'
                "set ssl_starttls=no\nset ssl_force_tls=no\nset imap_passive=no\n"
                "set pager_stop=yes\nset mark_old=no\nset move=no\nset charset=utf-8\n"
                "set header_cache=''\nset message_cachedir=''\n"
            )
        env = {"HOME": home, "TERM": "xterm", "LANG": "C.UTF-8", "PATH": os.environ["PATH"]}
        screen = await threads.deferToThread(
            run_in_terminal,
            [mutt, "-n", "-F", rc],
            # The index lists the message; Enter shows it (its first part, decoded); q back
            # to the index, q quits, which stores \Seen.
            [(b"from Bob", b"\r"), (b"mutt-visible", b"q"), (b"[Msgs:1", b"q")],
            env,
        )
        self.assertIn(b"1 kept, 0 deleted.", screen)
        stored = os.listdir(os.path.join(self.maildir(ALICE, ".Archive"), "cur"))
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].endswith(":2,S"))


class ConfiguredLimits(ServerTestCase):
    extra_config = "[imap]\nmax_sessions_per_user = 2\nmax_literal = 1024\n"

    async def test_imap_section_limits_reach_the_sessions(self) -> None:
        await self.start_server()

        def scenario() -> None:
            first, second = self.login(), self.login()
            try:
                third = imaplib.IMAP4("127.0.0.1", self.ports["imap"])
                with self.assertRaisesRegex(imaplib.IMAP4.error, r"\[LIMIT\]"):
                    third.login(ALICE, PASSWORD)
                third.shutdown()
                # RFC 7888 §4: a synchronizing literal above max_literal is refused
                # before the message is sent.
                typ, data = first.append("INBOX", None, None, b"x" * 1025)
                self.assertEqual(typ, "NO")
                self.assertIn(b"[TOOBIG]", data[0])
                self.assertEqual(first.append("INBOX", None, None, b"x" * 1000)[0], "OK")
            finally:
                first.logout()
                second.logout()
            # A session that ended no longer counts.
            self.login().logout()

        await threads.deferToThread(scenario)

    def login(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.ports["imap"])
        m.login(ALICE, PASSWORD)
        return m
