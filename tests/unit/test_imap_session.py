"""Transcript tests of the IMAP session: client bytes in, exact server bytes out.

The session runs against a real :class:`MaildirStore` in a temporary directory; a small
driver feeds bytes, runs the session's effects at once (as the Twisted glue would) and
collects what the session sends.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailserver import driver
from mailserver.driver import SessionProtocol
from mailserver.imap import session as imap_session
from mailserver.imap.session import (
    AppendMessage,
    CopyMessages,
    CreateFolder,
    FilesGone,
    IMAPLimits,
    IMAPSession,
    MeasureFolder,
    OpenFolder,
    Pause,
    ReadMessages,
    RefreshFolder,
    RenameFolder,
    ScreenMessages,
    SetFlags,
    UserSessions,
)
from mailserver.session import Authenticate, Close, Effect, Send, StartTLS
from mailserver.store.maildir import MaildirStore
from tests.unit.test_imap_parser import commands, more_commands

HOST = "imap.example.test"
ALICE = "alice@example.test"
DATE = 1700000000  # 14-Nov-2023 22:13:20 +0000
CAPS = (
    b"IMAP4rev1 LITERAL+ SASL-IR IDLE UNSELECT NAMESPACE ID CHILDREN SPECIAL-USE"
    b" UIDPLUS MOVE ENABLE CONDSTORE"
)
GREETING = (
    b"* OK [CAPABILITY "
    + CAPS
    + b" AUTH=PLAIN] "
    + HOST.encode()
    + b" IMAP4rev1 mailserver ready\r\n"
)
LOGGED_IN = b"[CAPABILITY " + CAPS + b"] Logged in\r\n"
FLAGS = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"

MSG1 = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: one\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)
MSG1_HEADER = MSG1[: MSG1.index(b"\r\n\r\n") + 4]
MSG2 = b"Subject: two\r\n\r\nsecond\r\n"
MSG3 = b"Subject: three\r\n\r\nthird\r\n"
MSG4 = b"Subject: four\r\n\r\nfourth\r\n"


def plain(*fields: bytes) -> bytes:
    return base64.b64encode(b"\0".join(fields))


# The store and a driver ---------------------------------------------------------------
def inline(f: Any, *args: Any) -> Deferred[Any]:
    """Run the store's disk work at once, so that its Deferreds have fired on return."""
    return maybeDeferred(f, *args)


def settled(d: Deferred[Any]) -> Any:
    """The outcome (value or Failure) of a Deferred that has already fired."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the store's Deferred did not fire at once"
    return out[0]


class Mail:
    """A user's mail in a throw-away Maildir tree."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="imap-session-")
        self.store = MaildirStore(self.root, hostname="test", run_in_thread=inline)
        self.store.ensure_user(ALICE)
        self._n = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def inbox_path(self) -> str:
        return os.path.join(self.root, "example.test", "alice")

    def add(self, data: bytes, info: str | None = None) -> int:
        """Write a message file into INBOX (new/, or cur/ with flags ``info``); its UID."""
        self._n += 1
        served = len(data) + data.count(b"\n") - data.count(b"\r\n")  # bare LFs as CRLF
        base = f"{DATE + self._n}.M{self._n}P1.test,S={len(data)},W={served}"
        if info is None:
            path = os.path.join(self.inbox_path, "new", base)
        else:
            path = os.path.join(self.inbox_path, "cur", f"{base}:2,{info}")
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (DATE, DATE))
        folder = self.store.folder(ALICE)
        folder.scan()
        uid = next(m.uid for m in folder.messages if m.base == base)
        return uid

    @property
    def uidvalidity(self) -> int:
        return self.store.folder(ALICE).uidvalidity


@pytest.fixture
def mail() -> Iterator[Mail]:
    m = Mail()
    yield m
    m.cleanup()


@pytest.fixture
def mail3(mail: Mail) -> Mail:
    for data in (MSG1, MSG2, MSG3):
        mail.add(data)
    return mail


class Client:
    """Drives one session as mailserver.driver does, running effects synchronously."""

    def __init__(
        self,
        mail: Mail,
        limits: IMAPLimits | None = None,
        sessions: UserSessions | None = None,
        **tls: bool,
    ) -> None:
        self.mail = mail
        self.session = IMAPSession(
            HOST, "test-1", limits or IMAPLimits(), mail.store, sessions=sessions, **tls
        )
        self.tls_started = 0
        self.woken = 0
        self.closed = False
        self.effects: list[Effect] = []
        self.while_reading: Any = None  # called before a ReadMessages completes
        self.while_flagging: Any = None  # called before a SetFlags runs
        self.session.attach(self._wake)
        self.greeting = self.run()

    def _wake(self) -> None:
        self.woken += 1

    def _effect(self, effect: Effect) -> Any:
        self.effects.append(effect)
        if isinstance(effect, Authenticate):
            if effect.password == "crash":
                return Failure(RuntimeError("directory unavailable"))
            return ALICE if effect.password == "secret" else None
        if isinstance(effect, ReadMessages):
            if self.while_reading is not None:
                self.while_reading()
            return settled(effect.folder.read_many(effect.uids))
        if isinstance(effect, SetFlags):
            if self.while_flagging is not None:
                self.while_flagging()
            return settled(effect.folder.set_flags_many(effect.changes, effect.then))
        if isinstance(effect, ScreenMessages):
            return settled(effect.folder.screen(effect.uids, effect.rule))
        if isinstance(effect, Pause):
            return None
        if isinstance(effect, MeasureFolder):
            return settled(effect.folder.measure())
        if isinstance(effect, FilesGone):
            return settled(effect.folder.expunged())
        if isinstance(effect, RefreshFolder):
            return settled(effect.folder.refresh())
        if isinstance(effect, OpenFolder):
            return settled(self.mail.store.open_folder(effect.address, effect.name))
        store = self.mail.store
        if isinstance(effect, CreateFolder):
            return settled(maybeDeferred(store.create_folder, effect.address, effect.name))
        if isinstance(effect, RenameFolder):
            return settled(
                maybeDeferred(store.rename_folder, effect.address, effect.old, effect.new)
            )
        if isinstance(effect, AppendMessage):
            store = self.mail.store
            return settled(
                store.deliver(
                    effect.address, [effect.data], effect.folder, effect.flags, effect.internal_date
                )
            )
        if isinstance(effect, CopyMessages):
            return settled(self.mail.store.copy_messages(effect.source, effect.uids, effect.dest))
        raise AssertionError(effect)

    def run(self) -> bytes:
        out = []
        while not self.closed and (action := self.session.next_action()) is not None:
            if isinstance(action, Send):
                out.append(action.data)
            elif isinstance(action, Close):
                self.closed = True
            elif isinstance(action, StartTLS):
                self.tls_started += 1
            else:
                assert isinstance(action, Effect)
                self.session.resume(self._effect(action))
        return b"".join(out)

    def send(self, data: bytes) -> bytes:
        assert not self.closed
        self.session.receive_data(data)
        return self.run()

    def login(self) -> Client:
        assert self.send(b"a LOGIN alice secret\r\n") == b"a OK " + LOGGED_IN
        return self

    def select(self, name: bytes = b"INBOX") -> bytes:
        out = self.send(b"s SELECT " + name + b"\r\n")
        assert out.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"), out
        return out


def selected(mail: Mail, **kwargs: Any) -> Client:
    client = Client(mail, **kwargs).login()
    client.select()
    return client


# Greeting, CAPABILITY, LOGIN ------------------------------------------------------------
def test_greeting(mail: Mail) -> None:
    assert Client(mail).greeting == GREETING


def test_capability_before_and_after_login(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"c1 CAPABILITY\r\n") == (
        b"* CAPABILITY " + CAPS + b" AUTH=PLAIN\r\nc1 OK CAPABILITY completed\r\n"
    )
    client.login()
    assert client.send(b"c2 CAPABILITY\r\n") == (
        b"* CAPABILITY " + CAPS + b"\r\nc2 OK CAPABILITY completed\r\n"
    )


def test_login_quoted(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b'a LOGIN "alice" "sec\\"ret"\r\n') == (
        b"a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    )
    assert client.effects == [Authenticate("alice", 'sec"ret')]
    assert client.send(b'b LOGIN "alice" "secret"\r\n') == b"b OK " + LOGGED_IN


def test_login_synchronizing_literals(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"alice {6}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"secret\r\n") == b"a OK " + LOGGED_IN
    assert client.effects == [Authenticate("alice", "secret")]


def test_login_non_synchronizing_literals(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n") == b"a OK " + LOGGED_IN


def test_login_literal_split_across_packets(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN {5+}\r\nal") == b""
    assert client.send(b"ice {0}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"\r\n") == b"a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    assert client.effects == [Authenticate("alice", "")]


def test_wrong_password(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN alice wrong\r\n") == (
        b"a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    )
    assert client.send(b"b SELECT INBOX\r\n") == b"b BAD Log in first\r\n"


def test_login_when_directory_fails(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN alice crash\r\n") == (
        b"a NO [UNAVAILABLE] Cannot check credentials now\r\n"
    )
    client.login()


def test_login_twice_is_bad(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"b LOGIN alice secret\r\n") == b"b BAD Already logged in\r\n"


def test_commands_before_login_are_bad(mail: Mail) -> None:
    client = Client(mail)
    for command in (b"SELECT INBOX", b'LIST "" *', b"FETCH 1 FLAGS", b"IDLE", b"NAMESPACE"):
        assert client.send(b"x " + command + b"\r\n") == b"x BAD Log in first\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_selected_state_commands_need_a_mailbox(mail: Mail) -> None:
    client = Client(mail).login()
    for command in (b"FETCH 1 FLAGS", b"STORE 1 FLAGS ()", b"EXPUNGE", b"CLOSE", b"CHECK"):
        assert client.send(b"x " + command + b"\r\n") == b"x BAD No mailbox selected\r\n"


def test_logout(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"z LOGOUT\r\nn NOOP\r\n") == (
        b"* BYE Logging out\r\nz OK LOGOUT completed\r\n"
    )
    assert client.closed


def test_id_and_namespace(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b'i ID ("name" "test")\r\n') == (
        b'* ID ("name" "mailserver")\r\ni OK ID completed\r\n'
    )
    client.login()
    assert client.send(b"n NAMESPACE\r\n") == (
        b'* NAMESPACE (("" ".")) NIL NIL\r\nn OK NAMESPACE completed\r\n'
    )


# AUTHENTICATE PLAIN (RFC 3501 §6.2.2, RFC 4616, RFC 4959) ---------------------------
def test_authenticate_plain_initial_response(mail: Mail) -> None:
    client = Client(mail)
    line = b"a AUTHENTICATE PLAIN " + plain(b"", b"alice", b"secret") + b"\r\n"
    assert client.send(line) == b"a OK " + LOGGED_IN
    assert client.effects == [Authenticate("alice", "secret")]


def test_authenticate_plain_with_authzid_of_self(mail: Mail) -> None:
    client = Client(mail)
    line = b"a AUTHENTICATE PLAIN " + plain(b"alice", b"alice", b"secret") + b"\r\n"
    assert client.send(line) == b"a OK " + LOGGED_IN


def test_authenticate_plain_as_someone_else(mail: Mail) -> None:
    client = Client(mail)
    line = b"a AUTHENTICATE PLAIN " + plain(b"bob", b"alice", b"secret") + b"\r\n"
    assert client.send(line) == b"a NO [AUTHORIZATIONFAILED] Cannot act as another user\r\n"
    assert client.effects == []


def test_authenticate_plain_continuation(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a AUTHENTICATE plain\r\n") == b"+ \r\n"
    assert client.send(plain(b"", b"alice", b"secret") + b"\r\n") == b"a OK " + LOGGED_IN


def test_authenticate_wrong_password(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(plain(b"", b"alice", b"nope") + b"\r\n") == (
        b"a NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    )


def test_authenticate_cancelled(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(b"*\r\n") == b"a BAD Authentication cancelled\r\n"
    client.login()


def test_authenticate_malformed_base64(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(b"!!!!\r\n") == b"a BAD Invalid base64\r\n"
    assert client.send(b"b AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(b"YWJj\r\n") == (  # "abc": decodes, but no NULs
        b"b BAD PLAIN needs authzid NUL authcid NUL password (RFC 4616)\r\n"
    )
    assert client.send(b"c AUTHENTICATE PLAIN AB=C\r\n") == (
        b"c BAD invalid base64 initial response\r\n"
    )
    assert client.effects == []
    client.login()


def test_authenticate_wrong_field_count(mail: Mail) -> None:
    client = Client(mail)
    line = b"a AUTHENTICATE PLAIN " + plain(b"alice", b"secret") + b"\r\n"
    assert client.send(line) == b"a BAD PLAIN needs authzid NUL authcid NUL password (RFC 4616)\r\n"
    line = b"b AUTHENTICATE PLAIN " + plain(b"", b"alice", b"secret", b"x") + b"\r\n"
    assert client.send(line) == b"b BAD PLAIN needs authzid NUL authcid NUL password (RFC 4616)\r\n"
    assert client.send(b"c AUTHENTICATE PLAIN =\r\n") == (
        b"c BAD PLAIN needs authzid NUL authcid NUL password (RFC 4616)\r\n"
    )


def test_authenticate_unknown_mechanism(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a AUTHENTICATE CRAM-MD5\r\n") == (
        b"a NO Unsupported authentication mechanism\r\n"
    )


# SELECT / EXAMINE (RFC 3501 §6.3.1, §6.3.2) ---------------------------------------------
def test_select_responses(mail3: Mail) -> None:
    client = Client(mail3).login()
    v = mail3.uidvalidity
    assert (
        client.send(b"s SELECT INBOX\r\n")
        == (
            b"* FLAGS (" + FLAGS + b")\r\n"
            b"* OK [PERMANENTFLAGS (" + FLAGS + b" \\*)] Flags permitted\r\n"
            b"* 3 EXISTS\r\n"
            b"* 3 RECENT\r\n"
            b"* OK [UNSEEN 1] First unseen\r\n"
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"* OK [UIDNEXT 4] Predicted next UID\r\n"
            b"* OK [HIGHESTMODSEQ 4] Highest\r\n"  # RFC 7162 §3.1.2.1: even before ENABLE
            b"s OK [READ-WRITE] SELECT completed\r\n" % v
        )
    )
    # The messages are no longer recent for the next session.
    other = Client(mail3).login()
    out = other.send(b"s SELECT inbox\r\n")
    assert b"* 3 EXISTS\r\n* 0 RECENT\r\n" in out


def test_select_unseen_and_keywords(mail: Mail) -> None:
    mail.add(MSG1, info="S")
    mail.add(MSG2, info="Sa")
    mail.add(MSG3)
    with open(os.path.join(mail.inbox_path, "dovecot-keywords"), "w") as f:
        f.write("0 $Important\n")
    mail.store._open.clear()  # reload the folder with its keyword table
    client = Client(mail).login()
    out = client.send(b"s SELECT INBOX\r\n")
    assert out.startswith(
        b"* FLAGS (" + FLAGS + b" $Important)\r\n"
        b"* OK [PERMANENTFLAGS (" + FLAGS + b" $Important \\*)] Flags permitted\r\n"
        b"* 3 EXISTS\r\n* 1 RECENT\r\n* OK [UNSEEN 3] First unseen\r\n"
    )
    assert client.send(b"f FETCH 2 FLAGS\r\n") == (
        b"* 2 FETCH (FLAGS ($Important \\Seen))\r\nf OK FETCH completed\r\n"
    )


def test_select_empty_mailbox(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"s SELECT INBOX\r\n") == (
        b"* FLAGS (" + FLAGS + b")\r\n"
        b"* OK [PERMANENTFLAGS (" + FLAGS + b" \\*)] Flags permitted\r\n"
        b"* 0 EXISTS\r\n"
        b"* 0 RECENT\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 1] Predicted next UID\r\n"
        b"* OK [HIGHESTMODSEQ 1] Highest\r\n"
        b"s OK [READ-WRITE] SELECT completed\r\n" % mail.uidvalidity
    )
    assert client.send(b"f FETCH 1:* FLAGS\r\n") == b"f OK FETCH completed\r\n"
    assert client.send(b"f FETCH 1 FLAGS\r\n") == b"f BAD Invalid message sequence number\r\n"


def test_select_other_folder_and_missing(mail: Mail) -> None:
    client = Client(mail).login()
    out = client.send(b"s SELECT Sent\r\n")
    assert out.endswith(
        b"* OK [UIDNEXT 1] Predicted next UID\r\n* OK [HIGHESTMODSEQ 1] Highest\r\n"
        b"s OK [READ-WRITE] SELECT completed\r\n"
    )
    assert client.send(b"t SELECT Nope\r\n") == b"t NO [NONEXISTENT] No such mailbox\r\n"
    # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected.
    assert client.send(b"f FETCH 1 FLAGS\r\n") == b"f BAD No mailbox selected\r\n"


def test_bad_mailbox_names(mail: Mail) -> None:
    client = Client(mail).login()
    for name in (b"../x", b"a/b", b'"a..b"', b".hidden"):
        assert client.send(b"s SELECT " + name + b"\r\n") == (
            b"s NO [NONEXISTENT] No such mailbox\r\n"
        ), name
        assert client.send(b"e EXAMINE " + name + b"\r\n") == (
            b"e NO [NONEXISTENT] No such mailbox\r\n"
        )
        assert client.send(b"t STATUS " + name + b" (MESSAGES)\r\n") == (
            b"t NO [NONEXISTENT] No such mailbox\r\n"
        )
    assert not os.path.exists(os.path.join(mail.root, "example.test", "x"))


def test_examine_is_read_only(mail3: Mail) -> None:
    client = Client(mail3).login()
    v = mail3.uidvalidity
    assert client.send(b"e EXAMINE INBOX\r\n") == (
        b"* FLAGS (" + FLAGS + b")\r\n"
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"
        b"* 3 EXISTS\r\n"
        b"* 3 RECENT\r\n"
        b"* OK [UNSEEN 1] First unseen\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 4] Predicted next UID\r\n"
        b"* OK [HIGHESTMODSEQ 4] Highest\r\n"
        b"e OK [READ-ONLY] EXAMINE completed\r\n" % v
    )
    assert client.send(b"s STORE 1 +FLAGS (\\Seen)\r\n") == (
        b"s NO [READ-ONLY] Mailbox is read-only\r\n"
    )
    assert client.send(b"x EXPUNGE\r\n") == b"x NO [READ-ONLY] Mailbox is read-only\r\n"
    assert client.send(b"f FETCH 2 BODY[]\r\n") == (
        b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(MSG2), MSG2)
    )
    assert client.send(b"f FETCH 2 FLAGS\r\n") == (
        b"* 2 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
    )
    assert mail3.store.folder(ALICE).by_uid(2).flags == frozenset()
    # EXAMINE left the messages recent (still in new/) for a read-write session.
    other = Client(mail3).login()
    assert b"* 3 RECENT\r\n" in other.select()


# FETCH (RFC 3501 §6.4.5, §7.4.2) --------------------------------------------------------
def fetch(client: Client, args: bytes, tag: bytes = b"f") -> bytes:
    return client.send(tag + b" FETCH " + args + b"\r\n")


def test_fetch_index_items(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 (FLAGS UID INTERNALDATE RFC822.SIZE)") == (
        b'* 1 FETCH (FLAGS (\\Recent) UID 1 INTERNALDATE "14-Nov-2023 22:13:20 +0000" '
        b"RFC822.SIZE %d)\r\nf OK FETCH completed\r\n" % len(MSG1)
    )
    assert not [e for e in client.effects if isinstance(e, ReadMessages)]  # no file was read
    assert fetch(client, b"2:* FAST") == (
        b'* 2 FETCH (FLAGS (\\Recent) INTERNALDATE "14-Nov-2023 22:13:20 +0000" '
        b"RFC822.SIZE %d)\r\n"
        b'* 3 FETCH (FLAGS (\\Recent) INTERNALDATE "14-Nov-2023 22:13:20 +0000" '
        b"RFC822.SIZE %d)\r\nf OK FETCH completed\r\n" % (len(MSG2), len(MSG3))
    )


@pytest.mark.parametrize("kept", [1, imap_session.FLAG_LISTS_KEPT])
def test_fetch_flags_same_set_recent_or_not(
    mail: Mail, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    # The FLAGS list of a flag set is built once per session: \Recent, which is per
    # session, is part of what it is kept under, and a full table starts again.
    monkeypatch.setattr(imap_session, "FLAG_LISTS_KEPT", kept)
    mail.add(MSG1)
    mail.add(MSG2)
    first = selected(mail)  # claims \Recent of both (read-write)
    first.send(b"s STORE 1 FLAGS.SILENT (\\Seen)\r\ns STORE 2 FLAGS.SILENT (\\Flagged)\r\n")
    assert first.send(b"c CLOSE\r\n") == b"c OK CLOSE completed\r\n"
    mail.add(MSG3, "S")
    client = selected(mail)  # claims \Recent of the third
    assert fetch(client, b"1:3 FLAGS") == (
        b"* 1 FETCH (FLAGS (\\Seen))\r\n"
        b"* 2 FETCH (FLAGS (\\Flagged))\r\n"
        b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
    )
    assert client.send(b"s STORE 1:3 +FLAGS (\\Answered)\r\n") == (
        b"* 1 FETCH (FLAGS (\\Answered \\Seen))\r\n"
        b"* 2 FETCH (FLAGS (\\Answered \\Flagged))\r\n"
        b"* 3 FETCH (FLAGS (\\Answered \\Seen \\Recent))\r\ns OK STORE completed\r\n"
    )
    assert fetch(selected(mail), b"3 FLAGS") == (
        b"* 3 FETCH (FLAGS (\\Answered \\Seen))\r\nf OK FETCH completed\r\n"
    )


def test_fetch_envelope(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 ENVELOPE") == (
        b'* 1 FETCH (ENVELOPE ("Mon, 1 Jan 2024 00:00:00 +0000" "one" '
        b'(("Bob" NIL "bob" "example.test")) (("Bob" NIL "bob" "example.test")) '
        b'(("Bob" NIL "bob" "example.test")) ((NIL NIL "alice" "example.test")) '
        b'NIL NIL NIL "<1@example.test>"))\r\nf OK FETCH completed\r\n'
    )
    # ENVELOPE does not set \Seen.
    assert fetch(client, b"1 FLAGS") == b"* 1 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"


def test_fetch_bodystructure_and_body(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 (BODYSTRUCTURE BODY)") == (
        b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1 '
        b'NIL NIL NIL NIL) BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1))\r\n'
        b"f OK FETCH completed\r\n"
    )


def test_fetch_body_sets_seen(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 BODY[]") == (
        b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
        % (len(MSG1), MSG1)
    )
    assert mail3.store.folder(ALICE).by_uid(1).flags == {"\\Seen"}
    # Already seen: no FLAGS this time.
    assert fetch(client, b"1 BODY[TEXT]") == (
        b"* 1 FETCH (BODY[TEXT] {8}\r\nHello.\r\n)\r\nf OK FETCH completed\r\n"
    )
    # Asked-for FLAGS shows the new \Seen and is not repeated.
    assert fetch(client, b"2 (FLAGS RFC822.TEXT)") == (
        b"* 2 FETCH (FLAGS (\\Seen \\Recent) RFC822.TEXT {8}\r\nsecond\r\n)\r\n"
        b"f OK FETCH completed\r\n"
    )


def test_fetch_peek_does_not_set_seen(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 BODY.PEEK[]") == (
        b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(MSG1), MSG1)
    )
    assert fetch(client, b"1 (BODY.PEEK[HEADER] RFC822.HEADER)") == (
        b"* 1 FETCH (BODY[HEADER] {%d}\r\n%s RFC822.HEADER {%d}\r\n%s)\r\n"
        b"f OK FETCH completed\r\n" % (len(MSG1_HEADER), MSG1_HEADER, len(MSG1_HEADER), MSG1_HEADER)
    )
    assert mail3.store.folder(ALICE).by_uid(1).flags == frozenset()


def test_fetch_header_sections(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 BODY[HEADER]") == (
        b"* 1 FETCH (BODY[HEADER] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
        % (len(MSG1_HEADER), MSG1_HEADER)
    )
    assert fetch(client, b"1 BODY.PEEK[HEADER.FIELDS (subject TO)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (subject TO)] {40}\r\n"
        b"To: alice@example.test\r\nSubject: one\r\n\r\n)\r\nf OK FETCH completed\r\n"
    )
    assert fetch(client, b"1 BODY.PEEK[HEADER.FIELDS.NOT (From Date Message-ID)]") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (From Date Message-ID)] {40}\r\n"
        b"To: alice@example.test\r\nSubject: one\r\n\r\n)\r\nf OK FETCH completed\r\n"
    )


def test_fetch_partial(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 BODY.PEEK[]<0.4>") == (
        b"* 1 FETCH (BODY[]<0> {4}\r\nFrom)\r\nf OK FETCH completed\r\n"
    )
    assert fetch(client, b"1 BODY.PEEK[TEXT]<2.100>") == (
        b"* 1 FETCH (BODY[TEXT]<2> {6}\r\nllo.\r\n)\r\nf OK FETCH completed\r\n"
    )
    assert fetch(client, b"1 BODY.PEEK[TEXT]<500.10>") == (
        b"* 1 FETCH (BODY[TEXT]<500> {0}\r\n)\r\nf OK FETCH completed\r\n"
    )
    assert fetch(client, b"1 BODY[1]<0.5>") == (
        b"* 1 FETCH (BODY[1]<0> {5}\r\nHello FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
    )


def test_fetch_rfc822(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"3 RFC822") == (
        b"* 3 FETCH (RFC822 {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
        % (len(MSG3), MSG3)
    )


def test_fetch_reads_each_message_once(mail3: Mail) -> None:
    client = selected(mail3)
    fetch(client, b"1:3 (ENVELOPE BODY.PEEK[HEADER] BODYSTRUCTURE)")
    reads = [e for e in client.effects if isinstance(e, ReadMessages)]
    assert [e.uids for e in reads] == [(1, 2, 3)]  # in one batch


def test_fetch_reads_at_most_a_budget_of_bytes_at_once(
    mail3: Mail, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap_session, "READ_BATCH_BYTES", len(MSG1) + len(MSG2))
    client = selected(mail3)
    out = fetch(client, b"1:3 BODY.PEEK[]")
    assert out.count(b" FETCH (BODY[] {") == 3
    reads = [e.uids for e in client.effects if isinstance(e, ReadMessages)]
    assert reads == [(1, 2), (3,)]
    client.effects.clear()
    monkeypatch.setattr(imap_session, "READ_BATCH_BYTES", 1)  # each message is larger
    assert client.send(b"s SEARCH BODY nothing-like-this\r\n") == (
        b"* SEARCH\r\ns OK SEARCH completed\r\n"
    )
    assert [e.uids for e in client.effects if isinstance(e, ReadMessages)] == [(1,), (2,), (3,)]


def test_uid_fetch_includes_uid(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"u UID FETCH 2:* FLAGS\r\n") == (
        b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n"
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n"
        b"u OK FETCH completed\r\n"
    )
    assert client.send(b"u UID FETCH 3 (UID RFC822.SIZE)\r\n") == (
        b"* 3 FETCH (UID 3 RFC822.SIZE %d)\r\nu OK FETCH completed\r\n" % len(MSG3)
    )
    # UIDs that do not exist are not an error (RFC 3501 §6.4.8); n:* includes the last.
    assert client.send(b"u UID FETCH 7:9 FLAGS\r\n") == b"u OK FETCH completed\r\n"
    assert client.send(b"u UID FETCH 99:* FLAGS\r\n") == (
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\nu OK FETCH completed\r\n"
    )


def test_invalid_sequence_numbers(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"4 FLAGS") == b"f BAD Invalid message sequence number\r\n"
    assert fetch(client, b"1,5:6 FLAGS") == b"f BAD Invalid message sequence number\r\n"
    assert fetch(client, b"0 FLAGS") == b"f BAD bad sequence number '0'\r\n"
    assert client.send(b"s STORE 9 +FLAGS (\\Seen)\r\n") == (
        b"s BAD Invalid message sequence number\r\n"
    )
    assert fetch(client, b"3:2 FLAGS") == (
        b"* 2 FETCH (FLAGS (\\Recent))\r\n* 3 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
    )


def test_fetch_bad_attributes(mail3: Mail) -> None:
    client = selected(mail3)
    assert fetch(client, b"1 (FLAGS BOGUS)") == b"f BAD unknown fetch attribute BOGUS\r\n"
    assert fetch(client, b"1 (MODSEQ") == b"f BAD expected SP\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_fetch_many_messages_pauses(mail: Mail) -> None:
    for _ in range(300):
        mail.add(MSG2)
    client = selected(mail)
    out = client.send(b"f FETCH 1:* UID\r\n")
    assert out.count(b" FETCH (UID ") == 300
    assert out.endswith(b"* 300 FETCH (UID 300)\r\nf OK FETCH completed\r\n")
    assert any(isinstance(e, Pause) for e in client.effects)


# STORE (RFC 3501 §6.4.6) -----------------------------------------------------------------
class SmallBufferTransport(StringTransport):
    """A transport whose write buffer is full after any write, until it is drained."""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()

    def drain(self) -> bytes:
        out = self.value()
        self.clear()
        self.producer.resumeProducing()
        return out


def test_a_slow_reader_holds_a_long_fetch_back(mail: Mail, monkeypatch: Any) -> None:
    """Memory stays bounded: while the transport cannot take more, the FETCH produces no
    further responses (mailserver.driver is the transport's producer). The driver writes
    after each piece here, not once it has collected WRITE_ABOVE bytes, and the session
    does not join pieces into one Send: a response is its text up to the literal, the
    literal's octets (never copied into a longer string), and the rest."""
    monkeypatch.setattr(driver, "WRITE_ABOVE", 1)
    monkeypatch.setattr(imap_session, "SEND_JOIN_BYTES", 1)
    for i in range(3):
        mail.add(b"Subject: %d\r\n\r\nbody\r\n" % i)
    client = selected(mail)
    transport = SmallBufferTransport()
    proto = SessionProtocol(client.session, client._effect, None)
    proto.makeConnection(transport)
    proto.dataReceived(b"f FETCH 1:* (BODY.PEEK[])\r\nn NOOP\r\n")
    parts = []
    while out := transport.drain():
        parts.append(out)
    assert parts == [
        *(
            piece
            for i in range(1, 4)
            for piece in (
                b"* %d FETCH (BODY[] {20}\r\n" % i,
                b"Subject: %d\r\n\r\nbody\r\n" % (i - 1),
                b")\r\n",
            )
        ),
        b"f OK FETCH completed\r\n",
        b"n OK NOOP completed\r\n",
    ]


def test_a_long_store_asks_for_the_next_batch_with_each(
    mail: Mail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SetFlags names the batch after it (its renames run while this one is
    reported); messages whose flags do not change are reported but not renamed."""
    monkeypatch.setattr(imap_session, "STORE_FIRST_BATCH", 1)
    monkeypatch.setattr(imap_session, "STORE_BATCH", 2)
    for i in range(6):
        mail.add(b"Subject: %d\r\n\r\nbody\r\n" % i, "F" if i == 2 else "")
    client = selected(mail)
    assert (
        client.send(b"s STORE 1:6 +FLAGS (\\Flagged)\r\n")
        == b"".join(b"* %d FETCH (FLAGS (\\Flagged))\r\n" % i for i in range(1, 7))
        + b"s OK STORE completed\r\n"
    )
    flagged = frozenset({"\\Flagged"})
    asked = [(e.changes, e.then) for e in client.effects if isinstance(e, SetFlags)]
    # Batches of 1, 2, 2 and 1 (3 is flagged already).
    assert asked == [
        (((1, flagged),), ((2, flagged),)),
        (((2, flagged),), ((4, flagged), (5, flagged))),
        (((4, flagged), (5, flagged)), ((6, flagged),)),
        (((6, flagged),), ()),
    ]
    assert fetch(selected(mail), b"1:6 FLAGS").count(b"\\Flagged") == 6


@given(st.integers(min_value=0, max_value=5000), st.sampled_from([(1, 2), (4, 16), (64, 1024)]))
def test_store_batches_ramp_up_and_down(count: int, sizes: tuple[int, int]) -> None:
    first, most = sizes
    batches = imap_session._ramped_batches(list(range(count)), first, most)
    assert [i for b in batches for i in b] == list(range(count))
    assert all(0 < len(b) <= max(most, 2 * first) for b in batches)
    if count > 2 * first:  # nothing runs beside the first renames and the last report
        assert len(batches[0]) == len(batches[-1]) == first
    else:
        assert len(batches) == (1 if count else 0)


def test_a_change_by_another_session_during_a_long_store_is_reported(
    mail: Mail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the STORE's own changes to a batch not yet reported are kept quiet: another
    session's change to a message reported already is news, told at the end."""
    monkeypatch.setattr(imap_session, "STORE_FIRST_BATCH", 1)
    monkeypatch.setattr(imap_session, "STORE_BATCH", 1)
    for i in range(3):
        mail.add(b"Subject: %d\r\n\r\nbody\r\n" % i, "")
    client, other = selected(mail), selected(mail)
    calls = []

    def meanwhile() -> None:
        calls.append(None)
        if len(calls) == 2:  # message 1 is reported: another session flags it \Seen
            other.send(b"o STORE 1 +FLAGS.SILENT (\\Seen)\r\n")

    client.while_flagging = meanwhile
    out = client.send(b"s STORE 1:3 +FLAGS (\\Flagged)\r\n")
    assert out == (
        b"* 1 FETCH (FLAGS (\\Flagged))\r\n* 2 FETCH (FLAGS (\\Flagged))\r\n"
        b"* 3 FETCH (FLAGS (\\Flagged))\r\n* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen))\r\n"
        b"s OK STORE completed\r\n"
    )


def test_responses_in_a_row_go_out_as_one_send(
    mail3: Mail, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = selected(mail3)
    fetch(client, b"1:3 RFC822.SIZE")  # measured: the next FETCH needs no effect
    client.session.receive_data(b"f FETCH 1:3 (FLAGS RFC822.SIZE)\r\n")
    actions = []
    while (action := client.session.next_action()) is not None:
        actions.append(action)
    assert [type(a) for a in actions] == [Send]
    assert actions[0].data.count(b"FETCH (FLAGS") == 3  # type: ignore[attr-defined]
    assert actions[0].data.endswith(b"f OK FETCH completed\r\n")  # type: ignore[attr-defined]
    # Up to SEND_JOIN_BYTES: beyond, the next response starts another Send.
    monkeypatch.setattr(imap_session, "SEND_JOIN_BYTES", 40)
    client.session.receive_data(b"f FETCH 1:3 FLAGS\r\n")
    sizes = []
    while (action := client.session.next_action()) is not None:
        sizes.append(len(action.data))  # type: ignore[attr-defined]
    assert len(sizes) == 2 and sizes[0] >= 40


def test_store_variants(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"s STORE 1 +FLAGS (\\Flagged \\Seen)\r\n") == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))\r\ns OK STORE completed\r\n"
    )
    assert client.send(b"s STORE 1 -FLAGS \\Seen\r\n") == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\ns OK STORE completed\r\n"
    )
    assert client.send(b"s STORE 1:2 FLAGS (\\Answered $Label1)\r\n") == (
        b"* 1 FETCH (FLAGS ($Label1 \\Answered \\Recent))\r\n"
        b"* 2 FETCH (FLAGS ($Label1 \\Answered \\Recent))\r\n"
        # RFC 3501 §7.2.6: the new keyword is announced.
        b"* FLAGS (" + FLAGS + b" $Label1)\r\n"
        b"* OK [PERMANENTFLAGS (" + FLAGS + b" $Label1 \\*)] Flags permitted\r\n"
        b"s OK STORE completed\r\n"
    )
    assert client.send(b"s STORE 2 FLAGS ()\r\n") == (
        b"* 2 FETCH (FLAGS (\\Recent))\r\ns OK STORE completed\r\n"
    )
    assert client.send(b"s STORE 2:3 +FLAGS.SILENT (\\Deleted)\r\n") == b"s OK STORE completed\r\n"
    assert client.send(b"u UID STORE 3 -FLAGS (\\Deleted)\r\n") == (
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\nu OK STORE completed\r\n"
    )
    assert client.send(b"u UID STORE 1:* FLAGS.SILENT (\\Draft)\r\n") == (
        b"u OK STORE completed\r\n"
    )
    folder = mail3.store.folder(ALICE)
    assert [m.flags for m in folder.messages] == [{"\\Draft"}] * 3
    # The flags are on disk (Maildir info) and survive a reload.
    mail3.store._open.clear()
    assert [m.flags for m in mail3.store.folder(ALICE).messages] == [{"\\Draft"}] * 3


def test_store_rejects_recent_and_bad_syntax(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"s STORE 1 +FLAGS (\\Recent)\r\n") == b"s BAD \\Recent may not be set\r\n"
    assert client.send(b"s STORE 1 XFLAGS (\\Seen)\r\n") == (
        b"s BAD expected FLAGS or FLAGS.SILENT\r\n"
    )


# EXPUNGE, CLOSE, UNSELECT (RFC 3501 §6.4.2, §6.4.3, RFC 3691) -------------------------
def test_expunge_responses(mail: Mail) -> None:
    for data in (MSG1, MSG2, MSG3, MSG4):
        mail.add(data)
    client = selected(mail)
    client.send(b"s STORE 1,3,4 +FLAGS.SILENT (\\Deleted)\r\n")
    # RFC 3501 §7.4.1: each EXPUNGE renumbers the messages after it.
    assert client.send(b"x EXPUNGE\r\n") == (
        b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nx OK EXPUNGE completed\r\n"
    )
    assert fetch(client, b"1:* UID") == b"* 1 FETCH (UID 2)\r\nf OK FETCH completed\r\n"
    assert client.send(b"x EXPUNGE\r\n") == b"x OK EXPUNGE completed\r\n"
    files = os.listdir(os.path.join(mail.inbox_path, "new")) + os.listdir(
        os.path.join(mail.inbox_path, "cur")
    )
    assert [name.partition(":")[0] for name in files] == [
        m.base for m in mail.store.folder(ALICE).messages
    ]


def test_close_expunges_silently(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"s STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
    assert client.send(b"c CLOSE\r\n") == b"c OK CLOSE completed\r\n"
    assert fetch(client, b"1 FLAGS") == b"f BAD No mailbox selected\r\n"
    assert client.send(b"t STATUS INBOX (MESSAGES)\r\n") == (
        b'* STATUS "INBOX" (MESSAGES 2)\r\nt OK STATUS completed\r\n'
    )


def test_close_after_examine_does_not_expunge(mail3: Mail) -> None:
    mail3.store.folder(ALICE).set_flags(2, {"\\Deleted"})
    client = Client(mail3).login()
    client.send(b"e EXAMINE INBOX\r\n")
    assert client.send(b"c CLOSE\r\n") == b"c OK CLOSE completed\r\n"
    assert len(mail3.store.folder(ALICE).messages) == 3


def test_unselect_does_not_expunge(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"s STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
    assert client.send(b"u UNSELECT\r\n") == b"u OK UNSELECT completed\r\n"
    assert len(mail3.store.folder(ALICE).messages) == 3
    assert client.send(b"c CHECK\r\n") == b"c BAD No mailbox selected\r\n"


def test_unknown_select_parameter(mail3: Mail) -> None:
    client = Client(mail3).login()
    assert client.send(b"s SELECT INBOX (QRESYNC)\r\n") == b"s BAD unsupported select parameter\r\n"


def test_fetch_keeps_flags_changed_while_reading(mail3: Mail) -> None:
    a = selected(mail3)
    folder = mail3.store.folder(ALICE)

    def meanwhile() -> None:
        a.while_reading = None
        folder.scan()  # the index is rebuilt (new MessageInfo objects)
        folder.set_flags(1, {"\\Flagged"})

    a.while_reading = meanwhile
    assert fetch(a, b"1 BODY[TEXT]") == (
        b"* 1 FETCH (BODY[TEXT] {8}\r\nHello.\r\n FLAGS (\\Flagged \\Seen \\Recent))\r\n"
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Seen \\Recent))\r\n"
        b"f OK FETCH completed\r\n"
    )
    assert folder.by_uid(1).flags == {"\\Flagged", "\\Seen"}


def test_fetch_of_message_expunged_while_reading(mail3: Mail) -> None:
    a = selected(mail3)
    folder = mail3.store.folder(ALICE)

    def meanwhile() -> None:
        a.while_reading = None
        folder.expunge([1])

    a.while_reading = meanwhile
    assert fetch(a, b"1:2 BODY.PEEK[TEXT]") == (
        b"* 2 FETCH (BODY[TEXT] {8}\r\nsecond\r\n)\r\nf OK FETCH completed\r\n"
    )
    assert a.send(b"n NOOP\r\n") == b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n"


# Several sessions on one folder (RFC 3501 §5.2, §7.4.1) ---------------------------------
def test_expunge_by_another_session(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    assert b.send(b"s STORE 2 +FLAGS (\\Deleted)\r\n") == (
        b"* 2 FETCH (FLAGS (\\Deleted))\r\ns OK STORE completed\r\n"
    )
    assert b.send(b"x EXPUNGE\r\n") == b"* 2 EXPUNGE\r\nx OK EXPUNGE completed\r\n"
    # Not during a FETCH by sequence number: A's numbers stay as they were.
    assert fetch(a, b"1:3 UID") == (
        b"* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\nf OK FETCH completed\r\n"
    )
    assert a.send(b"s STORE 3 +FLAGS (\\Seen)\r\n") == (
        b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\ns OK STORE completed\r\n"
    )
    assert a.send(b"s SEARCH 1:3\r\n") == b"* SEARCH 1 3\r\ns OK SEARCH completed\r\n"
    assert a.send(b"n NOOP\r\n") == b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n"
    assert fetch(a, b"2 UID") == b"* 2 FETCH (UID 3)\r\nf OK FETCH completed\r\n"
    # B hears of A's \Seen at its next chance.
    assert b.send(b"n NOOP\r\n") == b"* 2 FETCH (UID 3 FLAGS (\\Seen))\r\nn OK NOOP completed\r\n"


def test_expunge_by_another_session_reported_at_uid_fetch(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    b.send(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
    assert a.send(b"u UID FETCH 3 UID\r\n") == (
        b"* 3 FETCH (UID 3)\r\n* 1 EXPUNGE\r\nu OK FETCH completed\r\n"
    )
    assert a.send(b"c CHECK\r\n") == b"c OK CHECK completed\r\n"
    # A UID SEARCH may report them too (RFC 3501 §7.4.1), with the numbers after them.
    b.send(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
    assert a.send(b"u UID SEARCH ALL\r\n") == (
        b"* SEARCH 3\r\n* 1 EXPUNGE\r\nu OK SEARCH completed\r\n"
    )


def test_expunge_by_another_session_reported_at_own_expunge(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    b.send(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
    a.send(b"s STORE 3 +FLAGS.SILENT (\\Deleted)\r\n")
    assert a.send(b"x EXPUNGE\r\n") == (b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nx OK EXPUNGE completed\r\n")
    assert fetch(a, b"1:* UID") == b"* 1 FETCH (UID 2)\r\nf OK FETCH completed\r\n"


def test_flag_change_by_another_session(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    assert b.send(b"s STORE 1 +FLAGS.SILENT (\\Flagged)\r\n") == b"s OK STORE completed\r\n"
    assert a.send(b"n NOOP\r\n") == (
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\nn OK NOOP completed\r\n"
    )
    assert a.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"
    # B's FETCH BODY[] sets \Seen, which A hears of too.
    b.send(b"f FETCH 2 BODY[TEXT]\r\n")
    assert a.send(b"c CHECK\r\n") == (
        b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\nc OK CHECK completed\r\n"
    )


def test_delivery_reported_as_exists(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    mail3.add(MSG4)
    # RECENT counts all of A's recent messages: the three it found and the new one.
    assert a.send(b"n NOOP\r\n") == b"* 4 EXISTS\r\n* 4 RECENT\r\nn OK NOOP completed\r\n"
    # Only one session gets \Recent for a new message (RFC 3501 §2.3.2).
    assert b.send(b"n NOOP\r\n") == b"* 4 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n"
    assert fetch(a, b"4 (UID FLAGS)") == (
        b"* 4 FETCH (UID 4 FLAGS (\\Recent))\r\nf OK FETCH completed\r\n"
    )
    assert fetch(b, b"4 (UID FLAGS)") == b"* 4 FETCH (UID 4 FLAGS ())\r\nf OK FETCH completed\r\n"


def test_delivery_reported_during_fetch(mail3: Mail) -> None:
    a = selected(mail3)
    mail3.add(MSG4)
    # EXISTS may be sent at any time, also during a FETCH by sequence number.
    assert fetch(a, b"3 UID") == (
        b"* 3 FETCH (UID 3)\r\n* 4 EXISTS\r\n* 4 RECENT\r\nf OK FETCH completed\r\n"
    )


def test_keyword_from_another_session(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    b.send(b"s STORE 1 +FLAGS.SILENT (Work)\r\n")
    assert a.send(b"n NOOP\r\n") == (
        b"* FLAGS (" + FLAGS + b" Work)\r\n"
        b"* OK [PERMANENTFLAGS (" + FLAGS + b" Work \\*)] Flags permitted\r\n"
        b"* 1 FETCH (UID 1 FLAGS (Work \\Recent))\r\n"
        b"n OK NOOP completed\r\n"
    )


def test_examine_session_sees_new_mail_as_recent(mail3: Mail) -> None:
    a = Client(mail3).login()
    a.send(b"e EXAMINE INBOX\r\n")
    mail3.add(MSG4)
    assert a.send(b"n NOOP\r\n") == b"* 4 EXISTS\r\n* 4 RECENT\r\nn OK NOOP completed\r\n"
    # Reading it does not claim it: a read-write session still gets it as recent.
    b = Client(mail3).login()
    assert b"* 4 RECENT\r\n" in b.select()


def test_noop_notices_files_written_by_other_programs(mail3: Mail) -> None:
    a = selected(mail3)
    path = os.path.join(mail3.inbox_path, "new", "1800000000.M9P9.other")
    with open(path, "wb") as f:
        f.write(MSG4)
    # Make the directory's change visible even on coarse-grained file systems.
    os.utime(os.path.join(mail3.inbox_path, "new"), ns=(1, 1))
    assert a.send(b"n NOOP\r\n") == b"* 4 EXISTS\r\n* 4 RECENT\r\nn OK NOOP completed\r\n"
    os.unlink(path)  # SELECT and NOOP leave files where they are (claiming is in the index)
    os.utime(os.path.join(mail3.inbox_path, "new"), ns=(2, 2))
    assert a.send(b"c CHECK\r\n") == b"* 4 EXPUNGE\r\nc OK CHECK completed\r\n"


def test_status_of_selected_mailbox(mail3: Mail) -> None:
    client = Client(mail3).login()
    v = mail3.uidvalidity
    assert client.send(b"t STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)\r\n") == (
        b'* STATUS "INBOX" (MESSAGES 3 RECENT 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n'
        b"t OK STATUS completed\r\n" % v
    )
    client.select()
    assert client.send(b"t STATUS INBOX (RECENT UNSEEN)\r\n") == (
        b'* STATUS "INBOX" (RECENT 0 UNSEEN 3)\r\nt OK STATUS completed\r\n'
    )
    assert client.send(b"t STATUS Sent (MESSAGES)\r\n") == (
        b'* STATUS "Sent" (MESSAGES 0)\r\nt OK STATUS completed\r\n'
    )
    assert client.send(b"t STATUS Nope (MESSAGES)\r\n") == b"t NO [NONEXISTENT] No such mailbox\r\n"
    assert client.send(b"t STATUS INBOX ()\r\n") == b"t BAD empty status item list\r\n"
    assert client.send(b"t STATUS INBOX (HIGHESTMODSEQ)\r\n") == (
        b"* OK [HIGHESTMODSEQ 4] Highest\r\n"  # RFC 7162 §3.1.2.1: CONDSTORE now on
        b'* STATUS "INBOX" (HIGHESTMODSEQ 4)\r\nt OK STATUS completed\r\n'
    )


# IDLE (RFC 2177) -------------------------------------------------------------------------
def test_idle_done(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n"
    assert client.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n"
    assert client.send(b"nope\r\n") == b"i BAD Expected DONE\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"
    assert client.woken == 0


def test_idle_woken_by_delivery(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n"
    mail3.add(MSG4)
    assert client.woken == 1
    assert client.run() == b"* 4 EXISTS\r\n* 4 RECENT\r\n"
    assert client.send(b"done\r\n") == b"i OK IDLE terminated\r\n"


def test_idle_reports_expunge_and_flags_at_once(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    assert a.send(b"i IDLE\r\n") == b"+ idling\r\n"
    b.send(b"s STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
    assert a.run() == b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Recent))\r\n"
    b.send(b"x EXPUNGE\r\n")
    assert a.run() == b"* 2 EXPUNGE\r\n"
    assert a.woken == 2
    assert a.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"


def test_idle_reports_pending_changes_at_start(mail3: Mail) -> None:
    a = selected(mail3)
    b = selected(mail3)
    b.send(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
    assert a.send(b"i IDLE\r\n") == b"+ idling\r\n* 1 EXPUNGE\r\n"


def test_idle_line_too_long_ends_idle(mail3: Mail) -> None:
    client = selected(mail3, limits=IMAPLimits(max_line=50))
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n"
    assert client.send(b"x" * 60) == b"i BAD Line too long\r\n"
    assert client.send(b"xx\r\nn NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_authenticate_line_too_long_ends_exchange(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_line=50))
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(b"QUFB" * 20 + b"\r\n") == b"a BAD Line too long\r\n"
    client.login()


def test_idle_in_authenticated_state(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"i IDLE\r\nDONE\r\n") == b"+ idling\r\ni OK IDLE terminated\r\n"


class DeliveryTests(unittest.TestCase):
    """A real delivery (thread, fsync, rename) wakes an idling session."""

    def setUp(self) -> None:
        self.mail = Mail()
        self.addCleanup(self.mail.cleanup)

    async def test_idle_woken_by_store_deliver(self) -> None:
        self.mail.add(MSG1)
        client = selected(self.mail)
        self.assertEqual(client.send(b"i IDLE\r\n"), b"+ idling\r\n")
        stored = await self.mail.store.deliver(ALICE, [MSG2])
        self.assertEqual(stored.uid, 2)
        self.assertEqual(client.woken, 1)
        self.assertEqual(client.run(), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        self.assertEqual(client.send(b"DONE\r\n"), b"i OK IDLE terminated\r\n")
        self.assertEqual(
            fetch(client, b"2 BODY.PEEK[]"),
            b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(MSG2), MSG2),
        )

    async def test_delivery_not_reported_outside_allowed_moments(self) -> None:
        client = selected(self.mail)
        await self.mail.store.deliver(ALICE, [MSG2])
        self.assertEqual(client.woken, 0)
        self.assertEqual(client.run(), b"")
        self.assertEqual(
            client.send(b"n NOOP\r\n"), b"* 1 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n"
        )


# LIST / LSUB (RFC 3501 §6.3.8, §6.3.9) ---------------------------------------------------
def test_list_patterns(mail: Mail) -> None:
    mail.store.create_folder(ALICE, "Archive.2023")
    client = Client(mail).login()
    assert client.send(b'l LIST "" *\r\n') == (
        b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
        b'* LIST (\\HasChildren \\Archive) "." "Archive"\r\n'
        b'* LIST (\\HasNoChildren) "." "Archive.2023"\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "." "Junk"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "." "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Trash) "." "Trash"\r\n'
        b"l OK LIST completed\r\n"
    )
    assert client.send(b'l LIST "" %\r\n') == (
        b'* LIST (\\HasNoChildren) "." "INBOX"\r\n'
        b'* LIST (\\HasChildren \\Archive) "." "Archive"\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "." "Junk"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "." "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Trash) "." "Trash"\r\n'
        b"l OK LIST completed\r\n"
    )
    assert client.send(b'l LIST "Archive." %\r\n') == (
        b'* LIST (\\HasNoChildren) "." "Archive.2023"\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" Archive.*\r\n') == (
        b'* LIST (\\HasNoChildren) "." "Archive.2023"\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" ""\r\n') == (
        b'* LIST (\\Noselect) "." ""\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" inbox\r\n') == (
        b'* LIST (\\HasNoChildren) "." "INBOX"\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" INBOX\r\n') == (
        b'* LIST (\\HasNoChildren) "." "INBOX"\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" S%\r\n') == (
        b'* LIST (\\HasNoChildren \\Sent) "." "Sent"\r\nl OK LIST completed\r\n'
    )
    assert client.send(b'l LIST "" Nothing*\r\n') == b"l OK LIST completed\r\n"
    assert client.send(b'l LIST "" "a/b"\r\n') == b"l OK LIST completed\r\n"


def test_list_pattern_is_not_a_regex(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b'l LIST "" "S.n[t]"\r\n') == b"l OK LIST completed\r\n"
    assert client.send(b'l LIST "" "Se?t"\r\n') == b"l OK LIST completed\r\n"


def test_lsub_reads_subscriptions(mail: Mail) -> None:
    with open(os.path.join(mail.inbox_path, "subscriptions"), "w") as f:
        f.write("Sent\nTrash\nGone\n")
    client = Client(mail).login()
    assert client.send(b'l LSUB "" *\r\n') == (
        b'* LSUB (\\HasNoChildren) "." "INBOX"\r\n'
        b'* LSUB (\\HasNoChildren \\Sent) "." "Sent"\r\n'
        b'* LSUB (\\HasNoChildren \\Trash) "." "Trash"\r\n'
        # RFC 3501 §6.3.6: a subscription outlives its mailbox.
        b'* LSUB (\\Noselect \\HasNoChildren) "." "Gone"\r\n'
        b"l OK LSUB completed\r\n"
    )
    assert client.send(b'l LSUB "" T%\r\n') == (
        b'* LSUB (\\HasNoChildren \\Trash) "." "Trash"\r\nl OK LSUB completed\r\n'
    )
    os.unlink(os.path.join(mail.inbox_path, "subscriptions"))
    assert client.send(b'l LSUB "" *\r\n') == (
        b'* LSUB (\\HasNoChildren) "." "INBOX"\r\nl OK LSUB completed\r\n'
    )


# Framing limits and bad input -------------------------------------------------------------
def test_unknown_and_unsupported_commands(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"a FROB\r\n") == b"a BAD unknown command\r\n"
    assert client.send(b"a GETQUOTA foo\r\n") == b"a BAD unknown command\r\n"
    assert client.send(b"\r\n") == b"* BAD missing tag\r\n"
    assert client.send(b"a\r\n") == b"* BAD missing tag\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_literal_too_big_synchronizing(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_literal=10))
    assert client.send(b"a LOGIN {11}\r\n") == b"a NO [TOOBIG] Literal too big\r\n"
    assert client.send(b"b LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"alice {6}\r\n") == b"b NO [TOOBIG] Literal too big\r\n"
    assert client.send(b"c LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"alice {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"hello\r\n") == b"c NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    assert not client.closed


def test_literal_too_big_non_synchronizing(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_literal=10))
    assert client.send(b"a LOGIN {11+}\r\nalice12345 secret\r\n") == (
        b"* BYE [TOOBIG] Literal too big\r\n"
    )
    assert client.closed


def test_literals_before_login_are_small(mail: Mail) -> None:
    """An unauthenticated client cannot make the server hold a big literal."""
    client = Client(mail)  # the default limits: 64 MiB literals once logged in
    assert client.send(b"a LOGIN {8193}\r\n") == b"a NO [TOOBIG] Literal too big\r\n"
    assert client.send(b"b LOGIN alice {8193+}\r\n") == b"* BYE [TOOBIG] Literal too big\r\n"
    assert client.closed
    client = Client(mail)
    assert client.send(b"c LOGIN {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"alice {6}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"secret\r\n").startswith(b"c OK ")
    # Logged in, APPEND may send the big literals it needs.
    assert client.send(b"d APPEND INBOX {9000}\r\n") == b"+ Ready for literal data\r\n"


def test_literal_with_too_many_digits(mail: Mail) -> None:
    client = Client(mail)
    assert client.send(b"a LOGIN {99999999999}\r\n") == b"a BAD literal length too large\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_line_too_long(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_line=100))
    assert client.send(b"a NOOP " + b"x" * 200 + b"\r\nb NOOP\r\n") == (
        b"a BAD Line too long\r\nb OK NOOP completed\r\n"
    )
    # Arriving in pieces: refused once, the rest of the line is discarded.
    assert client.send(b"c NOOP " + b"x" * 120) == b"c BAD Line too long\r\n"
    assert client.send(b"x" * 150) == b""
    assert client.send(b"x {5}\r\nd NOOP\r\n") == b"d OK NOOP completed\r\n"
    assert client.send(b"\x00" * 101) == b"* BAD Line too long\r\n"
    assert client.send(b"\r\ne NOOP\r\n") == b"e OK NOOP completed\r\n"


def test_command_too_long_across_literals(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_line=100))
    # Eight lines of 12 octets fit in 100, the ninth does not.
    assert client.send(b"a LOGIN {0+}\r\n" * 8) == b""
    assert client.send(b"a LOGIN {0+}\r\n") == b"a BAD Line too long\r\n"
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_too_many_errors(mail: Mail) -> None:
    client = Client(mail, IMAPLimits(max_errors=3))
    assert client.send(b"a FROB\r\n") == b"a BAD unknown command\r\n"
    assert client.send(b"b FROB\r\n") == b"b BAD unknown command\r\n"
    assert client.send(b"c FROB\r\nd NOOP\r\n") == (
        b"c BAD unknown command\r\n* BYE Too many errors\r\n"
    )
    assert client.closed


def test_timeout_and_connection_lost(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.session.timed_out() == b"* BYE Autologout; idle for too long\r\n"
    client.session.connection_lost()
    assert mail3.store.bus.listeners(mail3.store.folder(ALICE).key) == 0


# Random input ----------------------------------------------------------------------------
FRAGMENTS = [
    b"a ",
    b"b UID ",
    b"FETCH ",
    b"STORE ",
    b"1:* ",
    b"2 ",
    b"* ",
    b"(FLAGS BODY[] ENVELOPE BODYSTRUCTURE)",
    b"BODY.PEEK[HEADER.FIELDS (Subject)]<0.5>",
    b"+FLAGS (\\Deleted)",
    b"FLAGS.SILENT (\\Seen)",
    b"EXPUNGE",
    b"CLOSE",
    b"SELECT INBOX",
    b"EXAMINE INBOX",
    b"IDLE",
    b"DONE",
    b"NOOP",
    b'LIST "" *',
    b"STATUS INBOX (MESSAGES UNSEEN)",
    b"AUTHENTICATE PLAIN",
    b"LOGIN alice secret",
    b"COPY ",
    b"MOVE ",
    b"Trash",
    b"SEARCH ",
    b"CHARSET UTF-8 ",
    b"OR NOT SEEN ",
    b"TEXT hello",
    b"HEADER Subject ",
    b"SINCE 1-Jan-2024 ",
    b"MODSEQ 2",
    b"(CHANGEDSINCE 1)",
    b"(UNCHANGEDSINCE 3) ",
    b"APPEND Sent (\\Seen) ",
    b"CREATE x.y",
    b"DELETE x",
    b"RENAME x z",
    b"RENAME INBOX Old",
    b"SUBSCRIBE x",
    b"ENABLE CONDSTORE",
    b"{3}\r\n",
    b"{2+}\r\n",
    b"\r\n",
    b'"',
    b"(",
    b")",
]

_RESPONSE_LITERAL = re.compile(rb"\{(\d+)\}\Z")


def responses(out: bytes) -> list[bytes]:
    """Split server output into responses (a literal continues its response)."""
    found = []
    current = b""
    pos = 0
    while pos < len(out):
        end = out.index(b"\r\n", pos)
        line = out[pos:end]
        pos = end + 2
        current += line
        match = _RESPONSE_LITERAL.search(line)
        if match:
            size = int(match.group(1))
            current += b"\r\n" + out[pos : pos + size]
            pos += size
            continue
        found.append(current)
        current = b""
    assert current == b""
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_random_input_never_breaks_the_session(pieces: list[bytes], chunk: int) -> None:
    mail = Mail()
    try:
        for data in (MSG1, MSG2, MSG3):
            mail.add(data)
        client = selected(mail, limits=IMAPLimits(max_line=200, max_literal=50, max_errors=10))
        other = selected(mail)
        data = b"".join(pieces)
        out = b""
        for i in range(0, len(data), chunk * 5):
            if client.closed:
                break
            out += client.send(data[i : i + chunk * 5])
            other.send(b"s STORE 1 +FLAGS.SILENT (\\Flagged)\r\n")
            out += client.run()
        assert out == b"" or out.endswith(b"\r\n")
        for response in responses(out):
            first = response.split(b" ", 1)[0]
            assert first in (b"*", b"+") or (first and first in data), response
            assert b"SERVERBUG" not in response
    finally:
        mail.cleanup()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(commands(), more_commands()))
def test_every_generated_command_gets_its_tagged_reply(case: tuple[list[bytes], Any]) -> None:
    """Any well-formed command, in a session with a mailbox selected and another session
    changing it, ends in its own tagged reply and never in a server error."""
    pieces, command = case
    mail = Mail()
    try:
        for data in (MSG1, MSG2, MSG3):
            mail.add(data)
        client = selected(mail)
        other = selected(mail)
        other.send(b"s STORE 1 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
        # Line pieces end with CRLF; literal pieces (odd positions) go as they are.
        data = b"".join(p if i % 2 else p + b"\r\n" for i, p in enumerate(pieces))
        out = client.send(data)
        if command.name == "IDLE":
            out += client.send(b"DONE\r\n")
        tagged = [r for r in responses(out) if r.startswith(command.tag.encode() + b" ")]
        assert len(tagged) == 1, out
        assert tagged[0].split(b" ")[1] in (b"OK", b"NO", b"BAD"), out
        assert b"SERVERBUG" not in out
    finally:
        mail.cleanup()


def test_a_fetch_response_keeps_each_literal_apart() -> None:
    """A message body goes out as it was read, the very object: it is not copied into the
    strings built around it (five copies of a 20 MiB body held the reactor for 35 ms)."""
    body = b"Subject: x\r\n\r\nhi\r\n"
    pieces = imap_session._fetch_response(
        7, [b"UID 9", imap_session._Literal(b"BODY[]", body), b"FLAGS (\\Seen)"]
    )
    assert pieces[1] is body
    assert b"".join(pieces) == b"* 7 FETCH (UID 9 BODY[] {18}\r\n" + body + b" FLAGS (\\Seen))\r\n"
