"""Transcript tests of the RFC 3501 mailbox commands and the extensions added on top:
CREATE/DELETE/RENAME/SUBSCRIBE, APPEND, COPY, MOVE, UID EXPUNGE, SEARCH, ENABLE,
CONDSTORE, the per-user session limit and IDLE keep-alives."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mailserver.imap import session as imap_session
from mailserver.imap.protocol import KEEPALIVE_INTERVAL, IMAPFactory
from mailserver.imap.session import (
    IMAPLimits,
    MeasureFolder,
    ReadMessages,
    ScreenMessages,
    UserSessions,
)
from mailserver.store import uidlist
from mailserver.store.maildir import MaildirStore
from tests.unit.test_imap_session import (
    ALICE,
    MSG1,
    MSG2,
    MSG3,
    Client,
    Mail,
    fetch,
    inline,
    selected,
)


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


def names(out: bytes) -> list[str]:
    return re.findall(r'"\." "([^"]*)"', out.decode())


# CREATE, DELETE, RENAME, LIST ---------------------------------------------------------
def test_create_list_delete(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"c CREATE Projects.2024\r\n") == b"c OK CREATE completed\r\n"
    # RFC 3501 §6.3.3: the parent was created too.
    assert client.send(b"c CREATE Projects\r\n") == b"c NO [ALREADYEXISTS] Mailbox exists\r\n"
    assert client.send(b"c CREATE inbox\r\n") == b"c NO [ALREADYEXISTS] INBOX always exists\r\n"
    assert client.send(b'l LIST "" Projects*\r\n') == (
        b'* LIST (\\HasChildren) "." "Projects"\r\n'
        b'* LIST (\\HasNoChildren) "." "Projects.2024"\r\n'
        b"l OK LIST completed\r\n"
    )
    assert client.send(b"d DELETE Projects\r\n") == b"d OK DELETE completed\r\n"
    # The child stays; the parent level is listed as \Noselect so that "%" can reach it.
    assert client.send(b'l LIST "" %\r\n').count(b'(\\Noselect \\HasChildren) "." "Projects"')
    assert client.send(b"d DELETE Projects\r\n") == b"d NO [NONEXISTENT] No such mailbox\r\n"
    assert client.send(b"d DELETE INBOX\r\n") == b"d NO [CANNOT] INBOX cannot be deleted\r\n"
    user = os.path.dirname(os.path.join(mail.inbox_path, "x"))
    assert not [n for n in os.listdir(user) if n == ".Projects"]


def test_create_with_trailing_delimiter(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"c CREATE Lists.\r\n") == b"c OK CREATE completed\r\n"
    assert names(client.send(b'l LIST "" Lists*\r\n')) == ["Lists"]


@pytest.mark.parametrize(
    "name",
    [b"../x", b"a/b", b'"a..b"', b".x", b'"&Jjo"', b'"&AGE-"', b"x" * 201],
)
def test_invalid_names_never_reach_a_path(mail: Mail, name: bytes) -> None:
    client = Client(mail).login()
    before = sorted(os.listdir(mail.inbox_path))
    assert client.send(b"c CREATE " + name + b"\r\n") == b"c NO [CANNOT] Invalid mailbox name\r\n"
    assert client.send(b"r RENAME Sent " + name + b"\r\n") == (
        b"r NO [CANNOT] Invalid mailbox name\r\n"
    )
    assert client.send(b"a APPEND " + name + b" {1+}\r\nx\r\n") == (
        b"a NO [CANNOT] Invalid mailbox name\r\n"
    )
    assert sorted(os.listdir(mail.inbox_path)) == before


@pytest.mark.parametrize("name", [b'"a*b"', b'"Lists.%"', b'"*"'])
def test_wildcards_are_refused_in_new_names(mail: Mail, name: bytes) -> None:
    client = Client(mail).login()
    refused = b"NO [CANNOT] Mailbox names cannot contain * or %\r\n"
    assert client.send(b"c CREATE " + name + b"\r\n") == b"c " + refused
    assert client.send(b"r RENAME Sent " + name + b"\r\n") == b"r " + refused
    assert names(client.send(b'l LIST "" *\r\n')).count("Sent") == 1


def test_modified_utf7_names(mail: Mail) -> None:
    client = Client(mail).login()
    # "Entwürfe" in modified UTF-7 (RFC 3501 §5.1.3) is kept as such on disk (as Dovecot).
    assert client.send(b"c CREATE Entw&APw-rfe\r\n") == b"c OK CREATE completed\r\n"
    assert os.path.isdir(os.path.join(mail.inbox_path, ".Entw&APw-rfe", "cur"))
    assert names(client.send(b'l LIST "" Entw*\r\n')) == ["Entw&APw-rfe"]


def test_rename_folder_with_children(mail: Mail) -> None:
    client = Client(mail).login()
    client.send(b"c CREATE A.B\r\n")
    assert client.send(b"r RENAME A C.D\r\n") == b"r OK RENAME completed\r\n"
    assert names(client.send(b'l LIST "" *\r\n'))[1:4] == ["Archive", "C", "C.D"]
    assert "C.D.B" in names(client.send(b'l LIST "" *\r\n'))
    assert client.send(b"r RENAME Nope X\r\n") == b"r NO [NONEXISTENT] No such mailbox\r\n"
    assert client.send(b"r RENAME Sent Trash\r\n") == (
        b"r NO [ALREADYEXISTS] Target mailbox exists\r\n"
    )
    assert client.send(b"r RENAME Sent INBOX\r\n") == (
        b"r NO [ALREADYEXISTS] INBOX always exists\r\n"
    )


def test_rename_selected_folder_keeps_working(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"a APPEND Sent {6+}\r\nx\r\n\r\nx\r\n").startswith(b"a OK [APPENDUID ")
    client.select(b"Sent")
    assert client.send(b"r RENAME Sent Sent2\r\n") == b"r OK RENAME completed\r\n"
    assert fetch(client, b"1 (BODY.PEEK[])") == (
        b"* 1 FETCH (BODY[] {6}\r\nx\r\n\r\nx)\r\nf OK FETCH completed\r\n"
    )


def test_rename_inbox_moves_its_messages(mail3: Mail) -> None:
    client = selected(mail3)
    other = selected(mail3)
    out = client.send(b"r RENAME INBOX Old\r\n")
    assert out == (b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nr OK RENAME completed\r\n")
    assert other.send(b"n NOOP\r\n") == (
        b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nn OK NOOP completed\r\n"
    )
    status = client.send(b"s STATUS Old (MESSAGES)\r\ns STATUS INBOX (MESSAGES)\r\n")
    assert status == (
        b'* STATUS "Old" (MESSAGES 3)\r\ns OK STATUS completed\r\n'
        b'* STATUS "INBOX" (MESSAGES 0)\r\ns OK STATUS completed\r\n'
    )


def test_delete_selected_by_another_session(mail: Mail) -> None:
    client = Client(mail).login()
    client.send(b"a APPEND Junk {6+}\r\nx\r\n\r\nx\r\n")
    other = Client(mail).login()
    other.select(b"Junk")
    assert client.send(b"d DELETE Junk\r\n") == b"d OK DELETE completed\r\n"
    assert other.send(b"n NOOP\r\n") == b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n"


# SUBSCRIBE, UNSUBSCRIBE, LSUB ----------------------------------------------------------
def test_lsub_percent_shows_the_unsubscribed_level_above(mail: Mail) -> None:
    client = Client(mail).login()
    client.send(b"c CREATE Lists.dev.x\r\ns SUBSCRIBE Lists.dev.x\r\n")
    # RFC 3501 §6.3.9: "%" stops at Lists, which is not subscribed: \Noselect.
    assert client.send(b'l LSUB "" L%\r\n') == (
        b'* LSUB (\\Noselect \\HasChildren) "." "Lists"\r\nl OK LSUB completed\r\n'
    )
    assert client.send(b'l LSUB "Lists." %\r\n') == (
        b'* LSUB (\\Noselect \\HasChildren) "." "Lists.dev"\r\nl OK LSUB completed\r\n'
    )
    assert client.send(b'l LSUB "" L*\r\n') == (
        b'* LSUB (\\HasNoChildren) "." "Lists.dev.x"\r\nl OK LSUB completed\r\n'
    )
    client.send(b"s SUBSCRIBE Lists\r\n")
    assert client.send(b'l LSUB "" L%\r\n') == (
        b'* LSUB (\\HasChildren) "." "Lists"\r\nl OK LSUB completed\r\n'
    )


def test_subscribe_and_unsubscribe(mail: Mail) -> None:
    client = Client(mail).login()
    client.send(b"c CREATE Lists\r\n")
    assert client.send(b"s SUBSCRIBE Lists\r\n") == b"s OK SUBSCRIBE completed\r\n"
    assert client.send(b"s SUBSCRIBE Lists\r\n") == b"s OK SUBSCRIBE completed\r\n"
    assert client.send(b"u UNSUBSCRIBE Trash\r\n") == b"u OK UNSUBSCRIBE completed\r\n"
    with open(os.path.join(mail.inbox_path, "subscriptions")) as f:
        assert f.read() == "Drafts\nSent\nJunk\nArchive\nLists\n"
    assert names(client.send(b'l LSUB "" *\r\n')) == [
        "INBOX",
        "Drafts",
        "Sent",
        "Junk",
        "Archive",
        "Lists",
    ]
    assert client.send(b"s SUBSCRIBE ../x\r\n") == b"s NO [CANNOT] Invalid mailbox name\r\n"


# APPEND (RFC 3501 §6.3.11, RFC 4315 APPENDUID) -----------------------------------------
def test_append_with_flags_and_date(mail3: Mail) -> None:
    client = selected(mail3)
    other = selected(mail3)
    v = mail3.uidvalidity
    out = client.send(b'a APPEND INBOX (\\Seen $Work) "05-Feb-2024 10:11:12 +0100" {14}\r\n')
    assert out == b"+ Ready for literal data\r\n"
    # The new keyword changes the folder's FLAGS (RFC 3501 §7.2.6); the message is told
    # to the selected session at once, as RFC 3501 §6.3.11 suggests, and is \Recent there
    # (the first session told of it), whatever its flags.
    assert client.send(b"Subject: x\r\n\r\n\r\n") == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)]"
        b" Flags permitted\r\n"
        b"* 4 EXISTS\r\n* 4 RECENT\r\n"
        b"a OK [APPENDUID %d 4] APPEND completed\r\n" % v
    )
    assert fetch(client, b"4 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])") == (
        b'* 4 FETCH (FLAGS ($Work \\Seen \\Recent) INTERNALDATE " 5-Feb-2024 09:11:12 +0000"'
        b" RFC822.SIZE 14 BODY[] {14}\r\nSubject: x\r\n\r\n)\r\nf OK FETCH completed\r\n"
    )
    # The other session hears of it at its next command, not before.
    assert b"* 4 EXISTS\r\n" in other.send(b"n NOOP\r\n")


def test_append_to_missing_folder_says_trycreate(mail: Mail) -> None:
    client = Client(mail).login()
    assert client.send(b"a APPEND Nope {1+}\r\nx\r\n") == b"a NO [TRYCREATE] No such mailbox\r\n"


def test_append_is_byte_exact_with_8bit_headers(mail: Mail) -> None:
    client = Client(mail).login()
    message = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nX: \xff\r\n\r\nbody\r\n"
    out = client.send(b"a APPEND Sent {%d+}\r\n" % len(message) + message + b"\r\n")
    assert out.startswith(b"a OK [APPENDUID ")
    client.select(b"Sent")
    assert fetch(client, b"1 (BODY.PEEK[])") == (
        b"* 1 FETCH (BODY[] {%d}\r\n" % len(message) + message + b")\r\nf OK FETCH completed\r\n"
    )
    assert fetch(client, b"1 (BODY.PEEK[HEADER.FIELDS (Subject)])") == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (Subject)] {20}\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n)"
        b"\r\nf OK FETCH completed\r\n"
    )


# COPY, MOVE, UID EXPUNGE -----------------------------------------------------------------
def test_copy_keeps_flags_and_says_copyuid(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"s STORE 2 +FLAGS.SILENT (\\Flagged $Todo)\r\n")
    trash = mail3.store.folder(ALICE, "Trash")
    assert client.send(b"c COPY 2:3 Trash\r\n") == (
        b"c OK [COPYUID %d 2:3 1:2] COPY completed\r\n" % trash.uidvalidity
    )
    assert [sorted(m.flags) for m in trash.messages] == [["$Todo", "\\Flagged"], []]
    assert client.send(b"c COPY 1 Nope\r\n") == b"c NO [TRYCREATE] No such mailbox\r\n"
    assert client.send(b"c UID COPY 99 Trash\r\n") == b"c OK COPY completed\r\n"
    assert client.send(b"c COPY 9 Trash\r\n") == b"c BAD Invalid message sequence number\r\n"
    # A copy into the selected folder is announced at once.
    assert client.send(b"c COPY 1 INBOX\r\n") == (
        b"* 4 EXISTS\r\n* 4 RECENT\r\nc OK [COPYUID %d 1 4] COPY completed\r\n" % mail3.uidvalidity
    )


def test_move_and_other_sessions(mail3: Mail) -> None:
    client = selected(mail3)
    other = selected(mail3)
    v = mail3.store.folder(ALICE, "Archive").uidvalidity
    assert client.send(b"m MOVE 1,3 Archive\r\n") == (
        b"* OK [COPYUID %d 1,3 1:2] Moved\r\n* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nm OK MOVE completed\r\n"
        % v
    )
    # RFC 3501 §7.4.1: no EXPUNGE while FETCH, STORE or SEARCH address by number (the
    # messages gone are left out, RFC 2180 §4.1)...
    assert fetch(other, b"1:3 (FLAGS)") == b"* 2 FETCH (FLAGS ())\r\nf OK FETCH completed\r\n"
    assert other.send(b"s SEARCH ALL\r\n") == b"* SEARCH 2\r\ns OK SEARCH completed\r\n"
    # ... but at NOOP, in the other session's own numbering.
    assert other.send(b"n NOOP\r\n") == b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nn OK NOOP completed\r\n"
    assert client.send(b"m UID MOVE 2 Archive\r\n") == (
        b"* OK [COPYUID %d 2 3] Moved\r\n* 1 EXPUNGE\r\nm OK MOVE completed\r\n" % v
    )


def test_move_needs_read_write(mail3: Mail) -> None:
    client = Client(mail3).login()
    client.send(b"e EXAMINE INBOX\r\n")
    assert client.send(b"m MOVE 1 Trash\r\n") == b"m NO [READ-ONLY] Mailbox is read-only\r\n"


def test_uid_expunge_only_in_the_set(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"s STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\n")
    assert client.send(b"x UID EXPUNGE 2:3\r\n") == (
        b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nx OK EXPUNGE completed\r\n"
    )
    assert [m.uid for m in mail3.store.folder(ALICE).messages] == [1]


# SEARCH (RFC 3501 §6.4.4) ----------------------------------------------------------------
SEARCHABLE = [
    b"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nCc: carol@example.test\r\n"
    b"Subject: Quarterly report\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    b"Numbers are up.\r\n",
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
    b"Date: Wed, 10 Jan 2024 10:00:00 +0000\r\nX-Tag: blue\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    b"\r\nSch=C3=B6ne Gr=C3=BC=C3=9Fe\r\n",
    b"From: carol@example.test\r\nSubject: lunch\r\nDate: Fri, 2 Feb 2024 12:00:00 +0100\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
    b"see attachment\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nPGI+c2FsYWQ8L2I+\r\n--b--\r\n",
]


@pytest.fixture
def searchable(mail: Mail) -> Client:
    for i, data in enumerate(SEARCHABLE):
        mail.add(data, info="S" if i == 0 else "")
    client = selected(mail)
    client.send(b"s STORE 2 +FLAGS.SILENT (\\Flagged $Blue)\r\n")
    return client


@pytest.mark.parametrize(
    ("keys", "found"),
    [
        (b"ALL", b"1 2 3"),
        (b"SEEN", b"1"),
        (b"UNSEEN", b"2 3"),
        (b"FLAGGED", b"2"),
        (b"UNFLAGGED", b"1 3"),
        (b"KEYWORD $Blue", b"2"),
        (b"UNKEYWORD $blue", b"1 3"),
        (b"ANSWERED", b""),
        (b"UNANSWERED UNDELETED UNDRAFT", b"1 2 3"),
        (b"DELETED", b""),
        (b"DRAFT", b""),
        (b"NEW", b""),
        (b"OLD", b"1 2 3"),
        (b"RECENT", b""),
        (b"FROM bob", b"1"),
        (b"FROM {7}\r\nJ\xc3\xbcrgen", b"2"),
        (b"TO alice", b"1"),
        (b"CC carol", b"1"),
        (b"BCC carol", b""),
        (b"SUBJECT REPORT", b"1"),
        (b'HEADER X-Tag ""', b"2"),
        (b"HEADER x-tag BLUE", b"2"),
        (b"BODY numbers", b"1"),
        (b"BODY salad", b"3"),
        (b"BODY lunch", b""),
        (b"TEXT lunch", b"3"),
        (b"LARGER 200", b"2 3"),
        (b"SMALLER 200", b"1"),
        (b"SENTBEFORE 10-Jan-2024", b"1"),
        (b"SENTON 10-Jan-2024", b"2"),
        (b'SENTSINCE "2-Feb-2024"', b"3"),
        (b"SINCE 1-Jan-2000", b"1 2 3"),
        (b"BEFORE 1-Jan-2000", b""),
        (b"ON 14-Nov-2023", b"1 2 3"),
        (b"2:*", b"2 3"),
        (b"1,3", b"1 3"),
        (b"UID 2", b"2"),
        (b"NOT SEEN", b"2 3"),
        (b"OR SEEN FLAGGED", b"1 2"),
        (b"OR (FROM bob SEEN) (SUBJECT lunch)", b"1 3"),
        (b"NOT NOT NOT OR SEEN FLAGGED", b"3"),
        (b"FLAGGED BODY {7+}\r\ngr\xc3\xbc\xc3\x9fe", b"2"),
        (b"TEXT {6+}\r\nSCH\xc3\x96N", b"2"),
    ],
)
@pytest.mark.parametrize("screen", [False, True])
def test_search_keys(
    searchable: Client, monkeypatch: pytest.MonkeyPatch, keys: bytes, found: bytes, screen: bool
) -> None:
    if screen:  # the headers ruled out first, as for a large folder (ScreenMessages)
        monkeypatch.setattr(imap_session, "SCREEN_FROM", 1)
    out = searchable.send(b"s SEARCH CHARSET UTF-8 " + keys + b"\r\n")
    out = out.replace(b"+ Ready for literal data\r\n", b"")
    assert out == b"* SEARCH" + (b" " + found if found else b"") + b"\r\ns OK SEARCH completed\r\n"


def test_search_reads_only_undecided_messages(searchable: Client) -> None:
    searchable.effects.clear()
    searchable.send(b"s SEARCH FLAGGED BODY salad\r\n")
    reads = [e for e in searchable.effects if isinstance(e, ReadMessages)]
    assert len(reads) == 1  # only message 2 is flagged: only it is read


def test_search_reads_only_messages_their_headers_do_not_rule_out(
    searchable: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap_session, "SCREEN_FROM", 1)
    searchable.effects.clear()
    out = searchable.send(b"s SEARCH OR SUBJECT lunch FROM nobody\r\n")
    assert out == b"* SEARCH 3\r\ns OK SEARCH completed\r\n"
    (screen,) = [e for e in searchable.effects if isinstance(e, ScreenMessages)]
    assert screen.uids == (1, 2, 3)
    # Message 2's header has encoded words: it is not ruled out from the bytes.
    reads = [e.uids for e in searchable.effects if isinstance(e, ReadMessages)]
    assert reads == [(2, 3)]
    # BODY has no rule: nothing to screen with.
    searchable.effects.clear()
    searchable.send(b"s SEARCH BODY salad\r\n")
    assert not [e for e in searchable.effects if isinstance(e, ScreenMessages)]


def test_search_literal_charset_and_uid(searchable: Client) -> None:
    out = searchable.send(b"s UID SEARCH CHARSET UTF-8 SUBJECT {6}\r\n")
    assert out == b"+ Ready for literal data\r\n"
    assert searchable.send(b"gr\xc3\xbc\xc3\x9f\r\n") == (
        b"* SEARCH 2\r\ns OK SEARCH completed\r\n"
    )
    assert searchable.send(b"s SEARCH CHARSET KOI8-R ALL\r\n") == (
        b"s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n"
    )


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (b"FROB", b"unknown search key FROB"),
        (b"FROM", b"missing search argument"),
        (b"SINCE 32-Jan-2024", b"invalid date '32-Jan-2024'"),
        (b"LARGER x", b"expected a number"),
        (b"NOT " * 70 + b"ALL", b"search keys nested too deeply"),
        (b"()", b"empty parenthesized search keys"),
    ],
)
def test_search_errors(searchable: Client, keys: bytes, error: bytes) -> None:
    assert searchable.send(b"s SEARCH " + keys + b"\r\n") == b"s BAD " + error + b"\r\n"


# CONDSTORE (RFC 7162) ----------------------------------------------------------------------
def test_enable_condstore(mail3: Mail) -> None:
    client = selected(mail3)
    assert client.send(b"e ENABLE CONDSTORE X-UNKNOWN\r\n") == (
        b"* OK [HIGHESTMODSEQ 4] Highest\r\n* ENABLED CONDSTORE\r\ne OK ENABLE completed\r\n"
    )
    assert client.send(b"e ENABLE X-UNKNOWN\r\n") == b"* ENABLED\r\ne OK ENABLE completed\r\n"
    # From now on FETCH responses with FLAGS carry MODSEQ.
    assert client.send(b"s STORE 1 +FLAGS (\\Seen)\r\n") == (
        b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (5))\r\ns OK STORE completed\r\n"
    )


def test_select_condstore_and_fetch_modseq(mail3: Mail) -> None:
    client = Client(mail3).login()
    out = client.send(b"s SELECT INBOX (CONDSTORE)\r\n")
    assert b"* OK [HIGHESTMODSEQ 4] Highest\r\n" in out
    assert fetch(client, b"1:* (MODSEQ)") == (
        b"* 1 FETCH (MODSEQ (2))\r\n* 2 FETCH (MODSEQ (3))\r\n* 3 FETCH (MODSEQ (4))\r\n"
        b"f OK FETCH completed\r\n"
    )
    assert client.send(b"s STORE 2 +FLAGS.SILENT (\\Flagged)\r\n") == (
        b"* 2 FETCH (MODSEQ (5))\r\ns OK STORE completed\r\n"  # RFC 7162 §3.1.3
    )
    assert client.send(b"u UID FETCH 1:* (FLAGS) (CHANGEDSINCE 4)\r\n") == (
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (5))\r\nu OK FETCH completed\r\n"
    )
    assert client.send(b"s SEARCH MODSEQ 5\r\n") == (
        b"* SEARCH 2 (MODSEQ 5)\r\ns OK SEARCH completed\r\n"
    )
    assert client.send(b's SEARCH MODSEQ "/flags/\\\\draft" all 3\r\n') == (
        b"* SEARCH 2 3 (MODSEQ 5)\r\ns OK SEARCH completed\r\n"
    )
    assert client.send(b"s STATUS INBOX (HIGHESTMODSEQ)\r\n") == (
        b'* STATUS "INBOX" (HIGHESTMODSEQ 5)\r\ns OK STATUS completed\r\n'
    )


def test_store_unchangedsince(mail3: Mail) -> None:
    client = selected(mail3)
    other = selected(mail3)
    other.send(b"s STORE 2 +FLAGS.SILENT (\\Answered)\r\n")  # modseq 5
    out = client.send(b"s STORE 1:3 (UNCHANGEDSINCE 4) +FLAGS.SILENT (\\Seen)\r\n")
    assert out == (
        b"* OK [HIGHESTMODSEQ 5] Highest\r\n"
        b"* 1 FETCH (MODSEQ (6))\r\n* 3 FETCH (MODSEQ (7))\r\n"
        b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent) MODSEQ (5))\r\n"
        b"s OK [MODIFIED 2] Conditional STORE failed\r\n"
    )
    assert client.send(b"s UID STORE 1:3 (UNCHANGEDSINCE 0) -FLAGS (\\Seen)\r\n") == (
        b"s OK [MODIFIED 1:3] Conditional STORE failed\r\n"
    )


def test_expunge_raises_highestmodseq_and_modseqs_survive_a_restart(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"s STORE 2 +FLAGS.SILENT (\\Deleted)\r\nx EXPUNGE\r\n")
    folder = mail3.store.folder(ALICE)
    assert folder.highest_modseq == 6
    restarted = MaildirStore(mail3.root, hostname="test", run_in_thread=inline)
    again = restarted.folder(ALICE)
    assert again.highest_modseq == 6
    assert [(m.uid, m.modseq) for m in again.messages] == [(1, 2), (3, 4)]
    # A flag change is appended to the UID list and survives too.
    folder.set_flags(1, {"\\Seen"})
    assert MaildirStore(mail3.root, hostname="t").folder(ALICE).by_uid(1).modseq == 7
    assert uidlist.load(folder.path).highest_modseq == 7


def test_flag_change_by_another_program_gets_a_modseq(mail3: Mail) -> None:
    client = selected(mail3)
    client.send(b"e ENABLE CONDSTORE\r\n")
    folder = mail3.store.folder(ALICE)
    message = folder.by_uid(1)
    assert message is not None
    path = folder.file_path(message)  # in new/: selecting it did not move it
    flagged = os.path.join(folder.path, "cur", message.base + ":2,F")
    os.rename(path, flagged)
    os.utime(os.path.dirname(flagged), None)
    out = client.send(b"n NOOP\r\n")
    assert out == (
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (5))\r\nn OK NOOP completed\r\n"
    )


# Limits and keep-alives ----------------------------------------------------------------------
def test_sessions_per_user_are_limited(mail: Mail) -> None:
    sessions = UserSessions()
    limits = IMAPLimits(max_sessions_per_user=2)
    first = Client(mail, limits, sessions).login()
    Client(mail, limits, sessions).login()
    third = Client(mail, limits, sessions)
    assert third.send(b"a LOGIN alice secret\r\n") == (
        b"a NO [LIMIT] Too many sessions for this user\r\n"
    )
    assert sessions.count(ALICE) == 2
    first.send(b"l LOGOUT\r\n")
    assert sessions.count(ALICE) == 1
    third.login()
    third.session.connection_lost()
    assert sessions.count(ALICE) == 1


def test_keepalive_only_while_idle(mail3: Mail) -> None:
    client = selected(mail3)
    client.session.keepalive()
    assert client.run() == b""
    client.send(b"i IDLE\r\n")
    woken = client.woken
    client.session.keepalive()
    assert client.woken == woken + 1
    assert client.run() == b"* OK Still here\r\n"
    assert client.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"


class AnyPassword:
    """A LoginService stand-in: "secret" is Alice's password."""

    def login(self, username: str, password: str, role: str, peer: str) -> Deferred[str | None]:
        return succeed(ALICE if password == "secret" else None)


def plain_factory(
    store: MaildirStore, clock: MemoryReactorClock, sessions: UserSessions
) -> IMAPFactory:
    """An IMAP factory on the clock, with a 30-minute autologout, loopback logins allowed."""
    return IMAPFactory(
        store,
        AnyPassword(),  # type: ignore[arg-type]
        IMAPLimits(),
        1800.0,
        "imap.test",
        clock,
        allow_plaintext_on_loopback=True,
        sessions=sessions,
    )


def connect(factory: IMAPFactory, clock: MemoryReactorClock) -> tuple[Any, StringTransport]:
    """A loopback client's connection to the factory (its protocol and transport), the
    protocol's timers on the clock."""
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    proto.callLater = clock.callLater  # type: ignore[attr-defined]
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_autologout_after_30_minutes_and_keepalives_in_idle(mail3: Mail) -> None:
    """RFC 3501 §5.4: the autologout timer is the configured 30 minutes; meanwhile a
    client in IDLE hears a keep-alive every KEEPALIVE_INTERVAL (RFC 2177 §3)."""
    clock = MemoryReactorClock()
    factory = plain_factory(mail3.store, clock, UserSessions())
    factory.doStart()  # as its listening port does
    proto, transport = connect(factory, clock)
    proto.dataReceived(b"a LOGIN alice secret\r\ns SELECT INBOX\r\ni IDLE\r\n")
    assert transport.value().endswith(b"+ idling\r\n")
    transport.clear()
    clock.advance(KEEPALIVE_INTERVAL)
    assert transport.value() == b"* OK Still here\r\n"
    while clock.seconds() + KEEPALIVE_INTERVAL < 1800:
        clock.advance(KEEPALIVE_INTERVAL)
    clock.advance(1799 - clock.seconds())
    assert transport.value().count(b"* OK Still here\r\n") == 1799 // KEEPALIVE_INTERVAL
    assert not transport.disconnecting
    clock.advance(1)  # 1800 seconds after the client last spoke
    assert transport.value().endswith(b"* BYE Autologout; idle for too long\r\n")
    assert transport.disconnecting


def test_keepalive_is_shared_by_the_listeners_of_one_registry(mail3: Mail) -> None:
    """The plaintext and the TLS listener have a factory each and one registry of
    sessions: either one stopping (a listener closed) leaves the keep-alives of the
    sessions to the one still listening; with none listening, or no session logged
    in, no timer runs."""
    clock = MemoryReactorClock()
    sessions = UserSessions()

    plain, tls = (
        plain_factory(mail3.store, clock, sessions),
        plain_factory(mail3.store, clock, sessions),
    )
    assert plain.keepalive is tls.keepalive
    plain.doStart()
    tls.doStart()
    proto, transport = connect(tls, clock)
    assert len(clock.getDelayedCalls()) == 1  # the session's idle timer, no keep-alive yet
    proto.dataReceived(b"a LOGIN alice secret\r\ns SELECT INBOX\r\ni IDLE\r\n")
    tls.doStop()  # the other listener's factory goes on
    transport.clear()
    clock.advance(KEEPALIVE_INTERVAL)
    assert transport.value() == b"* OK Still here\r\n"
    assert len(clock.getDelayedCalls()) == 2  # the idle timer and the keep-alive
    plain.doStop()  # no listener left: no keep-alive timer either
    assert len(clock.getDelayedCalls()) == 1
    transport.clear()
    clock.advance(KEEPALIVE_INTERVAL)
    assert transport.value() == b""


# Files of other programs: SELECT lists them, what reports sizes waits for them ----------
def test_select_reads_no_file_and_fetch_of_sizes_measures_once(mail: Mail) -> None:
    for data in (MSG1, MSG2):
        mail.add(data)
    client = Client(mail).login()
    assert b"* 2 EXISTS\r\n" in client.select()
    assert not [e for e in client.effects if isinstance(e, MeasureFolder)]
    out = fetch(client, b"1:* (RFC822.SIZE INTERNALDATE)")
    assert b"RFC822.SIZE %d" % len(MSG2) in out and out.endswith(b"f OK FETCH completed\r\n")
    assert len([e for e in client.effects if isinstance(e, MeasureFolder)]) == 1
    fetch(client, b"1:* (RFC822.SIZE)")
    assert len([e for e in client.effects if isinstance(e, MeasureFolder)]) == 1


def test_status_size_measures_flags_do_not(mail: Mail) -> None:
    mail.add(MSG1)
    client = Client(mail).login()
    out = client.send(b"s STATUS INBOX (MESSAGES UNSEEN)\r\n")
    assert out == b'* STATUS "INBOX" (MESSAGES 1 UNSEEN 1)\r\ns OK STATUS completed\r\n'
    assert not [e for e in client.effects if isinstance(e, MeasureFolder)]
    out = client.send(b"s STATUS INBOX (SIZE)\r\n")
    assert out == b'* STATUS "INBOX" (SIZE %d)\r\ns OK STATUS completed\r\n' % len(MSG1)
    assert len([e for e in client.effects if isinstance(e, MeasureFolder)]) == 1


@pytest.mark.parametrize(
    ("header", "keys", "found"),
    [
        # The word is in the raw bytes, across a fold of the field.
        (b"X-Tag: abc\r\n def\r\n", b"HEADER X-Tag def", True),
        (b"X-Tag: abc\r\n def\r\n", b"HEADER X-Tag xyz", False),
        # Only in the decoded value: the raw-bytes shortcut must not answer.
        (b"Subject: =?utf-8?b?aGVsbG8=?=\r\n", b"SUBJECT hello", True),
        # U+212A KELVIN SIGN case-folds to "k": a non-ASCII header is decoded first.
        (b"X-K: \xe2\x84\xaa\r\n", b"HEADER X-K k", True),
        # In the header, but in another field: the fields are split after all.
        (b"X-A: word\r\nX-B: other\r\n", b"HEADER X-B word", False),
        # A phrase with a space may span a fold; matched on the unfolded value.
        (b"Subject: two\r\n words\r\n", b'SUBJECT "two words"', True),
    ],
)
@pytest.mark.parametrize("screen", [False, True])
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_header_search_shortcut_agrees_with_the_field_parse(
    mail: Mail,
    monkeypatch: pytest.MonkeyPatch,
    header: bytes,
    keys: bytes,
    found: bool,
    screen: bool,
    eol: bytes,
) -> None:
    if screen:
        monkeypatch.setattr(imap_session, "SCREEN_FROM", 1)
    mail.add((header + b"\r\nbody\r\n").replace(b"\r\n", eol))
    client = selected(mail)
    out = client.send(b"s SEARCH " + keys + b"\r\n")
    assert out == (b"* SEARCH 1" if found else b"* SEARCH") + b"\r\ns OK SEARCH completed\r\n"


Held = list[tuple[Any, tuple[Any, ...], Deferred[Any]]]


def store_with_held_threads(root: str) -> tuple[MaildirStore, Held]:
    """A store whose thread jobs wait in the list returned with it: (function, its
    arguments, the Deferred the caller got), for the test to run as it sees fit."""
    pending: Held = []

    def run_in_thread(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((f, args, d))
        return d

    return MaildirStore(root, hostname="test", run_in_thread=run_in_thread), pending


def test_a_first_login_makes_the_maildir_off_the_reactor(tmp_path: Any) -> None:
    """A user who never received mail gets INBOX and the default folders at LOGIN, made
    by the store's thread runner (mkdir and fsync), not by the session on the reactor;
    the reply waits for them."""
    store, pending = store_with_held_threads(str(tmp_path))
    clock = MemoryReactorClock()
    factory = plain_factory(store, clock, UserSessions())
    proto, transport = connect(factory, clock)
    transport.clear()
    proto.dataReceived(b"a LOGIN alice secret\r\n")
    inbox = os.path.join(str(tmp_path), "example.test", "alice")
    assert [(f.__name__, args) for f, args, _ in pending] == [("ensure_user", (ALICE,))]
    assert transport.value() == b""  # nothing made on the reactor, no reply yet
    assert not os.path.exists(inbox)
    f, args, d = pending.pop()
    d.callback(f(*args))  # the "thread" runs
    assert transport.value().startswith(b"a OK [CAPABILITY ")
    assert os.path.isdir(os.path.join(inbox, ".Drafts", "cur"))
    transport.clear()
    proto.dataReceived(b"b LOGOUT\r\n")
    second, transport = connect(factory, clock)
    transport.clear()
    second.dataReceived(b"a LOGIN alice secret\r\n")
    assert pending == []  # known now: no thread
    assert transport.value().startswith(b"a OK [CAPABILITY ")


def test_a_folder_is_loaded_off_the_reactor_at_select(tmp_path: Any) -> None:
    """SELECT of a folder no session has open: its listing (every file of new/ and cur/,
    the UID list) is read by the store's thread runner, and the reply waits for it;
    another session's SELECT then finds it open."""
    store, pending = store_with_held_threads(str(tmp_path))
    store.ensure_user(ALICE)  # as a delivery or a login before would have
    clock = MemoryReactorClock()
    factory = plain_factory(store, clock, UserSessions())
    proto, transport = connect(factory, clock)
    proto.dataReceived(b"a LOGIN alice secret\r\n")
    transport.clear()
    proto.dataReceived(b"s SELECT INBOX\r\nn NOOP\r\n")
    assert [f.__name__ for f, _, _ in pending] == ["_load_folder"]
    assert transport.value() == b""  # the pipelined NOOP waits too
    f, args, d = pending.pop()
    d.callback(f(*args))  # the "thread" runs
    assert b"* 0 EXISTS\r\n" in transport.value()
    assert transport.value().endswith(
        b"s OK [READ-WRITE] SELECT completed\r\nn OK NOOP completed\r\n"
    )
    second, transport = connect(factory, clock)
    second.dataReceived(b"a LOGIN alice secret\r\ns EXAMINE INBOX\r\n")
    assert pending == []
    assert transport.value().endswith(b"s OK [READ-ONLY] EXAMINE completed\r\n")


def test_expunge_and_close_answer_once_the_files_are_unlinked(tmp_path: Any) -> None:
    """The untagged EXPUNGEs go out at once; the tagged OK of EXPUNGE (and of CLOSE,
    which expunges silently) waits for the thread that unlinks the files, so that an OK
    means they are gone from the disk."""
    store, pending = store_with_held_threads(str(tmp_path))
    store.ensure_user(ALICE)
    cur = os.path.join(str(tmp_path), "example.test", "alice", "cur")

    def put(name: str) -> None:
        with open(os.path.join(cur, name), "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")

    for name in ("1.M1P1.test:2,T", "2.M2P1.test:2,S", "3.M3P1.test:2,ST"):
        put(name)  # T: \Deleted
    factory = plain_factory(store, MemoryReactorClock(), UserSessions())
    proto, transport = connect(factory, MemoryReactorClock())
    proto.dataReceived(b"a LOGIN alice secret\r\ns SELECT INBOX\r\n")
    f, args, d = pending.pop()
    d.callback(f(*args))  # the folder's first load
    transport.clear()

    def answered_after_unlink(command: bytes, untagged: bytes, tagged: bytes) -> None:
        proto.dataReceived(command)
        assert [f.__name__ for f, _, _ in pending] == ["_unlink_files"]
        f, args, d = pending.pop()
        assert transport.value() == untagged
        assert all(os.path.exists(path) for path in args[0])
        d.callback(f(*args))  # the "thread" runs
        assert transport.value() == untagged + tagged
        assert not any(os.path.exists(path) for path in args[0])
        transport.clear()

    answered_after_unlink(
        b"e EXPUNGE\r\n", b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\n", b"e OK EXPUNGE completed\r\n"
    )
    assert os.listdir(cur) == ["2.M2P1.test:2,S"]
    put("4.M4P1.test:2,T")  # another program's
    proto.dataReceived(b"n NOOP\r\n")
    f, args, d = pending.pop()
    d.callback(f(*args))  # the rescan NOOP asks for
    assert transport.value().startswith(b"* 2 EXISTS\r\n")
    transport.clear()
    answered_after_unlink(b"c CLOSE\r\n", b"", b"c OK CLOSE completed\r\n")
    assert os.listdir(cur) == ["2.M2P1.test:2,S"]
    proto.dataReceived(b"s SELECT INBOX\r\ne EXPUNGE\r\n")
    assert pending == []  # nothing to remove: no thread, no wait
    assert transport.value().endswith(b"e OK EXPUNGE completed\r\n")


def test_create_and_rename_answer_once_their_directories_are_synced(tmp_path: Any) -> None:
    """The directories are made and renamed at once, on the reactor (the index follows
    them there); the fsync that makes them durable runs in a thread, and the OK waits."""
    store, pending = store_with_held_threads(str(tmp_path))
    store.ensure_user(ALICE)
    factory = plain_factory(store, MemoryReactorClock(), UserSessions())
    proto, transport = connect(factory, MemoryReactorClock())
    proto.dataReceived(b"a LOGIN alice secret\r\n")
    transport.clear()
    user = os.path.join(str(tmp_path), "example.test", "alice")
    for command, made in (
        (b"c CREATE Projects.2024\r\n", ".Projects.2024"),
        (b"r RENAME Projects Done\r\n", ".Done.2024"),
    ):
        proto.dataReceived(command)
        assert os.path.isdir(os.path.join(user, made, "cur"))
        assert [(f.__name__, args) for f, args, _ in pending] == [("_fsync_dirs", ({user},))]
        assert transport.value() == b""
        f, args, d = pending.pop()
        d.callback(f(*args))  # the "thread" runs
        assert transport.value().endswith(b" completed\r\n")
        transport.clear()
    proto.dataReceived(b"x CREATE Done\r\n")
    assert pending == []
    assert transport.value() == b"x NO [ALREADYEXISTS] Mailbox exists\r\n"
