"""Transcript tests of the POP3 state machine: bytes in, exact bytes out."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from mailserver.config import POP3Config
from mailserver.pop3.session import (
    CommitDeletes,
    MaildropEntry,
    MaildropInUse,
    OpenMaildrop,
    POP3Session,
    ReadMessage,
    State,
    stuffed_response,
    top_of,
    unique_id_for,
)
from mailserver.session import Authenticate, Close, Effect, Send

HOST = "mx.example.test"
GREETING = b"+OK mx.example.test POP3 ready\r\n"
ALICE = "alice@example.test"
MSG1 = b"Subject: one\r\n\r\nfirst.\r\n"  # 24 octets
MSG2 = b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"  # 34 octets
LOGIN = b"USER alice\r\nPASS secret\r\n"
LOGGED_IN = b"+OK\r\n+OK 2 messages (58 octets)\r\n"


def fail(exc: Exception) -> Failure:
    try:
        raise exc
    except Exception:
        return Failure()


@dataclass
class Maildrop:
    """Runs the session's effects against an in-memory maildrop."""

    messages: dict[int, bytes] = field(default_factory=lambda: {11: MSG1, 12: MSG2})
    in_use: bool = False
    open_fails: bool = False
    login_fails: bool = False
    commit_fails: bool = False
    effects: list[Effect] = field(default_factory=list)

    def run(self, effect: Effect) -> Any:
        self.effects.append(effect)
        if isinstance(effect, Authenticate):
            if self.login_fails:
                return fail(RuntimeError("directory unavailable"))
            return ALICE if (effect.username, effect.password) == ("alice", "secret") else None
        if isinstance(effect, OpenMaildrop):
            if self.in_use:
                return fail(MaildropInUse(effect.address))
            if self.open_fails:
                return fail(OSError("disk on fire"))
            return [MaildropEntry(uid, f"base{uid}", len(m)) for uid, m in self.messages.items()]
        if isinstance(effect, ReadMessage):
            if effect.uid not in self.messages:
                return fail(KeyError(effect.uid))
            return self.messages[effect.uid]
        if isinstance(effect, CommitDeletes):
            if self.commit_fails:
                return fail(OSError("read-only file system"))
            for uid in effect.uids:
                del self.messages[uid]
            return list(effect.uids)
        raise AssertionError(effect)


class Client:
    """A minimal driver: feeds bytes, runs effects at once, collects what is sent."""

    def __init__(
        self,
        maildrop: Maildrop | None = None,
        max_line: int = 512,
        max_errors: int = 10,
        allow_plaintext_login: bool = True,
    ) -> None:
        limits = POP3Config(max_line=max_line, max_errors=max_errors)
        self.maildrop = maildrop or Maildrop()
        self.session = POP3Session(limits, HOST, "test-1", allow_plaintext_login)
        self.closed = False
        self.greeting = self.pump()

    def pump(self) -> bytes:
        out = []
        while (action := self.session.next_action()) is not None:
            if isinstance(action, Send):
                out.append(action.data)
            elif isinstance(action, Close):
                assert not self.closed
                self.closed = True
            else:
                assert isinstance(action, Effect)
                self.session.resume(self.maildrop.run(action))
        return b"".join(out)

    def send(self, data: bytes) -> bytes:
        assert not self.closed
        self.session.receive_data(data)
        return self.pump()

    def login(self) -> None:
        messages = self.maildrop.messages.values()
        octets = sum(len(m) for m in messages)
        expected = f"+OK\r\n+OK {len(messages)} messages ({octets} octets)\r\n".encode()
        assert self.send(LOGIN) == expected


def logged_in(**kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.login()
    return client


# Greeting, CAPA, framing ---------------------------------------------------------------
def test_greeting() -> None:
    assert Client().greeting == GREETING


def test_capa() -> None:
    common = b"+OK capability list follows\r\nUSER\r\nTOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\n"
    client = Client()
    assert client.send(b"CAPA\r\n") == common + b"AUTH-RESP-CODE\r\nSASL PLAIN\r\n.\r\n"
    client.login()
    assert client.send(b"capa\r\n") == common + b"AUTH-RESP-CODE\r\n.\r\n"
    assert client.send(b"CAPA x\r\n") == b"-ERR syntax error\r\n"


def test_bare_lf_and_lowercase_keywords() -> None:
    client = Client()
    assert client.send(b"user alice\npass secret\n") == LOGGED_IN
    assert client.send(b"stat\n") == b"+OK 2 58\r\n"


def test_line_split_across_chunks() -> None:
    client = Client()
    assert client.send(b"US") == b""
    assert client.send(b"ER alice\r") == b""
    assert client.send(b"\n") == b"+OK\r\n"
    assert client.session.buffered() == 0


def test_line_too_long_in_one_chunk() -> None:
    client = Client(max_line=20)
    assert client.send(b"USER " + b"a" * 14 + b"\r\n") == b"-ERR line too long\r\n"
    assert client.send(b"USER " + b"a" * 13 + b"\r\n") == b"+OK\r\n"  # 20 with CRLF


def test_line_too_long_discards_to_next_line_end() -> None:
    client = Client(max_line=20)
    assert client.send(b"X" * 19) == b""
    assert client.send(b"X") == b"-ERR line too long\r\n"
    assert client.session.buffered() == 0
    assert client.send(b"X" * 1000) == b""  # still discarding, nothing kept
    assert client.session.buffered() == 0
    assert client.send(b"XX\r\nCAPA\r\n").startswith(b"+OK capability list follows\r\n")


def test_unknown_command() -> None:
    client = Client()
    assert client.send(b"XYZZY\r\n") == b"-ERR unknown command\r\n"
    assert client.send(b"\r\n") == b"-ERR unknown command\r\n"
    assert client.send(b"APOP alice 0123\r\n") == b"-ERR unknown command\r\n"
    assert not client.closed


def test_too_many_errors_closes() -> None:
    client = Client(max_errors=3)
    assert client.send(b"A\r\nB\r\n") == b"-ERR unknown command\r\n" * 2
    assert client.send(b"C\r\nCAPA\r\n") == b"-ERR too many errors\r\n"
    assert client.closed
    assert client.session.next_action() is None  # CAPA was dropped with the connection


def test_failed_logins_count_as_errors() -> None:
    client = Client(max_errors=2)
    assert client.send(b"USER alice\r\nPASS wrong\r\n") == (
        b"+OK\r\n-ERR [AUTH] invalid user name or password\r\n"
    )
    assert client.send(b"USER alice\r\nPASS wrong\r\n") == b"+OK\r\n-ERR too many errors\r\n"
    assert client.closed


def test_pipelined_commands_answered_in_order() -> None:
    client = Client()
    out = client.send(LOGIN + b"STAT\r\nRETR 1\r\nLIST 2\r\nDELE 1\r\nTOP 2 1\r\nSTAT\r\nQUIT\r\n")
    assert out == (
        LOGGED_IN
        + b"+OK 2 58\r\n"
        + b"+OK 24 octets\r\n"
        + MSG1
        + b".\r\n"
        + b"+OK 2 34\r\n"
        + b"+OK message 1 deleted\r\n"
        + b"+OK 26 octets\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
        + b"+OK 1 34\r\n"
        + b"+OK mx.example.test POP3 server signing off (1 messages left)\r\n"
    )
    assert client.closed
    assert [type(e) for e in client.maildrop.effects] == [
        Authenticate,
        OpenMaildrop,
        ReadMessage,
        ReadMessage,
        CommitDeletes,
    ]
    assert client.maildrop.effects[-1] == CommitDeletes((11,))


def test_pipelined_input_waits_for_the_effect() -> None:
    session = POP3Session(POP3Config(), HOST, "t")
    assert session.next_action() == Send(GREETING)
    session.receive_data(LOGIN + b"NOOP\r\n")
    assert session.next_action() == Send(b"+OK\r\n")
    assert session.next_action() == Authenticate("alice", "secret")
    assert session.next_action() is None  # NOOP waits for the login
    assert session.buffered() == len(b"NOOP\r\n")
    session.resume(ALICE)
    assert session.next_action() == OpenMaildrop(ALICE)
    assert session.next_action() is None
    session.resume([])
    assert session.next_action() == Send(b"+OK 0 messages (0 octets)\r\n")
    assert session.next_action() == Send(b"+OK\r\n")
    assert session.next_action() is None


def test_resume_without_effect_is_a_bug() -> None:
    session = POP3Session(POP3Config(), HOST, "t")
    with pytest.raises(RuntimeError):
        session.resume(None)


# AUTHORIZATION ---------------------------------------------------------------------------
def test_login() -> None:
    client = Client()
    client.login()
    assert client.session.state is State.TRANSACTION
    assert client.session.address == ALICE
    assert client.maildrop.effects[:2] == [Authenticate("alice", "secret"), OpenMaildrop(ALICE)]


def test_password_may_contain_spaces() -> None:
    client = Client()
    client.send(b"USER bob\r\nPASS  two words \r\n")
    assert client.maildrop.effects == [Authenticate("bob", " two words ")]


def test_wrong_password_returns_to_authorization() -> None:
    client = Client()
    assert client.send(b"USER alice\r\nPASS wrong\r\n") == (
        b"+OK\r\n-ERR [AUTH] invalid user name or password\r\n"
    )
    assert client.session.state is State.AUTHORIZATION
    # The user name is forgotten: PASS alone is refused, USER and PASS again work.
    assert client.send(b"PASS secret\r\n") == b"-ERR send USER first\r\n"
    client.login()


def test_pass_before_user() -> None:
    client = Client()
    assert client.send(b"PASS secret\r\n") == b"-ERR send USER first\r\n"
    assert client.maildrop.effects == []


def test_user_and_pass_syntax() -> None:
    client = Client()
    assert client.send(b"USER\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"USER \r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"USER a b\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"USER a\x01\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"USER \xff\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"USER alice\r\nPASS\r\n") == b"+OK\r\n-ERR syntax error\r\n"
    assert client.send(b"USER alice\r\nPASS \xff\r\n") == (
        b"+OK\r\n-ERR [AUTH] invalid user name or password\r\n"
    )
    assert client.maildrop.effects == []


def test_login_service_failure() -> None:
    client = Client(Maildrop(login_fails=True))
    assert client.send(LOGIN) == (
        b"+OK\r\n-ERR [SYS/TEMP] authentication unavailable, try again later\r\n"
    )
    assert client.session.state is State.AUTHORIZATION


def test_maildrop_in_use() -> None:
    client = Client(Maildrop(in_use=True))
    assert client.send(LOGIN + b"STAT\r\n") == b"+OK\r\n-ERR [IN-USE] maildrop already locked\r\n"
    assert client.closed


def test_maildrop_cannot_be_opened() -> None:
    client = Client(Maildrop(open_fails=True))
    assert client.send(LOGIN) == b"+OK\r\n-ERR [SYS/TEMP] cannot open maildrop\r\n"
    assert client.closed


def test_plaintext_login_disabled() -> None:
    client = Client(allow_plaintext_login=False)
    assert client.send(b"CAPA\r\n") == (
        b"+OK capability list follows\r\n"
        b"TOP\r\nUIDL\r\nPIPELINING\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n.\r\n"
    )
    refused = b"-ERR [AUTH] plaintext authentication disallowed on non-secure connections\r\n"
    assert client.send(LOGIN) == refused * 2
    assert client.maildrop.effects == []


def test_transaction_commands_not_valid_before_login() -> None:
    client = Client()
    for command in (b"NOOP", b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 1 1", b"DELE 1", b"RSET"):
        assert client.send(command + b"\r\n") == b"-ERR command not valid in this state\r\n"


def test_quit_in_authorization() -> None:
    client = Client()
    assert client.send(b"QUIT\r\nNOOP\r\n") == b"+OK mx.example.test POP3 server signing off\r\n"
    assert client.closed
    assert client.maildrop.effects == []


# TRANSACTION -----------------------------------------------------------------------------
def test_user_and_pass_not_valid_after_login() -> None:
    client = logged_in()
    assert client.send(b"USER bob\r\n") == b"-ERR command not valid in this state\r\n"
    assert client.send(b"PASS x\r\n") == b"-ERR command not valid in this state\r\n"


def test_stat_noop() -> None:
    client = logged_in()
    assert client.send(b"STAT\r\n") == b"+OK 2 58\r\n"
    assert client.send(b"NOOP\r\n") == b"+OK\r\n"
    assert client.send(b"STAT 1\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"NOOP x\r\n") == b"-ERR syntax error\r\n"


def test_list() -> None:
    client = logged_in()
    assert client.send(b"LIST\r\n") == b"+OK 2 messages (58 octets)\r\n1 24\r\n2 34\r\n.\r\n"
    assert client.send(b"LIST 2\r\n") == b"+OK 2 34\r\n"


def test_uidl() -> None:
    client = logged_in()
    assert client.send(b"UIDL\r\n") == (
        b"+OK unique-id listing follows\r\n1 base11\r\n2 base12\r\n.\r\n"
    )
    assert client.send(b"UIDL 1\r\n") == b"+OK 1 base11\r\n"


def test_empty_maildrop() -> None:
    client = Client(Maildrop(messages={}))
    assert client.send(LOGIN) == b"+OK\r\n+OK 0 messages (0 octets)\r\n"
    assert client.send(b"LIST\r\nUIDL\r\n") == (
        b"+OK 0 messages (0 octets)\r\n.\r\n+OK unique-id listing follows\r\n.\r\n"
    )
    assert client.send(b"RETR 1\r\n") == b"-ERR no such message\r\n"


@pytest.mark.parametrize(
    "argument",
    [b"0", b"3", b"99999", b"9999999999"],
)
def test_message_number_out_of_range(argument: bytes) -> None:
    client = logged_in(max_errors=2)
    for command in (b"LIST", b"UIDL", b"RETR", b"DELE"):
        assert client.send(command + b" " + argument + b"\r\n") == b"-ERR no such message\r\n"
    assert client.send(b"TOP " + argument + b" 0\r\n") == b"-ERR no such message\r\n"
    assert not client.closed  # a wrong number is not a protocol error


@pytest.mark.parametrize(
    "argument",
    [b"", b"-1", b"+1", b"1.0", b"x", b"\xd9\xa1", b"00000000001", b"1 "],
)
def test_malformed_message_number(argument: bytes) -> None:
    client = logged_in()
    for command in (b"LIST", b"UIDL", b"RETR", b"DELE"):
        assert client.send(command + b" " + argument + b"\r\n") == b"-ERR no such message\r\n"
    assert client.send(b"RETR\r\nDELE\r\n") == b"-ERR no such message\r\n" * 2


def test_retr() -> None:
    client = logged_in()
    assert client.send(b"RETR 2\r\n") == b"+OK 34 octets\r\n" + MSG2 + b".\r\n"
    assert client.maildrop.effects[-1] == ReadMessage(12)


def test_retr_read_failure() -> None:
    maildrop = Maildrop()
    client = logged_in(maildrop=maildrop)
    del maildrop.messages[11]  # removed by someone else after the listing
    assert client.send(b"RETR 1\r\nSTAT\r\n") == b"-ERR cannot read message\r\n+OK 2 58\r\n"


def test_dot_stuffing() -> None:
    message = b".first\r\n\r\n.\r\n..x\r\nplain.\r\n.\r\n"
    client = logged_in(maildrop=Maildrop(messages={1: message}))
    assert client.send(b"RETR 1\r\n") == (
        b"+OK 29 octets\r\n..first\r\n\r\n..\r\n...x\r\nplain.\r\n..\r\n.\r\n"
    )


def test_message_without_final_crlf() -> None:
    client = logged_in(maildrop=Maildrop(messages={1: b"S: x\r\n\r\nno end", 2: b""}))
    assert client.send(b"RETR 1\r\n") == b"+OK 14 octets\r\nS: x\r\n\r\nno end\r\n.\r\n"
    assert client.send(b"RETR 2\r\n") == b"+OK 0 octets\r\n.\r\n"


def test_top() -> None:
    client = logged_in()
    assert client.send(b"TOP 2 0\r\n") == b"+OK 22 octets\r\nSubject: two\r\nX: y\r\n\r\n.\r\n"
    assert client.send(b"TOP 2 2\r\n") == (
        b"+OK 30 octets\r\nSubject: two\r\nX: y\r\n\r\nl1\r\nl2\r\n.\r\n"
    )
    assert client.send(b"TOP 2 9999999999\r\n") == b"+OK 34 octets\r\n" + MSG2 + b".\r\n"


def test_top_syntax() -> None:
    client = logged_in()
    for arguments in (b"", b" 1", b" 1 ", b" 1 x", b" 1 -1", b" 1 1 1", b" 1 12345678901"):
        assert client.send(b"TOP" + arguments + b"\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"TOP x 1\r\n") == b"-ERR no such message\r\n"


def test_top_of() -> None:
    assert top_of(b"A: 1\r\n\r\nb1\r\nb2", 0) == b"A: 1\r\n\r\n"
    assert top_of(b"A: 1\r\n\r\nb1\r\nb2", 1) == b"A: 1\r\n\r\nb1\r\n"
    assert top_of(b"A: 1\r\n\r\nb1\r\nb2", 2) == b"A: 1\r\n\r\nb1\r\nb2"
    assert top_of(b"A: 1\r\nB: 2\r\n", 5) == b"A: 1\r\nB: 2\r\n"  # no body at all
    assert top_of(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"  # no header at all
    assert top_of(b"", 3) == b""


def test_dele_hides_the_message() -> None:
    client = logged_in()
    assert client.send(b"DELE 1\r\n") == b"+OK message 1 deleted\r\n"
    already = b"-ERR message 1 already deleted\r\n"
    for command in (b"DELE 1", b"RETR 1", b"TOP 1 0", b"LIST 1", b"UIDL 1"):
        assert client.send(command + b"\r\n") == already
    assert client.send(b"STAT\r\n") == b"+OK 1 34\r\n"
    assert client.send(b"LIST\r\n") == b"+OK 1 messages (34 octets)\r\n2 34\r\n.\r\n"
    assert client.send(b"UIDL\r\n") == b"+OK unique-id listing follows\r\n2 base12\r\n.\r\n"
    assert client.send(b"RETR 2\r\n") == b"+OK 34 octets\r\n" + MSG2 + b".\r\n"


def test_rset_unmarks() -> None:
    client = logged_in()
    assert client.send(b"DELE 1\r\nDELE 2\r\n") == (
        b"+OK message 1 deleted\r\n+OK message 2 deleted\r\n"
    )
    assert client.send(b"STAT\r\n") == b"+OK 0 0\r\n"
    assert client.send(b"RSET\r\n") == b"+OK maildrop has 2 messages (58 octets)\r\n"
    assert client.send(b"RSET x\r\n") == b"-ERR syntax error\r\n"
    assert client.send(b"QUIT\r\n") == (
        b"+OK mx.example.test POP3 server signing off (2 messages left)\r\n"
    )
    assert client.maildrop.effects[-1] == CommitDeletes(())


def test_quit_commits_the_marked_uids() -> None:
    maildrop = Maildrop(messages={30: MSG1, 10: MSG2, 20: MSG1})
    client = logged_in(maildrop=maildrop)
    assert client.send(b"DELE 3\r\nDELE 1\r\nQUIT\r\n") == (
        b"+OK message 3 deleted\r\n+OK message 1 deleted\r\n"
        b"+OK mx.example.test POP3 server signing off (1 messages left)\r\n"
    )
    assert maildrop.effects[-1] == CommitDeletes((20, 30))
    assert list(maildrop.messages) == [10]
    assert client.closed
    assert client.session.state is State.CLOSED


def test_quit_with_arguments() -> None:
    client = logged_in()
    assert client.send(b"QUIT now\r\n") == b"-ERR syntax error\r\n"
    assert not client.closed


def test_commit_failure() -> None:
    client = logged_in(maildrop=Maildrop(commit_fails=True))
    assert client.send(b"DELE 1\r\nQUIT\r\n") == (
        b"+OK message 1 deleted\r\n-ERR some deleted messages not removed\r\n"
    )
    assert client.closed


def test_connection_lost_commits_nothing() -> None:
    client = logged_in()
    client.send(b"DELE 1\r\n")
    client.session.connection_lost()
    client.session.receive_data(b"QUIT\r\n")
    assert client.pump() == b""
    assert client.session.buffered() == 0
    assert not any(isinstance(e, CommitDeletes) for e in client.maildrop.effects)


def test_timed_out() -> None:
    client = logged_in()
    assert client.session.timed_out() == b"-ERR autologout; idle for too long\r\n"
    client.session.receive_data(b"STAT\r\n")
    assert client.pump() == b""


# Helpers -------------------------------------------------------------------------------
def test_unique_id_is_the_base_name_when_allowed() -> None:
    base = "1700000000.M123456P4242Q1Rdeadbeef.mx.example.test,S=24,W=24"
    assert unique_id_for(base) == base
    long = "1700000000.M123456P4242Q1Rdeadbeef." + "h" * 40 + ",S=24,W=24"
    assert unique_id_for(long) == hashlib.sha256(long.encode()).hexdigest()
    odd = "with space"
    assert unique_id_for(odd) == hashlib.sha256(odd.encode()).hexdigest()
    assert unique_id_for("caf\xe9") == hashlib.sha256("café".encode()).hexdigest()


def unstuff(response: bytes) -> bytes:
    """What a client reads from a multi-line response (RFC 1939 §3), the slow way."""
    assert response.endswith(b"\r\n.\r\n") or response == b".\r\n"
    lines = response.split(b"\r\n")[:-2]
    assert b"." not in lines
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@given(st.lists(st.sampled_from([b".", b"..", b"x", b".x", b"", b"\r", b"\n", b"\r\n"])))
def test_stuffing_round_trip(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    response = stuffed_response("+OK", data)
    expected = data if not data or data.endswith(b"\r\n") else data + b"\r\n"
    assert unstuff(response.removeprefix(b"+OK\r\n")) == expected


def test_big_message_is_fast_and_exact() -> None:
    line = b".a line of a large message that starts with a dot, for stuffing....\r\n"
    message = line * (10 * 1024 * 1024 // len(line))
    client = logged_in(maildrop=Maildrop(messages={1: message}))
    start = time.perf_counter()
    out = client.send(b"RETR 1\r\n")
    elapsed = time.perf_counter() - start
    head = f"+OK {len(message)} octets\r\n".encode()
    assert out == head + (b"." + line) * (len(message) // len(line)) + b".\r\n"
    assert elapsed < 1.0


# Fuzzing --------------------------------------------------------------------------------
commands = st.sampled_from(
    [
        *(b"USER alice", b"PASS secret", b"CAPA", b"STAT", b"LIST", b"LIST 1", b"UIDL 2"),
        *(b"RETR 1", b"TOP 2 1", b"DELE 1", b"RSET", b"NOOP", b"QUIT", b"RETR 99"),
    ]
)
noise = st.one_of(
    st.binary(max_size=80),
    commands.map(lambda c: c + b"\r\n"),
    st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b"."]),
)
CAPA_LINES = {
    b"USER",
    b"TOP",
    b"UIDL",
    b"PIPELINING",
    b"RESP-CODES",
    b"AUTH-RESP-CODE",
    b"SASL PLAIN",
    b"PLAIN",
    b"+ ",
    b".",
}


@settings(max_examples=300)
@given(st.lists(noise, max_size=30))
def test_random_input_before_login_only_gets_replies(chunks: list[bytes]) -> None:
    maildrop = Maildrop()
    client = Client(maildrop, max_line=64, max_errors=1000)
    maildrop.run = lambda effect: None  # type: ignore[method-assign]  # every login fails
    for chunk in chunks:
        if client.closed:
            break
        out = client.send(chunk)
        for line in out.split(b"\r\n")[:-1]:
            assert line.startswith((b"+OK", b"-ERR")) or line in CAPA_LINES


@settings(max_examples=300)
@given(st.lists(noise, max_size=30), st.integers(min_value=1, max_value=20))
def test_random_input_after_login_never_raises(chunks: list[bytes], max_errors: int) -> None:
    client = logged_in(max_line=64, max_errors=max_errors)
    for chunk in chunks:
        if client.closed:
            break
        client.send(chunk)
    assert client.session.state in (State.TRANSACTION, State.CLOSED)
