"""benchmarks/redis_handover.py runs each of its rows across processes.

``python3 dev.py bench --quick`` runs the whole script; these tests run each
row briefly, on every loop, against a server and a Cluster of the tests' own,
so that the suite shows which row broke. Its worker processes import the
package from the source tree, as every benchmark script does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from redis_servers import RedisCluster, RedisServer

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ["asyncio", "uvloop", "trio"]


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import redis_handover

        yield redis_handover
    finally:
        sys.path.remove(str(ROOT))


@pytest.fixture(scope="module")
def workers(bench: ModuleType) -> Iterator[list[Any]]:
    """Three worker processes, for the whole module."""
    started: list[Any] = []
    try:
        for _ in range(3):
            started.append(bench.Worker())
        yield started
    finally:
        for worker in started:
            worker.close()


def check_rows(bench: ModuleType, deploy: Any, workers: list[Any], loop: str) -> None:
    for row in bench.PING_PONG_ROWS:
        result = bench.ping_pong(deploy, workers, loop, row, 3, 1)
        assert len(result["samples"]) == 3, row
        assert result["hand_overs"] == 8
        calls, _ = bench.requests_of(row, result["commands"])
        # At least one request per hand-over: a PUBLISH, an LPUSH and a
        # BLPOP, or a script of ours.
        assert calls >= result["hand_overs"], (row, result["commands"])
    for row in bench.THROUGHPUT_ROWS:
        rates = bench.throughput(deploy, workers, loop, row, 2, 5)
        assert rates["delivered"] > 0, row
        assert rates["settled"] <= rates["delivered"], row


@pytest.mark.parametrize("loop", LOOPS)
def test_every_row_runs_on_redis(
    bench: ModuleType, workers: list[Any], redis_server: RedisServer, loop: str
) -> None:
    check_rows(bench, bench.Deploy("redis", redis_server, False), workers, loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_every_row_runs_on_a_cluster(
    bench: ModuleType, workers: list[Any], redis_cluster: RedisCluster, loop: str
) -> None:
    check_rows(bench, bench.Deploy("cluster", redis_cluster, True), workers, loop)


def test_parked_waiters_are_counted(
    bench: ModuleType, workers: list[Any], redis_server: RedisServer
) -> None:
    deploy = bench.Deploy("redis", redis_server, False)
    for row in ("raw_pubsub", "waitmap"):
        result = bench.parked(deploy, workers[0], row, 50)
        assert result["bytes_per_waiter"] > 0, row
        # One connection for raw pub/sub; ours: its commands, its doorbell.
        assert result["connections"] == (1 if row == "raw_pubsub" else 2), row


def test_the_profile_splits_the_time(
    bench: ModuleType, workers: list[Any], redis_server: RedisServer
) -> None:
    deploy = bench.Deploy("redis", redis_server, False)
    result = bench.ping_pong(deploy, workers, "asyncio", "waitmap", 3, 0, True)
    for seconds in result["profiles"]:
        assert seconds["coredis"] > 0
        assert seconds["anyio_waitmap"] > 0
