"""RedisWaitMap in one process: the API, against a real redis-server per test.

Two instances of a map in one process stand for two processes here (each has
its own connection, lease and doorbell); tests/redis/test_processes.py runs
real processes. What an instance leaves in Redis is checked with SCAN.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import coredis.exceptions
import pytest
from anyio import create_task_group
from redis_servers import RedisServer, scan_all

from anyio_waitmap import Closed, KeyCancelled, NoMatch, WaitMapClosed, Woke
from anyio_waitmap.redis import (
    JsonCodec,
    RedisExpectation,
    RedisUnavailable,
    RedisWaitMap,
    RedisWaitMapStatistics,
)
from anyio_waitmap.redis._codec import encode_key
from anyio_waitmap.redis._layout import PARTITIONS, Layout

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(30)]

NAME = "test-map"


def queued(server: RedisServer, key: Any = "k", name: str = NAME) -> int:
    """How many registrations wait on ``key`` in Redis."""
    names = Layout(name).key(encode_key(key))
    return int(server.cli("ZCARD", names.t)) + int(server.cli("ZCARD", names.w))


def leftovers(server: RedisServer, name: str = NAME) -> list[bytes]:
    """Everything of the map in Redis but its stored values and its control keys."""
    return [
        key
        for key in scan_all(server, Layout(name).pattern())
        if not key.endswith(b":v")
    ]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` holds: for what background work does in Redis,
    which no event of ours tells."""
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 (polls the state of a server)
            await anyio.sleep(0.01)


@asynccontextmanager
async def opened(
    server: RedisServer, **options: Any
) -> AsyncIterator[RedisWaitMap[Any]]:
    options.setdefault("name", NAME)
    async with RedisWaitMap.connect(server.url(), **options) as wm:
        yield wm


async def settle(*maps: RedisWaitMap[Any]) -> None:
    """Until every instance has carried out its releases and acknowledgements."""
    await eventually(lambda: all(not wm.statistics().pending_operations for wm in maps))


class TestHandOver:
    async def test_take_wake_across_instances(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            got: list[object] = []

            async def taker(wm: RedisWaitMap[Any]) -> None:
                got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker, a)
                await eventually(lambda: queued(redis_server) == 1)
                assert await b.wake("k", b"v") == Woke(1)
            assert got == [b"v"]
            assert await b.wake("k", b"late") == NoMatch(b"late")
            await settle(a, b)
            assert leftovers(redis_server) == []

    async def test_every_waiter_and_the_first_taker(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            got: list[tuple[str, object]] = []

            async def call(wm: RedisWaitMap[Any], how: str, tag: str) -> None:
                value = await (wm.take("k") if how == "take" else wm.wait("k"))
                got.append((tag, value))

            async with create_task_group() as tg:
                for number, (wm, how, tag) in enumerate(
                    [
                        (a, "wait", "a-wait"),
                        (b, "wait", "b-wait"),
                        (a, "take", "a-take-1"),
                        (b, "take", "b-take-2"),
                    ]
                ):
                    tg.start_soon(call, wm, how, tag)
                    # Registered in this order.
                    await eventually(lambda n=number: queued(redis_server) == n + 1)
                assert await a.wake("k", "one") == Woke(3)
                assert await b.wake("k", "two") == Woke(1)
            assert sorted(got) == [
                ("a-take-1", "one"),
                ("a-wait", "one"),
                ("b-take-2", "two"),
                ("b-wait", "one"),
            ]

    async def test_takers_are_served_in_registration_order(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            order: list[str] = []

            async def taker(wm: RedisWaitMap[Any], tag: str) -> None:
                order.append(f"{tag}={await wm.take('q')}")

            async with create_task_group() as tg:
                for number, wm in enumerate([a, b, a, b]):
                    tg.start_soon(taker, wm, f"t{number}")
                    await eventually(
                        lambda n=number: queued(redis_server, "q") == n + 1
                    )
                for value in "wxyz":
                    assert await b.set("q", value) is None
                    await eventually(lambda v=value: any(o.endswith(v) for o in order))
            assert order == ["t0=w", "t1=x", "t2=y", "t3=z"]

    async def test_set_stores_unless_taken(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            got: list[object] = []

            async def waiter() -> None:
                got.append(await b.wait("s"))

            async with create_task_group() as tg:
                tg.start_soon(waiter)
                await eventually(lambda: b.statistics().tasks_waiting == 1)
                await a.set("s", b"stored")
            assert got == [b"stored"]
            assert await a.get("s") == b"stored"  # a waiter does not take it
            assert await b.wait("s") == b"stored"  # read at once
            assert await b.take("s") == b"stored"  # taken at once
            assert await a.get("s", "gone") == "gone"

            async def taker() -> None:
                got.append(await b.take("t"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: b.statistics().tasks_waiting == 1)
                await a.set("t", b"taken")
            assert got[-1] == b"taken"
            assert await a.get("t") is None  # consumed by the taker
            await settle(a, b)
            assert leftovers(redis_server) == []

    async def test_pop_and_ttl(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as wm:
            await wm.set("p", "value")
            assert await wm.pop("p") == "value"
            with pytest.raises(KeyError):
                await wm.pop("p")
            assert await wm.pop("p", None) is None
            await wm.set("ttl", "short", ttl=0.05)
            assert await wm.get("ttl") == "short"
            await anyio.sleep(0.15)
            assert await wm.get("ttl") is None
            for wrong in (0, -1, math.inf, math.nan):
                with pytest.raises(ValueError, match="ttl must be a positive"):
                    await wm.set("ttl", "x", ttl=wrong)

    async def test_cancel_counts_exactly(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            raised: list[object] = []

            async def waiter(wm: RedisWaitMap[Any], how: str) -> None:
                try:
                    await (wm.take(7) if how == "take" else wm.wait(7))
                except KeyCancelled as exc:
                    raised.append(exc.key)

            async with create_task_group() as tg:
                for wm, how in [(a, "take"), (b, "wait"), (b, "take")]:
                    tg.start_soon(waiter, wm, how)
                await eventually(lambda: queued(redis_server, 7) == 3)
                assert await a.cancel(7) == 3
            assert raised == [7, 7, 7]
            assert await a.cancel(7) == 0
            await settle(a, b)
            assert leftovers(redis_server) == []


class TestOtherThreads:
    """Other threads reach an instance through the event loop that opened it,
    as docs/redis.rst says."""

    async def test_a_worker_thread_wakes_through_from_thread_run(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as wm:
            got: list[object] = []

            async def taker() -> None:
                got.append(await wm.take("k"))

            def in_a_thread() -> object:
                return anyio.from_thread.run(wm.wake, "k", b"from a thread")

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                assert await anyio.to_thread.run_sync(in_a_thread) == Woke(1)
            assert got == [b"from a thread"]
            await settle(wm)
            assert leftovers(redis_server) == []

    def test_any_thread_through_a_blocking_portal(
        self, redis_server: RedisServer, anyio_backend: Any
    ) -> None:
        backend, options = (
            anyio_backend if isinstance(anyio_backend, tuple) else (anyio_backend, {})
        )
        with anyio.from_thread.start_blocking_portal(backend, options) as portal:
            wm = RedisWaitMap.connect(redis_server.url(), name=NAME)
            with portal.wrap_async_context_manager(wm):
                taken = portal.start_task_soon(wm.take, "k")
                deadline = time.monotonic() + 10
                while not queued(redis_server):  # registered in Redis
                    assert time.monotonic() < deadline, "the take never registered"
                    time.sleep(0.01)
                assert portal.call(wm.wake, "k", b"from outside") == Woke(1)
                assert taken.result(timeout=10) == b"from outside"
        assert leftovers(redis_server) == []


class TestKeysAndValues:
    async def test_keys_of_different_types_do_not_collide(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as wm:
            for key, value in [(1, "int"), ("1", "str"), (b"1", "bytes")]:
                await wm.set(key, value)
            assert [await wm.get(k) for k in (1, "1", b"1")] == ["int", "str", "bytes"]
            odd = "{}:*?[]\\%\n é"  # braces, pattern characters, a newline
            await wm.set(odd, "odd")
            assert await wm.get(odd) == "odd"
            assert await wm.get(odd.encode()) is None

    @pytest.mark.parametrize("key", [1.5, None, True, ("t",), ["l"]])
    async def test_unsupported_key(self, redis_server: RedisServer, key: Any) -> None:
        async with opened(redis_server) as wm:
            for call in (
                lambda: wm.take(key),
                lambda: wm.wait(key),
                lambda: wm.wake(key, b"v"),
                lambda: wm.set(key, b"v"),
                lambda: wm.get(key),
                lambda: wm.pop(key),
                lambda: wm.cancel(key),
            ):
                with pytest.raises(TypeError, match="key must be a str, bytes or int"):
                    await call()
            with pytest.raises(TypeError):
                wm.expect(key)
        assert scan_all(redis_server) == []

    async def test_values_come_back_as_themselves(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as wm:
            await wm.set("b", b"\x00\xffbytes")
            await wm.set("s", "str \u2603")
            assert await wm.get("b") == b"\x00\xffbytes"
            assert await wm.get("s") == "str \u2603"

    @pytest.mark.parametrize("value", [1, 1.5, None, ["list"], {"d": 1}])
    async def test_other_values_need_a_codec(
        self, redis_server: RedisServer, value: Any
    ) -> None:
        async with opened(redis_server) as wm:
            with pytest.raises(TypeError, match="codec=JsonCodec"):
                await wm.set("k", value)
            with pytest.raises(TypeError, match="codec=JsonCodec"):
                await wm.wake("k", value)
        assert scan_all(redis_server) == []

    async def test_json_codec(self, redis_server: RedisServer) -> None:
        async with opened(redis_server, codec=JsonCodec()) as wm:
            value = {"list": [1, 2.5, None, True], "text": "é"}
            await wm.set("j", value)
            assert await wm.get("j") == value
            with pytest.raises(TypeError, match="cannot encode"):
                await wm.set("j", {1, 2})
            with pytest.raises(TypeError, match="cannot encode"):
                await wm.set("j", math.nan)
            assert await wm.get("j") == value

    async def test_maps_with_and_without_codec_refuse_each_other_s_values(
        self, redis_server: RedisServer
    ) -> None:
        async with (
            opened(redis_server, codec=JsonCodec()) as coded,
            opened(redis_server) as plain,
        ):
            await coded.set("a", [1])
            await plain.set("b", b"raw")
            with pytest.raises(ValueError, match="a codec"):
                await plain.get("a")
            with pytest.raises(ValueError, match="no codec"):
                await coded.get("b")

    async def test_a_codec_that_returns_no_bytes(
        self, redis_server: RedisServer
    ) -> None:
        class Broken:
            def encode(self, value: Any) -> bytes:
                return "text"  # type: ignore[return-value]

            def decode(self, data: bytes) -> Any:
                return data

        async with opened(redis_server, codec=Broken()) as wm:
            with pytest.raises(TypeError, match=r"Broken.encode\(\) returned 'str'"):
                await wm.set("k", 1)

    async def test_maps_with_different_names_are_apart(
        self, redis_server: RedisServer
    ) -> None:
        async with (
            opened(redis_server, name="one") as one,
            opened(redis_server, name="two") as two,
        ):
            await one.set("k", b"1")
            assert await two.get("k") is None
            assert await one.wake("k", b"x") == NoMatch(b"x")
            assert one.name == "one"


class TestExpect:
    async def test_reply_before_the_await(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            async with a.expect(17) as reply:
                assert await b.wake(17, b"reply") == Woke(1)
                # It arrives before the await.
                await eventually(lambda: a.statistics().keys_waiting == 0)
                assert await reply == b"reply"
            await settle(a, b)
            assert leftovers(redis_server) == []

    async def test_stored_value_at_entry(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as wm:
            await wm.set("e", b"stored")
            async with wm.expect("e", take=False) as reply:
                assert await reply == b"stored"
            assert await wm.get("e") == b"stored"
            async with wm.expect("e") as reply:
                assert await reply == b"stored"
            assert await wm.get("e") is None

    async def test_left_without_awaiting_passes_the_value_on(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            async with a.expect("e"):
                assert await b.wake("e", b"v") == Woke(1)
            await settle(a)
            assert await b.get("e") == b"v"  # back into the store
            async with a.expect("e") as reply:  # taken at entry, not awaited
                pass
            await settle(a)
            assert await b.get("e") == b"v"
            assert leftovers(redis_server) == []
            assert reply.key == "e"
            assert "RedisExpectation take 'e'" in repr(reply)

    async def test_pending_cancellation_at_the_await(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as a, opened(redis_server) as b:
            with anyio.CancelScope() as scope:
                async with a.expect("c") as reply:
                    await b.wake("c", b"v")
                    await eventually(lambda: a.statistics().keys_waiting == 0)
                    scope.cancel()
                    await reply
            assert scope.cancelled_caught
            await settle(a)
            assert await b.get("c") == b"v"

    async def test_misuse(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as wm:
            reply: RedisExpectation[Any] = wm.expect("m")
            with pytest.raises(RuntimeError, match="inside its async with block"):
                await reply
            async with reply:
                with pytest.raises(RuntimeError, match="only once"):
                    await reply.__aenter__()
            with pytest.raises(RuntimeError, match="inside its async with block"):
                await reply


class TestLifetime:
    async def test_close_ends_the_waiters_and_leaves_nothing(
        self, redis_server: RedisServer
    ) -> None:
        raised: list[type[BaseException]] = []
        async with opened(redis_server) as other:
            wm = RedisWaitMap.connect(redis_server.url(), name=NAME)
            async with wm:

                async def waiter(how: str) -> None:
                    try:
                        await (wm.take("k") if how == "take" else wm.wait("k"))
                    except WaitMapClosed:
                        raised.append(WaitMapClosed)

                async with create_task_group() as tg:
                    tg.start_soon(waiter, "take")
                    tg.start_soon(waiter, "wait")
                    await eventually(lambda: queued(redis_server) == 2)
                    await wm.aclose()
            assert raised == [WaitMapClosed, WaitMapClosed]
            assert wm.closed
            assert leftovers(redis_server) == []
            assert await other.wake("k", b"v") == NoMatch(b"v")
            # Later calls on the closed instance.
            assert await wm.wake("k", b"v") == Closed(b"v")
            for call in (
                lambda: wm.take("k"),
                lambda: wm.wait("k"),
                lambda: wm.set("k", b"v"),
                lambda: wm.get("k"),
                lambda: wm.pop("k"),
                lambda: wm.cancel("k"),
            ):
                with pytest.raises(WaitMapClosed, match="closed RedisWaitMap"):
                    await call()
            with pytest.raises(WaitMapClosed):
                async with wm.expect("k"):
                    pass
            await wm.aclose()  # idempotent
            assert "closed" in repr(wm)
        assert scan_all(redis_server) == []

    async def test_value_handed_to_a_closing_instance_goes_on(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as other:
            wm = RedisWaitMap.connect(redis_server.url(), name=NAME)
            async with wm, wm.expect("k"):
                assert await other.wake("k", b"v") == Woke(1)
                await wm.aclose()
            assert await other.get("k") == b"v"

    async def test_opened_once_and_before_use(self, redis_server: RedisServer) -> None:
        wm = RedisWaitMap.connect(redis_server.url(), name=NAME)
        assert "not opened" in repr(wm)
        with pytest.raises(RuntimeError, match="before you wait on it"):
            await wm.take("k")
        with pytest.raises(RuntimeError, match="before you wake a key of it"):
            await wm.wake("k", b"v")
        async with wm:
            assert "open" in repr(wm)
            with pytest.raises(RuntimeError, match="only once"):
                await wm.__aenter__()
        with pytest.raises(RuntimeError, match="only once"):
            await wm.__aenter__()

    async def test_statistics(self, redis_server: RedisServer) -> None:
        async with opened(redis_server) as wm:
            # The doorbell's subscription comes up in the background.
            await eventually(lambda: wm.statistics().subscribed)
            assert wm.statistics() == RedisWaitMapStatistics(0, 0, 0, True, False)
            async with create_task_group() as tg:
                tg.start_soon(wm.take, "a")
                tg.start_soon(wm.wait, "a")
                tg.start_soon(wm.wait, "b")
                await eventually(
                    lambda: queued(redis_server, "a") + queued(redis_server, "b") == 3
                )
                stats = wm.statistics()
                assert (stats.tasks_waiting, stats.keys_waiting) == (3, 2)
                tg.cancel_scope.cancel()
            await settle(wm)
            assert wm.statistics().tasks_waiting == 0
            assert leftovers(redis_server) == []

    async def test_cancelled_waiters_leave_nothing(
        self, redis_server: RedisServer
    ) -> None:
        async with opened(redis_server) as wm:
            for _ in range(20):
                with anyio.move_on_after(0.002):
                    await wm.take("k")
            await settle(wm)
            assert leftovers(redis_server) == []
            assert await wm.wake("k", b"v") == NoMatch(b"v")


class TestOptions:
    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("lease", 0, "lease must be a positive"),
            ("lease", math.nan, "lease must be a positive"),
            ("timeout", -1, "timeout must be a positive"),
        ],
    )
    async def test_bad_numbers(self, option: str, value: float, message: str) -> None:
        options: dict[str, Any] = {option: value}
        with pytest.raises(ValueError, match=message):
            RedisWaitMap.connect("redis://127.0.0.1:1", name=NAME, **options)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://127.0.0.1:1", r"redis:// or rediss://, not http://$"),
            ("unix:///tmp/redis.sock", r"redis:// or rediss://, not unix://$"),
            ("redis+cluster://127.0.0.1:1", "for a Cluster, pass cluster=True"),
        ],
    )
    async def test_bad_url(self, url: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            RedisWaitMap.connect(url, name=NAME)

    async def test_bad_name_codec_or_option(self) -> None:
        url = "redis://127.0.0.1:1"
        with pytest.raises(TypeError, match="name must be a non-empty str"):
            RedisWaitMap.connect(url, name="")
        with pytest.raises(TypeError, match="codec must have encode"):
            RedisWaitMap.connect(url, name=NAME, codec=object())  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="retry_policy is the map's own"):
            RedisWaitMap.connect(url, name=NAME, retry_policy=None)

    async def test_password_is_not_shown(self, redis_server_factory: Any) -> None:
        server = redis_server_factory(password="s3cret")
        async with RedisWaitMap.connect(server.url(), name=NAME) as wm:
            assert "s3cret" not in repr(wm)
            assert ":***@" in repr(wm)

    async def test_wrong_password_at_open(self, redis_server_factory: Any) -> None:
        server = redis_server_factory(password="s3cret")
        url = server.url().replace("s3cret", "wrong")
        wm = RedisWaitMap.connect(url, name=NAME)
        with pytest.raises(coredis.exceptions.AuthenticationError):
            async with wm:
                pytest.fail("opened with a wrong password")
        assert wm.closed
        assert scan_all(server) == []

    async def test_cancelled_while_opening(self, redis_server: RedisServer) -> None:
        wm = RedisWaitMap.connect(redis_server.url(), name=NAME)
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with wm:
                pytest.fail("opened in a cancelled scope")
        assert scope.cancelled_caught
        assert wm.closed
        with pytest.raises(RuntimeError, match="only once"):
            await wm.__aenter__()

    async def test_redis_down_at_open(self, redis_server: RedisServer) -> None:
        url = redis_server.url()
        redis_server.stop()
        with pytest.raises(RedisUnavailable, match="unreachable"):
            async with RedisWaitMap.connect(url, name=NAME, timeout=0.5):
                pass


class TestRecovery:
    async def test_doorbells_lost_while_the_subscription_was_down(
        self, redis_server: RedisServer
    ) -> None:
        """CLIENT KILL TYPE pubsub: what was handed over meanwhile is read back."""
        async with opened(redis_server) as a, opened(redis_server) as b:
            got: list[object] = []

            async def taker() -> None:
                got.append(await a.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                # Between killing the subscriptions and their coming back, a
                # doorbell can be lost: the value must arrive all the same.
                redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
                assert await b.wake("k", b"v") == Woke(1)
            assert got == [b"v"]

    async def test_lease_lost_and_recovered(self, redis_server: RedisServer) -> None:
        """The instance's lease runs out (as if it had been cut off): it takes
        it again, and registers its waiters again if a reaper removed them."""
        layout = Layout(NAME)
        async with (
            opened(redis_server, lease=0.3) as wm,
            opened(redis_server, lease=30) as other,
        ):
            got: list[object] = []

            async def taker() -> None:
                got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                owner = wm._owner  # pyright: ignore[reportPrivateUsage]
                # A reaper is working on it: the instance waits its turn.
                redis_server.cli("SET", layout.reaping(owner), "x", "PX", "300")
                redis_server.cli("DEL", layout.alive(owner))
                # A reaper removed its registration.
                redis_server.cli("DEL", layout.key("sk")[1])
                await eventually(
                    lambda: redis_server.cli("EXISTS", layout.alive(owner)) == "1"
                )
                await eventually(
                    lambda: redis_server.cli("ZCARD", layout.key("sk")[1]) == "1"
                )
                assert await other.wake("k", b"v") == Woke(1)
            assert got == [b"v"]

    async def test_lease_recovered_finds_a_value_handed_over(
        self, redis_server: RedisServer
    ) -> None:
        layout = Layout(NAME)
        async with opened(redis_server, lease=0.3) as wm:
            got: list[object] = []

            async def taker() -> None:
                got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: queued(redis_server) == 1)
                owner = wm._owner  # pyright: ignore[reportPrivateUsage]
                names = layout.key("sk")
                # As a reaper would, then a value left for the registration, with
                # no doorbell: the instance finds it when it registers again.
                registration = redis_server.cli("ZRANGE", names[1], "0", "0").strip()
                redis_server.cli("DEL", layout.alive(owner), names[1])
                redis_server.cli("HSET", names[3], registration, "vsfound")
            assert got == ["found"]

    async def test_dead_owner_is_reaped(self, redis_server: RedisServer) -> None:
        """What an instance whose lease ran out left: its registrations go, and a
        value its taker held goes on to the next taker, or into the store."""
        layout = Layout(NAME)
        dead = "deadbeef0001"
        names = layout.key("sk")
        other_names = layout.key("sother")
        redis_server.cli("SADD", layout.owners(), dead)
        redis_server.cli("HSET", layout.owned_keys(names.partition, dead), "sk", "3")
        redis_server.cli(
            "HSET", layout.owned_keys(other_names.partition, dead), "sother", "1"
        )
        redis_server.cli("ZADD", names[1], "0", f"t{dead}/0")
        redis_server.cli("ZADD", names[2], "0", f"w{dead}/1")
        redis_server.cli("HSET", names[3], f"t{dead}/2", "vsheld")
        redis_server.cli("HSET", other_names[3], f"w{dead}/3", "vsignored")
        async with opened(redis_server, lease=0.2) as wm:
            got: list[object] = []

            async def taker() -> None:
                got.append(await wm.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                # The next taker, after the dead one's registration.
                await eventually(lambda: got == ["held"], within=10)
            await eventually(
                lambda: redis_server.cli("SISMEMBER", layout.owners(), dead) == "0"
            )
            await settle(wm)
            assert leftovers(redis_server) == []
            assert await wm.wake("k", b"v") == NoMatch(b"v")

    async def test_dead_owner_value_goes_back_into_the_store(
        self, redis_server: RedisServer
    ) -> None:
        layout = Layout(NAME)
        dead = "deadbeef0002"
        names = layout.key("sk")
        redis_server.cli("SADD", layout.owners(), dead)
        redis_server.cli("HSET", layout.owned_keys(names.partition, dead), "sk", "1")
        redis_server.cli("HSET", names[3], f"t{dead}/0", "vsheld")
        async with opened(redis_server, lease=0.2) as wm:
            await eventually(lambda: redis_server.cli("GET", names[0]) == "sheld")
            assert await wm.take("k") == "held"
            # An owner that another reaper (or the owner itself) holds the
            # lock of is left alone, and so is an owner whose lease runs.
            held = "deadbeef0003"
            redis_server.cli("SADD", layout.owners(), held)
            redis_server.cli("SET", layout.reaping(held), "someone", "PX", "400")
            await anyio.sleep(0.25)
            assert redis_server.cli("SISMEMBER", layout.owners(), held) == "1"
            redis_server.cli("SET", layout.alive(held), "1")
            await anyio.sleep(0.4)
            assert redis_server.cli("SISMEMBER", layout.owners(), held) == "1"
            redis_server.cli("DEL", layout.alive(held))
            await eventually(
                lambda: redis_server.cli("SISMEMBER", layout.owners(), held) == "0"
            )

    async def test_background_work_waits_for_redis(
        self, persistent_redis_server: RedisServer
    ) -> None:
        """A release that fails while Redis is down is carried out after."""
        server = persistent_redis_server
        async with opened(server, timeout=0.3) as wm:
            async with create_task_group() as tg:
                tg.start_soon(wm.take, "k")
                await eventually(lambda: leftovers(server) != [])
                server.stop()
                tg.cancel_scope.cancel()
            try:
                await anyio.sleep(0.2)  # a few attempts fail meanwhile
                assert wm.statistics().pending_operations == 1
                with pytest.raises(RedisUnavailable, match="unreachable"):
                    await wm.wake("k", b"v")
            finally:
                server.start()
            await settle(wm)
            assert leftovers(server) == []
            assert await wm.wake("k", b"v") == NoMatch(b"v")

    @pytest.mark.parametrize("persistent", [True, False])
    async def test_waiters_survive_a_restart(
        self, redis_server_factory: Any, persistent: bool
    ) -> None:
        """With persistence the registrations come back with Redis; without
        it, each instance registers its waiters again when it finds its lease
        gone."""
        server = redis_server_factory(persistent=persistent)
        async with opened(server, lease=0.6) as a, opened(server, lease=0.6) as b:
            got: list[object] = []

            async def taker() -> None:
                got.append(await a.take("k"))

            async with create_task_group() as tg:
                tg.start_soon(taker)
                await eventually(lambda: leftovers(server) != [])
                # In a thread: the instances see their connections close.
                await anyio.to_thread.run_sync(server.restart)
                await eventually(lambda: leftovers(server) != [])
                outcome = await b.wake("k", b"v")
                assert outcome == Woke(1)
            assert got == [b"v"]
            await settle(a, b)
            assert leftovers(server) == []


def test_layout_names() -> None:
    layout = Layout("my map")
    names = layout.key("sk")
    base = f"wm:{{my%20map|{names.partition:x}}}:"
    assert names == (
        f"{base}sk:v",
        f"{base}sk:t",
        f"{base}sk:w",
        f"{base}sk:d",
        names.partition,
        base,
    )
    assert 0 <= names.partition < PARTITIONS
    assert layout.key("sk2").partition != names.partition  # spread out
    assert layout.owned_keys(3, "o") == "wm:{my%20map|3}:owner:o"
    assert layout.partition_bell_prefix(10) == "wm:{my%20map|a}:bell:"
    assert layout.pattern() == "wm:{my%20map|*"
    assert layout.control_pattern() == "wm:{my%20map}:*"
    assert layout.bell_prefix() == "wm:{my%20map}:bell:"
