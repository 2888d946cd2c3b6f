"""WaitMap: deterministic races between a wake-up from a thread and a cancellation.

A thread hands something to a parked task; the call that resumes the task is
queued into its event loop but has not run, because the loop's thread has not
yielded since. The loop's thread then cancels the task. Whatever the backend
does with that (trio calls the abort function at once; asyncio cancels the
task's future), the hand-over must not be lost or delivered twice. The same
race for the sink and lowlevel.Waiter is in tests/sink/test_sink_races.py and
tests/lowlevel/test_lowlevel_races.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.workers import run_in_thread_now

from anyio_waitmap import WaitMap, Woke

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings, pytest.mark.threads]


@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
@pytest.mark.parametrize("hand_over", ["wake", "store"])
async def test_waitmap_woken_from_thread_then_cancelled(
    method: str, hand_over: str
) -> None:
    wm: WaitMap[str, int] = WaitMap()
    scope = CancelScope()
    events: list[object] = []
    calls: dict[str, Callable[[], Any]] = {
        "wait": lambda: wm.wait("k"),
        "take": lambda: wm.take("k"),
        "wait_for": lambda: wm.wait_for("k", bool),
    }

    async def waiter() -> None:
        with scope:
            events.append(await calls[method]())
            await anyio.lowlevel.checkpoint()
            events.append("not cancelled")

    async with create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        if hand_over == "wake":
            assert run_in_thread_now(lambda: wm.wake("k", 7)) == Woke(1)
        else:
            run_in_thread_now(lambda: wm.__setitem__("k", 7))
        scope.cancel()  # the resumption from the thread has not run yet
    assert events == [7], "the value handed over was not returned"
    assert scope.cancelled_caught, "the cancellation was lost"
    assert ("k" in wm) == (hand_over == "store" and method != "take")
    assert wm.statistics().tasks_waiting == 0
