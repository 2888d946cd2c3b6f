"""WaitMap.expect(): register for a key's value, then send, then await it.

Every way out of the block is covered: the value received, an exception or a
cancellation during the send, a cancellation after the value arrived, the value
handed over from another thread, the map closed or the key cancelled inside the
block. And the race that expect() closes: a reply that comes back while the
sender is still yielding in its send. A native ``Task.cancel()`` is in
test_expect_native.py, callers and repliers in many threads in
test_expect_threads.py.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import create_task_group, wait_all_tasks_blocked
from support.checkpoints import assert_checkpoint, assert_yields
from support.expect import assert_nothing_left
from support.workers import JOIN_TIMEOUT, run_in_thread_now

from anyio_waitmap import (
    DuplicateWaiter,
    Expectation,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    Woke,
)

# anyio.NoEventLoopError exists from anyio 4.11 on; with an older anyio the
# package raises a RuntimeError, which NoEventLoopError subclasses.
NoEventLoopError: type[RuntimeError] = getattr(anyio, "NoEventLoopError", RuntimeError)

pytestmark = pytest.mark.anyio


class TestReceiving:
    async def test_value_handed_over_before_the_await(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            assert wm.statistics().tasks_waiting == 1
            assert wm.wake("k", 1) == Woke(1)
            assert wm.statistics().tasks_waiting == 0
            assert await reply == 1
        assert_nothing_left(wm)
        assert "k" not in wm

    async def test_value_handed_over_while_parked(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def reply_later() -> None:
            await wait_all_tasks_blocked()
            assert wm.wake("k", 2) == Woke(1)

        async with create_task_group() as tg:
            with wm.expect("k") as reply:
                tg.start_soon(reply_later)
                assert await reply == 2
        assert_nothing_left(wm)

    async def test_stored_value_is_taken_at_once(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 3
        with wm.expect("k") as reply:
            assert "k" not in wm  # taken when the block was entered
            assert wm.statistics().tasks_waiting == 0
            wm["k"] = 4  # a later value stays stored
            assert await reply == 3
        assert wm["k"] == 4
        assert_nothing_left(wm)

    async def test_stored_value_is_read_with_take_false(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 3
        with wm.expect("k", take=False) as reply:
            assert await reply == 3
        assert wm["k"] == 3

    async def test_wait_style_receives_a_store_and_leaves_it_stored(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k", take=False) as reply:
            wm["k"] = 5
            assert await reply == 5
        assert wm["k"] == 5

    async def test_store_into_a_taker_expectation_is_not_stored(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            wm["k"] = 5
            assert "k" not in wm
            assert await reply == 5
        assert "k" not in wm

    async def test_value_handed_over_from_another_thread(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            assert await anyio.to_thread.run_sync(wm.wake, "k", 6) == Woke(1)
            assert await reply == 6
        with wm.expect("k") as reply:
            async with create_task_group() as tg:

                async def from_a_thread() -> None:
                    await wait_all_tasks_blocked()
                    await anyio.to_thread.run_sync(wm.wake, "k", 7)

                tg.start_soon(from_a_thread)
                assert await reply == 7
        assert_nothing_left(wm)

    async def test_counted_by_wake_and_statistics_with_other_waiters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        got: list[int] = []

        async def wait() -> None:
            got.append(await wm.wait("k"))

        async with create_task_group() as tg:
            tg.start_soon(wait)
            await wait_all_tasks_blocked()
            with wm.expect("k") as reply:
                assert wm.statistics().tasks_waiting == 2
                assert wm.wake("k", 8) == Woke(2)
                assert await reply == 8
        assert got == [8]

    async def test_takers_are_served_in_the_order_they_registered(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        got: list[tuple[str, int]] = []

        async def taker() -> None:
            got.append(("taker", await wm.take("k")))

        async with create_task_group() as tg:
            with wm.expect("k") as reply:
                tg.start_soon(taker)
                await wait_all_tasks_blocked()  # the taker parks after us
                wm["k"] = 1
                wm["k"] = 2
                got.append(("expectation", await reply))
        assert sorted(got) == [("expectation", 1), ("taker", 2)]

    async def test_await_is_a_checkpoint_on_every_path(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def ready() -> int:
            with wm.expect("k") as reply:
                wm.wake("k", 1)
                return await reply

        await assert_checkpoint(ready)

        async def parked() -> int:
            async with create_task_group() as tg:
                with wm.expect("p") as reply:
                    tg.start_soon(_wake_when_blocked, wm, "p", 2)
                    return await reply

        assert await assert_yields(parked) == 2
        assert_nothing_left(wm)


async def _wake_when_blocked(wm: WaitMap[str, int], key: str, value: int) -> None:
    await wait_all_tasks_blocked()
    wm.wake(key, value)


class TestLeavingTheBlock:
    async def test_without_a_value_unregisters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k"):
            pass
        assert_nothing_left(wm)
        assert wm.wake("k", 1) == NoMatch(1)

    async def test_exception_during_the_send_unregisters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with pytest.raises(OSError, match="connection reset"), wm.expect("k"):
            raise OSError("connection reset")
        assert_nothing_left(wm)

    async def test_cancellation_during_the_send_unregisters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with anyio.CancelScope() as scope, wm.expect("k"):
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # the send
        assert scope.cancelled_caught
        assert_nothing_left(wm)

    async def test_value_not_awaited_goes_back_into_the_store(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with anyio.CancelScope() as scope, wm.expect("k"):
            assert wm.wake("k", 1) == Woke(1)
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # cancelled after the reply came
        assert wm["k"] == 1
        assert_nothing_left(wm)

    async def test_stored_value_taken_at_entry_goes_back_if_not_awaited(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        with wm.expect("k"):
            assert "k" not in wm
        assert wm["k"] == 1

    async def test_value_not_awaited_goes_to_the_next_taker(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        got: list[int] = []

        async def taker() -> None:
            got.append(await wm.take("k"))

        async with create_task_group() as tg:
            with wm.expect("k"):
                tg.start_soon(taker)
                await wait_all_tasks_blocked()
                assert wm.wake("k", 1) == Woke(1)  # to the expectation: first
            await wait_all_tasks_blocked()
        assert got == [1]
        assert "k" not in wm

    async def test_value_not_awaited_does_not_replace_a_later_store(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k"):
            assert wm.wake("k", 1) == Woke(1)
            wm["k"] = 2  # nobody waits: stored
        assert wm["k"] == 2

    async def test_wait_style_value_not_awaited_is_dropped(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k", take=False):
            assert wm.wake("k", 1) == Woke(1)
        assert "k" not in wm

    async def test_pending_cancellation_at_the_await_wins_over_the_value(self) -> None:
        """The value is there, but the scope was cancelled: the await raises the
        cancellation, and the value goes back into the store at the exit."""
        wm: WaitMap[str, int] = WaitMap()
        with anyio.CancelScope() as scope, wm.expect("k") as reply:
            assert wm.wake("k", 1) == Woke(1)
            scope.cancel()
            await reply
        assert scope.cancelled_caught
        assert wm["k"] == 1
        assert_nothing_left(wm)

    async def test_cancelled_while_parked(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with anyio.move_on_after(0.01) as scope, wm.expect("k") as reply:
            await reply
        assert scope.cancelled_caught
        assert_nothing_left(wm)
        assert wm.wake("k", 1) == NoMatch(1)

    async def test_map_closed_inside_the_block(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            wm.close()
            with pytest.raises(WaitMapClosed):
                await reply
        assert_nothing_left(wm)

    async def test_map_closed_inside_the_block_with_a_cancellation_pending(
        self,
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with anyio.CancelScope() as scope, wm.expect("k") as reply:
            wm.close()
            scope.cancel()
            await reply  # the cancellation, not WaitMapClosed
        assert scope.cancelled_caught

    async def test_key_cancelled_inside_the_block(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            assert wm.cancel("k") == 1
            with pytest.raises(KeyCancelled):
                await reply
        assert_nothing_left(wm)

    async def test_map_closed_while_parked(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def close_later() -> None:
            await wait_all_tasks_blocked()
            wm.close()

        async with create_task_group() as tg:
            with wm.expect("k") as reply:
                tg.start_soon(close_later)
                with pytest.raises(WaitMapClosed):
                    await reply
        assert_nothing_left(wm)

    async def test_left_while_another_task_awaits_it(self) -> None:
        """Awaiting belongs inside the block; a task that still awaits when the
        block is left gets an error instead of waiting forever."""
        wm: WaitMap[str, int] = WaitMap()
        raised: list[BaseException] = []

        async def await_it(reply: Expectation[str, int]) -> None:
            try:
                await reply
            except RuntimeError as exc:
                raised.append(exc)

        async with create_task_group() as tg:
            with wm.expect("k") as reply:
                tg.start_soon(await_it, reply)
                await wait_all_tasks_blocked()
        assert [str(exc) for exc in raised] == [
            "the block of the expectation awaited was left"
        ]
        assert_nothing_left(wm)


class TestRefused:
    async def test_closed_map(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm.close()
        with pytest.raises(WaitMapClosed), wm.expect("k"):
            pytest.fail("entered")

    async def test_duplicate_in_an_exclusive_map(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        async with create_task_group() as tg:
            tg.start_soon(wm.take, "k")
            await wait_all_tasks_blocked()
            with pytest.raises(DuplicateWaiter), wm.expect("k"):
                pytest.fail("entered")
            assert wm.wake("k", 1) == Woke(1)

    async def test_an_expectation_is_the_key_s_waiter_in_an_exclusive_map(
        self,
    ) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        with wm.expect("k") as reply:
            with pytest.raises(DuplicateWaiter):
                await wm.take("k")
            with pytest.raises(DuplicateWaiter), wm.expect("k"):
                pytest.fail("entered")
            wm.wake("k", 1)
            assert await reply == 1
        assert_nothing_left(wm)

    async def test_unhashable_key(self) -> None:
        wm: WaitMap[Any, int] = WaitMap()
        with pytest.raises(TypeError):
            wm.expect([])

    async def test_awaited_twice(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with wm.expect("k") as reply:
            wm.wake("k", 1)
            assert await reply == 1
            with pytest.raises(RuntimeError, match="only once"):
                await reply

    async def test_awaited_outside_its_block(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        reply = wm.expect("k")
        with pytest.raises(RuntimeError, match="inside its with block"):
            await reply
        with reply:
            pass
        with pytest.raises(RuntimeError, match="inside its with block"):
            await reply

    async def test_entered_twice(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        reply = wm.expect("k")
        with reply, pytest.raises(RuntimeError, match="only once"), reply:
            pass
        assert_nothing_left(wm)
        reply.__exit__(None, None, None)  # left already: nothing to do

    async def test_left_without_being_entered(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm.expect("k").__exit__(None, None, None)
        assert_nothing_left(wm)

    def test_outside_a_task(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with pytest.raises(NoEventLoopError, match="outside of a task"):
            wm.expect("k").__enter__()
        assert_nothing_left(wm)

    async def test_awaited_in_another_event_loop(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        def in_another_loop(reply: Expectation[str, int]) -> None:
            async def await_it() -> object:
                return await reply

            # The backend refuses it: asyncio's future belongs to the loop that
            # entered the block, and trio's task lookup needs a trio task.
            with pytest.raises(RuntimeError):
                asyncio.run(await_it())  # type: ignore[arg-type]

        with wm.expect("k") as reply:
            run_in_thread_now(lambda: in_another_loop(reply))
        assert_nothing_left(wm)


class TestAsyncWith:
    async def test_same_as_with(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        async with wm.expect("k") as reply:
            assert wm.wake("k", 1) == Woke(1)
            assert await reply == 1
        async with wm.expect("k"):
            assert wm.wake("k", 2) == Woke(1)
        assert wm["k"] == 2
        assert_nothing_left(wm)

    async def test_entering_is_a_checkpoint(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def enter() -> None:
            async with wm.expect("k"):
                pass

        await assert_checkpoint(enter)
        assert_nothing_left(wm)

    async def test_pending_cancellation_wins_over_the_refusal(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm.close()
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with wm.expect("k"):
                pytest.fail("entered")
        assert scope.cancelled_caught


# -- the race that expect() closes --------------------------------------------------


class Transport:
    """An in-memory connection whose send() delivers the request, then yields
    (as a stream's send may: the bytes are written, and the writer lets other
    tasks run before it returns). The peer answers as soon as it reads."""

    def __init__(self, replies: WaitMap[int, str]) -> None:
        self.replies = replies
        self.outcomes: list[object] = []

    async def send(self, request_id: int, payload: str) -> None:
        # The peer's answer is read and handed over by the reader task before
        # the sender runs again.
        self.outcomes.append(self.replies.wake(request_id, payload.upper()))
        await anyio.lowlevel.checkpoint()


async def naive_call(transport: Transport, request_id: int) -> str:
    await transport.send(request_id, "ping")
    return await transport.replies.take(request_id)


async def call_with_expect(transport: Transport, request_id: int) -> str:
    with transport.replies.expect(request_id) as reply:
        await transport.send(request_id, "ping")
        return await reply


async def test_naive_send_then_take_misses_the_reply() -> None:
    transport = Transport(WaitMap())
    with anyio.move_on_after(0.05) as scope:
        await naive_call(transport, 1)
    assert scope.cancelled_caught, "the naive call got its reply"
    assert transport.outcomes == [NoMatch("PING")]  # the reply found nobody
    assert_nothing_left(transport.replies)


async def test_expect_then_send_receives_the_reply() -> None:
    transport = Transport(WaitMap())
    with anyio.fail_after(JOIN_TIMEOUT):
        assert await call_with_expect(transport, 1) == "PING"
    assert transport.outcomes == [Woke(1)]
    assert_nothing_left(transport.replies)


# -- nothing leaks ------------------------------------------------------------------


async def test_nothing_is_kept_alive() -> None:
    wm: WaitMap[str, object] = WaitMap()

    class Value:
        pass

    value = Value()
    ref = weakref.ref(value)
    with wm.expect("k") as reply:
        wm.wake("k", value)
        del value
        got = await reply
    assert got is ref()
    del got, reply
    assert ref() is None
    assert_nothing_left(wm)


async def test_repr() -> None:
    wm: WaitMap[str, int] = WaitMap()
    reply = wm.expect("k")
    assert repr(reply) == "<anyio_waitmap.Expectation take 'k' not entered>"
    with reply:
        assert repr(reply) == "<anyio_waitmap.Expectation take 'k' waiting>"
        wm.wake("k", 1)
        assert repr(reply) == "<anyio_waitmap.Expectation take 'k' handed over>"
        await reply
        assert repr(reply) == "<anyio_waitmap.Expectation take 'k' received>"
    assert repr(reply) == "<anyio_waitmap.Expectation take 'k' left>"
    assert repr(wm.expect("k", take=False)).startswith(
        "<anyio_waitmap.Expectation wait 'k'"
    )
    assert reply.take
    assert not wm.expect("k", take=False).take
    assert reply.key == "k"


async def test_many_expectations_and_one_group_of_failures() -> None:
    """Several calls in flight, the connection closes: every pending call gets
    WaitMapClosed, none is left registered."""
    wm: WaitMap[int, str] = WaitMap(exclusive=True)
    results: list[object] = []

    async def call(request_id: int) -> None:
        with wm.expect(request_id) as reply:
            await anyio.lowlevel.checkpoint()
            try:
                results.append(await reply)
            except WaitMapClosed:
                results.append("closed")

    async with create_task_group() as tg:
        for request_id in range(10):
            tg.start_soon(call, request_id)
        await wait_all_tasks_blocked()
        wm.wake(3, "three")
        wm.close()
    assert sorted(map(str, results)) == sorted(["three"] + ["closed"] * 9)
    assert_nothing_left(wm)
