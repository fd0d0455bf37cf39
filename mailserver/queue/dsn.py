"""Delivery status notifications: RFC 3464 reports, with RFC 3461 NOTIFY/RET/ENVID/ORCPT.

A report is a multipart/report (RFC 6522) with three parts: a text for people, the
message/delivery-status for programs, and the original message's header (RET=HDRS, the
default here) or the whole message (RET=FULL).

About a message sent with SMTPUTF8 the report is a "global" one (RFC 6533): its status
part is message/global-delivery-status, whose addresses may be UTF-8 ("utf-8" address
type), and the returned part is message/global or message/global-headers.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

# RFC 3464 §2.3.3 Action values we send.
FAILED = "failed"
DELAYED = "delayed"
RELAYED = "relayed"
DELIVERED = "delivered"  # into a local mailbox

_SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
    RELAYED: "Successful Mail Delivery Report (relayed)",
    DELIVERED: "Successful Mail Delivery Report",
}

_INTRO = {
    FAILED: "Your message could not be delivered to one or more recipients.\r\n"
    "It has been returned with this report; the reasons are below.",
    DELAYED: "Your message has not been delivered yet to one or more recipients.\r\n"
    "Delivery will be tried again; you do not need to resend it.",
    RELAYED: "Your message was handed on to a mail server that does not send\r\n"
    "delivery reports, so this is the last report you will get about it.",
    DELIVERED: "Your message was delivered to the mailboxes of the recipients below.",
}


@dataclass(frozen=True)
class ReportedRecipient:
    address: str
    action: str  # FAILED, DELAYED, RELAYED or DELIVERED
    status: str  # RFC 3463 code, e.g. "5.1.1"
    diagnostic: str = ""  # the remote reply, "550 5.1.1 No such user"
    remote_mta: str = ""
    orcpt: str | None = None  # as given in ORCPT: "rfc822;xtext"
    last_attempt: float = 0.0
    will_retry_until: float = 0.0


def wants(notify: Sequence[str] | None, action: str) -> bool:
    """RFC 3461 §4.1: does the NOTIFY of this recipient ask for this report?

    Without NOTIFY we report failures and delays (the usual default, §6.1)."""
    if notify is None:
        return action in (FAILED, DELAYED)
    keywords = {n.upper() for n in notify}
    if "NEVER" in keywords:
        return False
    wanted = {FAILED: "FAILURE", DELAYED: "DELAY", RELAYED: "SUCCESS", DELIVERED: "SUCCESS"}[action]
    return wanted in keywords


def xtext_decode(text: str) -> str:
    """RFC 3461 §4: "+XX" stands for the octet with hex value XX."""
    out = bytearray()
    i = 0
    raw = text.encode("ascii", "replace")
    while i < len(raw):
        if raw[i : i + 1] == b"+" and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in pair)


def original_header(message: bytes) -> bytes:
    """The header section of a message, up to (not including) the empty line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = message.find(separator)
        if end >= 0:
            return message[: end + len(separator) // 2]
    return message


def build_report(
    reporting_mta: str,
    sender: str,
    recipients: Sequence[ReportedRecipient],
    original: bytes,
    arrival: float,
    now: float,
    envid: str | None = None,
    ret: str | None = None,
    utf8: bool = False,
) -> bytes:
    """The report to ``sender`` about ``recipients`` (all with the same action), as bytes
    with CRLF line ends, ready to be delivered with the null reverse-path; ``utf8``: the
    original came with SMTPUTF8, so the report is a global one (RFC 6533)."""
    address_type = "utf-8" if utf8 else "rfc822"
    action = recipients[0].action
    boundary = f"={secrets.token_hex(12)}"
    date = email.utils.formatdate(now)
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {date}",
        f"Message-ID: <{secrets.token_hex(12)}@{reporting_mta}>",
        # RFC 3834 §5: an automatic message; autoresponders must not answer it.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    text = [
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Description: Notification",
        "",
        f"This is the mail system at {reporting_mta}.",
        "",
        _INTRO[action],
        "",
    ]
    for r in recipients:
        text.append(f"<{r.address}>: {_ascii(r.diagnostic) or r.status}")
    text.append("")
    # RFC 3464 §2.2: the per-message fields, then one block per recipient (§2.3).
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    status = [f"--{boundary}", f"Content-Type: {status_type}", ""]
    status.append(f"Reporting-MTA: dns; {reporting_mta}")
    if envid:
        status.append(f"Original-Envelope-Id: {xtext_decode(envid)}")
    status.append(f"Arrival-Date: {email.utils.formatdate(arrival)}")
    for r in recipients:
        status.append("")
        if r.orcpt:
            kind, _, value = r.orcpt.partition(";")
            status.append(f"Original-Recipient: {kind}; {xtext_decode(value)}")
        status.append(f"Final-Recipient: {address_type}; {r.address}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {r.status}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_ascii(r.remote_mta)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_ascii(r.diagnostic)}")
        if r.last_attempt:
            status.append(f"Last-Attempt-Date: {email.utils.formatdate(r.last_attempt)}")
        if r.will_retry_until:
            status.append(f"Will-Retry-Until: {email.utils.formatdate(r.will_retry_until)}")
    status.append("")
    if ret is not None and ret.upper() == "FULL":
        returned_type = "message/global" if utf8 else "message/rfc822"
        body = _crlf(original)
    else:
        returned_type = "message/global-headers" if utf8 else "text/rfc822-headers"
        body = _crlf(original_header(original))
    returned = [f"--{boundary}", f"Content-Type: {returned_type}", "", ""]
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    # RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary; one more, so
    # the returned message keeps its own last line end.
    body += b"\r\n"
    head = "\r\n".join(header + text + status + returned).encode("utf-8")
    return head + body + f"--{boundary}--\r\n".encode("ascii")


def _ascii(text: str) -> str:
    """RFC 3464 §2.1.3: the status fields are US-ASCII (a remote's reply may not be)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
