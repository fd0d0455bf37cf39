"""The SMTP server session (RFC 5321) as a state machine without I/O.

Bytes go in with ``receive_data``; ``next_action`` hands out replies to send and the
effects the session needs done (checking a recipient, delivering a message). The driver
asks for the next action only after an effect has been resumed, so pipelined commands
(RFC 2920) are answered strictly in order.

What the session enforces itself, with the RFC beside each rule: line lengths, the
command sequence, the SIZE and recipient limits, the end of DATA as CRLF.CRLF only, and
no bare CR or LF inside DATA (the SMTP smuggling defence).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.python.failure import Failure

from mailserver.session import Action, Authenticate, Close, Effect, Send, StartTLS
from mailserver.smtp.address import DOMAIN_RE, Path, PathError, parse_path, parse_postmaster
from mailserver.smtp.reply import OK, Reply


@dataclass(frozen=True)
class SMTPLimits:
    max_command_line: int = 512
    max_text_line: int = 1000
    max_message_size: int = 32 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 10


@dataclass(frozen=True)
class SMTPRole:
    """What one listener offers: the MTA on 25, the MSA on 587 (STARTTLS) and 465 (TLS)."""

    name: str = "MTA"
    starttls: bool = False  # a certificate is configured, STARTTLS can be offered
    tls_active: bool = False  # implicit TLS (RFC 8314): the session starts encrypted
    auth: bool = False  # AUTH is offered here (MSA only; never on the MTA)
    require_auth: bool = False  # RFC 6409 §4.3: MAIL needs a successful AUTH first
    plaintext_auth: bool = False  # AUTH before TLS (loopback clients in the dev default)
    dsn: bool = False  # RFC 3461 delivery status notifications (the MSA, with a queue)


@dataclass
class Envelope:
    """What the transaction knows besides the message: who, to whom, from where."""

    mail_from: str
    rcpt_to: list[str] = field(default_factory=list)
    params: dict[str, str | None] = field(default_factory=dict)
    helo: str = ""
    peer: str = ""
    session_id: str = ""
    # This message's id in the logs, the 250 reply and the Received field: one session
    # may send many messages, each gets its own.
    queue_id: str = ""
    auth_user: str | None = None
    # RFC 3461 RCPT parameters (NOTIFY, ORCPT) of each accepted recipient.
    rcpt_params: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckSender(Effect):
    """May this (authenticated) client use this envelope sender? The result is a Reply."""

    envelope: Envelope
    address: str


@dataclass(frozen=True)
class CheckRecipient(Effect):
    """May this recipient receive the message? The result is a Reply (2xx: accepted)."""

    envelope: Envelope
    address: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliverMessage(Effect):
    """Store (or queue) the message durably; the result is the Reply to the DATA."""

    envelope: Envelope
    chunks: tuple[bytes, ...]


_DATA_END = b"."
# RFC 6531 §3.5: a UTF-8 address in a transaction that did not ask for SMTPUTF8.
_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter of MAIL")
# RFC 4954 §4: AUTH command and response lines may be up to 12288 octets.
MAX_AUTH_LINE = 12288
# RFC 5321 §4.2.2 (no enhanced code: RFC 2034 §3 gives none to 3xx replies).
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
# RFC 3461 §4: xtext, "+XX" escapes for octets outside "!" to "~" and for "+" and "=".
_XTEXT = re.compile(r"^(?:[!-*,-<>-~]|\+[0-9A-F]{2})+$")


def _check_dsn_mail_param(keyword: str, value: str | None) -> Reply | None:
    if keyword == "RET":
        # RFC 3461 §4.3
        if value is None or value.upper() not in ("FULL", "HDRS"):
            return Reply(501, "5.5.4", "Syntax: RET=FULL or RET=HDRS")
    elif value is None or len(value) > 100 or not _XTEXT.match(value):
        # RFC 3461 §4.4: ENVID is xtext of at most 100 characters.
        return Reply(501, "5.5.4", "Syntax: ENVID=xtext")
    return None


class SMTPSession:
    """One SMTP conversation, from greeting to QUIT."""

    def __init__(
        self,
        hostname: str,
        peer: str,
        session_id: str,
        limits: SMTPLimits,
        postmaster: str,
        role: SMTPRole | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hostname = hostname
        self.postmaster = postmaster
        self.role = role or SMTPRole()
        self.tls = self.role.tls_active
        self.auth_user: str | None = None
        self._sasl: list[str] | None = None  # [mechanism, user name so far] during AUTH
        self.peer = peer
        self.session_id = session_id
        self._transactions = 0  # MAIL commands accepted so far, for the queue ids
        self.limits = limits
        self.clock = clock
        self._in = bytearray()
        self._out: deque[Action] = deque()
        self._waiting: Effect | None = None
        self._closed = False
        self._discarding = False  # skipping the rest of an over-long command line
        self._errors = 0
        self.helo: str | None = None
        self.esmtp = False
        self.envelope: Envelope | None = None
        self._data: _DataReader | None = None
        # RFC 5321 §3.1: the greeting.
        self._reply(Reply(220, "", f"{hostname} ESMTP mailserver ready"))

    # Session protocol ------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if not self._closed:
            self._in += data

    def buffered(self) -> int:
        return len(self._in)

    def next_action(self) -> Action | None:
        while not self._out and not self._closed and self._waiting is None:
            if not self._step():
                break
        if self._out:
            return self._out.popleft()
        return None

    def resume(self, result: Any) -> None:
        effect, self._waiting = self._waiting, None
        if isinstance(effect, Authenticate):
            self._authenticated(result)
            return
        if isinstance(result, Failure):
            reply = Reply(451, "4.3.0", "Local error in processing, try again later")
        else:
            reply = result
        if isinstance(effect, CheckSender):
            if reply.positive:
                self.envelope = effect.envelope
            self._reply(reply)
        elif isinstance(effect, CheckRecipient):
            if reply.positive and self.envelope is not None:
                self.envelope.rcpt_to.append(effect.address)
                if effect.params:
                    self.envelope.rcpt_params[effect.address] = effect.params
            self._reply(reply)
        elif isinstance(effect, DeliverMessage):
            self._reply(reply)
            self.envelope = None

    def timed_out(self) -> bytes:
        # RFC 5321 §4.5.3.2: the server may close after its timeout, saying 421.
        return Reply(421, "4.4.2", f"{self.hostname} Timeout, closing connection").encode()

    def connection_lost(self) -> None:
        self._closed = True

    # Input -------------------------------------------------------------------------------
    def _step(self) -> bool:
        """Handle one unit of input; False when more input is needed."""
        if self._data is not None:
            return self._step_data()
        end = self._in.find(b"\n")
        limit = self._line_limit()
        if end < 0:
            if len(self._in) > limit:
                # RFC 5321 §4.5.3.1.4: a command line is at most 512 octets.
                del self._in[:]
                if not self._discarding:
                    self._discarding = True
                    self._error(Reply(500, "5.5.2", "Line too long"))
            return False
        line = bytes(self._in[:end])
        del self._in[: end + 1]
        if self._discarding:
            self._discarding = False
            return True
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) + 2 > limit:
            self._sasl = None
            self._error(Reply(500, "5.5.2", "Line too long"))
            return True
        if self._sasl is not None:
            self._sasl_response(line)
            return True
        self._command(line)
        return True

    def _line_limit(self) -> int:
        if self._sasl is not None or self._in[:5].upper() == b"AUTH ":
            return MAX_AUTH_LINE
        return self.limits.max_command_line

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._error(Reply(500, "5.5.2", "Command is not valid UTF-8"))
            return
        verb, _, argument = text.partition(" ")
        if not text.isascii() and verb.upper() not in ("MAIL", "RCPT"):
            # RFC 6531 §3.3: UTF-8 only in the paths of MAIL and RCPT.
            self._error(Reply(500, "5.5.2", "Command contains non-ASCII characters"))
            return
        handler = getattr(self, f"_do_{verb.upper()}", None) if verb.isalpha() else None
        if handler is None:
            self._error(Reply(500, "5.5.2", "Command not recognized"))
            return
        handler(argument)

    # Output ------------------------------------------------------------------------------
    def _reply(self, reply: Reply) -> None:
        self._out.append(Send(reply.encode()))

    def _error(self, reply: Reply) -> None:
        self._errors += 1
        if self._errors > self.limits.max_errors:
            self._reply(Reply(421, "4.7.0", "Too many errors, closing connection"))
            self._close()
            return
        self._reply(reply)

    def _close(self) -> None:
        self._out.append(Close())
        self._closed = True
        del self._in[:]

    def _effect(self, effect: Effect) -> None:
        self._waiting = effect
        self._out.append(effect)

    # Commands (RFC 5321 §4.1.1) ---------------------------------------------------------
    def _do_EHLO(self, argument: str) -> None:
        if not self._check_helo_argument(argument):
            return
        self.helo, self.esmtp, self.envelope = argument, True, None
        self._reply(Reply(250, "", (f"{self.hostname} greets {argument}", *self.extensions())))

    def _do_HELO(self, argument: str) -> None:
        if not self._check_helo_argument(argument):
            return
        self.helo, self.esmtp, self.envelope = argument, False, None
        self._reply(Reply(250, "", self.hostname))

    def extensions(self) -> list[str]:
        """The EHLO keywords (RFC 5321 §4.1.1.1), each one implemented by this session."""
        keywords = [
            "PIPELINING",  # RFC 2920
            f"SIZE {self.limits.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "SMTPUTF8",  # RFC 6531
        ]
        if self.role.starttls and not self.tls:
            keywords.append("STARTTLS")  # RFC 3207
        if self._auth_allowed():
            keywords.append("AUTH PLAIN LOGIN")  # RFC 4954, RFC 4616
        if self.role.dsn:
            keywords.append("DSN")  # RFC 3461
        keywords.append("HELP")
        return keywords

    def _auth_allowed(self) -> bool:
        return self.role.auth and (self.tls or self.role.plaintext_auth)

    # STARTTLS (RFC 3207) ---------------------------------------------------------------
    def _do_STARTTLS(self, argument: str) -> None:
        if argument:
            self._error(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.tls:
            self._error(Reply(503, "5.5.1", "TLS already active"))
            return
        if not self.role.starttls:
            self._error(Reply(502, "5.5.1", "STARTTLS not available"))
            return
        self._reply(Reply(220, "2.0.0", "Ready to start TLS"))
        # RFC 3207 §4.2: forget everything from before the handshake, including
        # anything the client sent after STARTTLS in the clear (command injection).
        del self._in[:]
        self._out.append(StartTLS())
        self.tls = True
        self.helo, self.esmtp, self.envelope, self.auth_user = None, False, None, None

    # AUTH (RFC 4954) -------------------------------------------------------------------
    def _do_AUTH(self, argument: str) -> None:
        if not self.role.auth:
            self._error(Reply(503, "5.5.1", "Authentication not enabled"))
            return
        if not self.esmtp:
            self._error(Reply(503, "5.5.1", "Send EHLO first"))
            return
        if self.auth_user is not None:
            self._error(Reply(503, "5.5.1", "Already authenticated"))
            return
        if self.envelope is not None:
            self._error(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        if not self._auth_allowed():
            # RFC 4954 §6 / RFC 8314: no passwords over a clear connection.
            self._error(
                Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
            )
            return
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            self._error(Reply(504, "5.5.4", "Unrecognized authentication type"))
            return
        self._sasl = [mechanism]
        if initial:
            self._sasl_response(initial.encode("ascii"))
        elif mechanism == "PLAIN":
            self._reply(Reply(334, "", ""))
        else:
            self._reply(Reply(334, "", "VXNlcm5hbWU6"))  # "Username:"

    def _sasl_response(self, line: bytes) -> None:
        assert self._sasl is not None
        if line == b"*":
            self._sasl = None
            self._error(Reply(501, "5.0.0", "Authentication cancelled"))
            return
        try:
            decoded = b"" if line == b"=" else base64.b64decode(line, validate=True)
            text = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            self._sasl = None
            self._error(Reply(501, "5.5.2", "Cannot decode the response as base64 UTF-8"))
            return
        mechanism = self._sasl[0]
        if mechanism == "LOGIN" and len(self._sasl) == 1:
            self._sasl.append(text)
            self._reply(Reply(334, "", "UGFzc3dvcmQ6"))  # "Password:"
            return
        if mechanism == "LOGIN":
            username, password = self._sasl[1], text
        else:
            fields = text.split("\0")
            if len(fields) != 3:
                self._sasl = None
                self._error(Reply(501, "5.5.2", "PLAIN needs authzid NUL authcid NUL password"))
                return
            authzid, username, password = fields
            if authzid and authzid != username:
                self._sasl = None
                self._reply(Reply(535, "5.7.8", "Cannot act as another user"))
                return
        self._sasl = None
        self._effect(Authenticate(username, password))

    def _authenticated(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._reply(Reply(454, "4.7.0", "Temporary authentication failure"))
        elif result is None:
            self._error(Reply(535, "5.7.8", "Authentication credentials invalid"))
        else:
            self.auth_user = result
            self._reply(Reply(235, "2.7.0", "Authentication successful"))

    def _check_helo_argument(self, argument: str) -> bool:
        if not argument or not DOMAIN_RE.match(argument):
            self._error(Reply(501, "5.5.4", "Syntax: EHLO domain (RFC 5321 §4.1.1.1)"))
            return False
        return True

    def _do_MAIL(self, argument: str) -> None:
        if self.helo is None:
            self._error(Reply(503, "5.5.1", "Send EHLO or HELO first"))
            return
        if self.envelope is not None:
            self._error(Reply(503, "5.5.1", "Sender already specified"))
            return
        if self.role.require_auth and self.auth_user is None:
            self._error(Reply(530, "5.7.0", "Authentication required"))
            return
        if argument[:5].upper() != "FROM:":
            self._error(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        try:
            path = parse_path(argument[5:], allow_null=True, utf8=True)
        except PathError as e:
            self._error(Reply(501, "5.1.7", f"Bad sender address: {e}"))
            return
        reply = self._check_mail_params(path.params)
        if reply is None and not argument.isascii() and "SMTPUTF8" not in path.params:
            reply = _NEEDS_SMTPUTF8
        if reply is not None:
            self._error(reply)
            return
        self._transactions += 1
        envelope = Envelope(
            mail_from=path.address,
            params=path.params,
            helo=self.helo,
            peer=self.peer,
            session_id=self.session_id,
            queue_id=f"{self.session_id}.{self._transactions}",
            auth_user=self.auth_user,
        )
        self._effect(CheckSender(envelope, path.address))

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        if params and not self.esmtp:
            # RFC 5321 §4.1.1.2: parameters need the client to have used EHLO.
            return Reply(555, "5.5.4", "MAIL parameters need EHLO")
        for keyword, value in params.items():
            if keyword == "SIZE":
                # RFC 1870 §6: refuse at once what will not fit.
                if value is None or not value.isdigit():
                    return Reply(501, "5.5.4", "Syntax: SIZE=<octets>")
                if int(value) > self.limits.max_message_size:
                    return Reply(552, "5.3.4", "Message size exceeds fixed maximum")
            elif keyword in ("RET", "ENVID") and self.role.dsn:
                reply = _check_dsn_mail_param(keyword, value)
                if reply is not None:
                    return reply
            elif keyword == "AUTH":
                pass  # RFC 4954 §5: the original submitter, for relays; we keep our own
            elif keyword == "SMTPUTF8":
                # RFC 6531 §3.4: a parameter without a value.
                if value is not None:
                    return Reply(501, "5.5.4", "Syntax: SMTPUTF8 (without a value)")
            elif keyword == "BODY":
                # RFC 6152 §2
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return Reply(501, "5.5.4", "Syntax: BODY=7BIT or BODY=8BITMIME")
            else:
                return Reply(555, "5.5.4", f"Unsupported parameter {keyword}")
        return None

    def _do_RCPT(self, argument: str) -> None:
        if self.envelope is None:
            self._error(Reply(503, "5.5.1", "Need MAIL before RCPT"))
            return
        if argument[:3].upper() != "TO:":
            self._error(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        try:
            if parse_postmaster(argument[3:]) is not None:
                # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
                path = Path(self.postmaster, {})
            else:
                path = parse_path(argument[3:], allow_null=False, utf8=True)
        except PathError as e:
            self._error(Reply(501, "5.1.3", f"Bad recipient address: {e}"))
            return
        if not argument.isascii() and "SMTPUTF8" not in self.envelope.params:
            self._error(_NEEDS_SMTPUTF8)
            return
        reply = self._check_rcpt_params(path.params)
        if reply is not None:
            self._error(reply)
            return
        if len(self.envelope.rcpt_to) >= self.limits.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 for too many recipients.
            self._reply(Reply(452, "4.5.3", "Too many recipients"))
            return
        self._effect(CheckRecipient(self.envelope, path.address, path.params))

    def _check_rcpt_params(self, params: dict[str, str | None]) -> Reply | None:
        for keyword, value in params.items():
            if not self.role.dsn or keyword not in ("NOTIFY", "ORCPT"):
                return Reply(555, "5.5.4", f"Unsupported parameter {keyword}")
            if keyword == "NOTIFY":
                # RFC 3461 §4.1: NEVER, or any of SUCCESS, FAILURE, DELAY.
                words = (value or "").upper().split(",")
                if words != ["NEVER"] and not set(words) <= {"SUCCESS", "FAILURE", "DELAY"}:
                    return Reply(501, "5.5.4", "Syntax: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY")
            else:
                # RFC 3461 §4.2: ORCPT=addr-type;xtext
                kind, sep, text = (value or "").partition(";")
                if not sep or not kind or not _XTEXT.match(text):
                    return Reply(501, "5.5.4", "Syntax: ORCPT=rfc822;address")
        return None

    def _do_DATA(self, argument: str) -> None:
        if argument:
            self._error(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self.envelope is None:
            self._error(Reply(503, "5.5.1", "Need MAIL before DATA"))
            return
        if not self.envelope.rcpt_to:
            # RFC 2920 §3.1: DATA after all RCPTs failed gets 554 (no valid recipients).
            self._error(Reply(554, "5.5.1", "No valid recipients"))
            return
        self._data = _DataReader(self.limits)
        self._reply(START_DATA)

    def _do_RSET(self, argument: str) -> None:
        if argument:
            self._error(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self.envelope = None
        self._reply(OK)

    def _do_NOOP(self, argument: str) -> None:
        self._reply(OK)

    def _do_VRFY(self, argument: str) -> None:
        if not argument:
            self._error(Reply(501, "5.5.4", "Syntax: VRFY <address>"))
            return
        # RFC 5321 §3.5.3: 252 when we will not confirm an address.
        self._reply(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))

    def _do_EXPN(self, argument: str) -> None:
        # RFC 5321 §3.5.2: a server may refuse to expand lists.
        self._error(Reply(502, "5.5.1", "EXPN not available"))

    def _do_HELP(self, argument: str) -> None:
        commands = ["EHLO", "HELO"]
        if self.role.starttls and not self.tls:
            commands.append("STARTTLS")
        if self._auth_allowed():
            commands.append("AUTH")
        commands += ["MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "HELP", "QUIT"]
        self._reply(
            Reply(
                214,
                "2.0.0",
                (
                    "Commands: " + " ".join(commands),
                    "See RFC 5321 (https://www.rfc-editor.org/rfc/rfc5321)",
                ),
            )
        )

    def _do_QUIT(self, argument: str) -> None:
        self._reply(Reply(221, "2.0.0", f"{self.hostname} closing connection"))
        self._close()

    # DATA --------------------------------------------------------------------------------
    def _step_data(self) -> bool:
        assert self._data is not None
        consumed, done = self._data.feed(self._in)
        del self._in[:consumed]
        if not done:
            return False
        reader, self._data = self._data, None
        assert self.envelope is not None
        problem = reader.problem()
        if problem is not None:
            self.envelope = None
            self._reply(problem)
            return True
        trace = self._received_header(self.envelope)
        self._effect(DeliverMessage(self.envelope, (trace, *reader.chunks)))
        return True

    def _received_header(self, envelope: Envelope) -> bytes:
        """RFC 5321 §4.4: the trace line this server adds."""
        # RFC 3848: ESMTPS for TLS, ESMTPA for AUTH, ESMTPSA for both; RFC 6531 §4.3:
        # UTF8SMTP (and UTF8SMTPS, ...) for a transaction with SMTPUTF8.
        utf8 = "SMTPUTF8" in envelope.params
        protocol = "UTF8SMTP" if utf8 else "ESMTP" if self.esmtp else "SMTP"
        if self.esmtp:
            protocol += ("S" if self.tls else "") + ("A" if self.auth_user else "")
        recipient = f"\r\n\tfor <{envelope.rcpt_to[0]}>" if len(envelope.rcpt_to) == 1 else ""
        date = _local_date(int(self.clock()))
        # RFC 5321 §4.1.3: an IPv6 address literal is tagged "IPv6:".
        literal = f"[IPv6:{self.peer}]" if ":" in self.peer else f"[{self.peer}]"
        return (
            f"Received: from {envelope.helo} ({literal})\r\n"
            f"\tby {self.hostname} (mailserver) with {protocol} id {envelope.queue_id}"
            f"{recipient};\r\n\t{date}\r\n"
        ).encode("utf-8" if utf8 else "ascii", "replace")


class _DataReader:
    """Reads the message after DATA up to the CRLF.CRLF that ends it (RFC 5321 §4.1.1.4).

    Only a line that is exactly "." ends the message; a bare CR or LF anywhere marks the
    message as bad (it is then refused as a whole, never split into commands), and so
    does a line longer than the limit. Leading dots are removed (RFC 5321 §4.5.2).
    """

    def __init__(self, limits: SMTPLimits) -> None:
        self.limits = limits
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_big = False
        self.bare_newline = False
        self.long_line = False
        self._in_long_line = False

    def feed(self, buf: bytearray) -> tuple[int, bool]:
        """Consume whole lines of ``buf``; return (bytes consumed, end of data seen).

        The lines are handled together with bytes methods rather than one by one: a
        4 KiB message is some 60 lines, and a Python loop over them was an eighth of the
        server's time under SMTP load.
        """
        pos = 0
        max_line = self.limits.max_text_line
        if self._in_long_line:
            first = buf.find(b"\r\n")
            if first >= 0:  # the rest of a line already found too long: dropped
                pos = first + 2
                self._in_long_line = False
        last = buf.rfind(b"\r\n", pos) if not self._in_long_line else -1
        done = False
        if last >= 0:
            # With a CRLF in front, every line start is a CRLF: the end of data is the
            # first CRLF "." CRLF and a transparency dot is a CRLF ".".
            text = b"\r\n" + bytes(buf[pos : last + 2])
            end = text.find(b"\r\n" + _DATA_END + b"\r\n")
            if end >= 0:
                done = True
                text = text[: end + 2]
                pos += end + 3
            else:
                pos = last + 2
            crlf = text.count(b"\r\n")
            if text.count(b"\n") != crlf or text.count(b"\r") != crlf:
                # RFC 5321 §2.3.8: lines end with CRLF only.
                self.bare_newline = True
            if len(text) > max_line and max(map(len, text.split(b"\r\n"))) + 2 > max_line:
                # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with CRLF.
                self.long_line = True
            # RFC 5321 §4.5.2: remove the transparency dots.
            self._add(text.replace(b"\r\n.", b"\r\n")[2:])
        if not done and len(buf) - pos > max_line:
            self.long_line = True
            self._in_long_line = True
            pos = len(buf) - 1  # keep a trailing CR: it may start the CRLF
        return pos, done

    def _add(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limits.max_message_size:
            self.too_big = True
            self.chunks = []
        if not self.too_big:
            self.chunks.append(chunk)

    def problem(self) -> Reply | None:
        if self.too_big:
            return Reply(552, "5.3.4", "Message size exceeds fixed maximum")
        if self.bare_newline:
            return Reply(554, "5.6.0", "Bare CR or LF in message; lines must end with CRLF")
        if self.long_line:
            return Reply(554, "5.6.0", "Message has a line longer than 1000 octets")
        return None


@functools.lru_cache(maxsize=4)
def _local_date(second: int) -> str:
    """The RFC 5322 date of a second, made once: every message of that second asks, and
    formatdate with the local zone costs more than the rest of the Received field."""
    return email.utils.formatdate(second, localtime=True)
