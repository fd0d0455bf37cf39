"""The issue-7 workloads: which shared load generator, with which arguments, and which
figures of its JSON line we compare.

Every workload runs one shared generator (``../shared/bench/load``) as a subprocess with
``--server-pids``, so CPU and memory are charged to the server's own process tree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.servers import PASSWORD, Endpoint

ALICE = "alice@example.test"
BOB = "bob@example.test"
OURS = "ours"
PFDC = "postfix-dovecot"
AIOSMTPD = "aiosmtpd"

Result = dict[str, Any]
Getter = Callable[[Result], float | None]


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run (``--scale``)."""

    name: str
    rounds: int
    # Rounds of the workloads whose run takes seconds, not tens of them (SMTP ingest, IMAP
    # and POP3 on the smaller mailbox): more rounds steady their medians at little cost.
    quick_rounds: int
    smtp_msgs: int
    smtp_conn1_msgs: int
    ttv_mailbox: int
    ttv_samples: int
    ttv_gap: float
    imap_sizes: tuple[int, ...]
    fetch_bodies: int
    pop3_size: int
    pop3_retr: int
    idle_sessions: int
    timeout: float


SCALES = {
    # SMTP ingest sends 5,000 and 3,000 messages a run: runs of 1,000 and 2,000 (under a
    # second for us) measured the start of a run as much as its pace.
    "full": Scale(
        "full", 3, 5, 5000, 3000, 100, 20, 1.0, (10_000, 100_000), 1000, 10_000, 1000, 500, 1200
    ),
    "small": Scale("small", 1, 1, 200, 100, 50, 2, 1.0, (1000, 3000), 200, 1000, 100, 50, 300),
    "tiny": Scale("tiny", 1, 1, 20, 10, 20, 2, 0.2, (100, 300), 50, 100, 20, 5, 60),
}


def size_label(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def get(*path: str) -> Getter:
    """A getter for a (nested) key of a generator's JSON line."""

    def getter(result: Result) -> float | None:
        value: Any = result
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return getter


def per_1000(cpu: Getter, ops: Getter | float) -> Getter:
    """Server CPU seconds per 1000 operations."""

    def getter(result: Result) -> float | None:
        seconds = cpu(result)
        count = ops(result) if callable(ops) else ops
        if seconds is None or not count:
            return None
        return seconds * 1000.0 / count

    return getter


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    value: Getter
    cpu: Getter | None = None  # server CPU s per 1000 ops
    op: str = ""


@dataclass
class Workload:
    name: str
    title: str
    group: str
    servers: tuple[str, ...]
    metrics: tuple[Metric, ...]
    build: Callable[[Endpoint, str], list[str]]  # (endpoint, load dir) -> argv
    mailboxes: tuple[str, ...] = (ALICE, BOB)  # emptied before each run
    fresh_ours: bool = False  # restart our server first (memory figures)
    timeout: float = 600.0
    params: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None  # None: the scale's rounds


def _py(load: str, tool: str, *args: object) -> list[str]:
    return [sys.executable, os.path.join(load, tool), *map(str, args)]


def _imap(load: str, *args: object) -> list[str]:
    return _py(load, "imap_bench.py", *args)


def smtp_workload(name: str, title: str, msgs: int, per_conn: int, s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _py(
            load, "smtp_load.py", "--port", ep.smtp_port, "-c", 10, "-n", msgs, "-s", 4096,
            "--per-conn", per_conn, "--to", ALICE, "--verify-maildir", ep.maildir_root,
            "--server-pids", ep.pid_arg, "--label", name,
        )  # fmt: skip

    cpu = get("server_cpu_ms_per_msg_incl_drain")  # ms per message = s per 1000 messages
    return Workload(
        name, title, "smtp", (OURS, PFDC, AIOSMTPD),
        (
            Metric("accept", "accepted (250)", "msg/s", "higher", get("accept_msgs_per_s"), cpu,
                   "msg"),
            Metric("e2e", "visible in Maildir", "msg/s", "higher",
                   get("verify", "e2e_msgs_per_s")),
            Metric("txn_p50", "transaction p50", "ms", "lower", get("txn_ms_p50")),
        ),
        build, timeout=s.timeout, rounds=s.quick_rounds,
        params={"msgs": msgs, "per_conn": per_conn, "c": 10, "size": 4096},
    )  # fmt: skip


def ttv_workload(s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _imap(
            load, "--port", ep.imap_port, "--user", ALICE, "--password", PASSWORD,
            "-n", s.ttv_mailbox, "--fill", "maildir", "--maildir", ep.user_maildir(ALICE),
            "--fetch-body", 10, "--repeat", 1, "--smtp-port", ep.smtp_port,
            "--ttv", s.ttv_samples, "--ttv-gap", s.ttv_gap, "--server-pids", ep.pid_arg,
        )  # fmt: skip

    return Workload(
        "ttv", "SMTP 250 -> IMAP IDLE EXISTS", "ttv", (OURS, PFDC),
        (
            Metric("ttv_p50", "250 -> EXISTS p50", "ms", "lower", get("ttv_ms_p50")),
            Metric("ttv_p99", "250 -> EXISTS p99", "ms", "lower", get("ttv_ms_p99")),
            Metric("s2v_p50", "MAIL FROM -> EXISTS p50", "ms", "lower",
                   get("submit_to_visible_ms_p50")),
        ),
        build, timeout=s.timeout,
        params={"mailbox": s.ttv_mailbox, "samples": s.ttv_samples, "gap_s": s.ttv_gap},
    )  # fmt: skip


def imap_workload(n: int, s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _imap(
            load, "--port", ep.imap_port, "--user", ALICE, "--password", PASSWORD, "-n", n,
            "--fill", "maildir", "--maildir", ep.user_maildir(ALICE),
            "--fetch-body", s.fetch_bodies, "--ttv", 0, "--timeout", s.timeout,
            "--server-pids", ep.pid_arg,
        )  # fmt: skip

    lines = get("fetch_meta_lines")
    return Workload(
        f"imap_{size_label(n)}", f"IMAP on {n} messages", "imap", (OURS, PFDC),
        (
            Metric("login_select_cold", "LOGIN+SELECT cold", "ms", "lower",
                   get("login_select_cold_ms"),
                   per_1000(get("login_select_cold_server_cpu_s"), 1), "LOGIN+SELECT"),
            Metric("login_select_warm", "LOGIN+SELECT warm (median)", "ms", "lower",
                   get("login_select_warm_ms_median")),
            Metric("fetch_meta", "UID FETCH 1:* (UID FLAGS RFC822.SIZE)", "msg/s", "higher",
                   get("fetch_meta_msgs_per_s"), per_1000(get("fetch_meta_server_cpu_s"), lines),
                   "msg"),
            Metric("fetch_body", f"FETCH 1:{s.fetch_bodies} BODY.PEEK[]", "msg/s", "higher",
                   get("fetch_body_msgs_per_s"),
                   per_1000(get("fetch_body_server_cpu_s"), get("fetch_body_msgs")), "msg"),
            Metric("store", "STORE 1:* +FLAGS (\\Flagged)", "msg/s", "higher",
                   get("store_msgs_per_s")),
            Metric("search", "UID SEARCH HEADER Message-ID", "ms", "lower", get("search_ms"),
                   per_1000(get("search_server_cpu_s"), 1), "SEARCH"),
        ),
        build, mailboxes=(ALICE,), timeout=s.timeout, params={"messages": n},
        rounds=s.quick_rounds if n == min(s.imap_sizes) else None,
    )  # fmt: skip


def pop3_workload(n: int, s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _py(
            load, "pop3_bench.py", "--port", ep.pop3_port, "--user", BOB, "--password", PASSWORD,
            "-n", n, "--fill", "maildir", "--maildir", ep.user_maildir(BOB), "--retr", s.pop3_retr,
            "--server-pids", ep.pid_arg,
        )  # fmt: skip

    return Workload(
        f"pop3_{size_label(n)}", f"POP3 on {n} messages", "pop3", (OURS, PFDC),
        (
            Metric("login", "USER+PASS", "ms", "lower", get("login_ms")),
            Metric("stat", "STAT", "ms", "lower", get("stat_ms"),
                   per_1000(get("stat_server_cpu_s"), 1), "STAT"),
            Metric("uidl", "UIDL", "ms", "lower", get("uidl_ms"),
                   per_1000(get("uidl_server_cpu_s"), 1), "UIDL"),
            Metric("retr", f"RETR x{s.pop3_retr}", "msg/s", "higher", get("retr_msgs_per_s"),
                   per_1000(get("retr_server_cpu_s"), get("retr_msgs")), "msg"),
            Metric("dele_quit", "DELE all + QUIT", "s", "lower", get("dele_quit_s")),
        ),
        build, mailboxes=(BOB,), timeout=s.timeout, rounds=s.quick_rounds,
        params={"messages": n, "retr": s.pop3_retr},
    )  # fmt: skip


def idle_imap_workload(s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _py(
            load, "idle_conns.py", "--port", ep.imap_port, "--user", ALICE, "--password", PASSWORD,
            "-k", s.idle_sessions, "--server-pids", ep.pid_arg,
            "--notify-smtp-port", ep.smtp_port, "--notify-wait", 40,
        )  # fmt: skip

    opened = get("established")
    return Workload(
        "idle_imap", f"{s.idle_sessions} idle IMAP IDLE sessions", "idle_imap", (OURS, PFDC),
        (
            Metric("pss", "PSS per idle session", "KiB", "lower", get("pss_per_conn_kb")),
            Metric("rss", "RSS per idle session", "KiB", "lower", get("rss_per_conn_kb")),
            Metric("fanout_max", "1 delivery -> all sessions see EXISTS", "ms", "lower",
                   get("fanout_ms_max")),
            Metric("fanout_p50", "1 delivery -> EXISTS, p50 session", "ms", "lower",
                   get("fanout_ms_p50")),
            Metric("open", "open LOGIN+SELECT+IDLE", "session/s", "higher", get("open_per_s"),
                   per_1000(get("cpu_open", "server_cpu_s"), opened), "session"),
        ),
        build, mailboxes=(ALICE,), fresh_ours=True, timeout=s.timeout,
        params={"sessions": s.idle_sessions},
    )  # fmt: skip


def idle_smtp_workload(s: Scale) -> Workload:
    def build(ep: Endpoint, load: str) -> list[str]:
        return _py(
            load, "idle_conns.py", "--proto", "smtp", "--port", ep.smtp_port,
            "-k", s.idle_sessions, "--server-pids", ep.pid_arg,
        )  # fmt: skip

    return Workload(
        "idle_smtp", f"{s.idle_sessions} idle SMTP connections", "idle_smtp",
        (OURS, PFDC, AIOSMTPD),
        (
            Metric("pss", "PSS per idle connection", "KiB", "lower", get("pss_per_conn_kb")),
            Metric("rss", "RSS per idle connection", "KiB", "lower", get("rss_per_conn_kb")),
        ),
        build, mailboxes=(), fresh_ours=True, timeout=s.timeout,
        params={"connections": s.idle_sessions},
    )  # fmt: skip


def workloads(s: Scale) -> list[Workload]:
    return [
        smtp_workload("smtp_c10", "SMTP ingest, 4 KiB, 10 connections", s.smtp_msgs, 0, s),
        smtp_workload(
            "smtp_conn1", "SMTP ingest, 4 KiB, 1 connection per message", s.smtp_conn1_msgs, 1, s
        ),
        ttv_workload(s),
        *(imap_workload(n, s) for n in s.imap_sizes),
        pop3_workload(s.pop3_size, s),
        idle_imap_workload(s),
        idle_smtp_workload(s),
    ]
