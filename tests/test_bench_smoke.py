"""The benchmark harness (bench/, ``make bench``) at tiny sizes against our server only:
no peers, no root, no profiler; it checks that the JSON report keeps its shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("BENCH_SHARED", os.path.join(ROOT, "..", "shared", "bench"))


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED, "load")), reason="no shared load generators"
)
def test_bench_tiny_ours_only(tmp_path) -> None:
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "tiny", "--peers", "none",
         "--profile", "none", "--shared", SHARED, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| workload" in done.stdout
    doc = json.loads(out.read_text())
    assert {"date", "machine", "scale", "rounds", "workloads", "table", "targets"} <= doc.keys()
    assert doc["scale"] == "tiny" and doc["peers"] == []
    assert {"nproc", "cpu_model"} <= doc["machine"].keys()
    expected = {"smtp_c10", "smtp_conn1", "ttv", "imap_100", "imap_300", "pop3_100"}
    assert expected | {"idle_imap", "idle_smtp"} == doc["workloads"].keys()
    for name, workload in doc["workloads"].items():
        assert workload["errors"] == {"ours": []}, name
        for key, metric in workload["metrics"].items():
            assert {"median", "ratio", "cpu_s_per_1000", "unit", "better"} <= metric.keys()
            if key != "search":  # not implemented in our server yet
                assert metric["median"]["ours"] is not None, (name, key)
    smtp = doc["workloads"]["smtp_c10"]
    assert smtp["runs"]["ours"][0]["verify"]["missing"] == 0
    assert smtp["metrics"]["accept"]["cpu_s_per_1000"]["ours"] is not None
    assert doc["workloads"]["ttv"]["metrics"]["ttv_p50"]["median"]["ours"] < 1000
    row = doc["table"][0]
    assert {
        "workload",
        "metric",
        "ours",
        "ours/postfix-dovecot",
        "cpu_s_per_1000/ours",
    } <= row.keys()


def test_smtp_path_measures_our_own_work_per_message() -> None:
    """bench.smtp_path: the real MTA driven in memory, at a few messages a mode."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.smtp_path", "--messages", "20", "--runs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.findall(r"^(.+): ([0-9.]+) µs a message", done.stdout, re.MULTILINE)
    assert [mode for mode, _ in found] == ["10 connections", "a connection a message"]
    assert all(float(took) > 0 for _, took in found), done.stdout


def test_the_quick_workloads_get_more_rounds_unless_told() -> None:
    from bench.run import rounds_of
    from bench.workloads import SCALES, workloads

    full = SCALES["full"]
    rounds = {w.name: rounds_of(w, full) for w in workloads(full)}
    assert rounds == {
        "smtp_c10": 5, "smtp_conn1": 5, "ttv": 3, "imap_10k": 5, "imap_100k": 3,
        "pop3_10k": 5, "idle_imap": 3, "idle_smtp": 3,
    }  # fmt: skip
    assert {rounds_of(w, full, override=2) for w in workloads(full)} == {2}
