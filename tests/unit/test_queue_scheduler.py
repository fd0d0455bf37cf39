"""The scheduler with a fake clock, a fake transport and synchronous disk work; the
spool's crash recovery; RFC 3464 reports parsed back with the email package."""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import re
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher

from mailserver.queue import dsn
from mailserver.queue.scheduler import Policy, Scheduler, format_time
from mailserver.queue.spool import DELIVERED, FAILED, PENDING, Entry, RecipientState, Spool
from mailserver.queue.transport import Delivery
from mailserver.smtp.client import OutboundMessage, Result
from mailserver.smtp.reply import Reply
from mailserver.store.maildir import MaildirStore

MSG = b"Subject: test\r\nFrom: s@remote.example\r\n\r\nbody\r\n"
OK = Delivery(Result.DELIVERED, Reply(250, "2.0.0", "ok"), "mx.example.net [192.0.2.1]")
LATER = Delivery(Result.TEMPORARY, Reply(451, "4.3.0", "later"), "mx.example.net [192.0.2.1]")
NO = Delivery(Result.PERMANENT, Reply(550, "5.1.1", "no such user"), "mx.example.net [192.0.2.1]")


class FakeTransport:
    def __init__(self) -> None:
        self.script: dict[str, list[Delivery]] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.messages: list[OutboundMessage] = []
        self.held: list[defer.Deferred[dict[str, Delivery]]] = []
        self.hold = False
        self.hold_domains: set[str] = set()

    def deliver(
        self, domain: str, message: OutboundMessage, queue_id: str
    ) -> defer.Deferred[dict[str, Delivery]]:
        addresses = tuple(r.address for r in message.recipients)
        self.calls.append((domain, addresses))
        self.messages.append(message)
        result = {a: self.script[a].pop(0) if self.script.get(a) else OK for a in addresses}
        if self.hold or domain in self.hold_domains:
            d: defer.Deferred[dict[str, Delivery]] = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(result)


def sync(function: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(function, *args)


class Harness:
    def __init__(self, root: str, **policy: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.spool = Spool(root)
        self.spool.ensure()
        self.transport = FakeTransport()
        self.local: list[tuple[str, list[str], bytes]] = []
        self.policy = Policy(
            hostname="mail.example.test", local_domains=("example.test",), **policy
        )
        self.scheduler = self.new()

    def new(self) -> Scheduler:
        return Scheduler(
            self.spool, self.transport, self.policy, self.local_deliver, self.clock, sync
        )

    def local_deliver(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        chunks: Sequence[bytes],
        sid: str,
        unique: str | None = None,
    ) -> defer.Deferred[None]:
        self.local.append((mail_from, list(rcpts), b"".join(chunks)))
        return defer.succeed(None)

    def start(self) -> None:
        self.result(defer.ensureDeferred(self.scheduler.start()))

    def enqueue(self, sender: str, rcpts: list[str], **kw: Any) -> str:
        return self.result(self.scheduler.enqueue(sender, rcpts, [MSG], **kw))

    @staticmethod
    def result(d: defer.Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "the Deferred did not fire"
        if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]


@pytest.fixture
def h(tmp_path: Any) -> Harness:
    harness = Harness(str(tmp_path / "spool"), min_backoff=300, max_backoff=4000, delay_warning=0)
    harness.start()
    yield harness
    harness.scheduler.stop()


def test_delivers_and_removes(h: Harness) -> None:
    queue_id = h.enqueue("s@example.test", ["a@example.net", "b@example.net", "c@other.example"])
    assert os.path.exists(os.path.join(h.spool.state, queue_id))
    h.clock.advance(0)
    assert sorted(h.transport.calls) == [
        ("example.net", ("a@example.net", "b@example.net")),
        ("other.example", ("c@other.example",)),
    ]
    assert queue_id not in h.scheduler.entries
    assert h.spool.ids() == []
    assert os.listdir(h.spool.data) == []


def test_backoff_doubles_up_to_the_maximum(h: Harness) -> None:
    assert [h.policy.backoff(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    h.transport.script["a@example.net"] = [LATER] * 4
    queue_id = h.enqueue("s@example.test", ["a@example.net"])
    h.clock.advance(0)
    assert len(h.transport.calls) == 1
    for delay in (300, 600, 1200):
        h.clock.advance(delay - 1)
        assert len(h.transport.calls) == (1 + [300, 600, 1200].index(delay))
        h.clock.advance(1)
    assert len(h.transport.calls) == 4
    entry = h.spool.load(queue_id)
    assert entry.attempts == 4 and entry.recipients[0].status == PENDING
    assert entry.recipients[0].diagnostic == "451 4.3.0 later"
    h.clock.advance(2400)
    assert len(h.transport.calls) == 5
    assert h.spool.ids() == []


def test_permanent_failure_bounces_once_to_remote_sender_through_the_queue(h: Harness) -> None:
    h.transport.script["a@example.net"] = [NO]
    h.transport.hold = False
    queue_id = h.enqueue("s@remote.example", ["a@example.net", "b@example.net"])
    h.clock.advance(0)
    # The original is gone; the report is a new entry, to the sender, with a null sender.
    assert queue_id not in h.scheduler.entries
    assert h.transport.calls[-1] == ("remote.example", ("s@remote.example",))
    assert h.spool.ids() == []


def test_bounce_to_local_sender_goes_through_local_delivery(h: Harness) -> None:
    h.transport.script["a@example.net"] = [NO]
    h.enqueue("alice@example.test", ["a@example.net"], params={"ENVID": "E+2B1", "RET": "HDRS"})
    h.clock.advance(0)
    assert len(h.local) == 1
    mail_from, rcpts, report = h.local[0]
    assert mail_from == "" and rcpts == ["alice@example.test"]
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Auto-Submitted"] == "auto-replied"
    text, status, original = parsed.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.test"
    assert per_message["Original-Envelope-Id"] == "E+1"
    assert per_rcpt["Final-Recipient"] == "rfc822; a@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: test" in original.get_payload(decode=True)
    assert b"body" not in original.get_payload(decode=True)


def test_a_crash_after_a_local_report_does_not_deliver_it_twice(tmp_path: Any) -> None:
    """The parent's state records the report only after its delivery; a crash between
    the two sends it again on restart, under the same name, and the store keeps one."""
    h = Harness(str(tmp_path / "spool"), min_backoff=300, max_backoff=4000, delay_warning=0)
    store = MaildirStore(str(tmp_path / "mail"), hostname="mail.example.test", run_in_thread=sync)
    crash_after_delivery = [True]
    names: list[str | None] = []

    def local_deliver(
        mail_from: str,
        rcpts: Sequence[str],
        chunks: Sequence[bytes],
        sid: str,
        unique: str | None = None,
    ) -> defer.Deferred[Any]:
        names.append(unique)
        d = store.deliver(rcpts[0], chunks, unique=unique)
        if crash_after_delivery.pop(0):
            return defer.Deferred()  # durable, and the process dies before it hears so
        return d

    h.local_deliver = local_deliver  # type: ignore[method-assign]
    h.scheduler = h.new()
    h.start()
    h.transport.script["a@example.net"] = [NO]
    queue_id = h.enqueue("alice@example.test", ["a@example.net"])
    h.clock.advance(0)
    assert not h.spool.load(queue_id).recipients[0].reported
    h.scheduler.stop()
    crash_after_delivery.append(False)
    h.transport.script["a@example.net"] = [NO]
    h.scheduler = h.new()
    h.start()
    h.clock.advance(0)
    assert len(names) == 2 and names[0] == names[1] and names[0] is not None
    inbox = tmp_path / "mail" / "example.test" / "alice"
    assert len(os.listdir(inbox / "new")) == 1
    assert h.spool.ids() == []


def test_smtputf8_is_kept_in_the_spool_and_its_reports_are_global(h: Harness) -> None:
    """RFC 6531: a message taken with SMTPUTF8 goes out with it, after a restart too;
    RFC 6533: a report about it is a global one, with UTF-8 addresses as such."""
    h.transport.script["jösé@example.net"] = [LATER, NO]
    queue_id = h.enqueue("pelé@remote.example", ["jösé@example.net"], params={"SMTPUTF8": None})
    h.clock.advance(0)
    assert h.spool.load(queue_id).smtputf8
    h.scheduler.stop()
    h.scheduler = h.new()
    h.start()
    h.clock.advance(300)
    # Two attempts, then the report, to the sender's domain, with SMTPUTF8 too.
    assert [m.smtputf8 for m in h.transport.messages] == [True, True, True]
    assert h.transport.calls[-1] == ("remote.example", ("pelé@remote.example",))
    report = b"".join(h.transport.messages[-1].chunks)
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    text, status, original = parsed.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/global-delivery-status"
    assert original.get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; jösé@example.net" in report.decode("utf-8")
    assert "To: <pelé@remote.example>" in report.decode("utf-8")


def test_no_report_to_null_sender_and_notify_never(h: Harness) -> None:
    h.transport.script["a@example.net"] = [NO]
    h.transport.script["b@example.net"] = [NO]
    h.enqueue("", ["a@example.net"])
    h.enqueue(
        "alice@example.test", ["b@example.net"], rcpt_params={"b@example.net": {"NOTIFY": "NEVER"}}
    )
    h.clock.advance(0)
    assert h.local == []
    assert h.spool.ids() == []
    assert all(domain == "example.net" for domain, _ in h.transport.calls)


def test_expiry_and_delay_warning(tmp_path: Any) -> None:
    h = Harness(
        str(tmp_path / "s"), min_backoff=100, max_backoff=100, max_lifetime=1000, delay_warning=250
    )
    h.start()
    h.transport.script["a@example.net"] = [LATER] * 100
    h.enqueue(
        "alice@example.test",
        ["a@example.net"],
        rcpt_params={
            "a@example.net": {"NOTIFY": "DELAY,FAILURE", "ORCPT": "rfc822;A+2Ba@example.net"}
        },
    )
    h.clock.advance(0)
    for _ in range(12):
        h.clock.advance(100)
    actions = []
    for _, _, report in h.local:
        parsed = email.message_from_bytes(report, policy=email.policy.default)
        per_rcpt = parsed.get_payload()[1].get_payload()[1]
        actions.append((per_rcpt["Action"], per_rcpt["Status"]))
        assert per_rcpt["Original-Recipient"] == "rfc822; A+a@example.net"
    assert actions == [("delayed", "4.3.0"), ("failed", "5.4.7")]
    assert h.spool.ids() == []
    h.scheduler.stop()


def test_per_domain_concurrency_limit(tmp_path: Any) -> None:
    h = Harness(str(tmp_path / "s"), max_deliveries=3, max_deliveries_per_domain=1)
    h.start()
    h.transport.hold = True
    for _ in range(3):
        h.enqueue("s@example.test", ["a@slow.example"])
    h.enqueue("s@example.test", ["b@fast.example"])
    h.clock.advance(0)
    # One connection to the slow domain at a time; the other domain is not held up.
    assert sorted(h.transport.calls) == [
        ("fast.example", ("b@fast.example",)),
        ("slow.example", ("a@slow.example",)),
    ]
    h.transport.held[0].callback({"a@slow.example": OK})
    assert len(h.transport.calls) == 3
    h.scheduler.stop()


def test_restart_resumes_and_does_not_redeliver(h: Harness) -> None:
    h.transport.script["b@example.net"] = [LATER]
    queue_id = h.enqueue("s@example.test", ["a@example.net", "b@example.net"])
    h.clock.advance(0)
    h.scheduler.stop()
    h.transport.calls.clear()
    h.scheduler = h.new()
    h.start()
    assert h.scheduler.entries[queue_id].recipients[0].status == DELIVERED
    h.clock.advance(300)
    assert h.transport.calls == [("example.net", ("b@example.net",))]
    assert h.spool.ids() == []


def test_cli_requests_are_picked_up_by_scan(h: Harness) -> None:
    h.transport.script["a@example.net"] = [LATER]
    queue_id = h.enqueue("s@example.test", ["a@example.net"])
    other = h.enqueue("s@example.test", ["x@example.net"])
    h.transport.script["x@example.net"] = [LATER]
    h.clock.advance(0)
    h.spool.request("retry", queue_id)
    h.spool.request("delete", other)
    h.clock.advance(h.policy.scan_interval)
    assert h.spool.ids() == []
    assert h.transport.calls.count(("example.net", ("a@example.net",))) == 2


def test_spool_recovery_drops_partial_entries(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path / "s"))
    spool.ensure()
    entry = Entry("0000000000000AAAA", "s@x.example", [RecipientState("a@example.net")], 1.0, 1.0)
    assert spool.create(entry, [MSG])
    assert not spool.create(entry, [MSG])
    # A crash in the middle of writing: a tmp file, and data without its state file.
    with open(os.path.join(spool.tmp, "0000000000000BBBB.1234"), "wb") as f:
        f.write(b"half")
    with open(os.path.join(spool.data, "0000000000000BBBB"), "wb") as f:
        f.write(b"half")
    assert sorted(spool.recover()) == ["data/0000000000000BBBB", "tmp/0000000000000BBBB.1234"]
    assert spool.ids() == ["0000000000000AAAA"]
    assert b"".join(spool.read_data("0000000000000AAAA")) == MSG
    loaded = spool.load("0000000000000AAAA")
    assert loaded == entry
    loaded.recipients[0].status = FAILED
    spool.save(loaded)
    assert spool.load(loaded.id).recipients[0].status == FAILED
    spool.remove(loaded.id)
    assert spool.ids() == [] and os.listdir(spool.data) == []


def test_report_full_and_notify_rules() -> None:
    report = dsn.build_report(
        "mx.example.test",
        "s@example.org",
        [dsn.ReportedRecipient("a@example.net", dsn.FAILED, "5.1.1", "550 5.1.1 no")],
        b"Subject: x\n\nthe body\n",
        arrival=1_700_000_000,
        now=1_700_000_100,
        ret="FULL",
    )
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    returned = parsed.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload()[0]["Subject"] == "x"
    assert b"\n" not in report.replace(b"\r\n", b"")
    assert dsn.wants(None, dsn.FAILED) and dsn.wants(None, dsn.DELAYED)
    assert not dsn.wants(None, dsn.RELAYED)
    assert dsn.wants(["SUCCESS"], dsn.RELAYED) and not dsn.wants(["NEVER"], dsn.FAILED)


def test_a_domain_done_is_saved_while_another_domain_is_slow(h: Harness) -> None:
    """Exactly once: what one domain settled is on disk before a slow domain answers, so
    a crash meanwhile does not send it again."""
    h.transport.hold_domains.add("slow.example")
    queue_id = h.enqueue("s@example.test", ["a@fast.example", "b@slow.example"])
    h.clock.advance(0)
    on_disk = {r.address: r.status for r in h.spool.load(queue_id).recipients}
    assert on_disk == {"a@fast.example": DELIVERED, "b@slow.example": PENDING}
    # A restart now (the slow delivery lost with the process) tries only the slow one.
    h.scheduler.stop()
    h.transport.hold_domains.clear()
    h.transport.calls.clear()
    h.scheduler = h.new()
    h.start()
    h.clock.advance(0)
    assert h.transport.calls == [("slow.example", ("b@slow.example",))]
    assert h.spool.ids() == []


def test_each_attempt_is_logged_with_remote_reply_and_next_try(h: Harness) -> None:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if "attempt" in text:
            lines.append(text)

    globalLogPublisher.addObserver(observer)
    try:
        h.transport.script["a@example.net"] = [LATER, OK]
        h.transport.script["b@example.net"] = [NO]
        queue_id = h.enqueue("s@example.test", ["a@example.net", "b@example.net"])
        h.clock.advance(0)
        due = format_time(h.clock.seconds() + 300)
        h.clock.advance(300)
    finally:
        globalLogPublisher.removeObserver(observer)
    via = "via mx.example.net [192.0.2.1]"
    assert lines == [
        f"queue {queue_id} to <a@example.net> {via}: 451 4.3.0 later; attempt 1: "
        f"deferred, next try {due} (in 300s)",
        f"queue {queue_id} to <b@example.net> {via}: 550 5.1.1 no such user; attempt 1: "
        "failed, bounced",
        f"queue {queue_id} to <a@example.net> {via}: 250 2.0.0 ok; attempt 2: delivered",
    ]


def test_enqueue_refuses_envelope_values_that_would_break_a_command(h: Harness) -> None:
    for rcpts, params in (
        (["a@example.net\r\nRSET"], {}),
        (["a@example.net"], {"ENVID": "x y"}),
    ):
        with pytest.raises(ValueError):
            h.enqueue("s@example.test", rcpts, params=params)
    with pytest.raises(ValueError):
        h.enqueue(
            "s@example.test",
            ["a@example.net"],
            rcpt_params={"a@example.net": {"ORCPT": "rfc822;a\x00"}},
        )
    assert h.spool.ids() == []


def test_delay_and_expiry_reports_field_by_field(tmp_path: Any) -> None:
    """RFC 3464 read back with the email package: the delay notice (only to the
    recipient whose NOTIFY asks for it), then one failure report at expiry for both."""
    h = Harness(
        str(tmp_path / "s"), min_backoff=100, max_backoff=100, max_lifetime=1000, delay_warning=250
    )
    h.start()
    t0 = h.clock.seconds()
    h.transport.script["a@example.net"] = [LATER] * 100
    h.transport.script["b@example.net"] = [LATER] * 100
    h.enqueue(
        "alice@example.test",
        ["a@example.net", "b@example.net"],
        params={"ENVID": "QID+2B7", "RET": "FULL"},
        rcpt_params={
            "a@example.net": {"NOTIFY": "DELAY,FAILURE", "ORCPT": "rfc822;A+2Ba@example.net"},
            "b@example.net": {"NOTIFY": "FAILURE"},
        },
    )
    h.clock.advance(0)
    for _ in range(10):
        h.clock.advance(100)
    assert h.spool.ids() == []
    h.scheduler.stop()
    (mail_from, to, delay), (_, _, failure) = [(f, r, d) for f, r, d in h.local]
    assert (mail_from, to) == ("", ["alice@example.test"])

    def check_common(report: bytes, subject: str) -> tuple[Any, list[Any], Any]:
        parsed = email.message_from_bytes(report, policy=email.policy.default)
        assert not parsed.defects
        assert parsed["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
        assert [a.addr_spec for a in parsed["To"].addresses] == ["alice@example.test"]
        assert parsed["Subject"] == subject
        assert parsed["Auto-Submitted"] == "auto-replied"
        assert parsed["Date"].datetime.timestamp() == t0 + (300 if "Delayed" in subject else 1000)
        assert parsed["Message-ID"].endswith("@mail.example.test>")
        assert parsed.get_content_type() == "multipart/report"
        assert parsed.get_param("report-type") == "delivery-status"
        text, status, returned = parsed.get_payload()
        assert text.get_content_type() == "text/plain"
        assert status.get_content_type() == "message/delivery-status"
        per_message, *per_rcpt = status.get_payload()
        assert per_message["Reporting-MTA"] == "dns; mail.example.test"
        assert per_message["Original-Envelope-Id"] == "QID+7"
        assert per_message["Arrival-Date"] == email.utils.formatdate(t0)
        # RET=FULL: the whole original comes back.
        assert returned.get_content_type() == "message/rfc822"
        original = returned.get_payload()[0]
        assert original["Subject"] == "test" and original.get_content() == "body\r\n"
        return text, per_rcpt, parsed

    text, per_rcpt, _ = check_common(delay, "Delayed Mail (still being retried)")
    assert "<a@example.net>: 451 4.3.0 later" in text.get_content()
    (a,) = per_rcpt  # b did not ask for delay notices
    assert dict(a.items()) == {
        "Original-Recipient": "rfc822; A+a@example.net",
        "Final-Recipient": "rfc822; a@example.net",
        "Action": "delayed",
        "Status": "4.3.0",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 451 4.3.0 later",
        "Last-Attempt-Date": email.utils.formatdate(t0 + 300),
        "Will-Retry-Until": email.utils.formatdate(t0 + 1000),
    }

    text, per_rcpt, _ = check_common(failure, "Undelivered Mail Returned to Sender")
    assert [dict(r.items()) for r in per_rcpt] == [
        {
            "Original-Recipient": "rfc822; A+a@example.net",
            "Final-Recipient": "rfc822; a@example.net",
            "Action": "failed",
            "Status": "5.4.7",
            "Remote-MTA": "dns; mx.example.net",
            "Diagnostic-Code": "smtp; 451 4.3.0 later",
            "Last-Attempt-Date": email.utils.formatdate(t0 + 1000),
        },
        {
            "Final-Recipient": "rfc822; b@example.net",
            "Action": "failed",
            "Status": "5.4.7",
            "Remote-MTA": "dns; mx.example.net",
            "Diagnostic-Code": "smtp; 451 4.3.0 later",
            "Last-Attempt-Date": email.utils.formatdate(t0 + 1000),
        },
    ]


def test_report_fields_stay_ascii_and_the_header_part_keeps_its_line_ends() -> None:
    report = dsn.build_report(
        "mx.example.test",
        "s@example.org",
        [dsn.ReportedRecipient("a@example.net", dsn.FAILED, "5.1.1", "550 5.1.1 caf\u00e9\x01")],
        b"Subject: x\r\nFrom: s@example.org\r\n\r\nbody\r\n",
        arrival=1_700_000_000,
        now=1_700_000_100,
    )
    assert max(report) < 0x80
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed.get_payload()[1].get_payload()[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 caf??"
    headers = parsed.get_payload()[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert headers.get_payload(decode=True) == b"Subject: x\r\nFrom: s@example.org\r\n"


def test_enqueue_fires_only_after_data_and_state_are_durable(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """Data then state, each written to tmp/, fsynced, renamed, its directory fsynced;
    the Deferred the MSA waits on for its 250 fires after the last of these."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    root = str(tmp_path / "spool")

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), root)))

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        events.append(("rename", f"{os.path.relpath(src, root)} {os.path.relpath(dst, root)}"))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    work: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

    def later(function: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        work.append((function, args, d))
        return d

    spool = Spool(root)
    spool.ensure()
    scheduler = Scheduler(
        spool,
        FakeTransport(),
        Policy("mail.example.test"),
        None,
        task.Clock(),
        later,  # type: ignore[arg-type]
    )
    done: list[str] = []
    scheduler.enqueue("s@example.test", ["a@example.net"], [MSG]).addCallback(done.append)
    assert done == [] and events == []
    function, args, d = work.pop()
    result = function(*args)
    assert done == []  # not before the disk work has returned
    d.callback(result)
    (queue_id,) = done
    steps = [(kind, re.sub(r"\.[0-9a-f]{8}", ".tmp", what)) for kind, what in events]
    assert steps == [
        ("fsync", f"tmp/{queue_id}.tmp"),
        ("rename", f"tmp/{queue_id}.tmp data/{queue_id}"),
        ("fsync", "data"),
        ("fsync", f"tmp/{queue_id}.tmp"),
        ("rename", f"tmp/{queue_id}.tmp state/{queue_id}"),
        ("fsync", "state"),
    ]


def test_overall_concurrency_limit(tmp_path: Any) -> None:
    h = Harness(str(tmp_path / "s"), max_deliveries=2, max_deliveries_per_domain=4)
    h.start()
    h.transport.hold = True
    for domain in ("one.example", "two.example", "three.example"):
        h.enqueue("s@example.test", [f"a@{domain}"])
    h.clock.advance(0)
    assert len(h.transport.calls) == 2  # the third waits for a free connection
    h.transport.held[0].callback({h.transport.calls[0][1][0]: OK})
    assert len(h.transport.calls) == 3
    h.scheduler.stop()


def test_notify_success_relayed_or_passed_on(h: Harness) -> None:
    """RFC 3461 §4.1/§5.2.2: NOTIFY=SUCCESS to a remote without DSN: we send a "relayed"
    report; to a remote that took the DSN parameters, it will report, we do not."""
    passed_on = Delivery(OK.result, OK.reply, OK.remote, dsn_passed_on=True)
    h.transport.script["a@example.net"] = [OK]
    h.transport.script["b@example.org"] = [passed_on]
    success = {"NOTIFY": "SUCCESS", "ORCPT": "rfc822;a@example.net"}
    h.enqueue(
        "alice@example.test",
        ["a@example.net", "b@example.org"],
        params={"ENVID": "E1"},
        rcpt_params={"a@example.net": success, "b@example.org": {"NOTIFY": "SUCCESS"}},
    )
    h.clock.advance(0)
    ((mail_from, rcpts, report),) = h.local
    assert (mail_from, rcpts) == ("", ["alice@example.test"])
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed["Subject"] == "Successful Mail Delivery Report (relayed)"
    per_message, per_rcpt = parsed.get_payload()[1].get_payload()
    assert per_message["Original-Envelope-Id"] == "E1"
    assert dict(per_rcpt.items()) == {
        "Original-Recipient": "rfc822; a@example.net",
        "Final-Recipient": "rfc822; a@example.net",
        "Action": "relayed",
        "Status": "2.0.0",
        "Remote-MTA": "dns; mx.example.net",
        "Diagnostic-Code": "smtp; 250 2.0.0 ok",
        "Last-Attempt-Date": email.utils.formatdate(h.clock.seconds()),
    }
    assert h.spool.ids() == []


def test_a_broken_attempt_waits_instead_of_looping(h: Harness) -> None:
    h.transport.hold = True
    queue_id = h.enqueue("s@example.test", ["a@example.net"])
    os.unlink(os.path.join(h.spool.data, queue_id))  # removed behind the queue's back
    errors: list[Any] = []
    observer = errors.append
    globalLogPublisher.addObserver(observer)
    try:
        h.clock.advance(0)
        h.clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(observer)
    failures = [e for e in errors if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(FileNotFoundError)
    entry = h.scheduler.entries[queue_id]
    assert entry.next_attempt == h.clock.seconds() + 300
    assert h.transport.calls == []


def test_stopped_while_the_spool_is_read_it_starts_no_timer(tmp_path: Any) -> None:
    """A server stopped at once after it started (the spool still being read in a
    thread) leaves no scan timer behind once the reading ends."""
    h = Harness(str(tmp_path / "spool"))
    reads: list[defer.Deferred[Any]] = []

    def slow(function: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        reads.append(d)
        d.addCallback(lambda _: function(*args))
        return d

    h.scheduler = Scheduler(h.spool, h.transport, h.policy, h.local_deliver, h.clock, slow)
    started = defer.ensureDeferred(h.scheduler.start())
    h.scheduler.stop()
    while reads:
        reads.pop(0).callback(None)
    h.result(started)
    assert h.clock.getDelayedCalls() == []
