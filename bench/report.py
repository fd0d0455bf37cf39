"""Medians, ratios (ours / peer), the issue-7 targets and the printed table."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from bench.workloads import AIOSMTPD, OURS, PFDC, Workload

PEERS = (PFDC, AIOSMTPD)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def speedup(r: float | None, better: str) -> float | None:
    """How many times better ours is (> 1 = ours wins), from ours/peer."""
    if r is None:
        return None
    if better == "higher":
        return r
    return math.inf if r <= 0 else 1.0 / r


def aggregate(workload: Workload, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per metric: values of every round, medians, and the median of the per-round ratios
    (rounds alternate the servers, so round i of ours is paired with round i of a peer)."""
    metrics: dict[str, Any] = {}
    for m in workload.metrics:
        values = {srv: [m.value(r) for r in results] for srv, results in runs.items()}
        cpus = {srv: [m.cpu(r) for r in results] if m.cpu else [] for srv, results in runs.items()}
        entry: dict[str, Any] = {
            "label": m.label,
            "unit": m.unit,
            "better": m.better,
            "values": values,
            "median": {srv: median(v) for srv, v in values.items()},
            "cpu_op": m.op or None,
            "cpu_s_per_1000": {srv: median(v) for srv, v in cpus.items()},
            "ratio": {},
            "speedup": {},
        }
        for peer in PEERS:
            if peer not in values or OURS not in values:
                continue
            pairs = zip(values[OURS], values[peer], strict=False)
            r = median([ratio(a, b) for a, b in pairs])
            entry["ratio"][peer] = r
            entry["speedup"][peer] = speedup(r, m.better)
        metrics[m.key] = entry
    return metrics


@dataclass(frozen=True)
class Target:
    name: str
    group: str  # workload group (every workload of the group is judged)
    metric: str
    need: float  # ours must be at least this many times better than Postfix+Dovecot
    goal: str


TARGETS = (
    Target("SMTP ingest", "smtp", "accept", 2.0, ">= 2x"),
    Target("SMTP 250 -> IDLE EXISTS p50", "ttv", "ttv_p50", 50.0, "<= 1/50 of theirs"),
    Target("1 delivery fanned out to all IDLE sessions", "idle_imap", "fanout_max", 100.0,
           "<= 1/100 of their time"),
    Target("memory (PSS) per idle IMAP session", "idle_imap", "pss", 5.0, "<= 1/5 of Dovecot's"),
    Target("IMAP LOGIN+SELECT (cold)", "imap", "login_select_cold", 1.0, ">= 1x"),
    Target("IMAP LOGIN+SELECT (warm)", "imap", "login_select_warm", 1.0, ">= 1x"),
    Target("UID FETCH 1:* (UID FLAGS RFC822.SIZE)", "imap", "fetch_meta", 1.0, ">= 1x"),
    Target("STORE 1:* +FLAGS", "imap", "store", 1.0, ">= 1x"),
    Target("SEARCH", "imap", "search", 1.0, ">= 1x"),
    Target("POP3 STAT", "pop3", "stat", 1.0, ">= 1x"),
    Target("POP3 UIDL", "pop3", "uidl", 1.0, ">= 1x"),
    Target("POP3 RETR", "pop3", "retr", 1.0, ">= 1x"),
)  # fmt: skip


def judge(workloads: list[Workload], results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        for w in workloads:
            if w.group != t.group or w.name not in results:
                continue
            m = results[w.name]["metrics"].get(t.metric)
            ours = m["median"].get(OURS) if m else None
            theirs = m["median"].get(PFDC) if m else None
            s = m["speedup"].get(PFDC) if m else None
            entry: dict[str, Any] = {
                "target": t.name,
                "workload": w.name,
                "metric": t.metric,
                "goal": t.goal,
                "need_speedup": t.need,
                "ours": ours,
                "postfix_dovecot": theirs,
                "ratio": m["ratio"].get(PFDC) if m else None,
                "speedup": None if s is None or math.isinf(s) else s,
            }
            if s is None:
                entry["status"] = "not measurable" if ours is None else "no peer figure"
                entry["met"] = None
            else:
                entry["met"] = s >= t.need
                entry["status"] = "met" if entry["met"] else "missed"
                entry["of_goal"] = None if math.isinf(s) else s / t.need
            out.append(entry)
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(a)))
    return f"{x:.{min(decimals, 4)}f}"


def fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{fmt(x)}x"


def table_rows(workloads: list[Workload], results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for w in workloads:
        if w.name not in results:
            continue
        for key, m in results[w.name]["metrics"].items():
            rows.append(
                {
                    "workload": w.name,
                    "metric": key,
                    "label": m["label"],
                    "unit": m["unit"],
                    "better": m["better"],
                    **{f"{srv}": m["median"].get(srv) for srv in (OURS, *PEERS)},
                    **{f"ours/{peer}": m["ratio"].get(peer) for peer in PEERS},
                    "cpu_op": m["cpu_op"],
                    **{
                        f"cpu_s_per_1000/{srv}": m["cpu_s_per_1000"].get(srv)
                        for srv in (OURS, *PEERS)
                    },
                }
            )
    return rows


def render_table(rows: list[dict[str, Any]], peers: list[str]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = ["workload", "metric", "unit", "ours"]
    for peer in peers:
        head += [peer, f"ours/{peer}"]
    head += ["CPU s/1000 ops: ours"] + [peer for peer in peers] + ["op"]
    lines = [head]
    for r in rows:
        arrow = "↑" if r["better"] == "higher" else "↓"
        line = [r["workload"], f"{r['label']} {arrow}", r["unit"], fmt(r[OURS])]
        for peer in peers:
            line += [fmt(r.get(peer)), fmt_ratio(r.get(f"ours/{peer}"))]
        line.append(fmt(r.get(f"cpu_s_per_1000/{OURS}")))
        line += [fmt(r.get(f"cpu_s_per_1000/{peer}")) for peer in peers]
        line.append(r["cpu_op"] or "")
        lines.append(line)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = []
    for n, row in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def render_targets(verdicts: list[dict[str, Any]]) -> str:
    lines = [
        "| target | workload | goal | ours | Postfix+Dovecot | ours better by | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        if v["status"] in ("met", "missed"):
            by = "inf" if v["speedup"] is None else f"{fmt(v['speedup'])}x"
            verdict = (
                f"{v['status']} ({fmt(v['of_goal'])} of goal)" if v["of_goal"] else v["status"]
            )
        else:
            by, verdict = "n/a", v["status"]
        lines.append(
            f"| {v['target']} | {v['workload']} | {v['goal']} | {fmt(v['ours'])} | "
            f"{fmt(v['postfix_dovecot'])} | {by} | {verdict} |"
        )
    return "\n".join(lines)
