"""Screening a SEARCH: ruling messages out from the raw bytes of their headers
(store/files.py), never one that the parsed message would match (imap/search.py)."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from mailserver.imap.fetch import MessageParts
from mailserver.imap.search import And, Flag, Header, Not, Or
from mailserver.store import files, maildir
from mailserver.store.files import read_message_file, ruled_out, screen_file, screen_files
from mailserver.store.maildir import MaildirStore
from tests.unit.test_file_worker import GoneWorker, recording_worker

FIELDS = ("Subject", "X-Tag")
# Pieces of headers: words, folds, both line ends, encoded words, non-ASCII that case-folds
# to ASCII (U+212A KELVIN SIGN is "k"), and a blank line that ends the header early.
PIECES = st.sampled_from(
    [b"key", b"KEY", b"k", b"ey", b" ", b"\t", b"\r\n ", b"\n\t", b"=?utf-8?q?key?=",
     b"=?", b"\xe2\x84\xaa", b"\xc3\xa9", b":", b"\r", b"\n", b"\r\n\r\n", b"\n\n"]
)  # fmt: skip


def _match(key: Header, data: bytes) -> bool | None:
    return key.match(None, MessageParts(data))  # type: ignore[arg-type]


def _file(directory: str, data: bytes) -> str:
    fd, path = tempfile.mkstemp(dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(FIELDS), st.lists(PIECES, max_size=6)), max_size=4),
    st.sampled_from(["key", "k", "ey", "kkey"]),
    st.booleans(),
)
def test_a_message_ruled_out_does_not_match(
    fields: list[tuple[str, list[bytes]]], word: str, bare_lf: bool
) -> None:
    header = b"".join(name.encode() + b": " + b"".join(value) + b"\r\n" for name, value in fields)
    raw = header + b"\r\nbody key\r\n"
    if bare_lf:
        raw = raw.replace(b"\r\n", b"\n")
    with tempfile.TemporaryDirectory() as directory:
        path = _file(directory, raw)
        for crlf in (True, False):  # True for a file with bare LFs only if it says so
            served = read_message_file(path, crlf)
            for name in FIELDS:
                key = Header(name, word)
                if not screen_file(path, crlf, key.rule()):  # type: ignore[arg-type]
                    assert _match(key, served) is False, (name, crlf)
                either = Or((key, Header("Subject", "nothing")))
                if not screen_file(path, crlf, either.rule()):  # type: ignore[arg-type]
                    assert either.match(None, MessageParts(served)) is False  # type: ignore[arg-type]


def test_rules_of_composite_keys() -> None:
    word, other, flag = Header("Subject", "hello"), Header("From", "bob"), Flag("\\Seen", True)
    assert word.rule() == ("word", b"hello")
    assert Header("Subject", "two words").rule() is None  # a fold may split it
    assert Header("Subject", "grüße").rule() is None
    assert Header("Subject", "").rule() is None  # matches every message with the field
    assert And((flag, word)).rule() == ("and", (("word", b"hello"),))
    assert And((flag, Not(word))).rule() is None
    assert Or((word, other)).rule() == ("or", (("word", b"hello"), ("word", b"bob")))
    assert Or((word, flag)).rule() is None  # the flag may make it match


def test_ruled_out_by_and_or() -> None:
    header = b"Subject: hello\r\nFrom: bob\r\n\r\n"
    hello, alice = ("word", b"hello"), ("word", b"alice")
    assert ruled_out(header, ("and", (hello, alice)))
    assert not ruled_out(header, ("or", (hello, alice)))
    assert ruled_out(header, ("or", (alice, ("word", b"carol"))))
    assert not ruled_out(b"Subject: =?utf-8?q?x?=\r\n", alice)  # encoded: decoded later
    assert not ruled_out(b"Subject: \xc3\xa9\r\n", alice)  # non-ASCII: case-folded later


class ScreenFileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_only_the_header_counts(self) -> None:
        word = ("word", b"word")
        path = _file(self.dir, b"Subject: hi\n\nthe word is in the body\n")
        self.assertFalse(screen_file(path, False, word))
        # Served as it is, that file has no blank line: the word is in its header.
        self.assertTrue(screen_file(path, True, word))
        self.assertFalse(screen_file(_file(self.dir, b"\r\nword\r\n"), True, word))
        self.assertTrue(screen_file(_file(self.dir, b"X: a\r\n word\r\n"), True, word))

    def test_a_gone_file_or_a_long_header_is_not_ruled_out(self) -> None:
        x = ("word", b"x")
        self.assertTrue(screen_file(os.path.join(self.dir, "gone"), True, x))
        long_header = b"X-Long: " + b"a" * files.SCREEN_BYTES + b"\r\n\r\n"
        self.assertTrue(screen_file(_file(self.dir, long_header), True, x))
        no_body = b"Subject: a\r\nFrom: b"  # no blank line at all: all header
        self.assertFalse(screen_file(_file(self.dir, no_body), True, x))
        self.assertTrue(screen_file(_file(self.dir, no_body), True, ("word", b"b")))


class SplitScreeningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(maildir, "SPLIT_SCREENING_ABOVE", 2)
        directory = self.mktemp()
        os.makedirs(directory)
        self.paths = [
            (_file(directory, b"Subject: %s\n\nbody\n" % (b"needle" if i % 3 else b"hay")), False)
            for i in range(9)
        ]
        self.paths.append((os.path.join(directory, "gone"), True))
        self.rule = ("word", b"needle")

    async def test_a_long_list_is_split_between_a_thread_and_the_worker(self) -> None:
        worker, calls = recording_worker(self)
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=worker)
        kept = await store.screen_files(self.paths, self.rule)
        self.assertEqual(kept, screen_files(self.paths, self.rule))
        self.assertEqual(kept, [bool(i % 3) for i in range(9)] + [True])
        ((name, paths, rule),) = calls
        self.assertEqual((name, paths, rule), ("screen_files", self.paths[5:], self.rule))

    async def test_without_the_worker_its_half_is_screened_in_a_thread(self) -> None:
        store = MaildirStore(self.mktemp(), hostname="h.example", worker=GoneWorker())  # type: ignore[arg-type]
        kept = await store.screen_files(self.paths, self.rule)
        self.assertEqual(kept, screen_files(self.paths, self.rule))
