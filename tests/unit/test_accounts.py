"""Passwd-file accounts, Dovecot hash schemes, aliases and subaddresses."""

from __future__ import annotations

import os

import pytest
from passlib.hash import argon2, sha512_crypt
from twisted.trial import unittest

from mailserver import crypt3
from mailserver.accounts import (
    RECHECK_SECONDS,
    Directory,
    PasswdFileError,
    hash_password,
    read_passwd,
    verify_password,
)


def test_dovecot_schemes_verify() -> None:
    assert verify_password("secret", hash_password("secret"))
    assert not verify_password("Secret", hash_password("secret"))
    assert verify_password("pw", "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("pw"))
    assert verify_password("pw", "{ARGON2ID}" + argon2.using(type="ID").hash("pw"))
    assert verify_password("pw", "{PLAIN}pw")
    assert not verify_password("pw", "{PLAIN}px")
    assert not verify_password("pw", "{SHA512-CRYPT}garbage")
    assert not verify_password("pw", "")


# Ulrich Drepper's SHA-crypt test vectors (the specification of $5$ and $6$).
SHA_CRYPT_VECTORS = [
    ("{SHA256-CRYPT}", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    (
        "{SHA512-CRYPT}",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcb"
        "YEdFCoEOfaS35inz1",
    ),
    (
        "{SHA256-CRYPT}",
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA",
    ),
    ("", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),  # no {SCHEME} prefix
]


@pytest.mark.parametrize(("scheme", "stored"), SHA_CRYPT_VECTORS)
def test_sha_crypt_through_the_c_library(scheme: str, stored: str) -> None:
    assert crypt3.crypt is not None, "libcrypt (libxcrypt) is on every Debian system"
    assert crypt3.crypt("Hello world!", stored) == stored
    assert verify_password("Hello world!", scheme + stored)
    assert not verify_password("Hello world?", scheme + stored)
    # C strings end at NUL: a password with one must not pass as its prefix.
    assert not verify_password("Hello world!\0tail", scheme + stored)


def test_sha_crypt_scheme_and_hash_must_agree() -> None:
    sha256 = SHA_CRYPT_VECTORS[0][1]
    assert not verify_password("Hello world!", "{SHA512-CRYPT}" + sha256)
    assert not verify_password("Hello world!", "{BLF-CRYPT}" + sha256)


def test_passwd_file_parsing(tmp_path) -> None:
    path = tmp_path / "passwd"
    path.write_text(
        "# comment\n\n"
        "alice@Example.TEST:{PLAIN}a:1000:1000::/home/alice::\n"
        "bob@example.test:{PLAIN}b\n"
    )
    accounts = read_passwd(str(path))
    assert sorted(accounts) == ["alice@example.test", "bob@example.test"]
    assert accounts["alice@example.test"].password_hash == "{PLAIN}a"
    path.write_text("no colon here\n")
    with pytest.raises(PasswdFileError, match=":1: expected user:password"):
        read_passwd(str(path))
    path.write_text("../evil@example.test:{PLAIN}x\n")
    with pytest.raises(PasswdFileError):
        read_passwd(str(path))


def test_utf8_local_parts(tmp_path) -> None:
    """RFC 6531 addresses: a UTF-8 account and alias, found under either Unicode
    spelling (NFC is the key and the directory name); names that could mislead or
    escape are still refused."""
    from mailserver.names import BadName, split_address

    path = tmp_path / "passwd"
    path.write_text("jösé@example.test:{PLAIN}pw\n", encoding="utf-8")
    directory = Directory(
        ("example.test",), str(path), {"команда@example.test": ("jösé@example.test",)}
    )
    nfd = "jo\u0308se\u0301@example.test"
    assert directory.resolve(nfd) == ["jösé@example.test"]
    assert directory.resolve("JÖSÉ@example.test") == ["jösé@example.test"]
    assert directory.resolve("команда@example.test") == ["jösé@example.test"]
    assert directory.resolve("jösé+tag@example.test") == ["jösé@example.test"]
    assert split_address(nfd) == ("jösé", "example.test")
    assert split_address("jösé@Bücher.example") == ("jösé", "xn--bcher-kva.example")
    for bad in ("a\u202eb@x.example", "a\u00a0b@x.example", "a\x85b@x.example", "é.@x.example"):
        with pytest.raises(BadName):
            split_address(bad)
    with pytest.raises(BadName, match="too long"):
        split_address("é" * 33 + "@x.example")


class DirectoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write("alice@example.test:{PLAIN}secret\nbob@example.test:{PLAIN}hunter2\n")
        self.directory = Directory(
            ("example.test",),
            self.path,
            {
                "postmaster@example.test": ("alice@example.test",),
                "team@example.test": ("alice@example.test", "bob@example.test", "x@other.example"),
                "loop@example.test": ("loop@example.test",),
            },
        )

    def test_an_edit_of_the_passwd_file_is_seen_within_a_second(self) -> None:
        now = [100.0]
        directory = Directory(("example.test",), self.path, clock=lambda: now[0])
        self.assertIsNone(directory.account("carol@example.test"))
        with open(self.path, "a") as f:
            f.write("carol@example.test:{PLAIN}pw\n")
        os.utime(self.path, ns=(1, 1))  # another stamp, even within the mtime's granularity
        now[0] += RECHECK_SECONDS / 2
        self.assertIsNone(directory.account("carol@example.test"))  # not looked at yet
        now[0] += RECHECK_SECONDS / 2
        account = directory.account("carol@example.test")
        assert account is not None
        self.assertEqual(account.address, "carol@example.test")

    def test_resolve(self) -> None:
        r = self.directory.resolve
        self.assertEqual(r("alice@example.test"), ["alice@example.test"])
        self.assertEqual(r("ALICE@EXAMPLE.TEST"), ["alice@example.test"])
        self.assertEqual(r("alice+lists@example.test"), ["alice@example.test"])
        self.assertEqual(r("postmaster@example.test"), ["alice@example.test"])
        self.assertEqual(r("team@example.test"), ["alice@example.test", "bob@example.test"])
        self.assertIsNone(r("carol@example.test"))
        self.assertIsNone(r("loop@example.test"))
        self.assertIsNone(r("not an address"))

    async def test_check_password(self) -> None:
        self.assertEqual(
            await self.directory.check_password("Alice@example.test", "secret"),
            "alice@example.test",
        )
        self.assertIsNone(await self.directory.check_password("alice@example.test", "nope"))
        self.assertIsNone(await self.directory.check_password("carol@example.test", "secret"))
        self.assertIsNone(await self.directory.check_password("../x", "secret"))
