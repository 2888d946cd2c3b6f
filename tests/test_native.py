"""WaitMap under the native runners and native asyncio cancellation.

These tests run their own event loops (``asyncio.run``, ``uvloop``, ``trio.run``)
instead of going through the anyio plugin, so that nothing anyio sets up is
needed: a plain asyncio or trio program can use the map as it is.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trio
import trio.testing

from anyio_waitmap import KeyCancelled, NoMatch, WaitMap, WaitMapClosed, Woke

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test dependency group
    uvloop = None  # type: ignore[assignment]

RUNNERS: list[Any] = [pytest.param(asyncio.run, id="asyncio.run")]
if uvloop is not None:
    RUNNERS.append(pytest.param(uvloop.run, id="uvloop.run"))

needs_uncancel = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="Task.uncancel() and asyncio.timeout are 3.11+"
)


@pytest.fixture(params=RUNNERS)
def run_asyncio(
    request: pytest.FixtureRequest,
) -> Callable[[Coroutine[Any, Any, None]], None]:
    return request.param  # type: ignore[no-any-return]


def test_asyncio_run(run_asyncio: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        waiters = [asyncio.create_task(wm.wait("k")) for _ in range(3)]
        taker = asyncio.create_task(wm.take("k"))
        await asyncio.sleep(0)
        assert wm.wake("k", 1) == Woke(4)
        assert await asyncio.gather(*waiters, taker) == [1, 1, 1, 1]
        cancelled = asyncio.create_task(wm.take("k"))
        await asyncio.sleep(0)
        assert wm.cancel("k") == 1
        with pytest.raises(KeyCancelled):
            await cancelled
        assert wm.statistics().tasks_waiting == 0

    run_asyncio(main())


def test_trio_run() -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        results: list[int] = []

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert wm.wake("k", 1) == Woke(3)
        assert results == [1, 1, 1]
        with trio.move_on_after(0.01) as scope:
            await wm.take("k")
        assert scope.cancelled_caught
        assert wm.statistics().tasks_waiting == 0

    trio.run(main)


@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
def test_task_cancel_after_hand_over_keeps_value(
    run_asyncio: Callable[[Coroutine[Any, Any, None]], None], method: str
) -> None:
    """Task.cancel() between the hand-over and the resumption: the value is
    returned, and the task still ends cancelled at its next checkpoint."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []

        async def waiter() -> None:
            call = {
                "wait": lambda: wm.wait("k"),
                "take": lambda: wm.take("k"),
                "wait_for": lambda: wm.wait_for("k", bool),
            }[method]
            events.append(await call())
            if sys.version_info >= (3, 11):
                events.append(("cancelling", asyncio.current_task().cancelling()))  # type: ignore[union-attr]
            await asyncio.sleep(0)
            events.append("not cancelled")

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        assert wm.wake("k", 7) == Woke(1)
        task.cancel("stop")  # the task has not resumed yet
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        expected: list[object] = [7]
        if sys.version_info >= (3, 11):
            expected.append(("cancelling", 1))
        assert events == expected
        assert wm.statistics().tasks_waiting == 0
        assert "k" not in wm

    run_asyncio(main())


@needs_uncancel
@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
def test_asyncio_timeout_after_hand_over_keeps_value(method: str) -> None:
    """asyncio.timeout() expiring between the hand-over and the resumption: the
    value is returned, and the block still raises TimeoutError."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []
        timeouts: list[asyncio.Timeout] = []

        async def waiter() -> None:
            call = {
                "wait": lambda: wm.wait("k"),
                "take": lambda: wm.take("k"),
                "wait_for": lambda: wm.wait_for("k", bool),
            }[method]
            try:
                async with asyncio.timeout(60) as timeout:
                    timeouts.append(timeout)
                    events.append(await call())
                    # Already marked cancelled: the race really happened.
                    events.append(("cancelling", asyncio.current_task().cancelling()))  # type: ignore[union-attr]
                    await asyncio.sleep(0)
                    events.append("not cancelled")
            except TimeoutError:
                events.append("TimeoutError")
            events.append(("cancelling", asyncio.current_task().cancelling()))  # type: ignore[union-attr]

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        # Make the timeout due now: a timeout already due is expired by a
        # callback (call_soon), which runs before the task's resumption that
        # the hand-over schedules next.
        timeouts[0].reschedule(loop.time())
        assert wm.wake("k", 7) == Woke(1)
        await task
        assert events == [7, ("cancelling", 1), "TimeoutError", ("cancelling", 0)]
        assert wm.statistics().tasks_waiting == 0

    asyncio.run(main())


@needs_uncancel
@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
def test_asyncio_timeout_before_hand_over_refuses_it(method: str) -> None:
    """asyncio.timeout() expired before the hand-over, but the task has not
    run yet: the cancellation came first, so the task receives nothing (the
    value comes back as NoMatch) and the block raises TimeoutError."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []
        timeouts: list[asyncio.Timeout] = []

        async def waiter() -> None:
            call = {
                "wait": lambda: wm.wait("k"),
                "take": lambda: wm.take("k"),
                "wait_for": lambda: wm.wait_for("k", bool),
            }[method]
            try:
                async with asyncio.timeout(60) as timeout:
                    timeouts.append(timeout)
                    events.append(await call())
            except TimeoutError:
                events.append("TimeoutError")
            events.append(("cancelling", asyncio.current_task().cancelling()))  # type: ignore[union-attr]

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        timeouts[0].reschedule(loop.time())
        await asyncio.sleep(0)  # the timeout expires: the task's future is cancelled
        assert wm.statistics().tasks_waiting == 1  # it has not run yet
        assert wm.wake("k", 7) == NoMatch(7)
        await task
        assert events == ["TimeoutError", ("cancelling", 0)]
        assert wm.statistics().tasks_waiting == 0
        assert "k" not in wm

    asyncio.run(main())


@needs_uncancel
def test_asyncio_timeout_before_hand_over_leaves_nothing() -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await wm.take("k")
        assert wm.statistics().tasks_waiting == 0
        assert wm.wake("k", 1).__class__.__name__ == "NoMatch"

    asyncio.run(main())


@needs_uncancel
def test_task_group_sibling_failure_cancels_waiters() -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def fail() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        with pytest.raises(BaseExceptionGroup) as caught:  # noqa: PT012
            async with asyncio.TaskGroup() as tg:
                for method in (wm.wait, wm.take):
                    tg.create_task(method("k"))
                tg.create_task(fail())
        assert caught.group_contains(ValueError, match="boom")
        assert wm.statistics().tasks_waiting == 0

    asyncio.run(main())


class TestAbandonedValue:
    """A task that is thrown a non-cancellation exception after it was handed a
    value cannot return it: a taken value is passed on, never dropped.

    The coroutine is driven by hand so that the exception arrives exactly
    between the hand-over and the resumption.
    """

    @staticmethod
    def start_take(wm: WaitMap[str, int]) -> Coroutine[Any, Any, int]:
        coro = wm.take("k")
        coro.send(None)  # parks: the waiter is linked
        assert wm.statistics().tasks_waiting == 1
        return coro

    def test_value_is_stored_again(self) -> None:
        async def main() -> None:
            wm: WaitMap[str, int] = WaitMap()
            coro = self.start_take(wm)
            assert wm.wake("k", 7) == Woke(1)
            with pytest.raises(RuntimeError, match="thrown in"):
                coro.throw(RuntimeError("thrown in"))
            assert wm["k"] == 7
            assert wm.statistics().tasks_waiting == 0

        asyncio.run(main())

    def test_value_goes_to_the_next_taker(self) -> None:
        async def main() -> None:
            wm: WaitMap[str, int] = WaitMap()
            coro = self.start_take(wm)
            second = asyncio.create_task(wm.take("k"))
            await asyncio.sleep(0)
            wm["k"] = 7  # the first taker receives it, the second keeps waiting
            assert wm.statistics().tasks_waiting == 1
            coro.close()  # GeneratorExit, as when an abandoned task is collected
            assert await second == 7
            assert "k" not in wm

        asyncio.run(main())

    def test_later_store_is_not_overwritten(self) -> None:
        async def main() -> None:
            wm: WaitMap[str, int] = WaitMap()
            coro = self.start_take(wm)
            wm["k"] = 7  # taken by the parked taker
            wm["k"] = 8  # stored: it came later and replaces 7, as in a dict
            with pytest.raises(KeyboardInterrupt):
                coro.throw(KeyboardInterrupt())
            assert wm["k"] == 8

        asyncio.run(main())

    def test_closed_map_keeps_it_readable(self) -> None:
        async def main() -> None:
            wm: WaitMap[str, int] = WaitMap()
            coro = self.start_take(wm)
            wm["k"] = 7
            wm.close()
            coro.close()
            assert wm["k"] == 7
            with pytest.raises(WaitMapClosed):
                await wm.take("k")

        asyncio.run(main())

    def test_wait_drops_nothing_either(self) -> None:
        async def main() -> None:
            wm: WaitMap[str, int] = WaitMap()
            coro = wm.wait("k")
            coro.send(None)
            assert wm.wake("k", 7) == Woke(1)
            coro.close()  # a wait() consumed nothing: nothing to pass on
            assert "k" not in wm
            assert wm.statistics().tasks_waiting == 0

        asyncio.run(main())
