"""``make bench``: our server side by side with Postfix + Dovecot and aiosmtpd (issue 7).

Starts every server on free loopback ports in a temporary directory, runs each workload
against each server (rounds alternate the order of the servers), prints one table of
medians and ratios (ours / peer) with the server CPU seconds per 1000 operations, judges
the issue-7 targets, optionally profiles our server on the workloads that miss one, and
writes everything to ``bench/results/latest.json``.  Every process it starts is stopped
on the way out, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import profiling, report
from bench.servers import (
    Aiosmtpd,
    Endpoint,
    OurServer,
    PostfixDovecot,
    ServerError,
    reset_mailbox,
)
from bench.workloads import AIOSMTPD, OURS, PFDC, SCALES, Scale, Workload, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "latest.json")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg()[0],
    }


def versions() -> dict[str, str]:
    out = {}
    for name, argv in (
        ("postfix", ["postconf", "-h", "mail_version"]),
        ("dovecot", ["dovecot", "--version"]),
    ):
        try:
            out[name] = subprocess.run(
                argv, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import aiosmtpd

        out["aiosmtpd"] = aiosmtpd.__version__
    except ImportError:
        pass
    return out


def run_generator(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run one generator; its result is the last JSON line it printed."""
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    result: dict[str, Any] = {}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    result["exit_status"] = done.returncode
    result["generator_s"] = round(time.monotonic() - t0, 3)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        result["error"] = f"exit status {done.returncode}: " + " | ".join(tail)
    return result


def rounds_of(w: Workload, scale: Scale, override: int = 0) -> int:
    """A workload's rounds: ``--rounds`` if given, else its own or the scale's."""
    return override or w.rounds or scale.rounds


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale = SCALES[args.scale]
        self.rounds = args.rounds or self.scale.rounds
        self.workloads = [w for w in workloads(self.scale) if self._selected(w)]
        self.workdir = tempfile.mkdtemp(prefix="mailserver-bench.")
        self.trash = os.path.join(self.workdir, "trash")  # see reset_mailbox
        self.ours = OurServer(os.path.join(self.workdir, "ours"), args.our_passwd)
        self.peers: dict[str, PostfixDovecot | Aiosmtpd] = {}
        if PFDC in args.peers:
            self.peers[PFDC] = PostfixDovecot(os.path.join(self.workdir, PFDC), args.shared)
        if AIOSMTPD in args.peers:
            self.peers[AIOSMTPD] = Aiosmtpd(os.path.join(self.workdir, AIOSMTPD), args.shared)
        self.endpoints: dict[str, Endpoint] = {}
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def _selected(self, w: Workload) -> bool:
        only = self.args.only
        return not only or any(w.name.startswith(prefix) for prefix in only)

    # Servers ---------------------------------------------------------------------------
    def start(self) -> None:
        log(f"work directory {self.workdir}")
        self.endpoints[OURS] = self.ours.start()
        log(f"ours: twistd pid {self.endpoints[OURS].pid_arg}, ports {self.ours.ports}")
        for name, peer in self.peers.items():
            log(f"{name}: starting (installs its packages on first use)")
            self.endpoints[name] = peer.start()
            ep = self.endpoints[name]
            ports = f"smtp {ep.smtp_port} imap {ep.imap_port} pop3 {ep.pop3_port}"
            log(f"{name}: pids {ep.pid_arg}, {ports}")

    def stop(self) -> None:
        for name, peer in self.peers.items():
            try:
                peer.stop()
            except (ServerError, OSError, subprocess.SubprocessError) as e:
                log(f"{name}: stop failed: {e}")
        self.ours.stop()
        if not self.args.keep:
            subprocess.run(["rm", "-rf", self.workdir], check=False)
        else:
            log(f"kept {self.workdir}")

    # Workloads -------------------------------------------------------------------------
    def run_once(self, w: Workload, server: str, restart: bool = True) -> dict[str, Any]:
        if server == OURS and w.fresh_ours and restart:
            self.endpoints[OURS] = self.ours.restart()
        ep = self.endpoints[server]
        for address in w.mailboxes:
            reset_mailbox(ep.user_maildir(address), self.trash)
        result = run_generator(w.build(ep, self.args.load), w.timeout)
        for address in w.mailboxes:  # leave no 100k-message mailbox behind
            reset_mailbox(ep.user_maildir(address), self.trash)
        return result

    def rounds_of(self, w: Workload) -> int:
        return rounds_of(w, self.scale, self.args.rounds)

    @property
    def total_rounds(self) -> int:
        return max((self.rounds_of(w) for w in self.workloads), default=self.rounds)

    def rounds_loop(self) -> None:
        servers = [OURS, *self.peers]
        for r in range(self.total_rounds):
            k = r % len(servers)
            order = servers[k:] + servers[:k]  # alternate who goes first
            for w in self.workloads:
                if r >= self.rounds_of(w):
                    continue
                for server in order:
                    if server not in w.servers:
                        continue
                    result = self.run_once(w, server)
                    self.runs.setdefault(w.name, {}).setdefault(server, []).append(result)
                    self._progress(r, w, server, result)

    def _progress(self, r: int, w: Workload, server: str, result: dict[str, Any]) -> None:
        shown = []
        for m in w.metrics[:3]:
            shown.append(f"{m.key}={report.fmt(m.value(result))}{m.unit}")
        err = f"  ERROR {result['error']}" if "error" in result else ""
        took = result.get("generator_s", 0)
        head = f"[round {r + 1}/{self.rounds_of(w)}] {w.name:<11} {server:<16}"
        log(f"{head} {' '.join(shown)} ({took:.1f}s){err}")

    # Profiles --------------------------------------------------------------------------
    def profile(self, verdicts: list[dict[str, Any]], out_dir: str) -> dict[str, Any]:
        missed = {v["workload"] for v in verdicts if v["met"] is False}
        if self.args.profile_all:
            missed = {w.name for w in self.workloads}
        profiles: dict[str, Any] = {}
        if not missed:
            return profiles
        if profiling.py_spy() is None:
            log("py-spy not found: no profiles")
            return {"error": "py-spy not installed"}
        for w in self.workloads:
            if w.name not in missed:
                continue
            if w.fresh_ours:
                self.endpoints[OURS] = self.ours.restart()
            raw = os.path.join(out_dir, f"profile-{w.name}.txt")
            recorder = profiling.Recorder(self.endpoints[OURS].pids[0], raw)
            time.sleep(1.0)  # py-spy attaches
            try:
                result = self.run_once(w, OURS, restart=False)
            finally:
                recorder.stop()
            summary = profiling.summarize(raw) if os.path.exists(raw) else {"samples": 0}
            summary["raw"] = os.path.relpath(raw, ROOT)
            summary["run_error"] = result.get("error")
            profiles[w.name] = summary
            log(f"profiled {w.name}: {summary['samples']} samples -> {summary['raw']}")
        return profiles

    # Report ----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for w in self.workloads:
            if w.name not in self.runs:
                continue
            runs = self.runs[w.name]
            out[w.name] = {
                "title": w.title,
                "group": w.group,
                "params": w.params,
                "metrics": report.aggregate(w, runs),
                "errors": {s: [r["error"] for r in rs if "error" in r] for s, rs in runs.items()},
                "runs": runs,
            }
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default=os.environ.get("BENCH_SCALE", "full"),
        help="sizes: full (issue 7, ~10 min), small (< 1 min), tiny (smoke test)",
    )
    ap.add_argument("--rounds", type=int, default=0, help="override the scale's rounds")
    ap.add_argument(
        "--peers",
        default=os.environ.get("BENCH_PEERS", f"{PFDC},{AIOSMTPD}"),
        help="comma-separated peers to run, or 'none' (default: %(default)s)",
    )
    ap.add_argument(
        "--only", action="append", default=[], help="run only workloads with this prefix"
    )
    ap.add_argument(
        "--shared",
        default=os.environ.get("BENCH_SHARED", DEFAULT_SHARED),
        help="the shared bench folder (peers/ and load/)",
    )
    ap.add_argument(
        "--our-passwd",
        choices=("SHA512-CRYPT", "shipped"),
        default="SHA512-CRYPT",
        help="our users' hash scheme: the peer's (default) or the shipped etc/passwd",
    )
    ap.add_argument(
        "--profile",
        choices=("missed", "all", "none"),
        default=os.environ.get("BENCH_PROFILE", "missed"),
        help="py-spy our server on workloads that miss a target (default), all, none",
    )
    ap.add_argument("--out", default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    a = ap.parse_args(argv)
    a.peers = (
        [] if a.peers in ("", "none") else [p.strip() for p in a.peers.split(",") if p.strip()]
    )
    unknown = set(a.peers) - {PFDC, AIOSMTPD}
    if unknown:
        ap.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    a.load = os.path.join(a.shared, "load")
    if not os.path.isdir(a.load):
        ap.error(f"no load generators in {a.load} (use --shared)")
    if a.profile is None:
        a.profile = "missed" if a.scale == "full" else "none"
    a.profile_all = a.profile == "all"
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    doc: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "scale": args.scale,
        "rounds": bench.rounds,
        "rounds_by_workload": {w.name: bench.rounds_of(w) for w in bench.workloads},
        "peers": args.peers,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    interrupted = None
    try:
        bench.start()
        doc["servers"] = {
            name: {"pids": ep.pids, **ep.notes} for name, ep in bench.endpoints.items()
        }
        bench.rounds_loop()
        results = bench.results()
        verdicts = report.judge(bench.workloads, results)
        if args.profile != "none":
            doc["profiles"] = bench.profile(verdicts, out_dir)
    except KeyboardInterrupt:
        interrupted = "interrupted"
    except ServerError as e:
        interrupted = str(e)
    finally:
        bench.stop()
    results = bench.results()
    verdicts = report.judge(bench.workloads, results)
    rows = report.table_rows(bench.workloads, results)
    doc.update(
        versions=versions(),
        duration_s=round(time.monotonic() - t0, 1),
        workloads=results,
        table=rows,
        targets=verdicts,
    )
    doc.setdefault("profiles", {})
    if interrupted:
        doc["error"] = interrupted
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    peers = [p for p in (PFDC, AIOSMTPD) if p in args.peers]
    against = ", ".join(peers) or "no peers"
    more = sorted({w.name for w in bench.workloads if bench.rounds_of(w) != bench.rounds})
    rounds = f"{bench.rounds} rounds" + (
        f" ({bench.total_rounds} for {', '.join(more)})" if more else ""
    )
    print(f"\n## mailserver vs {against} ({args.scale}, {rounds}, medians;", end=" ")
    print("↑ higher is better, ↓ lower is better)\n")
    print(report.render_table(rows, peers))
    if PFDC in peers:
        print("\n## issue-7 targets (ours vs Postfix+Dovecot)\n")
        print(report.render_targets(verdicts))
    for name, p in doc["profiles"].items():
        if isinstance(p, dict) and p.get("self"):
            print(f"\n### where the time goes: {name} ({p['samples']} samples)")
            split = ", ".join(f"{k} {v}%" for k, v in p["threads_percent"].items())
            print(f"self time (busy samples: {split}):")
            for entry in p["self"][:6]:
                print(f"  {entry['percent']:5.1f}%  {entry['frame']}")
            print("innermost frame of our code (with what it calls):")
            for entry in p["mailserver_innermost"][:6]:
                print(f"  {entry['percent']:5.1f}%  {entry['frame']}")
    print(f"\nwrote {os.path.relpath(args.out)} in {doc['duration_s']} s")
    if interrupted:
        log(f"stopped early: {interrupted}")
        return 1
    failed = [w for w, r in results.items() if any(r["errors"].values())]
    if failed:
        log(f"workloads with errors: {', '.join(failed)} (see 'errors' in the JSON)")
    return 0
