"""Validation of names that come from the network before they may touch a path.

Addresses are split and checked here; folder names are checked against Maildir++ rules.
Everything that fails raises :class:`BadName` with a message fit for a protocol reply.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import idna

# RFC 5321 §4.5.3.1.1 / §4.5.3.1.2: local part at most 64 octets, domain at most 255.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
# A folder name is one directory name on disk (Maildir++ keeps the hierarchy in it).
MAX_FOLDER_NAME = 200

# Local parts we are willing to map onto a directory: the dot-atom text of RFC 5322 §3.2.3,
# without the characters that mean something to shells and file systems.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*$")
# RFC 6531/6532 local parts may be UTF-8: we take any character beyond ASCII except
# controls, format characters (bidirectional overrides), spaces and unassigned ones.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# RFC 1035 §2.3.1 labels (letters, digits, hyphens), as used in RFC 5321 §4.1.2 Domain.
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class BadName(ValueError):
    """A name from the network that may not be used."""


@functools.lru_cache(maxsize=4096)
def split_address(address: str) -> tuple[str, str]:
    """Return (local part, domain in lower case) of a plain ``local@domain`` address.
    Remembered for the last addresses seen: a message's recipient is split three times
    on its way (the RCPT check, the directory, the delivery)."""
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise BadName(f"not an address: {address!r}")
    if not local.isascii():
        # RFC 6530 §10.1: one spelling (NFC) of a UTF-8 name, for keys and directories.
        local = unicodedata.normalize("NFC", local)
    check_local_part(local)
    domain = a_label(domain)
    check_domain(domain)
    return local, domain.lower()


def check_local_part(local: str) -> None:
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        raise BadName("local part too long")
    if local.isascii():
        if not _LOCAL_PART.match(local):
            raise BadName(f"local part not allowed: {local!r}")
        return
    # Each UTF-8 character stands where an ASCII letter could (RFC 6531 §3.3 atext).
    shape = "".join(c if c.isascii() else "a" for c in local)
    if (
        not _LOCAL_PART.match(shape)
        or any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in local)
        or not unicodedata.is_normalized("NFC", local)
    ):
        raise BadName(f"local part not allowed: {local!r}")


def a_label(domain: str) -> str:
    """A domain as DNS and our keys spell it: a U-label domain (``bücher.example``) as
    its A-label (``xn--bcher-kva.example``, RFC 5890), checked by the idna package (UTS
    46 mapping, so case and full-width dots do not matter); an ASCII one as it is."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise BadName(f"bad internationalized domain: {e}") from None


def check_domain(domain: str) -> None:
    if len(domain) > MAX_DOMAIN:
        raise BadName("domain too long")
    labels = domain.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise BadName(f"domain not allowed: {domain!r}")


def normalize_address(address: str) -> str:
    """The canonical form used as an account key: local part as given, domain lower-cased."""
    local, domain = split_address(address)
    return f"{local}@{domain}"


def check_folder_name(name: str) -> str:
    """Check a Maildir++ folder name as used on the wire and on disk (``.``-separated).

    Refuses what could escape the user's directory or confuse Maildir++: ``/``, NUL and
    control characters, empty hierarchy levels (``a..b``, leading or trailing ``.``), and
    over-long names. Returns the name unchanged.
    """
    if not name or len(name.encode("utf-8")) > MAX_FOLDER_NAME:
        raise BadName("folder name empty or too long")
    if any(ord(c) < 0x20 or c in "/\\\x7f" for c in name):
        raise BadName("folder name contains a character that is not allowed")
    if any(part in ("", "..") for part in name.split(".")):
        raise BadName("folder name has an empty level")
    return name
