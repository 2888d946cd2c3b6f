"""WaitMap.expect() under the native runners: native asyncio cancellation.

A ``Task.cancel()`` that comes after the reply was handed over, before or at
``await reply``: the value is returned, or passed on to the next taker when the
block is left (as in test_expect.py, for the other ways out of the block).
"""

from __future__ import annotations

import asyncio

import pytest
from support.expect import assert_nothing_left
from support.loops import Runner
from support.workers import JOIN_TIMEOUT

from anyio_waitmap import WaitMap, Woke

pytestmark = [pytest.mark.anyio, pytest.mark.native]


# -- native asyncio cancellation ----------------------------------------------------


def test_pending_task_cancel_at_the_await_passes_the_value_on(
    run_asyncio: Runner,
) -> None:
    """The task cancelled itself after the reply came: ``await reply`` raises
    CancelledError, and the value goes on to the next taker at the exit."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        next_taker = asyncio.create_task(wm.take("k"))

        async def caller() -> None:
            with wm.expect("k") as reply:
                assert wm.wake("k", 1) == Woke(1)
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                await reply

        await asyncio.sleep(0)  # the next taker parks first, then the caller
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(caller())
        assert await asyncio.wait_for(next_taker, JOIN_TIMEOUT) == 1
        assert_nothing_left(wm)

    run_asyncio(main())


def test_task_cancel_after_the_value_came_returns_it(run_asyncio: Runner) -> None:
    """Task.cancel() from another task after the hand-over, while the caller is
    parked: the value is returned, and the cancellation comes next."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []

        async def caller() -> None:
            with wm.expect("k") as reply:
                events.append(await reply)
            await asyncio.sleep(0)
            events.append("not cancelled")

        task = asyncio.create_task(caller())
        await asyncio.sleep(0)
        assert wm.wake("k", 1) == Woke(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events == [1]
        assert_nothing_left(wm)

    run_asyncio(main())
