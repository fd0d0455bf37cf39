"""The 8-bit to 7-bit conversion for peers without 8BITMIME (RFC 6152 §3, RFC 2045/2046)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailserver.queue.downgrade import MAX_DEPTH, to_7bit


def msg(text: str, nl: str = "\r\n") -> bytes:
    """`text` in UTF-8, its line ends as `nl`."""
    return text.replace("\n", nl).encode()


def parse(message: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def converted(message: bytes) -> bytes:
    """to_7bit's result, checked to be 7-bit data (RFC 2045 §2.7) with short lines."""
    result = to_7bit(message)
    assert result is not None
    assert_7bit(result)
    assert max(len(line) for line in result.split(b"\n")) <= 998 + 1  # + the CR
    return result


def assert_7bit(data: bytes) -> None:
    assert re.search(rb"[\x00\x80-\xff]", data) is None, data


def header_section(message: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]


def qp_body(message: bytes, nl: bytes = b"\r\n") -> list[bytes]:
    """The lines of the body of a (one part) message."""
    return message.split(nl + nl, 1)[1].split(nl)


HEADER = """\
From: Ann <ann@example.org>
To: Bob <bob@example.net>
Subject: a subject
 folded over two lines
MIME-Version: 1.0
"""


# --- leaf parts --------------------------------------------------------------------------


def test_8bit_text_becomes_quoted_printable_that_decodes_back() -> None:
    body = "Grüße aus Köln\n.dot at the start, = sign, tab\tand space at the end \nlast\n"
    message = msg(
        HEADER
        + "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        + body
    )
    result = converted(message)
    assert result == msg(
        HEADER + "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Gr=C3=BC=C3=9Fe aus K=C3=B6ln\n"
        ".dot at the start, =3D sign, tab\tand space at the end=20\n"
        "last\n"
    )
    parsed = parse(result)
    assert parsed.get_content() == msg(body).decode()
    assert parsed.get_payload(decode=True) == msg(body)


def test_header_fields_other_than_the_encoding_are_kept_in_order() -> None:
    message = msg(
        "Received: from a\n  by b; Mon, 1 Jan 2024 00:00:00 +0000\n"
        + HEADER
        + "Content-Transfer-Encoding: 8bit\nContent-Type: text/plain;\n\tcharset=utf-8\n"
        "X-Last: kept\n\nçà\n"
    )
    result = converted(message)
    assert header_section(result) == msg(
        "Received: from a\n  by b; Mon, 1 Jan 2024 00:00:00 +0000\n"
        + HEADER
        + "Content-Type: text/plain;\n\tcharset=utf-8\nX-Last: kept\n"
        "Content-Transfer-Encoding: quoted-printable"
    )


def test_a_folded_encoding_field_is_removed_with_its_continuation_lines() -> None:
    message = msg(HEADER + "Content-Transfer-Encoding:\n  8bit\n (raw octets)\nX-After: 1\n\né\n")
    result = converted(message)
    assert header_section(result) == msg(
        HEADER + "X-After: 1\nContent-Transfer-Encoding: quoted-printable"
    )
    assert parse(result).get_payload(decode=True) == "é\r\n".encode()


def test_a_part_without_content_type_is_text_and_an_unlabelled_8bit_body_is_8bit() -> None:
    result = converted(msg(HEADER + "\nnaïve\n"))
    assert result == msg(HEADER + "Content-Transfer-Encoding: quoted-printable\n\nna=C3=AFve\n")


def test_mime_version_is_added_to_a_message_that_lacks_it() -> None:
    result = converted(msg("Subject: s\n\nü\n"))
    assert result == msg(
        "Subject: s\nMIME-Version: 1.0\nContent-Transfer-Encoding: quoted-printable\n\n=C3=BC\n"
    )


def test_binary_text_and_8bit_non_text_become_base64() -> None:
    for head in (
        "Content-Type: text/plain\nContent-Transfer-Encoding: binary\n",
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: 8bit\n",
        "Content-Type: image/png\n",
    ):
        data = bytes(range(256)) * 3
        result = converted(msg(HEADER + head + "\n") + data)
        assert header_section(result).endswith(b"\r\nContent-Transfer-Encoding: base64")
        lines = result.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
        assert {len(line) for line in lines[:-1]} == {76}
        assert 0 < len(lines[-1]) <= 76
        assert parse(result).get_payload(decode=True) == data


def test_a_base64_body_ends_with_a_line_end_when_the_original_did() -> None:
    head = msg(HEADER + "Content-Type: application/octet-stream\n\n")
    assert converted(head + b"\xff\r\n").endswith(b"\r\n\r\n/w0K\r\n")
    assert converted(head + b"\xff").endswith(b"\r\n\r\n/w==")


def test_nul_is_not_7bit_data_and_is_encoded() -> None:
    result = converted(msg(HEADER + "Content-Type: text/plain\n\na") + b"\x00b\xe9\r\n")
    assert qp_body(result) == [b"a=00b=E9", b""]


def test_long_lines_are_wrapped_with_soft_breaks_that_never_split_an_escape() -> None:
    text = ("é" * 30 + "x" * 100 + " " * 80 + "-" * 200 + "=" * 40) * 3
    result = converted(msg(HEADER + "\n" + text + "\nshort\n"))
    lines = qp_body(result)
    assert all(len(line) <= 76 for line in lines)
    assert all(not line.endswith((b" ", b"\t")) for line in lines)
    assert not any(line.startswith(b"-") for line in lines)  # never mistaken for a delimiter
    assert all(re.fullmatch(rb"([^=]|=[0-9A-F]{2})*=?", line) for line in lines)
    assert parse(result).get_payload(decode=True) == msg(text + "\nshort\n")


def test_bare_cr_and_bare_lf_in_a_crlf_message_are_escaped() -> None:
    body = b"a\rb\nc\r\n\r\rd\n"
    result = converted(msg(HEADER) + b"\r\n\xe9" + body)
    assert qp_body(result) == [b"=E9a=0Db=0Ac", b"=0D=0Dd=0A"]
    assert parse(result).get_payload(decode=True) == b"\xe9" + body


def test_a_7bit_part_in_an_8bit_message_is_left_alone() -> None:
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n")
    qp = msg("--b\nContent-Type: text/plain\nContent-Transfer-Encoding: QUOTED-PRINTABLE\n\na=3D\n")
    b64 = msg("--b\nContent-Type: image/gif\nContent-transfer-encoding: base64\n\nR0lG\n")
    plain = msg("--b\nContent-Type: text/plain\n\nplain\n")
    eight = msg("--b\n\né\n--b--\n")
    result = converted(message + qp + b64 + plain + eight)
    assert result.startswith(message + qp + b64 + plain)


# --- broken or unconvertible leaf parts ----------------------------------------------------


def test_base64_with_8bit_octets_loses_them_as_decoders_ignore_them() -> None:
    head = msg(HEADER + "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n")
    message = head + b"JVBE\xff\xfeRi0x\r\n\x00LjQ=\r\n"
    result = converted(message)
    assert result == head + b"JVBERi0x\r\nLjQ=\r\n"
    assert parse(result).get_payload(decode=True) == parse(message).get_payload(decode=True)
    assert parse(result).get_payload(decode=True) == b"%PDF-1.4"


def test_quoted_printable_with_8bit_octets_is_decoded_as_readers_do_and_encoded_again() -> None:
    head = msg(HEADER + "Content-Type: text/plain; charset=latin1\n")
    message = head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\nd\xe9j=E0 =3D=\r\nvu\r\n"
    result = converted(message)
    assert result == head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\nd=E9j=E0 =3Dvu\r\n"
    assert parse(result).get_payload(decode=True) == parse(message).get_payload(decode=True)


def test_quoted_printable_non_text_with_8bit_octets_becomes_base64() -> None:
    head = msg(HEADER + "Content-Type: application/x-thing\n")
    message = head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n\xff=00\r\n"
    result = converted(message)
    assert result == head + b"Content-Transfer-Encoding: base64\r\n\r\n/wANCg==\r\n"


def test_an_unknown_encoding_with_8bit_octets_cannot_be_redone() -> None:
    head = msg(HEADER + "Content-Type: application/x\nContent-Transfer-Encoding: x-uuencode\n\n")
    assert to_7bit(head + b"begin 644 f\r\n\xff\r\n") is None
    # ... but a 7-bit one with that label is left alone while the rest is converted.
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n")
    uu = msg("Content-Type: application/x\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n")
    result = converted(message + uu + msg("--b\n\né\n--b--\n"))
    assert result.startswith(message + uu + b"--b\r\n")


def test_8bit_octets_in_a_header_section_cannot_be_converted() -> None:
    assert to_7bit(msg("Subject: Grüße\n\nbody\n")) is None
    assert to_7bit(msg("Subject: x\nX-Nul: a") + b"\x00\r\n\r\nbody\r\n") is None
    multipart = HEADER + "Content-Type: multipart/mixed; boundary=b\n\n"
    assert to_7bit(msg(multipart + "--b\nContent-Description: café\n\nbody\n--b--\n")) is None
    rfc822 = HEADER + "Content-Type: message/rfc822\n\nSubject: é\n\nbody\n"
    assert to_7bit(msg(rfc822)) is None


# --- multipart -----------------------------------------------------------------------------


def test_multipart_mixed_with_text_binary_and_7bit_parts() -> None:
    preamble = msg("This is a multi-part message in MIME format.\n")
    text_head = msg("--=_b 1\nContent-Type: text/plain; charset=utf-8\n")
    seven_bit = msg("--=_b 1\nContent-Type: text/plain\n\nuntouched\n  7-bit part\n")
    data = b"\x89PNG\r\n\x1a\n\x00\xff" * 20
    message = (
        msg(HEADER + 'Content-Type: multipart/mixed; boundary="=_b 1"\n\n')
        + preamble
        + text_head
        + msg("Content-Transfer-Encoding: 8bit\n\nvoilà\n")
        + msg(
            "--=_b 1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: 8bit\n\n"
        )
        + data
        + b"\r\n"
        + seven_bit
        + msg("--=_b 1--\nthe epilogue\n")
    )
    result = converted(message)
    assert result.startswith(header_section(message) + b"\r\n\r\n" + preamble + text_head)
    assert seven_bit + msg("--=_b 1--\nthe epilogue\n") in result
    parts = list(parse(result).iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "application/octet-stream",
        "text/plain",
    ]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["quoted-printable", "base64", None]
    assert parts[0].get_content() == "voilà"
    assert parts[1].get_payload(decode=True) == data
    assert parts[2].get_content() == "untouched\r\n  7-bit part"


def test_nested_multipart() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
        "--inner\nContent-Type: text/plain; charset=utf-8\n\nsí\n"
        "--inner\nContent-Type: text/html; charset=utf-8\n\n<p>sí</p>\n"
        "--inner--\n"
        "--outer\nContent-Type: text/plain\n\nseven\n"
        "--outer--\n"
    )
    result = converted(message)
    alternative, plain = parse(result).iter_parts()
    assert isinstance(alternative, EmailMessage)
    assert [p.get_content() for p in alternative.iter_parts()] == ["sí", "<p>sí</p>"]
    assert [p["Content-Transfer-Encoding"] for p in alternative.iter_parts()] == [
        "quoted-printable",
        "quoted-printable",
    ]
    assert result.endswith(msg("--outer\nContent-Type: text/plain\n\nseven\n--outer--\n"))
    assert plain.get_content() == "seven"


def test_delimiters_with_transport_padding_and_an_empty_part() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b \t\n\n\n--b\n--b\nContent-Type: text/plain\n\nñ\n--b-- \nafter\n"
    )
    result = converted(message)
    assert result.endswith(
        msg(
            "--b \t\n\n\n--b\n--b\nContent-Type: text/plain\n"
            "Content-Transfer-Encoding: quoted-printable\n\n=C3=B1\n--b-- \nafter\n"
        )
    )


def test_the_line_end_before_a_delimiter_is_of_the_message_convention_or_lf() -> None:
    head = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
    # A CRLF message with a bare LF before a delimiter: tolerated as that line end.
    crlf = converted(msg(HEADER + head) + "é\n--b\r\n\r\nseven\r\n--b--\r\n".encode())
    assert crlf.endswith(b"\r\n\r\n=C3=A9\n--b\r\n\r\nseven\r\n--b--\r\n")
    # An LF message with a CR before a delimiter's LF: the CR is the part's.
    lf = converted(msg(HEADER + head, "\n") + "é\r\n--b--\n".encode())
    assert lf.endswith(b"\n\n=C3=A9=0D\n--b--\n")
    (part,) = parse(lf).iter_parts()
    assert part.get_payload(decode=True) == "é\r".encode()


def test_a_line_that_only_starts_with_the_boundary_is_no_delimiter() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nü\n--bx\n--b--x\n--b--\n"
    )
    result = converted(message)
    (part,) = parse(result).iter_parts()
    assert part.get_payload(decode=True) == "ü\r\n--bx\r\n--b--x".encode()


def test_an_8bit_label_on_a_multipart_is_removed() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: 8bit\n\n"
        "--b\n\né\n--b--\n"
    )
    result = converted(message)
    assert header_section(result) == msg(HEADER + "Content-Type: multipart/mixed; boundary=b")


def test_a_multipart_digest_part_is_a_message_by_default() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/digest; boundary=d\n\n"
        "--d\n\nSubject: first\n\nüber\n--d--\n"
    )
    result = converted(message)
    assert result.endswith(
        msg(
            "--d\n\nSubject: first\nMIME-Version: 1.0\n"
            "Content-Transfer-Encoding: quoted-printable\n\n=C3=BCber\n--d--\n"
        )
    )
    # The same part in a multipart/mixed is text that happens to look like a message.
    mixed = converted(message.replace(b"multipart/digest", b"multipart/mixed"))
    assert mixed.endswith(
        msg(
            "--d\nContent-Transfer-Encoding: quoted-printable\n\n"
            "Subject: first\n\n=C3=BCber\n--d--\n"
        )
    )


def test_a_missing_close_delimiter_is_added_when_something_is_converted() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain\n\nseven\n--b\nContent-Type: text/plain\n\nhuit é\n"
    )
    result = converted(message)
    assert result.endswith(
        msg("Content-Transfer-Encoding: quoted-printable\n\nhuit =C3=A9\n--b--\n")
    )
    parts = [p.get_payload(decode=True) for p in parse(result).iter_parts()]
    assert parts == [b"seven", "huit é".encode()]
    assert not parse(result).defects
    # Without a final line end, there is none after the close delimiter either.
    assert converted(message[:-2]).endswith(b"=C3=A9\r\n--b--")


def test_an_unclosed_7bit_multipart_inside_is_left_alone() -> None:
    inner = msg(
        "--outer\nContent-Type: multipart/alternative; boundary=in\n\n"
        "--in\nContent-Type: text/plain\n\nseven, and no close delimiter\n"
    )
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=outer\n\n") + inner
    result = converted(message + msg("--outer\n\nacht ä\n--outer--\n"))
    assert result.startswith(message + b"--outer\r\n")


def test_8bit_octets_in_a_preamble_or_epilogue_cannot_be_converted() -> None:
    head = HEADER + "Content-Type: multipart/mixed; boundary=b\n\n"
    assert to_7bit(msg(head + "préambule\n--b\n\né\n--b--\n")) is None
    assert to_7bit(msg(head + "--b\n\né\n--b--\népilogue\n")) is None
    # ... nor in the body of a multipart that has no part at all.
    assert to_7bit(msg(head + "no delimiter, é\n")) is None


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/mixed",
        'multipart/mixed; boundary=""',
        "multipart/mixed; boundary=" + "x" * 995,
        "multipart/mixed; boundary*=utf-8''%07bell",
    ],
)
def test_a_multipart_without_a_usable_boundary_cannot_be_converted(content_type: str) -> None:
    message = msg(HEADER + f"Content-Type: {content_type}\n\n--b\n\né\n--b--\n")
    assert to_7bit(message) is None


def test_a_long_boundary_is_accepted() -> None:
    boundary = "b" * 994
    message = msg(
        HEADER + "Content-Type: multipart/mixed;\n"
        f' boundary*0="{boundary[:500]}";\n boundary*1="{boundary[500:]}"\n\n--{boundary}\n\né\n'
    )
    assert converted(message).endswith(f"=C3=A9\r\n--{boundary}--\r\n".encode())


# --- message/* -----------------------------------------------------------------------------


def test_message_rfc822_with_an_8bit_inner_body() -> None:
    inner_header = msg("From: c@example.com\nSubject: inner\nMIME-Version: 1.0\n")
    message = (
        msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n")
        + msg("Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n")
        + inner_header
        + msg("Content-Type: text/plain; charset=utf-8\n\nüber\n--b--\n")
    )
    result = converted(message)
    assert msg("--b\nContent-Type: message/rfc822\n\n") + inner_header in result
    (attached,) = parse(result).iter_parts()
    inner = attached.get_content()
    assert isinstance(inner, EmailMessage)
    assert inner["Subject"] == "inner"
    assert inner["Content-Transfer-Encoding"] == "quoted-printable"
    assert inner.get_content() == "über"


def test_message_rfc822_at_the_top_with_a_7bit_body_loses_its_8bit_label() -> None:
    message = msg(
        HEADER + "Content-Type: message/rfc822\nContent-Transfer-Encoding: binary\n\n"
        "Subject: in\n\nplain\n"
    )
    result = converted(message)
    assert result == msg(HEADER + "Content-Type: message/rfc822\n\nSubject: in\n\nplain\n")


@pytest.mark.parametrize(
    "part",
    [
        "Content-Type: message/global\n\nSubject: é\n\nbody\n",
        "Content-Type: message/global\n\nSubject: e\n\nbödy\n",
        "Content-Type: message/global\nContent-Transfer-Encoding: 8bit\n\nSubject: e\n\nbody\n",
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; é\n",
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdA==é\n",
        "Content-Type: multipart/mixed; boundary=c\nContent-Transfer-Encoding: quoted-printable"
        "\n\n--c\n\n=C3=A9 é\n--c--\n",
    ],
)
def test_message_types_other_than_rfc822_and_encoded_composites_cannot_be_converted(
    part: str,
) -> None:
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n" + part + "--b--\n")
    assert to_7bit(message) is None


def test_a_7bit_message_global_is_left_alone() -> None:
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n")
    part = msg("Content-Type: message/global\nContent-Transfer-Encoding: base64\n\nU3Vi\n")
    assert converted(message + part + msg("--b\n\n¡\n--b--\n")).startswith(message + part)


# --- bounds, line ends, 7-bit input -----------------------------------------------------


def nested_multiparts(levels: int, leaf: str) -> bytes:
    """`levels` multiparts each inside the one before, the innermost holding `leaf`."""
    text = leaf
    for level in range(levels):
        text = (
            f"Content-Type: multipart/mixed; boundary=b{level}\n\n--b{level}\n{text}--b{level}--\n"
        )
    return msg(HEADER + text)


def nested_messages(levels: int, leaf: str) -> bytes:
    text = leaf
    for _ in range(levels):
        text = f"Content-Type: message/rfc822\n\nSubject: nested\n{text}"
    return msg(HEADER + text)


def test_nesting_up_to_max_depth_is_converted_and_deeper_is_refused() -> None:
    for nested in (nested_multiparts, nested_messages):
        fine = converted(nested(MAX_DEPTH, "\nü\n"))
        assert b"\r\n\r\n=C3=BC\r\n" in fine
        assert to_7bit(nested(MAX_DEPTH + 1, "\nü\n")) is None


def test_a_deep_7bit_message_is_returned_as_it_is() -> None:
    message = nested_multiparts(MAX_DEPTH + 10, "\nplain\n")
    assert to_7bit(message) is message


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"Subject: nothing\r\n\r\n",
        msg(HEADER + "Content-Type: text/plain\nContent-Transfer-Encoding: 7bit\n\nplain\n"),
        msg(HEADER + "Content-Type: multipart/mixed\n\nno boundary, but no 8-bit octet\n"),
        msg(HEADER + "Content-Type: text/plain\n\n" + "a" * 2000 + "\n"),  # not ours to fix
        msg(HEADER + "\nContent-Transfer-Encoding: 8bit\nin the body: not a label\n", "\n"),
    ],
)
def test_a_message_with_nothing_to_convert_is_returned_unchanged(message: bytes) -> None:
    assert to_7bit(message) == message


def test_an_8bit_label_on_7bit_text_is_replaced() -> None:
    message = msg(HEADER + "Content-Transfer-Encoding: 8bit\n\nplain ascii\n")
    assert converted(message) == msg(
        HEADER + "Content-Transfer-Encoding: quoted-printable\n\nplain ascii\n"
    )


def test_lf_only_input_keeps_lf_line_ends() -> None:
    message = msg(
        HEADER + "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; charset=utf-8\n\nça va\r\n?\n"
        "--b\nContent-Type: application/octet-stream\n\n" + "é" * 60 + "\n--b--\n",
        "\n",
    )
    result = converted(message)
    assert b"\r\n" not in result
    assert result.startswith(header_section(message) + b"\n\n--b\n")
    text, data = parse(result).iter_parts()
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_payload(decode=True) == "ça va\r\n?".encode()
    assert data.get_payload(decode=True) == ("é" * 60).encode()
    assert b"\n" + data.get_payload().encode()[:76] + b"\n" in result


def test_a_header_only_part_labelled_8bit_gets_an_empty_encoded_body() -> None:
    message = msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n--b\n")
    result = converted(
        message
        + msg("Content-Type: text/plain\nContent-Transfer-Encoding: 8bit\n--b\n\nà\n--b--\n")
    )
    assert result.startswith(
        message
        + msg("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n--b\n")
    )
    assert [p.get_payload(decode=True) for p in parse(result).iter_parts()] == [b"", "à".encode()]


def test_large_input_is_converted() -> None:
    # A quadratic implementation would not finish: one long line, and many parts.
    line = "é" * 500_000
    result = converted(msg(HEADER + "\n" + line + "\n"))
    assert parse(result).get_payload(decode=True) == (line + "\r\n").encode()
    parts = "".join(f"--b\nContent-Type: application/x\n\n{i}\u00ff\n" for i in range(5000))
    result = converted(
        msg(HEADER + "Content-Type: multipart/mixed; boundary=b\n\n" + parts + "--b--\n")
    )
    decoded = [p.get_payload(decode=True) for p in parse(result).iter_parts()]
    assert decoded == [f"{i}\u00ff".encode() for i in range(5000)]


# --- properties ----------------------------------------------------------------------------

BOUNDARY = "=_7bit.b0undary"


def multipart(nl: str, text: bytes, data: bytes, seven: str) -> tuple[bytes, bytes]:
    """A multipart of an 8-bit text part, an 8-bit binary part and a 7-bit one; and the
    7-bit part as it is written."""
    nlb = nl.encode()
    seven_part = msg(f"--{BOUNDARY}\nContent-Type: text/plain\n\n{seven}", nl)
    message = (
        msg(f'{HEADER}Content-Type: multipart/mixed; boundary="{BOUNDARY}"\n\npreamble\n', nl)
        + msg(f"--{BOUNDARY}\nContent-Type: text/plain; charset=x\n", nl)
        + msg("Content-Transfer-Encoding: 8bit\n\n", nl)
        + text
        + nlb
        + msg(f"--{BOUNDARY}\nContent-Type: application/octet-stream\n\n", nl)
        + data
        + nlb
        + seven_part
        + msg(f"\n--{BOUNDARY}--\n", nl)
    )
    return message, seven_part


seven_bit_text = st.text(
    st.characters(min_codepoint=1, max_codepoint=0x7F, exclude_characters="\r\n-")
)


@settings(max_examples=300, deadline=None)
@given(
    nl=st.sampled_from(["\r\n", "\n"]),
    text=st.binary(max_size=600),
    data=st.binary(max_size=600),
    seven=seven_bit_text,
)
def test_any_bodies_in_a_multipart_are_converted_to_7bit_and_decode_back(
    nl: str, text: bytes, data: bytes, seven: str
) -> None:
    """Exactly the original octets come back: each line end of the message's own
    convention is a hard line break, which the parser gives back as that line end, and
    every other octet, bare CR and (in a CRLF message) bare LF too, is escaped."""
    assume(f"--{BOUNDARY}".encode() not in text + data)
    message, seven_part = multipart(nl, text, data, seven)
    result = converted(message)
    assert seven_part in result
    text_part, data_part, seven_bit = parse(result).iter_parts()
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_part.get_payload(decode=True) == text
    if re.search(rb"[\x00\x80-\xff]", data):
        assert data_part["Content-Transfer-Encoding"] == "base64"
        assert data_part.get_payload(decode=True) == data
        if nl == "\n":
            assert b"\r" not in result  # in what is generated, and there is nothing else
    else:  # 7-bit data: left alone
        assert b"octet-stream" + nl.encode() * 2 + data + nl.encode() + seven_part in result
    assert seven_bit.get_payload(decode=True) == seven.encode()
    assert to_7bit(result) == result  # converting again changes nothing


@settings(max_examples=300, deadline=None)
@given(nl=st.sampled_from(["\r\n", "\n"]), body=st.binary(max_size=1000))
def test_any_top_level_text_body_decodes_back(nl: str, body: bytes) -> None:
    message = msg(HEADER + "Content-Type: text/plain\nContent-Transfer-Encoding: 8bit\n\n", nl)
    result = converted(message + body)
    assert result.startswith(msg(HEADER + "Content-Type: text/plain\nContent-Transfer-", nl))
    lines = result.split(nl.encode() * 2, 1)[1].split(nl.encode())
    assert all(len(line) <= 76 and not line.startswith(b"-") for line in lines)
    assert parse(result).get_payload(decode=True) == body


structure = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\n",
            b"--b",
            b"--b--",
            b"Content-Type: multipart/mixed; boundary=b\r\n",
            b"Content-Type: message/rfc822\r\n",
            b"Content-Type: text/plain\r\n",
            b"Content-Transfer-Encoding: 8bit\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"Content-Transfer-Encoding: binary\r\n",
            b"Subject: x\r\n",
            b" folded\r\n",
            b"\xe9",
            b"\x00",
            b"=",
            b" ",
        ]
    )
    | st.binary(max_size=8),
    max_size=40,
)


@settings(max_examples=1000, deadline=None)
@given(pieces=structure)
def test_any_input_gives_7bit_data_or_none(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    result = to_7bit(message)
    if result is not None:
        assert_7bit(result)
        assert to_7bit(result) == result
