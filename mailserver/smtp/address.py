"""Parsing of MAIL FROM and RCPT TO arguments (RFC 5321 §4.1.2, §4.1.3), with the
UTF-8 addresses of RFC 6531 §3.3 when the transaction asked for SMTPUTF8."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailserver.names import MAX_DOMAIN, MAX_LOCAL_PART, BadName, a_label

# RFC 5321 §4.1.2: Local-part = Dot-string / Quoted-string
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
# RFC 5321 §4.1.3 address literals, kept simple: IPv4 or a tagged literal.
_ADDRESS_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})"
# RFC 5321 §4.1.2 A-d-l: a source route that must be accepted and ignored (§C).
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*:"
_PATH = re.compile(rf"<(?:{_ADL})?{_MAILBOX}>")
# RFC 6531 §3.3: atext and qtextSMTP also take UTF8-non-ascii, and a sub-domain may be a
# U-label (checked, and turned into its A-label, by the idna package: RFC 5890/5891).
_NON_ASCII = "\u0080-\U0010ffff"
_ATEXT_UTF8 = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_NON_ASCII}-]"
_DOT_STRING_UTF8 = rf"{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*"
_QUOTED_STRING_UTF8 = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"'
_LABEL_UTF8 = rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9{_NON_ASCII}-]*[A-Za-z0-9{_NON_ASCII}])?"
_DOMAIN_UTF8 = rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*"
_MAILBOX_UTF8 = (
    rf"(?P<local>{_DOT_STRING_UTF8}|{_QUOTED_STRING_UTF8})"
    rf"@(?P<domain>{_DOMAIN_UTF8}|{_ADDRESS_LITERAL})"
)
_PATH_UTF8 = re.compile(rf"<(?:{_ADL})?{_MAILBOX_UTF8}>")
_ESMTP_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_ESMTP_VALUE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")
DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN}|{_ADDRESS_LITERAL})$")

MAX_PATH = 256  # RFC 5321 §4.5.3.1.3


class PathError(ValueError):
    """The argument is not a valid path or has bad parameters."""


@dataclass(frozen=True)
class Path:
    """A reverse-path or forward-path; ``address`` is "" for the null path ``<>``."""

    address: str
    params: dict[str, str | None]


def parse_path(argument: str, allow_null: bool, utf8: bool = False) -> Path:
    """Parse ``<path> [SP esmtp-param ...]`` as given after ``FROM:`` or ``TO:``.

    With ``utf8`` (RFC 6531) the local part may be UTF-8 and the domain a U-label; the
    domain is then given back as its A-label, so that routing, DNS and the comparison
    with the local domains see one spelling of it."""
    argument = argument.strip()
    if argument.startswith("<>"):
        if not allow_null:
            raise PathError("null path not allowed here")
        return Path("", _parse_params(argument[2:]))
    match = (_PATH_UTF8 if utf8 else _PATH).match(argument)
    if not match:
        raise PathError("syntax error in address")
    local, domain = match.group("local"), match.group("domain")
    path_octets = len(argument[: match.end()].encode("utf-8"))
    try:
        domain = a_label(domain)
    except BadName as e:
        raise PathError(str(e)) from None
    if (
        len(local.encode("utf-8")) > MAX_LOCAL_PART
        or len(domain) > MAX_DOMAIN
        or path_octets > MAX_PATH
    ):
        raise PathError("address too long")
    return Path(f"{local}@{domain}", _parse_params(argument[match.end() :]))


def parse_postmaster(argument: str) -> Path | None:
    """RFC 5321 §4.1.1.3: ``RCPT TO:<Postmaster>`` without a domain must be accepted."""
    head, _, rest = argument.strip().partition(">")
    if head.lower() == "<postmaster":
        return Path("postmaster", _parse_params(rest))
    return None


def _parse_params(text: str) -> dict[str, str | None]:
    if text and not text.startswith(" "):
        raise PathError("syntax error after address")
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, sep, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(keyword) or (sep and not _ESMTP_VALUE.match(value)):
            raise PathError(f"bad parameter {item!r}")
        params[keyword.upper()] = value if sep else None
    return params
