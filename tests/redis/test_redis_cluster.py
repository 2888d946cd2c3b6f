"""RedisWaitMap on a Redis Cluster of three primaries: the same guarantees as on
a standalone Redis, with the keys spread over the shards, doorbells on sharded
pub/sub, and slots that move while tasks wait.

The session's cluster is shared: each test uses a map name of its own, and
only tests that start a cluster of their own move slots or stop nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio
from anyio import create_task_group
from redis_servers import ClusterNode, RedisCluster, scan_all
from test_redis_map import eventually, settle

from anyio_waitmap import KeyCancelled, NoMatch, Woke
from anyio_waitmap.redis import RedisUnavailable, RedisWaitMap
from anyio_waitmap.redis._codec import encode_key
from anyio_waitmap.redis._layout import PARTITIONS, Layout

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(60)]

_names = itertools.count()


@pytest.fixture
def name() -> str:
    """A map name of the test's own on the shared cluster."""
    return f"cluster-map-{next(_names)}"


def _from_coredis_pool_acquire(error: object) -> bool:
    """Whether ``error`` is a KeyError raised while coredis finalized the async
    generator ``ClusterConnectionPool.acquire``."""
    if not isinstance(error, KeyError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return any(
        frame.name == "acquire"
        and Path(frame.filename).parts[-3:] == ("coredis", "pool", "_cluster.py")
        for frame in frames
    )


def tolerate_coredis_double_release() -> None:
    """On asyncio, let the event loop ignore one error of coredis 6.9, and only
    that one: its sharded pub/sub enters ``ClusterConnectionPool.acquire()``
    for each shard's connection on an exit stack that it never closes, and
    releases the connections itself; when the loop finalizes those generators
    (garbage collected, or at its shutdown), each releases its connection a
    second time and fails with a ``KeyError``, which anyio's test runner
    would report. Every other error still reaches the test. On trio, the same
    generators show as a ResourceWarning (see pyproject.toml). Left installed
    for the loop's lifetime, since its shutdown finalizes what is left."""
    if sniffio.current_async_library() != "asyncio":
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if getattr(previous, "tolerates_coredis", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _from_coredis_pool_acquire(context.get("exception")):
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    handler.tolerates_coredis = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


@asynccontextmanager
async def opened(
    cluster: RedisCluster, name: str, **options: Any
) -> AsyncIterator[RedisWaitMap[Any]]:
    tolerate_coredis_double_release()
    async with RedisWaitMap.connect(
        cluster.url(), name=name, cluster=True, **options
    ) as wm:
        yield wm


def everything(cluster: RedisCluster, name: str) -> list[bytes]:
    """Every key of the map on every shard, its own keys included."""
    layout = Layout(name)
    return scan_all(cluster, layout.pattern()) + scan_all(
        cluster, layout.control_pattern()
    )


def queued(cluster: RedisCluster, name: str, key: Any) -> int:
    names = Layout(name).key(encode_key(key))
    node = cluster.node_for_key(names.t)
    return int(node.cli("ZCARD", names.t)) + int(node.cli("ZCARD", names.w))


def left_in_redis(cluster: RedisCluster, name: str) -> list[bytes]:
    """The map's keys but its stored values and its owners' leases."""
    return [
        key
        for key in scan_all(cluster, Layout(name).pattern())
        if not key.endswith(b":v")
    ]


class TestOnACluster:
    async def test_counts_order_and_cancel(
        self, redis_cluster: RedisCluster, name: str
    ) -> None:
        async with (
            opened(redis_cluster, name) as a,
            opened(redis_cluster, name) as b,
        ):
            got: list[tuple[str, object]] = []

            async def call(wm: RedisWaitMap[Any], how: str, key: str, tag: str) -> None:
                try:
                    value = await (wm.take(key) if how == "take" else wm.wait(key))
                except KeyCancelled:
                    value = "cancelled"
                got.append((tag, value))

            async with create_task_group() as tg:
                steps = [
                    (a, "wait", "k", "a-wait"),
                    (b, "wait", "k", "b-wait"),
                    (a, "take", "k", "a-take-1"),
                    (b, "take", "k", "b-take-2"),
                ]
                for number, (wm, how, key, tag) in enumerate(steps):
                    tg.start_soon(call, wm, how, key, tag)
                    await eventually(
                        lambda n=number: queued(redis_cluster, name, "k") == n + 1
                    )
                tg.start_soon(call, b, "wait", "c", "b-cancelled")
                await eventually(lambda: queued(redis_cluster, name, "c") == 1)
                assert await a.wake("k", "one") == Woke(3)
                assert await b.wake("k", "two") == Woke(1)
                assert await a.cancel("c") == 1
            assert sorted(got) == [
                ("a-take-1", "one"),
                ("a-wait", "one"),
                ("b-cancelled", "cancelled"),
                ("b-take-2", "two"),
                ("b-wait", "one"),
            ]
            assert await a.wake("k", "late") == NoMatch("late")
            await a.set("s", "stored")
            assert await b.take("s") == "stored"
            await settle(a, b)
            assert left_in_redis(redis_cluster, name) == []
        assert everything(redis_cluster, name) == []

    async def test_keys_spread_over_every_shard(
        self, redis_cluster: RedisCluster, name: str
    ) -> None:
        async with opened(redis_cluster, name) as wm:
            for number in range(PARTITIONS * 2):
                await wm.set(number, b"x")
            pattern = Layout(name).pattern()
            for primary in redis_cluster.primaries():
                assert scan_all(primary, pattern), primary
            for number in range(PARTITIONS * 2):
                assert await wm.pop(number) == b"x"
        assert everything(redis_cluster, name) == []

    async def test_doorbells_lost_on_every_shard(
        self, redis_cluster: RedisCluster, name: str
    ) -> None:
        """CLIENT KILL TYPE pubsub on every primary: what is handed over while
        the sharded subscriptions come back is read from Redis."""
        async with (
            opened(redis_cluster, name) as a,
            opened(redis_cluster, name) as b,
        ):
            got: list[object] = []

            async def taker(key: int) -> None:
                got.append(await a.take(key))

            keys = range(16)
            async with create_task_group() as tg:
                for key in keys:
                    tg.start_soon(taker, key)
                await eventually(
                    lambda: all(queued(redis_cluster, name, key) for key in keys)
                )
                await eventually(lambda: a.statistics().subscribed)
                for primary in redis_cluster.primaries():
                    primary.cli("CLIENT", "KILL", "TYPE", "pubsub")
                for key in keys:
                    assert await b.wake(key, f"v{key}".encode()) == Woke(1)
            assert sorted(got) == sorted(f"v{key}".encode() for key in keys)
            await settle(a, b)
            assert left_in_redis(redis_cluster, name) == []

    async def test_dead_owner_reclaimed_on_its_shard(
        self, redis_cluster: RedisCluster, name: str
    ) -> None:
        """What a dead instance held, on whichever shard its partition is, goes
        on once its lease is over: the reclaiming script reads the keys that
        the owner's count names, in its slot."""
        layout = Layout(name)
        dead = "deadbeef0009"
        names = layout.key("sk")
        owned = layout.owned_keys(names.partition, dead)

        def on_its_node(*command: str) -> None:
            redis_cluster.node_for_key(command[1]).cli(*command)

        on_its_node("SADD", layout.owners(), dead)
        on_its_node("HSET", owned, "sk", "2")
        on_its_node("ZADD", names.t, "0", f"t{dead}/0")
        on_its_node("HSET", names.d, f"t{dead}/1", "vsheld")
        async with opened(redis_cluster, name, lease=0.2) as wm:
            # The value goes back into the store, and the taker of the dead
            # owner leaves the queue.
            assert await wm.take("k") == "held"
            await eventually(lambda: queued(redis_cluster, name, "k") == 0)
            await settle(wm)
            assert left_in_redis(redis_cluster, name) == []
        assert everything(redis_cluster, name) == []


def partition_slots(cluster: RedisCluster, name: str) -> dict[int, int]:
    """The hash slot of each partition of the map."""
    layout = Layout(name)
    return {
        partition: cluster.keyslot(layout.base(partition))
        for partition in range(PARTITIONS)
    }


class TestSlotsMoving:
    async def test_waiters_of_a_moved_slot_are_served(
        self, redis_cluster_factory: Any
    ) -> None:
        """The slot of a partition moves to another primary while takers of
        its keys wait: their registrations move with it, the sharded
        subscription of its doorbell is dropped and comes back, and a wake
        after the move reaches them."""
        cluster: RedisCluster = redis_cluster_factory()
        name = "moving"
        key = "k"
        partition = Layout(name).key(encode_key(key)).partition
        slot = partition_slots(cluster, name)[partition]
        async with opened(cluster, name) as a, opened(cluster, name) as b:
            got: list[tuple[str, str]] = []

            async def taker(tag: str) -> None:
                got.append((tag, await a.take(key)))

            async with create_task_group() as tg:
                tg.start_soon(taker, "first")
                await eventually(lambda: queued(cluster, name, key) == 1)
                tg.start_soon(taker, "second")
                await eventually(lambda: queued(cluster, name, key) == 2)
                source = cluster.node_for_slot(slot)
                target = next(p for p in cluster.primaries() if p is not source)
                await anyio.to_thread.run_sync(cluster.migrate_slot, slot, target)
                assert cluster.node_for_slot(slot) is target
                assert await b.wake(key, "one") == Woke(1)
                assert await b.wake(key, "two") == Woke(1)
            # Who got which value is the FIFO order; which of the two woken
            # tasks runs first is the scheduler's (trio shuffles them).
            assert sorted(got) == [("first", "one"), ("second", "two")]
            await settle(a, b)
            assert left_in_redis(cluster, name) == []
        assert everything(cluster, name) == []


async def woken_after_failover(wm: RedisWaitMap[Any], key: str, value: str) -> bool:
    """``wm.wake(key, value)``, tried again while the Cluster fails over (the
    client learns the new primary when a command to the old one fails), as an
    application would; whether it woke one task. An attempt that raised may
    have run all the same (its reply was lost, as the docs say), and then the
    next finds nobody: that counts as woken, and the test checks that the
    taker got the value."""
    tried = False
    with anyio.fail_after(30):
        while True:
            try:
                outcome = await wm.wake(key, value)
            except RedisUnavailable:
                tried = True
                await anyio.sleep(0.1)
                continue
            return outcome == Woke(1) or (tried and outcome == NoMatch(value))


def replicated(node: ClusterNode, key: str) -> None:
    """Wait until the replica of ``node`` has all that ``node`` had. WAIT
    counts only the writes of its own connection: write (and delete) a key of
    the slot of ``key`` on that connection, after the map's writes, and wait
    for it; the replication stream keeps the order of the writes."""
    mark = key + ":replicated"  # the same hash slot: the part in braces
    with node.connect() as connection:
        connection.execute("SET", mark, "1")
        connection.execute("DEL", mark)
        assert connection.execute("WAIT", 1, 5000) == 1


class TestFailover:
    async def test_what_reached_the_replica_survives_the_primary(
        self, redis_cluster_factory: Any
    ) -> None:
        """The primary of a partition is killed and its replica takes over:
        registrations and stored values it had replicated are kept, takers
        that waited all along are served by a wake after the failover, and
        nothing is left behind. (What the primary had not replicated is lost:
        replication is asynchronous, see docs/redis.rst.)"""
        cluster: RedisCluster = redis_cluster_factory(3, 1, node_timeout_ms=1000)
        name = "failover"
        key = "k"
        names = Layout(name).key(encode_key(key))
        primary = cluster.node_for_key(names.t)
        async with opened(cluster, name) as a, opened(cluster, name) as b:
            got: list[str] = []

            async def taker() -> None:
                got.append(await a.take(key))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(cluster, name, key) == 1)
                await b.set("stored", "kept")
                stored_on = cluster.node_for_key(
                    Layout(name).key(encode_key("stored")).v
                )
                # Replicated before the kill, so that what is promised is what
                # is tested.
                await anyio.to_thread.run_sync(replicated, primary, names.t)
                await anyio.to_thread.run_sync(
                    replicated, stored_on, Layout(name).key(encode_key("stored")).v
                )
                replica = await anyio.to_thread.run_sync(cluster.kill_primary, primary)
                assert cluster.node_for_key(names.t) is replica
                assert await woken_after_failover(b, key, "after")
            assert got == ["after"]
            assert await b.get("stored") == "kept"
            assert await b.pop("stored") == "kept"
            await settle(a, b)
            assert left_in_redis(cluster, name) == []
        assert everything(cluster, name) == []
