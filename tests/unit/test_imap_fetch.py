"""Tests for mailserver.imap.fetch: sections, ENVELOPE, BODYSTRUCTURE, INTERNALDATE."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailserver.imap.fetch import (
    MessageParts,
    apply_partial,
    bodystructure,
    envelope,
    format_internaldate,
    section_bytes,
)
from mailserver.imap.parser import Section


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# The message of RFC 3501 §8's sample FETCH (headers as its ENVELOPE reports them).
RFC3501_SAMPLE = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US,
 John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
"""
)


def test_envelope_rfc3501_example() -> None:
    # RFC 3501 §8, lines joined; address lists have no SP between addresses (§9 env-cc).
    expected = (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    assert envelope(MessageParts(RFC3501_SAMPLE)) == expected


def test_body_rfc3501_sample() -> None:
    # RFC 3501 §8: BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)
    msg = MessageParts(RFC3501_SAMPLE)
    size = len(msg.body)
    assert bodystructure(msg, False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" %d 1)' % size
    )


def _lines(count: int, total: int) -> str:
    """A body of exactly ``count`` lines and ``total`` octets (no final CRLF)."""
    content = total - 2 * (count - 1)
    width, extra = divmod(content, count)
    lines = ["x" * (width + (1 if i < extra else 0)) for i in range(count)]
    return "\n".join(lines)


def test_bodystructure_rfc3501_example() -> None:
    # RFC 3501 §7.4.2 BODYSTRUCTURE example, reproduced octet for octet.
    message = crlf(
        'Content-Type: MULTIPART/MIXED; boundary="--=_b"\n'
        "\n"
        "----=_b\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
        "\n"
        f"{_lines(23, 1152)}\n"
        "----=_b\n"
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
        "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
        "Content-Description: Compiler diff\n"
        "Content-Transfer-Encoding: BASE64\n"
        "\n"
        f"{_lines(73, 4554)}\n"
        "----=_b--\n"
    )
    msg = MessageParts(message)
    assert bodystructure(msg, False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")'
    )
    assert bodystructure(msg, True) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73 '
        b'NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "--=_b") NIL NIL NIL)'
    )


NESTED = crlf(
    """From: a@example.com
Subject: nested
Content-Type: multipart/mixed; boundary=outer

preamble --outer not a delimiter
--outer
Content-Type: text/plain; charset=utf-8

first part
--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain

alt plain
--inner
Content-Type: text/html

<p>alt html</p>
--inner--
--outer
Content-Type: message/rfc822
Content-Disposition: attachment; filename="fwd.eml"
Content-Language: en, de

From: "Inner, Sender" <inner@example.org>
Subject: forwarded
Content-Type: multipart/mixed; boundary=deep

--deep

no header part
--deep
Content-Type: application/octet-stream; name="x.bin"
Content-Transfer-Encoding: base64
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
Content-Location: http://example.com/x.bin

AAEC
--deep--
--outer
Content-Type: text/plain

last part without close delimiter
"""
)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (Section((), "HEADER.FIELDS", ("subject", "X-NONE")), b"Subject: nested\r\n\r\n"),
        (Section((), "HEADER.FIELDS", ("x-none",)), b"\r\n"),
        (
            Section((), "HEADER.FIELDS.NOT", ("Content-Type", "From")),
            b"Subject: nested\r\n\r\n",
        ),
        (Section((1,)), b"first part"),
        (Section((1,), "MIME"), b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        (Section((1,), "HEADER"), b""),  # HEADER only addresses message/rfc822 parts
        (Section((1, 1)), b""),
        (Section((2, 1)), b"alt plain"),
        (Section((2, 2)), b"<p>alt html</p>"),
        (Section((2, 2), "MIME"), b"Content-Type: text/html\r\n\r\n"),
        (Section((2, 3)), b""),
        (
            Section((3,), "HEADER"),
            b'From: "Inner, Sender" <inner@example.org>\r\nSubject: forwarded\r\n'
            b"Content-Type: multipart/mixed; boundary=deep\r\n\r\n",
        ),
        (Section((3,), "HEADER.FIELDS", ("SUBJECT",)), b"Subject: forwarded\r\n\r\n"),
        (Section((3, 1)), b"no header part"),
        (Section((3, 1), "MIME"), b"\r\n"),
        (Section((3, 2)), b"AAEC"),
        (Section((3, 3)), b""),
        (Section((4,)), b"last part without close delimiter\r\n"),
        (Section((5,)), b""),
    ],
)
def test_sections(section: Section, expected: bytes) -> None:
    assert section_bytes(MessageParts(NESTED), section) == expected


def test_whole_header_and_text_sections() -> None:
    msg = MessageParts(NESTED)
    header = section_bytes(msg, Section((), "HEADER"))
    text = section_bytes(msg, Section((), "TEXT"))
    assert header.endswith(b"\r\n\r\n") and header.startswith(b"From:")
    assert header + text == NESTED == section_bytes(msg, Section())
    inner = section_bytes(msg, Section((3,)))
    assert inner == section_bytes(msg, Section((3,), "HEADER")) + section_bytes(
        msg, Section((3,), "TEXT")
    )


def test_nested_bodystructure() -> None:
    msg = MessageParts(NESTED)
    inner_body = section_bytes(msg, Section((3,)))
    expected = (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 9 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d '
        b'(NIL "forwarded" (("Inner, Sender" NIL "inner" "example.org")) '
        b'(("Inner, Sender" NIL "inner" "example.org")) '
        b'(("Inner, Sender" NIL "inner" "example.org")) NIL NIL NIL NIL NIL) '
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "OCTET-STREAM" ("NAME" "x.bin") NIL NIL "BASE64" 4 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" NIL NIL "http://example.com/x.bin")'
        b' "MIXED" ("BOUNDARY" "deep") NIL NIL NIL) %d '
        b'NIL ("ATTACHMENT" ("FILENAME" "fwd.eml")) ("en" "de") NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 35 1 NIL NIL NIL NIL)'
        b' "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)'
    ) % (len(inner_body), inner_body.count(b"\n") + 1)
    assert bodystructure(msg, True) == expected
    assert bodystructure(msg, False).startswith(
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1)'
    )
    assert b"ATTACHMENT" not in bodystructure(msg, False)


@pytest.mark.parametrize(
    ("message", "structure"),
    [
        # No Content-Type: RFC 2045 §5.2 default.
        (
            b"Subject: x\r\n\r\nhi\r\n",
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1)',
        ),
        # No body at all.
        (b"Subject: x\r\n", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'),
        (b"", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'),
        # Empty header.
        (b"\r\nbody", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 4 1)'),
        # Unparseable Content-Type falls back to text/plain.
        (
            b"Content-Type: garbage\r\n\r\nx",
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1)',
        ),
        # Multipart without boundary, or without any delimiter: text/plain.
        (
            b"Content-Type: multipart/mixed\r\n\r\nx",
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1)',
        ),
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno parts here",
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1)',
        ),
        # Parameters: quoted values with escapes, comments, junk, case of values kept.
        (
            b'Content-Type: Text/Plain (c) ; format="flow\\"ed" ; junk; CharSet = ISO-8859-1\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=41",
            b'("TEXT" "PLAIN" ("FORMAT" "flow\\"ed" "CHARSET" "ISO-8859-1") NIL NIL '
            b'"QUOTED-PRINTABLE" 3 1)',
        ),
        (
            b"Content-Type: image/png; name=a.png\r\n\r\nPNG",
            b'("IMAGE" "PNG" ("NAME" "a.png") NIL NIL "7BIT" 3)',
        ),
        (
            b"Content-Type: audio/basic\r\n\r\n",
            b'("AUDIO" "BASIC" NIL NIL NIL "7BIT" 0)',
        ),
        # multipart/digest parts default to message/rfc822 (RFC 2046 §5.1.5).
        (
            b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: s\r\n\r\nb"
            b"\r\n--d--\r\n",
            b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 15 '
            b'(NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL) '
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 1) 3) "DIGEST")',
        ),
    ],
)
def test_body_table(message: bytes, structure: bytes) -> None:
    assert bodystructure(MessageParts(message), False) == structure


def test_bodystructure_8bit_parameters_become_literals() -> None:
    msg = MessageParts(b'Content-Type: text/plain; name="\xc3\xa9t\xc3\xa9"\r\n\r\nx')
    assert b'"NAME" {5}\r\n\xc3\xa9t\xc3\xa9' in bodystructure(msg, False)


def test_deep_nesting_is_bounded() -> None:
    message = b"Content-Type: message/rfc822\r\n\r\n" * 2000 + b"body"
    structure = bodystructure(MessageParts(message), True)
    assert structure.count(b'"RFC822"') < 100
    assert section_bytes(MessageParts(message), Section((1,) * 500)) == b""


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Nothing at all.
        (b"", b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
        # Sender / Reply-To default to From when absent or empty (RFC 3501 §7.4.2).
        (
            b"From: a@b.c\r\nSender:\r\nReply-To: r@b.c\r\nSubject:\r\n",
            b'(NIL "" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "r" "b.c")) '
            b"NIL NIL NIL NIL NIL)",
        ),
        # Group syntax (RFC 3501 §7.4.2: NIL host marks group start, all-NIL its end).
        (
            b'To: undisclosed-recipients:;\r\nCc: Team: x@y.z, "Q, R" <q@y.z>; , w@v\r\n',
            b'(NIL NIL NIL NIL NIL ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
            b'((NIL NIL "Team" NIL)(NIL NIL "x" "y.z")("Q, R" NIL "q" "y.z")(NIL NIL NIL NIL)'
            b'(NIL NIL "w" "v")) NIL NIL NIL)',
        ),
        # Source route, comments as names, domain literals, folded values.
        (
            b"From: <@relay.net,@hop.org:joe@example.com>\r\n"
            b'To: joe@example.com (Joe Q. Public), "" <e@[192.0.2.1]>\r\n'
            b"Bcc: John Q. Public <jqp@x.org>\r\n"
            b"Subject: a\r\n  folded\tsubject \r\n"
            b"In-Reply-To: <1@x>\r\nMessage-ID: <2@x>\r\n",
            b'(NIL "a  folded\tsubject" ((NIL "@relay.net,@hop.org" "joe" "example.com")) '
            b'((NIL "@relay.net,@hop.org" "joe" "example.com")) '
            b'((NIL "@relay.net,@hop.org" "joe" "example.com")) '
            b'(("Joe Q. Public" NIL "joe" "example.com")(NIL NIL "e" "[192.0.2.1]")) NIL '
            b'(("John Q. Public" NIL "jqp" "x.org")) "<1@x>" "<2@x>")',
        ),
        # 8-bit and encoded words are passed through raw; 8-bit becomes a literal.
        (
            b"From: =?utf-8?q?J=C3=B6rg?= <j@x.de>\r\nSubject: gr\xc3\xbc\xc3\x9fe\r\n",
            b'(NIL {7}\r\ngr\xc3\xbc\xc3\x9fe (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.de")) '
            b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.de")) '
            b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.de")) NIL NIL NIL NIL NIL)',
        ),
        # Quotes and backslashes inside strings are escaped.
        (
            b'From: "a \\"b\\" c" <x@y>\r\n',
            b'(NIL NIL (("a \\"b\\" c" NIL "x" "y")) (("a \\"b\\" c" NIL "x" "y")) '
            b'(("a \\"b\\" c" NIL "x" "y")) NIL NIL NIL NIL NIL)',
        ),
        # Unterminated constructs and empty lists never fail.
        (
            b'To: "unterminated <a@b\r\nCc: ,,\r\n',
            b'(NIL NIL NIL NIL NIL ((NIL NIL "unterminated <a@b" ".MISSING-HOST-NAME.")) '
            b"NIL NIL NIL NIL)",
        ),
    ],
)
def test_envelope_table(headers: bytes, expected: bytes) -> None:
    assert envelope(MessageParts(headers + b"\r\nbody")) == expected


@pytest.mark.parametrize(
    ("data", "partial", "expected"),
    [
        (b"0123456789", None, b"0123456789"),
        (b"0123456789", (0, 3), b"012"),
        (b"0123456789", (8, 10), b"89"),
        (b"0123456789", (10, 1), b""),
        (b"0123456789", (99, 1), b""),
    ],
)
def test_apply_partial(data: bytes, partial: tuple[int, int] | None, expected: bytes) -> None:
    assert apply_partial(data, partial) == expected


@pytest.mark.parametrize(
    ("ts", "offset", "expected"),
    [
        (0, 0, b'" 1-Jan-1970 00:00:00 +0000"'),
        # RFC 3501 §8 sample INTERNALDATE.
        (837596665, -7 * 3600, b'"17-Jul-1996 02:44:25 -0700"'),
        (1e9, 5 * 3600 + 1800, b'" 9-Sep-2001 07:16:40 +0530"'),
        (1e9 + 0.9, -(3 * 3600 + 1800), b'" 8-Sep-2001 22:16:40 -0330"'),
        (951782400, 0, b'"29-Feb-2000 00:00:00 +0000"'),
    ],
)
def test_format_internaldate(ts: float, offset: int, expected: bytes) -> None:
    assert format_internaldate(ts, offset) == expected


def test_header_lookup_is_case_insensitive_and_unfolds() -> None:
    msg = MessageParts(b"X-Thing: a\r\n b\r\n\tc\r\nx-thing: second\r\nbad line\r\n\r\n")
    assert msg.get("x-THING") == b"a b\tc"
    assert msg.get("missing") is None
    assert [f.name for f in msg.fields] == ["X-Thing", "x-thing", None]
    no_bad = section_bytes(msg, Section((), "HEADER.FIELDS.NOT", ("X-THING",)))
    assert no_bad == b"bad line\r\n\r\n"


# ---------------------------------------------------------------------------
# Property tests

ALL_SECTIONS = [
    Section(),
    Section((), "HEADER"),
    Section((), "TEXT"),
    Section((), "HEADER.FIELDS", ("From", "Content-Type")),
    Section((), "HEADER.FIELDS.NOT", ("From",)),
    Section((1,)),
    Section((1,), "MIME"),
    Section((1,), "HEADER"),
    Section((1,), "TEXT"),
    Section((2, 1)),
    Section((1, 1, 1), "MIME"),
]


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(raw: bytes) -> None:
    msg = MessageParts(raw)
    envelope(msg)
    bodystructure(msg, True)
    bodystructure(msg, False)
    for section in ALL_SECTIONS:
        section_bytes(msg, section)


header_fragments = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b",
        b'Content-Type: multipart/mixed; boundary="b"',
        b"Content-Type: message/rfc822",
        b"Content-Type: text/plain",
        b"From: x",
        b"To: a:b,c;",
        b"\xff\xfe: \x00",
        b" continuation",
        b"",
        b"--b",
        b"--b--",
        b"(((",
        b'"',
    ]
)


@settings(max_examples=300)
@given(st.lists(header_fragments, max_size=20))
def test_mime_like_garbage_never_raises(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    msg = MessageParts(raw)
    envelope(msg)
    bodystructure(msg, True)
    for section in ALL_SECTIONS:
        section_bytes(msg, section)


_body_text = st.text("abc -=\n", max_size=30).map(lambda s: s.replace("\n", "\r\n").encode())


@st.composite
def mime_trees(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, object]:
    """A MIME entity (header + body) and a model: bytes for a leaf, list for multipart."""
    if depth < 3 and draw(st.booleans()):
        boundary = f"bnd{depth}{draw(st.integers(0, 99))}"
        children = draw(st.lists(mime_trees(depth + 1), min_size=1, max_size=3))
        body = draw(st.sampled_from([b"", b"preamble\r\n"]))
        for entity, _ in children:
            body += b"--" + boundary.encode() + b"\r\n" + entity + b"\r\n"
        body += b"--" + boundary.encode() + b"--\r\n" + draw(st.sampled_from([b"", b"epi"]))
        header = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
        return header + body, [model for _, model in children]
    leaf = draw(_body_text)
    return b"Content-Type: text/plain\r\n\r\n" + leaf, leaf


def _check(msg: MessageParts, raw: bytes, model: object, path: tuple[int, ...]) -> None:
    if isinstance(model, list):
        for i, child in enumerate(model, start=1):
            _check(msg, raw, child, (*path, i))
        assert section_bytes(msg, Section((*path, len(model) + 1))) == b""
    else:
        target = path or (1,)
        data = section_bytes(msg, Section(target))
        assert data == model
        assert data in raw
        assert section_bytes(msg, Section(target, "MIME")) in raw


@settings(max_examples=200)
@given(mime_trees())
def test_generated_multipart_sections_are_slices(tree: tuple[bytes, object]) -> None:
    raw, model = tree
    msg = MessageParts(b"Subject: t\r\n" + raw)
    _check(msg, msg.raw, model, ())
    structure = bodystructure(msg, True)
    assert structure.count(b"(") == structure.count(b")")
