"""The queue's brain: when to try each message, with what limits, and what to report.

Everything here runs on the reactor thread; disk work goes through ``run_blocking``
(``deferToThread`` in the server, a synchronous call in tests with a fake clock), and
network work through the transport.

Exactly once per recipient: a recipient's state is written (durably) after every
attempt, before anything else happens to the entry, and an entry leaves the spool only
when every recipient is delivered or failed and reported. A report to a remote sender is
itself a queue entry with an id derived from its parent's (``<id>R<n>``), created before
the parent's state records it and started only after; after a crash the same id is
found again and the report is not queued twice.
"""

from __future__ import annotations

import datetime
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from mailserver.queue import dsn
from mailserver.queue.spool import DELIVERED, FAILED, PENDING, Entry, RecipientState, Spool, new_id
from mailserver.queue.transport import Delivery
from mailserver.smtp.client import OutboundMessage, OutboundRecipient, Result, describe

log = Logger()


class LocalDeliver(Protocol):
    """Delivers a report to a local sender (``MDA.deliver``); ``unique`` names the
    delivery so that repeating it after a crash stores nothing twice."""

    def __call__(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        session_id: str,
        unique: str | None = None,
    ) -> defer.Deferred[Any]: ...


RunBlocking = Callable[..., "defer.Deferred[Any]"]

_NOTIFY = {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
# Envelope values go into SMTP commands: no controls, no spaces (RFC 5321 §4.1.2).
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def format_time(seconds: float) -> str:
    """A time for the log: UTC, to the second."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Transport(Protocol):
    def deliver(
        self, domain: str, message: OutboundMessage, queue_id: str
    ) -> defer.Deferred[dict[str, Delivery]]: ...


@dataclass(frozen=True)
class Policy:
    hostname: str
    local_domains: tuple[str, ...] = ()
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0
    max_deliveries: int = 20
    max_deliveries_per_domain: int = 4
    scan_interval: float = 60.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt: doubling from
        min_backoff, at most max_backoff (as Postfix's queue manager does)."""
        return min(self.max_backoff, self.min_backoff * 2 ** max(0, attempts - 1))


def parse_notify(value: str | None) -> list[str] | None:
    """RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY."""
    if value is None:
        return None
    keywords = [k.strip().upper() for k in value.split(",") if k.strip()]
    if not keywords or not set(keywords) <= _NOTIFY or ("NEVER" in keywords and len(keywords) > 1):
        raise ValueError(f"bad NOTIFY {value!r}")
    return keywords


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        transport: Transport,
        policy: Policy,
        local_deliver: LocalDeliver,
        clock: Any,
        run_blocking: RunBlocking,
    ) -> None:
        self.spool = spool
        self.transport = transport
        self.policy = policy
        self.local_deliver = local_deliver
        self.clock = clock
        self.run_blocking = run_blocking
        self.entries: dict[str, Entry] = {}
        self._busy: set[str] = set()
        self._delete_after: set[str] = set()
        self._all = defer.DeferredSemaphore(policy.max_deliveries)
        self._per_domain: dict[str, defer.DeferredSemaphore] = defaultdict(
            lambda: defer.DeferredSemaphore(policy.max_deliveries_per_domain)
        )
        self._timer: Any = None
        self._scanner: task.LoopingCall | None = None
        self._running = False

    # Life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover the spool, load its entries, start the timers."""
        self._running = True
        removed = await self.run_blocking(self.spool.recover)
        for name in removed:
            log.info("queue: removed incomplete spool file {name}", name=name)
        ids = await self.run_blocking(self.spool.ids)
        for queue_id in ids:
            try:
                entry = await self.run_blocking(self.spool.load, queue_id)
            except (OSError, ValueError, TypeError) as e:
                log.error("queue: cannot read entry {id}: {error}", id=queue_id, error=e)
                continue
            self.entries[entry.id] = entry
        for entry in list(self.entries.values()):
            if entry.finished() or any(
                r.status != PENDING and not r.reported for r in entry.recipients
            ):
                await self._finish(entry)  # what a crash left undone: reports, removal
        log.info("queue: {count} entries in the spool", count=len(self.entries))
        if not self._running:
            return  # stopped while the spool was read: no timer may outlive the service
        self._scanner = task.LoopingCall(self.scan)
        self._scanner.clock = self.clock
        self._scanner.start(self.policy.scan_interval, now=False)
        self._wake()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._scanner is not None and self._scanner.running:
            self._scanner.stop()

    # Intake -----------------------------------------------------------------------------
    def enqueue(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        params: Mapping[str, str | None] | None = None,
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> defer.Deferred[str]:
        """Spool a message durably; fires with its queue id once it is on disk."""
        return defer.ensureDeferred(
            self._enqueue(mail_from, recipients, chunks, params or {}, rcpt_params or {})
        )

    async def _enqueue(
        self,
        mail_from: str,
        recipients: Sequence[str],
        chunks: Sequence[bytes],
        params: Mapping[str, str | None],
        rcpt_params: Mapping[str, Mapping[str, str | None]],
    ) -> str:
        if not recipients:
            raise ValueError("no recipients")
        for value in [mail_from, *recipients, params.get("ENVID") or ""] + [
            p.get("ORCPT") or "" for p in rcpt_params.values()
        ]:
            if _UNSAFE.search(value):
                raise ValueError(f"control character or space in {value!r}")
        ret = params.get("RET")
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            raise ValueError(f"bad RET {ret!r}")  # RFC 3461 §4.3
        states = []
        for address in recipients:
            extra = rcpt_params.get(address, {})
            states.append(
                RecipientState(
                    address=address,
                    notify=parse_notify(extra.get("NOTIFY")),
                    orcpt=extra.get("ORCPT"),
                )
            )
        now = self.clock.seconds()
        entry = Entry(
            id=new_id(),
            mail_from=mail_from,
            recipients=states,
            created=now,
            next_attempt=now,
            size=sum(len(c) for c in chunks),
            ret=ret.upper() if ret else None,
            envid=params.get("ENVID"),
            smtputf8="SMTPUTF8" in params,
        )
        await self.run_blocking(self.spool.create, entry, list(chunks))
        log.info(
            "queue {id} accepted from <{sender}> to {count} recipients, {size} bytes",
            id=entry.id,
            sender=mail_from,
            count=len(states),
            size=entry.size,
        )
        self._admit(entry)
        return entry.id

    def _admit(self, entry: Entry) -> None:
        self.entries[entry.id] = entry
        self._wake()

    # Requests ---------------------------------------------------------------------------
    async def scan(self) -> None:
        """Carry out what ``mailserver queue`` asked for."""
        requests = await self.run_blocking(self.spool.take_requests)
        now = self.clock.seconds()
        for action, queue_id in requests:
            log.info("queue: request {action} {id}", action=action, id=queue_id)
            if action == "flush":
                for entry in self.entries.values():
                    entry.next_attempt = now
            elif action == "retry" and queue_id in self.entries:
                self.entries[queue_id].next_attempt = now
            elif action == "delete" and queue_id in self.entries:
                if queue_id in self._busy:
                    self._delete_after.add(queue_id)
                else:
                    await self._remove(queue_id)
        self._wake()

    # Timing -----------------------------------------------------------------------------
    def _wake(self) -> None:
        """Set the timer for the earliest entry due that is not being tried already."""
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        due = [
            e.next_attempt for e in self.entries.values() if e.id not in self._busy and e.pending()
        ]
        if due:
            delay = max(0.0, min(due) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._run_due)

    def _run_due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        for entry in list(self.entries.values()):
            if entry.id not in self._busy and entry.pending() and entry.next_attempt <= now:
                self._busy.add(entry.id)
                d = defer.ensureDeferred(self._attempt(entry))
                d.addErrback(self._attempt_failed, entry)
                d.addBoth(self._attempt_done, entry)
        self._wake()

    def _attempt_failed(self, failure: Any, entry: Entry) -> None:
        """An attempt broke (a spool file unreadable, a bug): log it and wait as after a
        failed delivery, rather than trying again at once, in a loop."""
        log.failure("queue {id} attempt", failure, id=entry.id)
        entry.next_attempt = self.clock.seconds() + self.policy.backoff(entry.attempts + 1)

    def _attempt_done(self, _: Any, entry: Entry) -> None:
        self._busy.discard(entry.id)
        if entry.id in self._delete_after:
            self._delete_after.discard(entry.id)
            d = defer.ensureDeferred(self._remove(entry.id))
            d.addErrback(lambda f: log.failure("queue {id} delete", f, id=entry.id))
        self._wake()

    # One attempt ------------------------------------------------------------------------
    async def _attempt(self, entry: Entry) -> None:
        chunks = await self.run_blocking(self.spool.read_data, entry.id)
        groups: dict[str, list[RecipientState]] = defaultdict(list)
        for rcpt in entry.pending():
            groups[rcpt.address.rpartition("@")[2].lower()].append(rcpt)
        message = OutboundMessage(
            mail_from=entry.mail_from,
            recipients=(),
            chunks=tuple(chunks),
            ret=entry.ret,
            envid=entry.envid,
            smtputf8=entry.smtputf8,
        )
        saving = defer.DeferredLock()
        tried: list[RecipientState] = []

        async def one_domain(domain: str, rcpts: list[RecipientState]) -> None:
            results = await self._deliver_group(domain, rcpts, message, entry.id)
            now = self.clock.seconds()
            for address, delivery in results.items():
                tried.extend(self._record(entry, address, delivery, now))
            # Saved as soon as this domain is done: what it settled is not tried again
            # after a crash, however long the message's other domains take.
            await saving.run(self.run_blocking, self.spool.save, entry)

        await defer.gatherResults(
            [defer.ensureDeferred(one_domain(d, r)) for d, r in groups.items()],
            consumeErrors=True,
        )
        now = self.clock.seconds()
        entry.attempts += 1
        pending = entry.pending()
        if pending and now - entry.created >= self.policy.max_lifetime:
            # RFC 5321 §4.5.4.1: give up after the lifetime; RFC 3463 4.4.7: expired.
            for rcpt in pending:
                rcpt.status = FAILED
                rcpt.status_code = "4.4.7"
                rcpt.diagnostic = rcpt.diagnostic or "delivery time expired"
                rcpt.reported = not self._wants(entry, rcpt, dsn.FAILED)
        elif pending:
            entry.next_attempt = now + self.policy.backoff(entry.attempts)
        for rcpt in tried:
            self._log_attempt(entry, rcpt, now)
        await self._finish(entry, chunks)

    def _log_attempt(self, entry: Entry, rcpt: RecipientState, now: float) -> None:
        """One line per recipient and attempt: where it went, what was said, what next."""
        if rcpt.status == PENDING:
            delay = entry.next_attempt - now
            outcome = f"deferred, next try {format_time(entry.next_attempt)} (in {delay:.0f}s)"
        elif rcpt.status == FAILED:
            outcome = "expired, bounced" if rcpt.status_code == "4.4.7" else "failed, bounced"
        else:
            outcome = "delivered"
        log.info(
            "queue {id} to <{rcpt}> via {remote}: {reply}; attempt {attempt}: {outcome}",
            id=entry.id,
            rcpt=rcpt.address,
            remote=rcpt.remote or "no connection",
            reply=rcpt.diagnostic,
            attempt=entry.attempts,
            outcome=outcome,
        )

    def _deliver_group(
        self,
        domain: str,
        rcpts: list[RecipientState],
        message: OutboundMessage,
        queue_id: str,
    ) -> defer.Deferred[dict[str, Delivery]]:
        """Deliver to one domain within the per-domain and overall connection limits; a
        slow domain holds only its own slots."""
        message = replace(
            message,
            recipients=tuple(
                OutboundRecipient(
                    r.address, tuple(r.notify) if r.notify is not None else None, r.orcpt
                )
                for r in rcpts
            ),
        )
        per_domain = self._per_domain[domain]

        def in_overall(_: Any) -> defer.Deferred[dict[str, Delivery]]:
            return self._all.run(self.transport.deliver, domain, message, queue_id)

        d = per_domain.acquire()
        d.addCallback(in_overall)

        def release(result: Any) -> Any:
            per_domain.release()
            return result

        d.addBoth(release)
        return d

    def _record(
        self, entry: Entry, address: str, delivery: Delivery, now: float
    ) -> list[RecipientState]:
        """Note what became of ``address``; returns its pending states it settled."""
        recorded = []
        for rcpt in entry.recipients:
            if rcpt.address != address or rcpt.status != PENDING:
                continue
            recorded.append(rcpt)
            reply = delivery.reply
            rcpt.last_attempt = now
            rcpt.diagnostic = describe(reply)
            rcpt.status_code = reply.enhanced or f"{reply.code // 100}.0.0"
            rcpt.remote = delivery.remote
            if delivery.result is Result.DELIVERED:
                rcpt.status = DELIVERED
                # RFC 3461 §5.2.2: a remote without DSN support: we report "relayed".
                rcpt.reported = delivery.dsn_passed_on or not self._wants(entry, rcpt, dsn.RELAYED)
            elif delivery.result is Result.PERMANENT:
                rcpt.status = FAILED
                rcpt.reported = not self._wants(entry, rcpt, dsn.FAILED)
        return recorded

    def _wants(self, entry: Entry, rcpt: RecipientState, action: str) -> bool:
        # RFC 3464 §2 / RFC 5321 §4.5.5: never a report about a report (null sender).
        return bool(entry.mail_from) and dsn.wants(rcpt.notify, action)

    # Reports and bookkeeping ------------------------------------------------------------
    async def _finish(self, entry: Entry, chunks: Sequence[bytes] | None = None) -> None:
        """Send the reports due, then save the entry, or remove it when it is done."""
        now = self.clock.seconds()
        policy = self.policy
        due: dict[str, list[RecipientState]] = {
            dsn.FAILED: [r for r in entry.recipients if r.status == FAILED and not r.reported],
            dsn.RELAYED: [r for r in entry.recipients if r.status == DELIVERED and not r.reported],
            dsn.DELAYED: [],
        }
        if policy.delay_warning and now - entry.created >= policy.delay_warning:
            for rcpt in entry.pending():
                if not rcpt.delay_reported:
                    rcpt.delay_reported = True
                    if self._wants(entry, rcpt, dsn.DELAYED):
                        due[dsn.DELAYED].append(rcpt)
        new_reports: list[Entry] = []
        for action, rcpts in due.items():
            if not rcpts:
                continue
            if chunks is None:
                chunks = await self.run_blocking(self.spool.read_data, entry.id)
            report = dsn.build_report(
                policy.hostname,
                entry.mail_from,
                [self._reported(entry, r, action) for r in rcpts],
                b"".join(chunks),
                arrival=entry.created,
                now=now,
                envid=entry.envid,
                ret=entry.ret,
                utf8=entry.smtputf8,
            )
            new = await self._send_report(entry, report, action)
            if new is not None:
                new_reports.append(new)
            for rcpt in rcpts:
                rcpt.reported = True
        if entry.finished():
            await self._remove(entry.id)
        else:
            await self.run_blocking(self.spool.save, entry)
        for new in new_reports:
            self._admit(new)  # only now that the parent's state says it was sent

    def _reported(self, entry: Entry, rcpt: RecipientState, action: str) -> dsn.ReportedRecipient:
        status = rcpt.status_code or "4.0.0"
        if action == dsn.FAILED and status.startswith("4."):
            # RFC 3464 §2.3.4: "failed" goes with a permanent (5.x.x) status; so an
            # expired message (4.4.7 while it was retried) is reported as 5.4.7.
            status = "5" + status[1:]
        elif action == dsn.RELAYED:
            status = "2.0.0"
        return dsn.ReportedRecipient(
            address=rcpt.address,
            action=action,
            status=status,
            diagnostic=rcpt.diagnostic,
            remote_mta=rcpt.remote.partition(" [")[0],
            orcpt=rcpt.orcpt,
            last_attempt=rcpt.last_attempt,
            will_retry_until=(
                entry.created + self.policy.max_lifetime if action == dsn.DELAYED else 0.0
            ),
        )

    async def _send_report(self, entry: Entry, report: bytes, action: str) -> Entry | None:
        """Deliver a report to the sender: locally, or as a new queue entry (returned, to
        be admitted once the parent's state is saved)."""
        entry.reports += 1
        # Numbered by the parent's saved count: a report sent again after a crash gets
        # the same id, which the spool, or the store for a local one, recognises.
        report_id = f"{entry.id}R{entry.reports}"
        sender = entry.mail_from
        domain = sender.rpartition("@")[2].lower()
        log.info(
            "queue {id}: {action} report to <{sender}>", id=entry.id, action=action, sender=sender
        )
        if domain in self.policy.local_domains:
            # The parent's state says the report was sent only once it is saved, after
            # this: a crash in between sends it again, under the same Maildir name.
            unique = f"{int(entry.created)}.{report_id}"
            try:
                await self.local_deliver("", [sender], [report], f"dsn-{entry.id}", unique=unique)
            except Exception as e:
                log.error(
                    "queue {id}: report to <{sender}> lost: {error}",
                    id=entry.id,
                    sender=sender,
                    error=e,
                )
            return None
        now = self.clock.seconds()
        report_entry = Entry(
            id=report_id,
            mail_from="",
            recipients=[RecipientState(address=sender)],
            created=now,
            next_attempt=now,
            size=len(report),
            smtputf8=entry.smtputf8,
        )
        created = await self.run_blocking(self.spool.create, report_entry, [report])
        if not created:
            return None  # queued before a crash; loaded from the spool already
        return report_entry

    async def _remove(self, queue_id: str) -> None:
        self.entries.pop(queue_id, None)
        await self.run_blocking(self.spool.remove, queue_id)
        log.info("queue {id}: removed", id=queue_id)
