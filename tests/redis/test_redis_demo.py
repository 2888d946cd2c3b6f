"""Run the multi-process demo (examples/redis_jobs.py) on each backend, against
a redis-server started by the test, and once against a 3-primary Cluster.

Each run is small (300 jobs, 2 API processes, 3 workers, the first run of 3
jobs stuck past the re-submission deadline), and one worker is SIGKILLed while
it holds jobs; the demo's summary must account for every job. How many jobs are
re-submitted, and how many late results come back, depends on where the stuck
and the killed jobs ran and on the machine's load (a loaded machine makes some
jobs slower than the deadline), so only bounds are asserted: no more late
results than re-submissions (the demo checks that itself too).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.redis

DEMO = Path(__file__).resolve().parents[2] / "examples" / "redis_jobs.py"
JOBS = 300

UVLOOP = pytest.param(
    "asyncio+uvloop",
    marks=pytest.mark.skipif(
        sys.platform == "win32", reason="uvloop does not support Windows"
    ),
)


def run_demo(url: str, backend: str, *options: str) -> dict[str, str]:
    """Run the demo; return its summary's rows once it has passed."""
    result = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            f"--url={url}",
            f"--backend={backend}",
            f"--jobs={JOBS}",
            "--api=2",
            "--workers=3",
            "--seed=11",
            # Well within the test's timeout, so that the demo reports (and
            # stops its processes) rather than being killed.
            "--time-limit=120",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = dict(re.findall(r"^\s+([a-z -]+?)\s+: (.*)$", result.stdout, re.M))
    assert summary["result"] == "OK", output
    assert summary["backend"] == backend
    assert summary["answered"] == str(JOBS)
    assert summary["lost"] == "0"
    assert summary["wrong"] == "0"
    assert summary["delivered twice"] == "0"
    assert summary["left in redis"] == "0 keys"
    # A worker was killed while it held jobs, and each of them was answered
    # (by another worker after a re-submission, or by itself just before).
    assert summary["killed"].startswith("worker "), output
    held = re.fullmatch(
        r"(\d+) jobs held by the killed worker \((\d+) answered by another after "
        r"a re-submission, (\d+) by it before it died\)",
        summary["in flight"],
    )
    assert held is not None, summary["in flight"]
    in_flight, by_another, by_itself = map(int, held.groups())
    assert in_flight >= 1
    assert by_another + by_itself == in_flight
    resubmitted = int(summary["re-submitted"].split()[0])
    late = int(summary["late results"].split()[0])
    assert by_another <= resubmitted
    assert late <= resubmitted
    return summary


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["asyncio", UVLOOP, "trio"])
def test_demo_answers_every_job_when_a_worker_dies(
    redis_server: RedisServer, backend: str
) -> None:
    summary = run_demo(redis_server.url(), backend)
    assert "(Cluster)" not in summary["redis"]


@pytest.mark.timeout(180)
def test_demo_on_a_cluster(redis_cluster: RedisCluster) -> None:
    summary = run_demo(redis_cluster.url(), "trio", "--cluster")
    assert "(Cluster)" in summary["redis"]
