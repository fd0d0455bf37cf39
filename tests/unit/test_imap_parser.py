"""Tests for mailserver.imap.parser: command grammar, sequence sets, response helpers."""

import base64
import itertools
import time
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.imap import parser as p
from mailserver.imap.parser import (
    MAX_NESTING,
    NIL,
    SYSTEM_FLAGS,
    Append,
    Atom,
    Authenticate,
    Command,
    CopyMove,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    Id,
    ListMailboxes,
    Login,
    Mailbox,
    ParseError,
    Rename,
    Search,
    Section,
    Select,
    SequenceSet,
    Status,
    Store,
    literal_at_end,
    nstring,
    parse_command,
    parse_sequence_set,
    quote,
)
from mailserver.imap.search import compile_search


def one(line: bytes) -> Command:
    return parse_command([line])


def seq(text: str) -> SequenceSet:
    return parse_sequence_set(text)


# ---------------------------------------------------------------------------
# literal_at_end


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a LOGIN {5}", (5, False)),
        (b"a LOGIN {5+}", (5, True)),
        (b"a APPEND INBOX {0}", (0, False)),
        (b"{12}", (12, False)),
        (b"a LOGIN {9999999999}", (9999999999, False)),
        (b"a LOGIN", None),
        (b"a LOGIN {}", None),
        (b"a LOGIN {+}", None),
        (b"a LOGIN {5", None),
        (b"a LOGIN 5}", None),
        (b"a LOGIN {5}x", None),
        (b"a LOGIN {-5}", None),
        (b"a LOGIN {5++}", None),
        (b"", None),
    ],
)
def test_literal_at_end(line: bytes, expected: tuple[int, bool] | None) -> None:
    assert literal_at_end(line) == expected


def test_literal_at_end_rejects_absurd_length_with_tag() -> None:
    with pytest.raises(ParseError) as info:
        literal_at_end(b"a17 APPEND INBOX {12345678901}")
    assert info.value.tag == "a17"


# ---------------------------------------------------------------------------
# Valid commands: transcript table

_SEEN_DELETED = ("\\Seen", "\\Deleted")

VALID: list[tuple[list[bytes], Command]] = [
    ([b"a1 CAPABILITY"], Command("a1", "CAPABILITY")),
    ([b"a1 capability"], Command("a1", "CAPABILITY")),
    ([b"A.2 NOOP"], Command("A.2", "NOOP")),
    ([b"x LOGOUT"], Command("x", "LOGOUT")),
    ([b"x STARTTLS"], Command("x", "STARTTLS")),
    ([b"x CHECK"], Command("x", "CHECK")),
    ([b"x CLOSE"], Command("x", "CLOSE")),
    ([b"x UNSELECT"], Command("x", "UNSELECT")),
    ([b"x EXPUNGE"], Command("x", "EXPUNGE")),
    ([b"x IDLE"], Command("x", "IDLE")),
    ([b"x NAMESPACE"], Command("x", "NAMESPACE")),
    ([b"a] NOOP"], Command("a]", "NOOP")),
    # AUTHENTICATE with and without SASL-IR (RFC 4959)
    ([b"a AUTHENTICATE plain"], Command("a", "AUTHENTICATE", args=Authenticate("PLAIN", None))),
    (
        [b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0"],
        Command("a", "AUTHENTICATE", args=Authenticate("PLAIN", "AGZyZWQAc2VjcmV0")),
    ),
    (
        [b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0Lg=="],
        Command("a", "AUTHENTICATE", args=Authenticate("PLAIN", "AGZyZWQAc2VjcmV0Lg==")),
    ),
    (
        [b"a AUTHENTICATE EXTERNAL ="],
        Command("a", "AUTHENTICATE", args=Authenticate("EXTERNAL", "=")),
    ),
    # LOGIN: atom, quoted (with escapes and UTF-8), literal and non-sync literal
    ([b"a001 LOGIN SMITH SESAME"], Command("a001", "LOGIN", args=Login(b"SMITH", b"SESAME"))),
    (
        [b'a LOGIN "fred smith" "p\\"a\\\\ss"'],
        Command("a", "LOGIN", args=Login(b"fred smith", b'p"a\\ss')),
    ),
    (
        [b'a LOGIN "j\xc3\xb6rg" "p\xc3\xa4ss"'],
        Command("a", "LOGIN", args=Login("jörg".encode(), "päss".encode())),
    ),
    (
        [b"a LOGIN {4}", b"fred", b" {6+}", b"se\r\ncr", b""],
        Command("a", "LOGIN", args=Login(b"fred", b"se\r\ncr")),
    ),
    ([b'a LOGIN "" ""'], Command("a", "LOGIN", args=Login(b"", b""))),
    ([b"a LOGIN user] pw]"], Command("a", "LOGIN", args=Login(b"user]", b"pw]"))),
    # Mailbox commands; INBOX is case-insensitive (RFC 3501 §5.1)
    ([b"a SELECT inbox"], Command("a", "SELECT", args=Select("INBOX"))),
    ([b'a SELECT "InBoX"'], Command("a", "SELECT", args=Select("INBOX"))),
    ([b"a SELECT INBOX.Sent"], Command("a", "SELECT", args=Select("INBOX.Sent"))),
    ([b"a EXAMINE Archive"], Command("a", "EXAMINE", args=Select("Archive"))),
    (
        [b"a SELECT INBOX (CONDSTORE)"],
        Command("a", "SELECT", args=Select("INBOX", condstore=True)),
    ),
    ([b"a CREATE {5}", b"a b c", b""], Command("a", "CREATE", args=Mailbox("a b c"))),
    ([b"a CREATE Entw&APw-rfe"], Command("a", "CREATE", args=Mailbox("Entw&APw-rfe"))),
    ([b"a DELETE foo"], Command("a", "DELETE", args=Mailbox("foo"))),
    ([b"a SUBSCRIBE foo"], Command("a", "SUBSCRIBE", args=Mailbox("foo"))),
    ([b"a UNSUBSCRIBE foo"], Command("a", "UNSUBSCRIBE", args=Mailbox("foo"))),
    ([b"a RENAME old inbox"], Command("a", "RENAME", args=Rename("old", "INBOX"))),
    # LIST / LSUB: list-mailbox may contain % and *
    ([b'a LIST "" *'], Command("a", "LIST", args=ListMailboxes("", "*"))),
    ([b"a LIST ~/Mail/ %"], Command("a", "LIST", args=ListMailboxes("~/Mail/", "%"))),
    ([b'a LIST "" "foo*"'], Command("a", "LIST", args=ListMailboxes("", "foo*"))),
    (
        [b"a LIST #news. comp.mail.*"],
        Command("a", "LIST", args=ListMailboxes("#news.", "comp.mail.*")),
    ),
    ([b'a LSUB "" INBOX.%'], Command("a", "LSUB", args=ListMailboxes("", "INBOX.%"))),
    # STATUS
    (
        [b"a STATUS blurdybloop (UIDNEXT messages)"],
        Command("a", "STATUS", args=Status("blurdybloop", ("UIDNEXT", "MESSAGES"))),
    ),
    (
        [b"a STATUS INBOX (HIGHESTMODSEQ UNSEEN UIDVALIDITY RECENT SIZE DELETED)"],
        Command(
            "a",
            "STATUS",
            args=Status(
                "INBOX", ("HIGHESTMODSEQ", "UNSEEN", "UIDVALIDITY", "RECENT", "SIZE", "DELETED")
            ),
        ),
    ),
    # APPEND (RFC 3501 §6.3.11 example, date and flags optional)
    (
        [b"A003 APPEND saved-messages (\\Seen) {5}", b"Hello", b""],
        Command("A003", "APPEND", args=Append("saved-messages", ("\\Seen",), None, b"Hello")),
    ),
    (
        [b"a APPEND INBOX {3+}", b"x\r\n", b""],
        Command("a", "APPEND", args=Append("INBOX", (), None, b"x\r\n")),
    ),
    (
        [b'a APPEND INBOX () " 7-Feb-1994 21:52:25 -0800" {1}', b"M", b""],
        Command(
            "a",
            "APPEND",
            args=Append(
                "INBOX",
                (),
                datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8))),
                b"M",
            ),
        ),
    ),
    (
        [b'a APPEND INBOX (\\SEEN \\flagged $Junk) "17-jul-1996 02:44:25 +0530" {1}', b"M", b""],
        Command(
            "a",
            "APPEND",
            args=Append(
                "INBOX",
                ("\\Seen", "\\Flagged", "$Junk"),
                datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(timedelta(hours=5, minutes=30))),
                b"M",
            ),
        ),
    ),
    # SEARCH: raw argument list
    (
        [b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'],
        Command(
            "A282",
            "SEARCH",
            args=Search(
                None,
                [
                    Atom("FLAGGED"),
                    Atom("SINCE"),
                    Atom("1-Feb-1994"),
                    Atom("NOT"),
                    Atom("FROM"),
                    b"Smith",
                ],
            ),
        ),
    ),
    (
        [b"A285 SEARCH CHARSET UTF-8 TEXT {6}", b"XXXXXX", b""],
        Command("A285", "SEARCH", args=Search("UTF-8", [Atom("TEXT"), b"XXXXXX"])),
    ),
    (
        [b"a UID SEARCH OR (SEEN 1:*) (UID 2,4:7 NOT (DELETED)) ALL"],
        Command(
            "a",
            "SEARCH",
            uid=True,
            args=Search(
                None,
                [
                    Atom("OR"),
                    [Atom("SEEN"), Atom("1:*")],
                    [Atom("UID"), Atom("2,4:7"), Atom("NOT"), [Atom("DELETED")]],
                    Atom("ALL"),
                ],
            ),
        ),
    ),
    (
        [b"a SEARCH SUBJECT NIL"],
        Command("a", "SEARCH", args=Search(None, [Atom("SUBJECT"), Atom("NIL")])),
    ),
    # FETCH
    (
        [b"a FETCH 1 ALL"],
        Command(
            "a",
            "FETCH",
            args=Fetch(
                seq("1"),
                tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
            ),
        ),
    ),
    (
        [b"a FETCH 1:* fast"],
        Command(
            "a",
            "FETCH",
            args=Fetch(
                seq("1:*"), tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))
            ),
        ),
    ),
    (
        [b"a FETCH 2 FULL"],
        Command(
            "a",
            "FETCH",
            args=Fetch(
                seq("2"),
                tuple(
                    FetchAtt(n)
                    for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
                ),
            ),
        ),
    ),
    ([b"a FETCH 2 body"], Command("a", "FETCH", args=Fetch(seq("2"), (FetchAtt("BODY"),)))),
    (
        [b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])"],
        Command(
            "A654",
            "FETCH",
            args=Fetch(
                seq("2:4"),
                (
                    FetchAtt("FLAGS"),
                    FetchAtt("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM"))),
                ),
            ),
        ),
    ),
    (
        [b"a UID FETCH 4827313:4828442 (UID RFC822.SIZE BODY.PEEK[] MODSEQ) (CHANGEDSINCE 12345)"],
        Command(
            "a",
            "FETCH",
            uid=True,
            args=Fetch(
                seq("4827313:4828442"),
                (
                    FetchAtt("UID"),
                    FetchAtt("RFC822.SIZE"),
                    FetchAtt("BODY", Section(), peek=True),
                    FetchAtt("MODSEQ"),
                ),
                changed_since=12345,
            ),
        ),
    ),
    (
        [
            b"a FETCH 1 (body[1.2.3.MIME] BODY.PEEK[4.HEADER.FIELDS.NOT (X-A {3}",
            b"X-B",
            b")]<10.20> BODY[TEXT]<0.1> RFC822 RFC822.HEADER RFC822.TEXT BODYSTRUCTURE "
            b"ENVELOPE INTERNALDATE BODY[1] BODY[2.TEXT] BODY[HEADER])",
        ],
        Command(
            "a",
            "FETCH",
            args=Fetch(
                seq("1"),
                (
                    FetchAtt("BODY", Section((1, 2, 3), "MIME")),
                    FetchAtt(
                        "BODY",
                        Section((4,), "HEADER.FIELDS.NOT", ("X-A", "X-B")),
                        (10, 20),
                        peek=True,
                    ),
                    FetchAtt("BODY", Section((), "TEXT"), (0, 1)),
                    FetchAtt("RFC822"),
                    FetchAtt("RFC822.HEADER"),
                    FetchAtt("RFC822.TEXT"),
                    FetchAtt("BODYSTRUCTURE"),
                    FetchAtt("ENVELOPE"),
                    FetchAtt("INTERNALDATE"),
                    FetchAtt("BODY", Section((1,))),
                    FetchAtt("BODY", Section((2,), "TEXT")),
                    FetchAtt("BODY", Section((), "HEADER")),
                ),
            ),
        ),
    ),
    # STORE
    (
        [b"A003 STORE 2:4 +FLAGS (\\Deleted)"],
        Command("A003", "STORE", args=Store(seq("2:4"), "+", False, ("\\Deleted",))),
    ),
    (
        [b"a STORE 1 -flags.silent \\seen \\DELETED"],
        Command("a", "STORE", args=Store(seq("1"), "-", True, _SEEN_DELETED)),
    ),
    (
        [b"a STORE 1,3 FLAGS ()"],
        Command("a", "STORE", args=Store(seq("1,3"), "", False, ())),
    ),
    (
        [b"a UID STORE 7 (UNCHANGEDSINCE 0) FLAGS.SILENT ($Forwarded \\Answered \\Draft)"],
        Command(
            "a",
            "STORE",
            uid=True,
            args=Store(seq("7"), "", True, ("$Forwarded", "\\Answered", "\\Draft"), 0),
        ),
    ),
    # COPY / MOVE / UID EXPUNGE
    ([b"a COPY 2:4 MEETING"], Command("a", "COPY", args=CopyMove(seq("2:4"), "MEETING"))),
    ([b"a UID MOVE 1:* inbox"], Command("a", "MOVE", uid=True, args=CopyMove(seq("1:*"), "INBOX"))),
    ([b"a MOVE 5 Trash"], Command("a", "MOVE", args=CopyMove(seq("5"), "Trash"))),
    ([b"a UID COPY *:3 x"], Command("a", "COPY", uid=True, args=CopyMove(seq("*:3"), "x"))),
    (
        [b"a UID EXPUNGE 3000:3002"],
        Command("a", "EXPUNGE", uid=True, args=Expunge(seq("3000:3002"))),
    ),
    # ID (RFC 2971) and ENABLE (RFC 5161)
    ([b"a ID NIL"], Command("a", "ID", args=Id(None))),
    ([b"a ID ()"], Command("a", "ID", args=Id(()))),
    (
        [b'a ID ("name" "sodr" "version" NIL "os" {5}', b"Linux", b")"],
        Command("a", "ID", args=Id(((b"name", b"sodr"), (b"version", None), (b"os", b"Linux")))),
    ),
    (
        [b"a ENABLE condstore UTF8=ACCEPT"],
        Command("a", "ENABLE", args=Enable(("CONDSTORE", "UTF8=ACCEPT"))),
    ),
]


@pytest.mark.parametrize(("pieces", "expected"), VALID)
def test_valid_commands(pieces: list[bytes], expected: Command) -> None:
    assert parse_command(pieces) == expected


# ---------------------------------------------------------------------------
# Invalid commands: (pieces, tag the server answers BAD with)

INVALID: list[tuple[list[bytes], str | None]] = [
    ([], None),
    ([b""], None),
    ([b"a NOOP", b"x"], None),  # even number of pieces
    ([b"NOOP"], None),
    ([b"+a NOOP"], None),
    ([b"* NOOP"], None),
    ([b"(a) NOOP"], None),
    ([b"\xffa NOOP"], None),
    ([b"a  NOOP"], "a"),
    ([b"a FROB"], "a"),
    ([b"a UID NOOP"], "a"),
    ([b"a UID"], "a"),
    ([b"a NOOP "], "a"),
    ([b"a NOOP extra"], "a"),
    ([b"a LOGIN fred"], "a"),
    ([b"a LOGIN fred "], "a"),
    ([b'a LOGIN fred "unterminated'], "a"),
    ([b'a LOGIN fred "bad\\escape"'], "a"),
    ([b"a LOGIN fred pass word"], "a"),
    ([b"a LOGIN fred {5}"], "a"),  # marker but no literal
    ([b"a LOGIN fred {5}", b"abc", b""], "a"),  # length mismatch
    ([b"a LOGIN {3} fred", b"abc", b""], "a"),  # marker not at end of line
    ([b"a LOGIN fred pw", b"abc", b""], "a"),  # literal nobody asked for
    ([b'a LOGIN "fred{3}', b"abc", b'" pw'], "a"),  # quoted strings cannot span literals
    ([b"a AUTHENTICATE PLAIN abc"], "a"),  # not base64
    ([b"a AUTHENTICATE PLAIN ab=c"], "a"),
    ([b"a LOGIN j\xc3\xb6rg pw"], "a"),  # 8-bit is only allowed in quoted strings
    ([b"a AUTHENTICATE"], "a"),
    ([b"a SELECT"], "a"),
    ([b"a SELECT \xc3\xa4"], "a"),
    ([b'a SELECT "\xc3\xa4"'], "a"),  # 8-bit mailbox names must be modified UTF-7
    ([b"a SELECT {3}", b"a\x00b", b""], "a"),
    ([b"a SELECT INBOX (QRESYNC)"], "a"),
    ([b"a SELECT foo*"], "a"),
    ([b"a RENAME foo"], "a"),
    ([b"a LIST foo"], "a"),
    ([b"a STATUS INBOX"], "a"),
    ([b"a STATUS INBOX ()"], "a"),
    ([b"a STATUS INBOX (MESSAGES BOGUS)"], "a"),
    ([b"a STATUS INBOX (MESSAGES"], "a"),
    ([b"a APPEND INBOX"], "a"),
    ([b'a APPEND INBOX "hello"'], "a"),
    ([b"a APPEND INBOX (\\Recent) {1}", b"x", b""], "a"),
    ([b'a APPEND INBOX "7-Feb-1994 21:52:25 -0800" {1}', b"x", b""], "a"),  # day not fixed-width
    ([b'a APPEND INBOX "31-Feb-1994 21:52:25 -0800" {1}', b"x", b""], "a"),
    ([b'a APPEND INBOX "07-Foo-1994 21:52:25 -0800" {1}', b"x", b""], "a"),
    ([b'a APPEND INBOX "07-Feb-1994 25:52:25 -0800" {1}', b"x", b""], "a"),
    ([b'a APPEND INBOX "07-Feb-1994 21:52:25 -0860" {1}', b"x", b""], "a"),
    ([b'a APPEND INBOX "07-Feb-1994 21:52:25" {1}', b"x", b""], "a"),
    ([b"a APPEND INBOX {1}", b"x", b" extra"], "a"),
    ([b"a SEARCH"], "a"),
    ([b"a SEARCH CHARSET"], "a"),
    ([b"a SEARCH (ALL"], "a"),
    ([b"a SEARCH ALL)"], "a"),
    ([b"a SEARCH (ALL )"], "a"),
    ([b"a SEARCH ALL  SEEN"], "a"),
    ([b"a SEARCH " + b"(" * (MAX_NESTING + 1) + b"ALL" + b")" * (MAX_NESTING + 1)], "a"),
    ([b"a FETCH 1"], "a"),
    ([b"a FETCH 0 ALL"], "a"),
    ([b"a FETCH 1:0 ALL"], "a"),
    ([b"a FETCH 01 ALL"], "a"),
    ([b"a FETCH 4294967296 ALL"], "a"),
    ([b"a FETCH 1::2 ALL"], "a"),
    ([b"a FETCH 1:2:3 ALL"], "a"),
    ([b"a FETCH 1, ALL"], "a"),
    ([b"a FETCH $ ALL"], "a"),
    ([b"a FETCH 1 (ALL)"], "a"),
    ([b"a FETCH 1 (FLAGS ALL)"], "a"),
    ([b"a FETCH 1 ()"], "a"),
    ([b"a FETCH 1 (FLAGS"], "a"),
    ([b"a FETCH 1 BOGUS"], "a"),
    ([b"a FETCH 1 BINARY[1]"], "a"),
    ([b"a FETCH 1 BODY[MIME]"], "a"),  # MIME needs a part number
    ([b"a FETCH 1 BODY[0]"], "a"),
    ([b"a FETCH 1 BODY[1.0]"], "a"),
    ([b"a FETCH 1 BODY[1..2]"], "a"),
    ([b"a FETCH 1 BODY[FOO]"], "a"),
    ([b"a FETCH 1 BODY[HEADER.FIELDS]"], "a"),
    ([b"a FETCH 1 BODY[HEADER.FIELDS ()]"], "a"),
    ([b"a FETCH 1 BODY[HEADER.FIELDS (A:B)]"], "a"),
    ([b'a FETCH 1 BODY[HEADER.FIELDS ("A B")]'], "a"),
    ([b"a FETCH 1 BODY[HEADER"], "a"),
    ([b"a FETCH 1 BODY[]<1>"], "a"),
    ([b"a FETCH 1 BODY[]<1.0>"], "a"),
    ([b"a FETCH 1 BODY.PEEK"], "a"),
    ([b"a FETCH 1 RFC822[]"], "a"),
    ([b"a FETCH 1 FLAGS (CHANGEDSINCE 0)"], "a"),
    ([b"a FETCH 1 FLAGS (VANISHED)"], "a"),
    ([b"a STORE 1 FLAGS"], "a"),
    ([b"a STORE 1 FLAGS \\Recent"], "a"),
    ([b"a STORE 1 +FLAGS (\\recent)"], "a"),
    ([b"a STORE 1 +FLAGS (\\Bogus)"], "a"),
    ([b"a STORE 1 *FLAGS (\\Seen)"], "a"),
    ([b"a STORE 1 LABELS (\\Seen)"], "a"),
    ([b"a STORE 1 (UNCHANGEDSINCE) FLAGS ()"], "a"),
    ([b"a STORE 1 (FOO 1) FLAGS ()"], "a"),
    ([b"a STORE 1 FLAGS (a]b)"], "a"),
    ([b"a COPY 1"], "a"),
    ([b"a UID EXPUNGE"], "a"),
    ([b"a ID"], "a"),
    ([b'a ID ("name")'], "a"),
    ([b'a ID (name "x")'], "a"),
    ([b"a ID FOO"], "a"),
    ([b"a ENABLE"], "a"),
]


@pytest.mark.parametrize(("pieces", "tag"), INVALID)
def test_invalid_commands(pieces: list[bytes], tag: str | None) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(pieces)
    assert info.value.tag == tag
    assert info.value.message


def test_unknown_command_message() -> None:
    with pytest.raises(ParseError) as info:
        one(b"t1 XYZZY foo")
    assert (info.value.tag, info.value.message) == ("t1", "unknown command")


def test_nesting_at_the_limit_is_accepted() -> None:
    depth = MAX_NESTING
    command = one(b"a SEARCH " + b"(" * depth + b"ALL" + b")" * depth)
    assert isinstance(command.args, Search)
    node = command.args.keys
    for _ in range(depth):
        (node,) = node
    assert node == [Atom("ALL")]


def test_deep_nesting_is_linear_and_not_recursive() -> None:
    line = b"a SEARCH " + b"(" * 100_000
    start = time.perf_counter()
    with pytest.raises(ParseError):
        one(line)
    assert time.perf_counter() - start < 1.0


def test_long_input_is_fast() -> None:
    keys = b" ".join(b'SUBJECT "x\\"y"' for _ in range(20_000))
    start = time.perf_counter()
    command = one(b"a SEARCH " + keys)
    assert time.perf_counter() - start < 2.0
    assert isinstance(command.args, Search)
    assert len(command.args.keys) == 40_000


def test_huge_numbers_are_refused_quickly() -> None:
    with pytest.raises(ParseError):
        one(b"a FETCH 1 BODY[]<" + b"9" * 100_000 + b".1>")


def test_system_flags_table_is_canonical() -> None:
    assert sorted(SYSTEM_FLAGS.values()) == sorted(
        ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
    )


# ---------------------------------------------------------------------------
# Sequence sets


@pytest.mark.parametrize(
    ("text", "max_value", "ranges"),
    [
        ("1", 10, [(1, 1)]),
        ("*", 10, [(10, 10)]),
        ("1:*", 10, [(1, 10)]),
        ("*:4", 10, [(4, 10)]),
        ("5:3", 10, [(3, 5)]),
        ("2,4:7,9,12:*", 15, [(2, 2), (4, 7), (9, 9), (12, 15)]),
        ("3,1,2", 10, [(1, 3)]),
        ("1:5,3:9,11", 20, [(1, 9), (11, 11)]),
        ("20:25", 10, [(20, 25)]),  # not clipped: UID ranges may exceed the highest UID
        ("1:*", 0, []),  # empty mailbox: "*" denotes nothing
        ("3,*", 0, [(3, 3)]),
        ("*:30", 50, [(30, 50)]),
    ],
)
def test_sequence_set_resolve(text: str, max_value: int, ranges: list[tuple[int, int]]) -> None:
    assert seq(text).resolve(max_value) == ranges


@pytest.mark.parametrize(
    "text", ["", "0", "1:0", "01", "a", "1,", ",1", "1::2", "-1", "1:2:3", "**", "4294967296"]
)
def test_sequence_set_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_sequence_set(text)


def test_sequence_set_large_star_is_not_expanded() -> None:
    s = seq("1:*")
    start = time.perf_counter()
    assert s.resolve(100_000) == [(1, 100_000)]
    assert s.contains(100_000, 100_000)
    assert not s.contains(100_001, 100_000)
    assert time.perf_counter() - start < 0.01
    it = s.iter(100_000)
    assert [next(it) for _ in range(3)] == [1, 2, 3]


def test_sequence_set_str_round_trip() -> None:
    for text in ("1", "*", "1:*", "2,4:7,9,12:*", "*:3"):
        assert str(seq(text)) == text


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(1, 60)), st.one_of(st.none(), st.integers(1, 60))
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 70),
)
def test_sequence_set_matches_naive_model(
    items: list[tuple[int | None, int | None]], max_value: int
) -> None:
    s = SequenceSet(tuple(items))
    naive: set[int] = set()
    for a, b in items:
        if max_value == 0 and (a is None or b is None):
            continue
        lo, hi = sorted((max_value if a is None else a, max_value if b is None else b))
        naive.update(range(lo, hi + 1))
    assert list(s.iter(max_value)) == sorted(naive)
    for n in range(0, 75):
        assert s.contains(n, max_value) == (n in naive)
    ranges = s.resolve(max_value)
    # Normalised: sorted, disjoint, non-adjacent.
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo > hi + 1
    assert parse_sequence_set(str(s)) == s


# ---------------------------------------------------------------------------
# FETCH attribute echo names (RFC 3501 §7.4.2)


@pytest.mark.parametrize(
    ("att", "echo", "sets_seen"),
    [
        (b"FLAGS", "FLAGS", False),
        (b"rfc822.size", "RFC822.SIZE", False),
        (b"RFC822", "RFC822", True),
        (b"RFC822.TEXT", "RFC822.TEXT", True),
        (b"RFC822.HEADER", "RFC822.HEADER", False),
        (b"BODY", "BODY", False),
        (b"BODYSTRUCTURE", "BODYSTRUCTURE", False),
        (b"BODY[]", "BODY[]", True),
        (b"BODY.PEEK[]", "BODY[]", False),
        (b"BODY[]<0.2048>", "BODY[]<0>", True),
        (b"BODY.PEEK[TEXT]<100.10>", "BODY[TEXT]<100>", False),
        (b"body[header.fields (from to)]", "BODY[HEADER.FIELDS (from to)]", True),
        (b"BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.10>", "BODY[HEADER.FIELDS (FROM TO)]<0>", False),
        (b'BODY[HEADER.FIELDS ("X(Y" "Z")]', 'BODY[HEADER.FIELDS ("X(Y" Z)]', True),
        (b"BODY[1.2.HEADER.FIELDS.NOT (SUBJECT)]", "BODY[1.2.HEADER.FIELDS.NOT (SUBJECT)]", True),
        (b"BODY[3.MIME]", "BODY[3.MIME]", True),
        (b"BODY[4.2.TEXT]", "BODY[4.2.TEXT]", True),
        (b"BODY[1]", "BODY[1]", True),
    ],
)
def test_fetch_att_echo(att: bytes, echo: str, sets_seen: bool) -> None:
    command = one(b"a FETCH 1 " + att)
    assert isinstance(command.args, Fetch)
    (parsed,) = command.args.attributes
    assert parsed.response_name() == echo
    assert parsed.sets_seen is sets_seen


# ---------------------------------------------------------------------------
# Response helpers


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"", b'""'),
        (b"hello world", b'"hello world"'),
        ("INBOX", b'"INBOX"'),
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        (b"tab\there", b'"tab\there"'),
        (b"bell\x07", b"{5}\r\nbell\x07"),
        (b"del\x7f", b"{4}\r\ndel\x7f"),
        ("grüße", b"{7}\r\ngr\xc3\xbc\xc3\x9fe"),
        (b"\xff", b"{1}\r\n\xff"),
        (b"x" * 1000, b'"' + b"x" * 1000 + b'"'),
        (b"x" * 1001, b"{1001}\r\n" + b"x" * 1001),
    ],
)
def test_quote(value: bytes | str, wire: bytes) -> None:
    assert quote(value) == wire


def test_nstring() -> None:
    assert nstring(None) == b"NIL"
    assert nstring(b"NIL") == b'"NIL"'
    assert nstring("x") == b'"x"'


# ---------------------------------------------------------------------------
# Round trip: generated commands -> wire pieces -> parse_command


class Wire:
    """Builds framed pieces the way the protocol layer would hand them over."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = [b""]

    def text(self, data: bytes) -> "Wire":
        self.pieces[-1] += data
        return self

    def literal(self, data: bytes, nonsync: bool) -> "Wire":
        self.pieces[-1] += b"{%d%s}" % (len(data), b"+" if nonsync else b"")
        self.pieces += [data, b""]
        return self


ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')
atoms = st.text(ATOM_CHARS, min_size=1, max_size=12)
tags = st.text(ATOM_CHARS.replace("+", "") + "]", min_size=1, max_size=8)


@st.composite
def strings(draw: st.DrawFn, value: bytes, allow_atom: bool = True) -> tuple[bytes, bytes | None]:
    """Serialize ``value`` as atom, quoted string or literal: (text, literal payload)."""
    quotable = all(0x20 <= c and c not in (0x0D, 0x0A, 0x00) for c in value)
    atomable = bool(value) and all(chr(c) in ATOM_CHARS + "]" for c in value)
    choices = ["literal"]
    if quotable:
        choices.append("quoted")
    if atomable and allow_atom and value.upper() != b"NIL":
        choices.append("atom")
    kind = draw(st.sampled_from(choices))
    if kind == "atom":
        return value, None
    if kind == "quoted":
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', None
    return b"", value


def emit(wire: Wire, draw: st.DrawFn, value: bytes) -> None:
    text, literal = draw(strings(value))
    if literal is None:
        wire.text(text)
    else:
        wire.literal(literal, draw(st.booleans()))


mailbox_names = st.text("".join(chr(c) for c in range(0x20, 0x7F)), min_size=0, max_size=15).filter(
    lambda s: s.upper() != "INBOX"
)
seq_numbers = st.one_of(st.none(), st.integers(1, 2**32 - 1))
seq_sets = st.lists(st.tuples(seq_numbers, seq_numbers), min_size=1, max_size=5).map(
    lambda items: SequenceSet(tuple(items))
)
flags = st.one_of(st.sampled_from(sorted(SYSTEM_FLAGS.values())), atoms)
header_names = st.text(
    "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ":"), min_size=1, max_size=10
)


@st.composite
def sections(draw: st.DrawFn) -> Section:
    part = tuple(draw(st.lists(st.integers(1, 30), max_size=4)))
    texts: list[str | None] = [None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"]
    if part:
        texts.append("MIME")
    text = draw(st.sampled_from(texts))
    fields: tuple[str, ...] = ()
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        fields = tuple(draw(st.lists(header_names, min_size=1, max_size=4)))
    return Section(part, text, fields)


fetch_atts = st.one_of(
    st.sampled_from(
        [
            FetchAtt(n)
            for n in (
                "ENVELOPE",
                "FLAGS",
                "INTERNALDATE",
                "RFC822",
                "RFC822.HEADER",
                "RFC822.SIZE",
                "RFC822.TEXT",
                "BODY",
                "BODYSTRUCTURE",
                "UID",
                "MODSEQ",
            )
        ]
    ),
    st.builds(
        FetchAtt,
        st.just("BODY"),
        sections(),
        st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1))),
        st.booleans(),
    ),
)


def emit_section(wire: Wire, draw: st.DrawFn, section: Section) -> None:
    words = [str(n) for n in section.part] + ([section.text] if section.text else [])
    wire.text(b"[" + ".".join(words).encode())
    if section.fields:
        wire.text(b" (")
        for i, name in enumerate(section.fields):
            if i:
                wire.text(b" ")
            emit(wire, draw, name.encode())
        wire.text(b")")
    wire.text(b"]")


@st.composite
def commands(draw: st.DrawFn) -> tuple[list[bytes], Command]:
    tag = draw(tags)
    wire = Wire().text(tag.encode() + b" ")
    kind = draw(
        st.sampled_from(
            ["LOGIN", "SELECT", "RENAME", "STATUS", "APPEND", "FETCH", "STORE", "COPY", "ID"]
        )
    )
    uid = False
    if kind in ("FETCH", "STORE", "COPY"):
        uid = draw(st.booleans())
        if uid:
            wire.text(b"UID ")
    wire.text(draw(st.sampled_from([kind, kind.lower(), kind.title()])).encode())
    args: object
    if kind == "LOGIN":
        user, password = draw(st.binary(max_size=20)), draw(st.binary(max_size=20))
        wire.text(b" ")
        emit(wire, draw, user)
        wire.text(b" ")
        emit(wire, draw, password)
        args = Login(user, password)
    elif kind in ("SELECT", "RENAME", "STATUS", "APPEND", "COPY"):
        name = draw(mailbox_names)
        seq_set = draw(seq_sets)
        if kind == "COPY":
            wire.text(b" " + str(seq_set).encode())
        wire.text(b" ")
        emit(wire, draw, name.encode())
        if kind == "SELECT":
            args = Select(name)
        elif kind == "COPY":
            args = CopyMove(seq_set, name)
        elif kind == "RENAME":
            new = draw(mailbox_names)
            wire.text(b" ")
            emit(wire, draw, new.encode())
            args = Rename(name, new)
        elif kind == "STATUS":
            items = tuple(
                draw(st.lists(st.sampled_from(["MESSAGES", "UIDNEXT", "UNSEEN"]), min_size=1))
            )
            wire.text(b" (" + " ".join(items).encode() + b")")
            args = Status(name, items)
        else:
            flag_list = tuple(draw(st.lists(flags, max_size=4)))
            if flag_list or draw(st.booleans()):
                wire.text(b" (" + " ".join(flag_list).encode() + b")")
            stamp = draw(
                st.one_of(
                    st.none(),
                    st.datetimes(
                        min_value=datetime(1970, 1, 1),
                        max_value=datetime(2100, 1, 1),
                        timezones=st.sampled_from(
                            [
                                UTC,
                                timezone(timedelta(hours=-8)),
                                timezone(timedelta(hours=5, minutes=45)),
                            ]
                        ),
                    ).map(lambda d: d.replace(microsecond=0)),
                )
            )
            if stamp is not None:
                wire.text(b" " + stamp.strftime('"%d-%b-%Y %H:%M:%S %z"').encode())
            message = draw(st.binary(max_size=50))
            wire.text(b" ").literal(message, draw(st.booleans()))
            args = Append(name, flag_list, stamp, message)
    elif kind == "FETCH":
        seq_set = draw(seq_sets)
        atts = tuple(draw(st.lists(fetch_atts, min_size=1, max_size=5)))
        wire.text(b" " + str(seq_set).encode() + b" ")
        parenthesized = len(atts) > 1 or draw(st.booleans())
        if parenthesized:
            wire.text(b"(")
        for i, att in enumerate(atts):
            if i:
                wire.text(b" ")
            if att.section is None:
                wire.text(att.name.encode())
            else:
                wire.text(b"BODY.PEEK" if att.peek else b"BODY")
                emit_section(wire, draw, att.section)
                if att.partial is not None:
                    wire.text(b"<%d.%d>" % att.partial)
        if parenthesized:
            wire.text(b")")
        args = Fetch(seq_set, atts)
    elif kind == "STORE":
        seq_set = draw(seq_sets)
        mode = draw(st.sampled_from(["", "+", "-"]))
        silent = draw(st.booleans())
        flag_list = tuple(draw(st.lists(flags, min_size=1, max_size=4)))
        item = mode + ("FLAGS.SILENT" if silent else "FLAGS")
        wire.text(b" " + str(seq_set).encode() + b" " + item.encode() + b" (")
        wire.text(" ".join(flag_list).encode() + b")")
        args = Store(seq_set, mode, silent, flag_list)
    else:
        pairs = draw(
            st.lists(
                st.tuples(st.binary(max_size=8), st.one_of(st.none(), st.binary(max_size=8))),
                max_size=4,
            )
        )
        wire.text(b" (")
        for i, (key, value) in enumerate(pairs):
            if i:
                wire.text(b" ")
            text, literal = draw(strings(key, allow_atom=False))
            if literal is None:
                wire.text(text)
            else:
                wire.literal(literal, draw(st.booleans()))
            wire.text(b" ")
            if value is None:
                wire.text(b"NIL")
            else:
                text, literal = draw(strings(value, allow_atom=False))
                if literal is None:
                    wire.text(text)
                else:
                    wire.literal(literal, draw(st.booleans()))
        wire.text(b")")
        args = Id(tuple(pairs))
    return wire.pieces, Command(tag, kind, uid, args)


@settings(max_examples=400)
@given(commands())
def test_round_trip(case: tuple[list[bytes], Command]) -> None:
    pieces, expected = case
    # Every line piece but the last announces the literal that follows it.
    for i in range(0, len(pieces) - 1, 2):
        marker = literal_at_end(pieces[i])
        assert marker is not None and marker[0] == len(pieces[i + 1])
    assert literal_at_end(pieces[-1]) is None or pieces[-1].endswith(b"}")
    assert parse_command(pieces) == expected


# The commands above with arguments of their own; the rest of the grammar below.
MAILBOX_COMMANDS = ("CREATE", "DELETE", "SUBSCRIBE", "UNSUBSCRIBE")
NO_ARG_COMMANDS = (
    "CAPABILITY",
    "NOOP",
    "LOGOUT",
    "STARTTLS",
    "CHECK",
    "CLOSE",
    "UNSELECT",
    "EXPUNGE",
    "IDLE",
    "NAMESPACE",
)
SIMPLE_SEARCH_KEYS = (
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
)  # fmt: skip
STRING_SEARCH_KEYS = ("BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO")
DATE_SEARCH_KEYS = ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE")
search_dates = st.dates(min_value=date(1970, 1, 1), max_value=date(2100, 12, 31))


def emit_arg(wire: Wire, draw: st.DrawFn, value: bytes, allow_atom: bool = True) -> p.Arg:
    """Write a string argument of SEARCH; what the parser makes of it (Atom or bytes)."""
    text, literal = draw(strings(value, allow_atom=allow_atom))
    if literal is not None:
        wire.literal(literal, draw(st.booleans()))
        return literal
    if text[:1] == b'"':
        wire.text(text)
        return value
    wire.text(text)
    return Atom(text.decode("ascii"))


@st.composite
def search_key(draw: st.DrawFn, wire: Wire, depth: int = 0) -> list[p.Arg]:
    """Write one RFC 3501 §6.4.4 search key; the parser's values for it."""
    kinds = ["simple", "string", "header", "date", "size", "set", "uid", "keyword", "modseq"]
    if depth < 3:
        kinds += ["not", "or", "list"]
    kind = draw(st.sampled_from(kinds))
    if kind == "simple":
        name = draw(st.sampled_from(SIMPLE_SEARCH_KEYS))
        wire.text(name.encode())
        return [Atom(name)]
    if kind == "string":
        name = draw(st.sampled_from(STRING_SEARCH_KEYS))
        wire.text(name.encode() + b" ")
        return [Atom(name), emit_arg(wire, draw, draw(st.binary(max_size=12)))]
    if kind == "header":
        wire.text(b"HEADER ")
        field = emit_arg(wire, draw, draw(header_names).encode())
        wire.text(b" ")
        return [Atom("HEADER"), field, emit_arg(wire, draw, draw(st.binary(max_size=12)))]
    if kind == "date":
        name = draw(st.sampled_from(DATE_SEARCH_KEYS))
        day = draw(search_dates).strftime("%d-%b-%Y").lstrip("0").encode()
        wire.text(name.encode() + b" ")
        return [Atom(name), emit_arg(wire, draw, day)]
    if kind == "size":
        name = draw(st.sampled_from(["LARGER", "SMALLER"]))
        number = str(draw(st.integers(0, 2**32 - 1)))
        wire.text(f"{name} {number}".encode())
        return [Atom(name), Atom(number)]
    if kind in ("set", "uid"):
        text = str(draw(seq_sets))
        if kind == "set":
            wire.text(text.encode())
            return [Atom(text)]
        wire.text(b"UID " + text.encode())
        return [Atom("UID"), Atom(text)]
    if kind == "keyword":
        name = draw(st.sampled_from(["KEYWORD", "UNKEYWORD"]))
        keyword = draw(atoms.filter(lambda a: a.upper() != "NIL"))
        wire.text(f"{name} {keyword}".encode())
        return [Atom(name), Atom(keyword)]
    if kind == "modseq":
        value = str(draw(st.integers(0, 2**63 - 1)))
        wire.text(b"MODSEQ " + value.encode())
        return [Atom("MODSEQ"), Atom(value)]
    if kind == "not":
        wire.text(b"NOT ")
        return [Atom("NOT"), *draw(search_key(wire, depth + 1))]
    if kind == "or":
        wire.text(b"OR ")
        first = draw(search_key(wire, depth + 1))
        wire.text(b" ")
        return [Atom("OR"), *first, *draw(search_key(wire, depth + 1))]
    wire.text(b"(")
    inner = draw(search_keys(wire, depth + 1))
    wire.text(b")")
    return [inner]


@st.composite
def search_keys(draw: st.DrawFn, wire: Wire, depth: int = 0) -> list[p.Arg]:
    keys: list[p.Arg] = []
    for i in range(draw(st.integers(1, 3))):
        if i:
            wire.text(b" ")
        keys += draw(search_key(wire, depth))
    return keys


@st.composite
def more_commands(draw: st.DrawFn) -> tuple[list[bytes], Command]:
    """The commands :func:`commands` leaves out: SEARCH with every RFC 3501 key, LIST,
    the mailbox commands, MOVE, UID EXPUNGE, ENABLE, AUTHENTICATE and the CONDSTORE
    modifiers of SELECT, FETCH and STORE (RFC 7162)."""
    tag = draw(tags)
    wire = Wire().text(tag.encode() + b" ")
    kind = draw(
        st.sampled_from(
            [
                "SEARCH", "LIST", "LSUB", "EXAMINE", "SELECT", "MOVE", "EXPUNGE", "ENABLE",
                "AUTHENTICATE", "FETCH", "STORE", *MAILBOX_COMMANDS, *NO_ARG_COMMANDS,
            ]
        )
    )  # fmt: skip
    uid = kind == "EXPUNGE" and draw(st.booleans())
    if kind in ("SEARCH", "MOVE", "FETCH", "STORE"):
        uid = draw(st.booleans())
    if uid:
        wire.text(b"UID ")
    wire.text(draw(st.sampled_from([kind, kind.lower()])).encode())
    args: object = None
    if kind == "SEARCH":
        charset = None
        if draw(st.booleans()):
            charset = draw(st.sampled_from(["UTF-8", "US-ASCII", "utf-8"]))
            wire.text(b" CHARSET ")
            emit_arg(wire, draw, charset.encode())
            charset = charset.upper()
        wire.text(b" ")
        args = Search(charset, draw(search_keys(wire)))
    elif kind in ("LIST", "LSUB"):
        reference = draw(mailbox_names)
        wire.text(b" ")
        emit(wire, draw, reference.encode())
        pattern = draw(st.text("abc.%*", max_size=6))
        wire.text(b" ")
        if pattern and draw(st.booleans()):
            wire.text(pattern.encode())  # list-char: atoms with wildcards
        else:
            wire.text(b'"' + pattern.encode() + b'"')
        args = ListMailboxes(reference, pattern)
    elif kind in ("EXAMINE", "SELECT"):
        name = draw(mailbox_names)
        wire.text(b" ")
        emit(wire, draw, name.encode())
        condstore = draw(st.booleans())
        if condstore:
            wire.text(draw(st.sampled_from([b" (CONDSTORE)", b" (condstore)"])))
        args = Select(name, condstore)
    elif kind in MAILBOX_COMMANDS:
        name = draw(mailbox_names)
        wire.text(b" ")
        emit(wire, draw, name.encode())
        args = Mailbox(name)
    elif kind == "MOVE":
        seq_set, name = draw(seq_sets), draw(mailbox_names)
        wire.text(b" " + str(seq_set).encode() + b" ")
        emit(wire, draw, name.encode())
        args = CopyMove(seq_set, name)
    elif kind == "EXPUNGE" and uid:
        seq_set = draw(seq_sets)
        wire.text(b" " + str(seq_set).encode())
        args = Expunge(seq_set)
    elif kind == "ENABLE":
        caps = draw(st.lists(atoms.map(str.upper), min_size=1, max_size=3))
        wire.text(b" " + " ".join(caps).encode())
        args = Enable(tuple(caps))
    elif kind == "AUTHENTICATE":
        response = draw(st.one_of(st.none(), st.just("="), st.binary(min_size=1, max_size=30)))
        wire.text(b" PLAIN")
        if response is not None:
            if isinstance(response, bytes):
                response = base64.b64encode(response).decode()
            wire.text(b" " + response.encode())
        args = Authenticate("PLAIN", response)
    elif kind == "FETCH":
        seq_set, changed_since = draw(seq_sets), draw(st.integers(1, 2**63 - 1))
        wire.text(b" " + str(seq_set).encode() + b" (FLAGS MODSEQ)")
        wire.text(b" (CHANGEDSINCE %d)" % changed_since)
        args = Fetch(seq_set, (FetchAtt("FLAGS"), FetchAtt("MODSEQ")), changed_since)
    elif kind == "STORE":
        seq_set, unchanged_since = draw(seq_sets), draw(st.integers(0, 2**63 - 1))
        flag_list = tuple(draw(st.lists(flags, min_size=1, max_size=3)))
        wire.text(b" " + str(seq_set).encode() + b" (UNCHANGEDSINCE %d)" % unchanged_since)
        wire.text(b" +FLAGS (" + " ".join(flag_list).encode() + b")")
        args = Store(seq_set, "+", False, flag_list, unchanged_since)
    return wire.pieces, Command(tag, kind, uid, args)


@settings(max_examples=400)
@given(more_commands())
def test_round_trip_of_the_rest_of_the_grammar(case: tuple[list[bytes], Command]) -> None:
    pieces, expected = case
    command = parse_command(pieces)
    assert command == expected
    if isinstance(command.args, Search):
        # Every RFC 3501 §6.4.4 key the generator writes is one SEARCH knows.
        compile_search(command.args.charset, command.args.keys)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=5))
def test_random_pieces_only_raise_parse_error(pieces: list[bytes]) -> None:
    try:
        parse_command(pieces)
    except ParseError:
        pass


@settings(max_examples=300)
@given(commands(), st.data())
def test_mutated_commands_only_raise_parse_error(
    case: tuple[list[bytes], Command], data: st.DataObject
) -> None:
    pieces = list(case[0])
    index = data.draw(st.integers(0, len(pieces) - 1))
    piece = bytearray(pieces[index])
    for _ in range(data.draw(st.integers(1, 3))):
        if piece and data.draw(st.booleans()):
            del piece[data.draw(st.integers(0, len(piece) - 1))]
        else:
            piece.insert(
                data.draw(st.integers(0, len(piece))),
                data.draw(st.sampled_from(b' ()[]<>{}"\\*%:,+\r\n\x00\xff0123456789')),
            )
    pieces[index] = bytes(piece)
    try:
        parse_command(pieces)
    except ParseError:
        pass


@given(st.binary(max_size=60))
def test_literal_at_end_only_raises_parse_error(line: bytes) -> None:
    try:
        result = literal_at_end(line)
    except ParseError:
        return
    assert result is None or (result[0] >= 0 and isinstance(result[1], bool))


def test_nil_singleton() -> None:
    command = one(b'a ID ("k" nil)')
    assert isinstance(command.args, Id)
    assert command.args.params == ((b"k", None),)


def test_search_keeps_nil_as_an_atom() -> None:
    # In SEARCH, NIL is just the astring "NIL"; only ID-style nstrings produce NIL.
    command = one(b"a SEARCH SUBJECT NIL")
    assert isinstance(command.args, Search)
    assert NIL not in command.args.keys
