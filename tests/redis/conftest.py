"""Fixtures of the tests of anyio_waitmap.redis: real Redis servers, started by
each test (redis_servers.py), and worker processes (worker_processes.py).

The server fixtures fail, never skip, when ``redis-server`` is missing:

- ``redis_server``: a non-persistent server for one test (function scope).
- ``persistent_redis_server``: a server that keeps its data across
  ``restart()`` and ``kill()`` (function scope).
- ``redis_server_factory``: starts as many servers as a test needs (function
  scope).
- ``redis_cluster``: a 3-primary cluster shared by the whole session.  Tests
  sharing it must use their own key prefixes and leave its nodes running.
- ``redis_cluster_factory``: private clusters, for tests that kill nodes or
  need replicas (function scope).

Every server is killed when its test ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Protocol

import pytest
from redis_servers import (
    RedisCluster,
    RedisNotInstalledError,
    RedisServer,
    redis_binaries,
)
from worker_processes import workers as workers


def _require_redis() -> None:
    try:
        redis_binaries()
    except RedisNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)


class RedisServerFactory(Protocol):
    """The type of the ``redis_server_factory`` fixture."""

    def __call__(
        self,
        *,
        persistent: bool = False,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> RedisServer: ...


class RedisClusterFactory(Protocol):
    """The type of the ``redis_cluster_factory`` fixture."""

    def __call__(
        self,
        primaries: int = 3,
        replicas_per_primary: int = 0,
        *,
        node_timeout_ms: int = 2000,
    ) -> RedisCluster: ...


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A non-persistent server for one test (function scope)."""
    _require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def persistent_redis_server() -> Iterator[RedisServer]:
    """A persistent server for one test (function scope)."""
    _require_redis()
    with RedisServer(persistent=True) as server:
        yield server


@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """Start servers on demand; all are killed after the test (function scope)."""
    _require_redis()
    with contextlib.ExitStack() as stack:

        def create(
            *,
            persistent: bool = False,
            password: str | None = None,
            extra_args: Sequence[str] = (),
        ) -> RedisServer:
            server = RedisServer(
                persistent=persistent, password=password, extra_args=extra_args
            )
            return stack.enter_context(server)

        yield create


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-primary cluster shared by the session (session scope).

    Tests sharing it must use distinct key prefixes and must not stop or kill
    its nodes; use ``redis_cluster_factory`` for that.
    """
    _require_redis()
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_factory() -> Iterator[RedisClusterFactory]:
    """Create clusters on demand; all are killed after the test (function scope)."""
    _require_redis()
    with contextlib.ExitStack() as stack:

        def create(
            primaries: int = 3,
            replicas_per_primary: int = 0,
            *,
            node_timeout_ms: int = 2000,
        ) -> RedisCluster:
            cluster = RedisCluster(
                primaries, replicas_per_primary, node_timeout_ms=node_timeout_ms
            )
            return stack.enter_context(cluster)

        yield create
