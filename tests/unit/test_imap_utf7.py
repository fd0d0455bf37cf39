"""Tests for mailserver.imap.utf7: modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.imap.utf7 import UTF7Error, decode_mailbox, encode_mailbox


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", "INBOX"),
        ("", ""),
        # RFC 3501 §5.1.3 example.
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("😀", "&2D3eAA-"),
        ("a\tb", "a&AAk-b"),
        ("ü&ü", "&APw-&-&APw-"),
    ],
)
def test_known_encodings(name: str, wire: str) -> None:
    assert encode_mailbox(name) == wire
    assert decode_mailbox(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "&U,BTFw",  # unterminated
        "&U,BTF-",  # truncated UTF-16 unit
        "&Jjo!-",  # not base64
        "&AGE-",  # encodes printable ASCII "a"
        "&U,BTFw-&ZeVnLIqe-",  # adjacent runs must be merged
        "&APx-&APw-",
        "&APw=-",  # padding is not allowed
        "&APz-",  # non-zero pad bits
        "&2D0-",  # lone high surrogate
        "ü",  # raw non-ASCII
        "a\tb",  # raw control character
    ],
)
def test_invalid_encodings(wire: str) -> None:
    with pytest.raises(UTF7Error):
        decode_mailbox(wire)


@given(st.text())
def test_round_trip(name: str) -> None:
    wire = encode_mailbox(name)
    assert all(" " <= ch <= "~" for ch in wire)
    assert decode_mailbox(wire) == name


@given(st.text("&-ABCabc+,/=~ ", max_size=20))
def test_decode_is_canonical(wire: str) -> None:
    try:
        name = decode_mailbox(wire)
    except UTF7Error:
        return
    assert encode_mailbox(name) == wire
