"""benchmarks/compare_reply.py runs every row it can, and skips the others
cleanly: a row whose server (nats-server, PostgreSQL) or client library is
missing is reported as skipped, with its reason, and the run still succeeds.

The script starts its own servers; this runs it with ``--quick`` (a few round
trips per row, timings meaningless) in a child process; and
benchmarks/compare_cancel.py likewise, whose RedisWaitMap rows lose nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compare_reply.py"

REDIS_ROWS = {"redis_pubsub", "redis_blpop", "redis_waitmap"}
ASYNCIO_ONLY_ROWS = {"nats_request", "pg_notify"}


@pytest.mark.timeout(180)
def test_quick_run_has_every_row_or_says_why_not(tmp_path: Path) -> None:
    report_path = tmp_path / "compare_reply.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    loops = report["loops"]
    skipped = report["skipped"]
    assert set(loops) == {"asyncio", "uvloop", "trio"}
    for loop, rows in loops.items():
        assert set(rows) >= REDIS_ROWS, (loop, rows)
        for name, row in rows.items():
            assert row["round_trips"] == report["iterations"], (loop, name)
            assert 0 < row["p50_us"] <= row["p99_us"], (loop, name, row)
    for name in ASYNCIO_ONLY_ROWS:
        assert name not in loops["trio"]
        ran = name in loops["asyncio"] and name in loops["uvloop"]
        assert ran != (name in skipped), (name, skipped)
        if name in skipped:
            assert f"skipped {name}: " in done.stdout, done.stdout


@pytest.mark.timeout(120)
def test_missing_servers_skip_their_rows_only(tmp_path: Path) -> None:
    report_path = tmp_path / "compare_reply.json"
    missing = str(tmp_path / "not-installed")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        env={**os.environ, "NATS_SERVER_BIN": missing, "POSTGRES_BIN": missing},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    for loop, rows in report["loops"].items():
        assert set(rows) == REDIS_ROWS, (loop, rows)
    for name in ASYNCIO_ONLY_ROWS:
        assert "is not a program" in report["skipped"][name], report["skipped"]
        assert f"skipped {name}: " in done.stdout, done.stdout


@pytest.mark.timeout(120)
def test_cancel_counts_lose_nothing_of_the_map(tmp_path: Path) -> None:
    report_path = tmp_path / "compare_cancel.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare_cancel.py"),
            "--quick",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    rows = report["counts"]
    assert len(rows) == 8, rows
    for row, counts in rows.items():
        assert sum(counts.values()) == report["trials"], (row, counts)
        if "RedisWaitMap" in row:
            assert "lost" not in counts, (row, counts)
