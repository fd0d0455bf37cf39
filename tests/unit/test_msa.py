"""The MSA's policy (RFC 6409): who may send as whom, what is added, where copies go."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from twisted.internet import defer

from mailserver.accounts import Directory
from mailserver.msa import SubmissionPolicy
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import Envelope

ALICE = "alice@example.test"
BOB = "bob@example.test"
TRACE = b"Received: from c.test\r\n"


class FakeMDA:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bytes]] = []

    def deliver(self, mail_from: str, rcpts: list[str], chunks: Sequence[bytes], sid: str):  # type: ignore[no-untyped-def]
        self.calls.append((mail_from, list(rcpts), b"".join(chunks)))
        return defer.succeed(None)


class FakeQueue:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[str], bytes]] = []
        self.fail = fail

    def enqueue(self, mail_from, recipients, chunks, params=None, rcpt_params=None):  # type: ignore[no-untyped-def]
        if self.fail:
            return defer.fail(OSError("spool full"))
        self.calls.append((mail_from, list(recipients), b"".join(chunks)))
        return defer.succeed("q1")


@pytest.fixture
def directory(tmp_path) -> Directory:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{ALICE}:{{PLAIN}}a\n{BOB}:{{PLAIN}}b\n")
    aliases = {"sales@example.test": (ALICE,), "office@example.test": (ALICE, BOB)}
    return Directory(("example.test",), str(passwd), aliases)


def policy(
    directory: Directory, queue: FakeQueue | None = None
) -> tuple[SubmissionPolicy, FakeMDA]:
    mda = FakeMDA()
    return SubmissionPolicy(directory, None, mda, "mail.example.test", queue), mda  # type: ignore[arg-type]


def envelope(rcpts: list[str], user: str | None = ALICE, sender: str = ALICE) -> Envelope:
    return Envelope(sender, list(rcpts), session_id="s1", auth_user=user)


def result(d: defer.Deferred) -> Reply:
    out: list = []
    d.addBoth(out.append)
    return out[0]


def test_sender_must_be_owned(directory: Directory) -> None:
    p, _ = policy(directory)
    assert p.check_sender(envelope([], user=None), ALICE).code == 530
    assert p.check_sender(envelope([]), ALICE).code == 250
    assert p.check_sender(envelope([]), "sales@example.test").code == 250  # alias of alice
    assert p.check_sender(envelope([]), "alice+news@example.test").code == 250
    assert p.check_sender(envelope([]), BOB) == Reply(
        553, "5.7.1", "Sender address not owned by user"
    )
    assert p.check_sender(envelope([]), "").code == 553  # no bounces from users
    assert p.check_sender(envelope([]), "alice@elsewhere.example").code == 553


def test_remote_recipients_without_a_queue_get_451(directory: Directory) -> None:
    p, _ = policy(directory)
    reply = p.check_recipient(envelope([]), "someone@elsewhere.example")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert p.check_recipient(envelope([]), "nobody@example.test").code == 550


def test_local_and_remote_copies_with_message_id_and_date_added(directory: Directory) -> None:
    queue = FakeQueue()
    p, mda = policy(directory, queue)
    assert p.check_recipient(envelope([]), "someone@elsewhere.example").code == 250
    message = b"From: Alice <alice@example.test>\r\nSubject: hi\r\n\r\nbody\r\n"
    env = envelope([BOB, "someone@elsewhere.example"])
    assert result(p.deliver(env, [TRACE, message])).code == 250
    ((_, local, stored),) = mda.calls
    ((_, remote, queued),) = queue.calls
    assert (local, remote) == ([BOB], ["someone@elsewhere.example"])
    assert stored == queued
    assert (
        stored.startswith(TRACE + b"Message-ID: <") and b"@mail.example.test>\r\nDate: " in stored
    )
    assert stored.endswith(message)


def test_existing_message_id_and_date_are_kept(directory: Directory) -> None:
    p, mda = policy(directory)
    message = (
        b"From: alice@example.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <x@y>\r\n\r\nb\r\n"
    )
    assert result(p.deliver(envelope([BOB]), [TRACE, message])).code == 250
    assert mda.calls[0][2] == TRACE + message


@pytest.mark.parametrize(
    "from_header",
    [
        b"From: bob@example.test\r\n",
        b"From: alice@example.test, bob@example.test\r\n",  # every author must be the user's
        b"Subject: no From at all\r\n",
    ],
)
def test_from_header_must_be_owned(directory: Directory, from_header: bytes) -> None:
    p, mda = policy(directory)
    reply = result(p.deliver(envelope([BOB]), [TRACE, from_header + b"\r\nbody\r\n"]))
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert mda.calls == []


def test_a_queue_failure_is_not_acknowledged(directory: Directory) -> None:
    p, _ = policy(directory, FakeQueue(fail=True))
    message = b"From: alice@example.test\r\n\r\nbody\r\n"
    failure = result(p.deliver(envelope(["x@elsewhere.example"]), [TRACE, message]))
    assert not isinstance(failure, Reply)  # the SMTP factory turns this into 451 4.3.0


class ReportHoldingMDA(FakeMDA):
    """Delivers messages at once and holds the reports (null sender) until told."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[defer.Deferred[None]] = []

    def deliver(self, mail_from: str, rcpts: list[str], chunks: Sequence[bytes], sid: str):  # type: ignore[no-untyped-def]
        super().deliver(mail_from, rcpts, chunks, sid)
        if mail_from:
            return defer.succeed(None)
        held: defer.Deferred[None] = defer.Deferred()
        self.reports.append(held)
        return held


def test_notify_success_report_is_durable_before_the_250(directory: Directory) -> None:
    """RFC 3461 NOTIFY=SUCCESS to a local recipient: the 250 comes once the report is
    stored too, so that a crash cannot lose the report of an acknowledged message; a
    report that fails is logged and the message still gets its 250."""
    for outcome in ("stored", "failed"):
        mda = ReportHoldingMDA()
        p = SubmissionPolicy(directory, None, mda, "mail.example.test", None)  # type: ignore[arg-type]
        env = envelope([BOB])
        env.rcpt_params[BOB] = {"NOTIFY": "SUCCESS"}
        out: list = []
        message = b"From: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
        p.deliver(env, [TRACE, message]).addBoth(out.append)
        assert [c[0] for c in mda.calls] == [ALICE, ""]  # the message, then its report
        assert out == []
        if outcome == "stored":
            mda.reports[0].callback(None)
        else:
            mda.reports[0].errback(OSError("disk full"))
        assert out[0].code == 250
