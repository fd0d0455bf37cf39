"""The MSA hands remote recipients to the queue and says 250 only once the queue has the
message durably; a queue that cannot take it means no 250."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer

from mailserver.msa import SubmissionPolicy
from mailserver.smtp.reply import Reply
from mailserver.smtp.session import Envelope

ALICE = "alice@example.test"
MESSAGE = [b"Received: by us\r\n", f"From: {ALICE}\r\nSubject: x\r\n\r\nbody\r\n".encode()]


class Directory:
    def resolve(self, address: str) -> list[str] | None:
        return [ALICE] if address == ALICE else None

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.test"


class Queue:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.pending: defer.Deferred[str] = defer.Deferred()

    def enqueue(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        params: Mapping[str, str | None] | None = None,
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> defer.Deferred[str]:
        self.calls.append((mail_from, list(recipients), b"".join(chunks), params, rcpt_params))
        return self.pending


def submit(queue: Queue) -> tuple[defer.Deferred[Reply], list[Any]]:
    policy = SubmissionPolicy(Directory(), None, None, "mail.example.test", queue)  # type: ignore[arg-type]
    envelope = Envelope(
        ALICE,
        ["carol@remote.example"],
        params={"RET": "HDRS", "ENVID": "E1"},
        session_id="S1",
        auth_user=ALICE,
        rcpt_params={"carol@remote.example": {"NOTIFY": "FAILURE", "ORCPT": "rfc822;c"}},
    )
    d = policy.deliver(envelope, MESSAGE)
    out: list[Any] = []
    d.addBoth(out.append)
    return d, out


def test_250_waits_for_the_queue() -> None:
    queue = Queue()
    _, out = submit(queue)
    ((mail_from, rcpts, data, params, rcpt_params),) = queue.calls
    assert (mail_from, rcpts) == (ALICE, ["carol@remote.example"])
    assert data.startswith(b"Received: by us\r\n") and data.endswith(b"\r\n\r\nbody\r\n")
    assert b"Message-ID: <" in data and b"Date: " in data  # RFC 6409 §8.3, §8.2
    assert params == {"RET": "HDRS", "ENVID": "E1"}
    assert rcpt_params == {"carol@remote.example": {"NOTIFY": "FAILURE", "ORCPT": "rfc822;c"}}
    assert out == []  # nothing said before the spool has it
    queue.pending.callback("QUEUEID")
    (reply,) = out
    assert (reply.code, reply.enhanced) == (250, "2.0.0")


def test_no_250_when_the_queue_cannot_take_it() -> None:
    queue = Queue()
    _, out = submit(queue)
    queue.pending.errback(OSError("disk full"))
    (failure,) = out
    assert isinstance(failure.value, defer.FirstError)  # the session answers 451
