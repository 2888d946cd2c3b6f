"""RedisWaitMap when Redis goes away, when tasks outlive the map, and when
something else overwrites the map's keys: what is promised then, in one process
(tests/redis/test_processes.py kills and cuts off whole processes)."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import coredis.exceptions
import pytest
from anyio import create_task_group
from redis_servers import RedisServer
from test_redis_map import NAME, eventually, leftovers, opened, queued, settle

from anyio_waitmap import Woke
from anyio_waitmap.redis import RedisUnavailable, RedisWaitMap
from anyio_waitmap.redis._layout import Layout
from anyio_waitmap.redis._map import (  # pyright: ignore[reportPrivateUsage]
    _passing,
    _unwrapped,
    _without_password,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]


def owner_of(wm: RedisWaitMap[Any]) -> str:
    return wm._owner  # pyright: ignore[reportPrivateUsage]


class TestRedisAway:
    async def test_expectation_cannot_register(self, redis_server: RedisServer) -> None:
        async with opened(redis_server, timeout=0.3) as wm:
            with redis_server.stopped():
                with pytest.raises(RedisUnavailable, match="unreachable"):
                    async with wm.expect("k"):
                        pytest.fail("entered without a registration")
                assert wm.statistics().tasks_waiting == 0
            await settle(wm)
            assert leftovers(redis_server) == []

    async def test_leases_and_reaper_carry_on_after_an_outage(
        self, redis_server: RedisServer
    ) -> None:
        """Refreshing the lease and reaping fail while Redis is down, and go on
        once it is back: a waiter registered before is still served."""
        async with (
            opened(redis_server, lease=0.3) as a,
            opened(redis_server, lease=0.3) as b,
        ):
            got: list[object] = []

            async def taker() -> None:
                got.append(await a.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: leftovers(redis_server) != [])
                redis_server.stop()
                try:
                    await anyio.sleep(0.5)  # several refreshes and reaps fail
                finally:
                    redis_server.start()
                # Restarted empty: the lease is gone, the instance takes it
                # again and registers its taker anew.
                await eventually(lambda: leftovers(redis_server) != [])
                assert await b.wake("k", b"v") == Woke(1)
            assert got == [b"v"]

    async def test_exit_while_redis_is_down_leaves_it_to_the_lease(
        self, persistent_redis_server: RedisServer
    ) -> None:
        server = persistent_redis_server
        layout = Layout(NAME)
        async with opened(server, lease=0.4) as other:
            wm = RedisWaitMap.connect(server.url(), name=NAME, lease=0.4, timeout=0.2)
            async with wm:
                async with wm.expect("k"):
                    assert await other.wake("k", b"v") == Woke(1)
                    server.stop()
                started = anyio.current_time()
            # The release of the expectation could not be carried out: bounded
            # by the timeout, the exit gave up and left it to the lease.
            assert anyio.current_time() - started < 2
            assert wm.statistics().pending_operations == 1
            server.start()
            owner = owner_of(wm)
            await eventually(
                lambda: server.cli("SISMEMBER", layout.owners(), owner) == "0"
            )
            # Reclaimed by the other instance: the value went back into the store.
            assert await other.get("k") == b"v"
            await settle(other)
            assert leftovers(server) == []


class TestOutlivingTheMap:
    async def test_outcome_held_outside_the_block_is_left_to_the_lease(
        self, redis_server: RedisServer
    ) -> None:
        """A task outside the map's block that holds an outcome when the map
        exits: the instance leaves it to its lease, and once the lease runs out
        the value goes on, as from a process that died. The task still gets
        it: this is the duplicate the docs describe."""
        got: list[object] = []
        holding = anyio.Event()
        go_on = anyio.Event()
        layout = Layout(NAME)
        async with opened(redis_server, lease=0.3) as other, create_task_group() as tg:
            wm = RedisWaitMap.connect(redis_server.url(), name=NAME, lease=0.3)
            async with wm:

                async def outside() -> None:
                    async with wm.expect("k") as reply:
                        holding.set()
                        await go_on.wait()
                        got.append(await reply)

                tg.start_soon(outside)
                await holding.wait()
                assert await other.wake("k", b"v") == Woke(1)
                await eventually(lambda: wm.statistics().keys_waiting == 0)
            owner = owner_of(wm)
            assert redis_server.cli("SISMEMBER", layout.owners(), owner) == "1"
            go_on.set()
            await eventually(lambda: got == [b"v"])
            await eventually(
                lambda: redis_server.cli("SISMEMBER", layout.owners(), owner) == "0"
            )
            assert await other.get("k") == b"v"
            assert leftovers(redis_server) == []


class TestOverwrittenKeys:
    """Another program overwrote the map's keys: the map fails loudly (its
    block raises) instead of losing values without a word."""

    async def test_a_release_that_fails(self, redis_server: RedisServer) -> None:
        names = Layout(NAME).key("sk")

        async def overwrite() -> None:
            async with opened(redis_server) as wm, create_task_group() as tg:
                tg.start_soon(wm.take, "k")
                await eventually(lambda: leftovers(redis_server) != [])
                redis_server.cli("DEL", names.t)
                redis_server.cli("SET", names.t, "not a sorted set")
                tg.cancel_scope.cancel()  # the release meets the string
                await anyio.sleep(5)
                pytest.fail("the map went on")

        with pytest.raises(BaseExceptionGroup) as raised:
            await overwrite()
        wrong, _ = raised.value.split(coredis.exceptions.WrongTypeError)
        assert wrong is not None

    async def test_a_read_back_that_fails(self, redis_server: RedisServer) -> None:
        names = Layout(NAME).key("sk")

        async def overwrite() -> None:
            async with opened(redis_server) as wm, create_task_group() as tg:
                tg.start_soon(wm.take, "k")
                await eventually(lambda: leftovers(redis_server) != [])
                await eventually(lambda: wm.statistics().subscribed)
                redis_server.cli("SET", names.d, "not a hash")
                # The subscription comes back, and reads what the takers hold.
                redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
                await anyio.sleep(5)
                pytest.fail("the map went on")

        with pytest.raises(BaseExceptionGroup) as raised:
            await overwrite()
        wrong, _ = raised.value.split(coredis.exceptions.WrongTypeError)
        assert wrong is not None


class TestOrphans:
    async def test_value_for_a_registration_released_before_it_arrived(
        self, redis_server: RedisServer
    ) -> None:
        """A registration of this instance that it no longer knows (its release
        overtook it on the way to Redis) is handed a value: the value goes on,
        and the exit removes what is left of such registrations."""
        layout = Layout(NAME)
        names = layout.key("sk")
        async with opened(redis_server) as wm, opened(redis_server) as other:
            owner = owner_of(wm)
            # As the registration script leaves it: queued, and counted.
            owned = layout.owned_keys(names.partition, owner)
            redis_server.cli("ZADD", names.t, "0", f"t{owner}/ff")
            redis_server.cli("HINCRBY", owned, "sk", "1")
            assert await other.wake("k", b"v") == Woke(1)
            await eventually(lambda: redis_server.cli("GET", names.v) == "bv")
            await settle(wm)
            redis_server.cli("ZADD", names.w, "0", f"w{owner}/fe")
            redis_server.cli("HINCRBY", owned, "sk", "1")
        assert leftovers(redis_server) == []


def test_password_hidden_in_every_url_form() -> None:
    assert _without_password("redis://u:pw@host:1/0") == "redis://u:***@host:1/0"
    assert _without_password("redis://:pw@host/0") == "redis://:***@host/0"
    assert _without_password("rediss://host:2") == "rediss://host:2"


def test_groups_of_one_error_unwrapped() -> None:
    error = KeyError("k")
    assert (
        _unwrapped(BaseExceptionGroup("", [BaseExceptionGroup("", [error])])) is error
    )
    two = BaseExceptionGroup("", [BaseExceptionGroup("", [error, ValueError()])])
    assert _unwrapped(two) is two


def test_a_subscription_is_made_again_only_after_errors_that_pass() -> None:
    lost = coredis.exceptions.ConnectionError("lost")
    moved = coredis.exceptions.MovedError("1 127.0.0.1:7000")
    refused = coredis.exceptions.ResponseError("OOM command not allowed")
    assert _passing(lost)
    assert _passing(moved)
    assert _passing(refused)
    assert not _passing(coredis.exceptions.ResponseError("ERR unknown command"))
    assert not _passing(ValueError())
    nested = BaseExceptionGroup("", [BaseExceptionGroup("", [lost, moved]), refused])
    assert _passing(nested)
    assert not _passing(BaseExceptionGroup("", [nested, ValueError()]))


class TestCancelledAsTheValueArrives:
    async def test_value_for_a_task_already_leaving_goes_on(
        self, redis_server: RedisServer
    ) -> None:
        """Redis handed a value to a taker, and the taker's cancellation reached
        it before the value reached its process: the task raises, and the
        value goes on (here into the store), as a cancellation that comes
        first does in one process."""
        names = Layout(NAME).key("sk")
        async with opened(redis_server) as wm:
            got: list[object] = []
            scope = anyio.CancelScope()

            async def taker() -> None:
                with scope:
                    got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                registration = redis_server.cli("ZRANGE", names.t, "0", "0").strip()
                # What the hand-over script does, without its doorbell...
                redis_server.cli("ZREM", names.t, registration)
                redis_server.cli("HSET", names.d, registration, "vbv")
                # ...which rings just after the cancellation reached the task.
                scope.cancel()
                wm._hand_over(registration, b"vbv", b"sk")  # pyright: ignore[reportPrivateUsage]
            assert got == []
            await settle(wm)
            assert await wm.get("k") == b"v"
            assert leftovers(redis_server) == []


class TestLeaseInDoubt:
    async def test_hand_over_waits_until_the_lease_is_confirmed(
        self, redis_server: RedisServer
    ) -> None:
        """Past the part of its lease it trusts (say its loop was blocked for
        most of the lease), an instance hands nothing over from a doorbell: it
        first refreshes the lease, and, the lease having held all along, hands
        over what Redis holds for its registrations."""
        async with opened(redis_server, lease=30) as wm, opened(redis_server) as other:
            got: list[object] = []

            async def taker() -> None:
                got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                wm._lease_until = anyio.current_time()  # pyright: ignore[reportPrivateUsage]
                assert await other.wake("k", b"v") == Woke(1)
            assert got == [b"v"]
            assert wm._lease_until > anyio.current_time() + 10  # pyright: ignore[reportPrivateUsage]
