"""RedisWaitMap when Redis fails: unreachable, frozen, disconnecting, refusing.

In one process, on each loop of the anyio_backend fixture (asyncio, asyncio
with uvloop, trio), against real servers that the tests start, stop, freeze
(SIGSTOP) or reconfigure. (Named test_redis_faults.py: tests/test_faults.py
has the basename test_faults, and tests/ is not a package.)
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from redis_servers import RedisServer, free_port, scan_all

from anyio_waitmap import KeyCancelled, NoMatch, Woke
from anyio_waitmap.redis import RedisUnavailable, RedisWaitMap
from anyio_waitmap.redis._layout import Layout

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [
    pytest.mark.redis,
    pytest.mark.anyio,
    # coredis 6.9 leaves the memory streams of a connection that failed to
    # connect unclosed; the map makes one at every retry while Redis is down.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function MemoryObject(Send|Receive)Stream"
        ".__del__:pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect what the test left, while its warning filters apply."""
    yield
    gc.collect()


NAME = "faults"
LAYOUT = Layout(NAME)
LEASE = 1.0


def open_map(
    server: RedisServer | str, timeout: float = 1.0, lease: float = LEASE
) -> RedisWaitMap[Any]:
    url = server if isinstance(server, str) else server.url()
    return RedisWaitMap.connect(url, name=NAME, lease=lease, timeout=timeout)


async def map_keys(server: RedisServer) -> list[bytes]:
    return await anyio.to_thread.run_sync(scan_all, server, LAYOUT.pattern())


async def settle(server: RedisServer) -> list[bytes]:
    """Wait until Redis holds no registration and no delivery of the map (only
    stored values); return its keys."""
    with anyio.fail_after(10):
        while True:
            keys = await map_keys(server)
            if all(key.endswith(b":v") for key in keys):
                return keys
            await anyio.sleep(0.02)


async def until_registered(server: RedisServer, count: int) -> None:
    with anyio.fail_after(10):
        while len(await map_keys(server)) < count:  # noqa: ASYNC110 (polls Redis)
            await anyio.sleep(0.01)


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """SIGSTOP the server for the block: it accepts connections and answers
    nothing."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@asynccontextmanager
async def down(server: RedisServer, how: str) -> AsyncIterator[None]:
    if how == "stopped":
        await anyio.to_thread.run_sync(server.stop)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(server.start)
    else:
        with frozen(server):
            yield


def operations(wm: RedisWaitMap[Any]) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "wake": lambda: wm.wake("k", "v"),
        "set": lambda: wm.set("k", "v"),
        "get": lambda: wm.get("k"),
        "pop": lambda: wm.pop("k", None),
        "cancel": lambda: wm.cancel("k"),
        "take": lambda: wm.take("k"),
        "wait": lambda: wm.wait("k"),
    }


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, through any exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


# -- Redis unreachable --------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["stopped", "frozen"])
async def test_operations_raise_redis_unavailable_within_the_timeout(
    redis_server: RedisServer, how: str
) -> None:
    timeout = 0.3
    async with open_map(redis_server, timeout=timeout) as wm:
        async with down(redis_server, how):
            for name, operation in operations(wm).items():
                started = anyio.current_time()
                with pytest.raises(RedisUnavailable) as caught:
                    await operation()
                took = anyio.current_time() - started
                assert isinstance(caught.value, ConnectionError)
                assert took < timeout + 0.5, (name, took)
        # Redis is back: the map works again, and the waits that failed (and
        # may have registered, frozen) have left nothing behind.
        with anyio.fail_after(10):
            while True:
                try:
                    assert isinstance(await wm.wake("k", "v"), NoMatch)
                    break
                except RedisUnavailable:
                    await anyio.sleep(0.05)
        await wm.set("k", "back")
        assert await wm.get("k") == "back"
        assert await settle(redis_server) == [LAYOUT.key("sk")[0].encode()]


@pytest.mark.timeout(60)
async def test_operations_obey_the_callers_cancel_scope_while_redis_is_frozen(
    redis_server: RedisServer,
) -> None:
    timeout = 3.0
    async with open_map(redis_server, timeout=timeout) as wm:
        with frozen(redis_server):
            for name, operation in operations(wm).items():
                started = anyio.current_time()
                with anyio.move_on_after(0.1) as scope:
                    await operation()
                took = anyio.current_time() - started
                assert scope.cancelled_caught, name
                assert took < 1.0, (name, took)
        # The take and the wait reached Redis once it woke up: their
        # registrations are released, in the background.
        assert await settle(redis_server) == []
        assert isinstance(await wm.wake("k", "v"), NoMatch)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["stopped", "frozen"])
async def test_opening_a_map_on_a_redis_that_is_down_fails_within_the_timeout(
    redis_server: RedisServer, how: str
) -> None:
    timeout = 0.5
    async with down(redis_server, how):
        started = anyio.current_time()
        with pytest.raises(BaseException) as caught:  # noqa: PT011 (checked below)
            async with open_map(redis_server, timeout=timeout):
                pytest.fail("opened a map on a Redis that is down")
        took = anyio.current_time() - started
    assert took < timeout + 0.5
    assert [type(leaf) for leaf in leaves(caught.value)] == [RedisUnavailable]


@pytest.mark.timeout(30)
async def test_opening_a_map_on_a_redis_that_is_down_raises_redis_unavailable() -> None:
    with pytest.raises(RedisUnavailable):
        async with open_map(f"redis://127.0.0.1:{free_port()}", timeout=0.5):
            pass


# -- disconnections -----------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_parked_waiters_carry_on_across_a_disconnection_of_the_commands(
    redis_server: RedisServer,
) -> None:
    results: dict[str, object] = {}

    async def run(wm: RedisWaitMap[Any], op: str, key: str) -> None:
        try:
            results[f"{op} {key}"] = await getattr(wm, op)(key)
        except KeyCancelled:
            results[f"{op} {key}"] = "cancelled"

    async with open_map(redis_server) as waiting, open_map(redis_server) as waker:
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(run, waiting, "take", f"k{n}")
                tg.start_soon(run, waiting, "wait", f"k{n}")
            await until_registered(redis_server, 6)
            killed = await anyio.to_thread.run_sync(
                redis_server.cli, "CLIENT", "KILL", "TYPE", "normal"
            )
            assert int(killed) >= 2  # the command connections of both maps
            await anyio.sleep(0.1)
            assert waiting.statistics().tasks_waiting == 6
            assert await waker.wake("k0", "v0") == Woke(2)
            assert await waiting.wake("k1", "v1") == Woke(2)  # its own tasks
            await waiting.set("k2", "v2")
            assert await waker.cancel("k2") == 0
        assert results == {
            f"{op} k{n}": f"v{n}" for n in range(3) for op in ("take", "wait")
        }
        assert await settle(redis_server) == []


@pytest.mark.timeout(30)
async def test_a_task_that_leaves_just_before_the_map_closes_leaves_nothing(
    redis_server: RedisServer,
) -> None:
    # A few tries: on trio, whose scheduling is randomized, one try does not
    # always find the background work carrying out the release.
    for _ in range(5):
        async with open_map(redis_server) as wm:
            async with anyio.create_task_group() as tg:
                tg.start_soon(wm.take, "k")
                await until_registered(redis_server, 1)
                # What a Redis restart does to the scripts, without the restart.
                await anyio.to_thread.run_sync(redis_server.execute, "SCRIPT", "FLUSH")
                tg.cancel_scope.cancel()
            while wm.statistics().pending_operations:
                await anyio.lowlevel.checkpoint()
        left = await map_keys(redis_server)
        assert left == [], "a registration outlived its map"
    async with open_map(redis_server) as other:
        assert isinstance(await other.wake("k", "lost"), NoMatch)


# -- Redis refusing commands -------------------------------------------------------


@pytest.mark.timeout(30)
async def test_parked_waiters_carry_on_after_redis_refused_writes_for_a_while(
    redis_server: RedisServer,
) -> None:
    got: list[object] = []

    async def take(wm: RedisWaitMap[Any]) -> None:
        got.append(await wm.take("k"))

    # Refused for longer than a refresh period (a third of the lease), not
    # for as long as the lease: nobody is reclaimed, however slow the machine.
    lease = 6.0
    async with (
        open_map(redis_server, lease=lease) as waiting,
        open_map(redis_server, lease=lease) as waker,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(take, waiting)
        await until_registered(redis_server, 1)
        await anyio.to_thread.run_sync(
            redis_server.execute, "CONFIG", "SET", "maxmemory", "1"
        )
        await anyio.sleep(lease / 2)  # past a refresh of each lease
        await anyio.to_thread.run_sync(
            redis_server.execute, "CONFIG", "SET", "maxmemory", "0"
        )
        assert await waker.wake("k", "v") == Woke(1)
    assert got == ["v"]
