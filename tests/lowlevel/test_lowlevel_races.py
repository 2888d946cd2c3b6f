"""lowlevel.Waiter: deterministic races between a wake-up from a thread and a
cancellation.

A thread hands something to a parked task; the call that resumes the task is
queued into its event loop but has not run, because the loop's thread has not
yielded since. The loop's thread then cancels the task. Whatever the backend
does with that (trio calls the abort function at once; asyncio cancels the
task's future), the hand-over must not be lost or delivered twice. The same
race for the map and the sink is in tests/waitmap/test_map_races.py and
tests/sink/test_sink_races.py.
"""

from __future__ import annotations

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.workers import run_in_thread_now

from anyio_waitmap.lowlevel import Waiter

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings, pytest.mark.threads]


async def test_lowlevel_waiter_woken_from_thread_then_cancelled() -> None:
    scope = CancelScope()
    events: list[object] = []
    aborted: list[None] = []
    waiters: list[Waiter[int]] = []

    async def task() -> None:
        with scope:
            waiter: Waiter[int] = Waiter(on_abort=lambda: aborted.append(None))
            waiters.append(waiter)
            events.append(await waiter.park())
            await anyio.lowlevel.checkpoint()

    async with create_task_group() as tg:
        tg.start_soon(task)
        await wait_all_tasks_blocked()
        assert run_in_thread_now(lambda: waiters[0].wake(3)) is True
        scope.cancel()
    assert events == [3]
    assert scope.cancelled_caught
    assert aborted == [], "on_abort ran for a waiter that was woken"
