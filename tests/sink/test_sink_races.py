"""WakeSink: deterministic races between a wake-up from a thread and a cancellation.

A thread hands something to a parked task; the call that resumes the task is
queued into its event loop but has not run, because the loop's thread has not
yielded since. The loop's thread then cancels the task. Whatever the backend
does with that (trio calls the abort function at once; asyncio cancels the
task's future), the hand-over must not be lost or delivered twice. The same
race for the map and lowlevel.Waiter is in tests/waitmap/test_map_races.py and
tests/lowlevel/test_lowlevel_races.py.
"""

from __future__ import annotations

import collections

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.workers import run_in_thread_now

from anyio_waitmap import WakeSink

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings, pytest.mark.threads]


async def test_sink_notified_from_thread_then_cancelled() -> None:
    sink = WakeSink()
    items: collections.deque[int] = collections.deque()
    scope = CancelScope()
    got: list[object] = []
    checks = 0

    def pop() -> int | None:
        nonlocal checks
        checks += 1
        return items.popleft() if items else None

    async def consumer() -> None:
        with scope:
            got.append(await sink.wait_until(pop))
            await anyio.lowlevel.checkpoint()
            got.append("not cancelled")

    async with create_task_group() as tg:
        tg.start_soon(consumer)
        await wait_all_tasks_blocked()
        items.append(5)
        run_in_thread_now(sink.notify)
        scope.cancel()
    assert scope.cancelled_caught
    # Either the consumer resumed and took the item (trio: the abort function
    # refused, the queued resumption ran), or it left before checking (asyncio:
    # the cancelled future won). Never both, never neither.
    assert (got, list(items)) in [([5], []), ([], [5])]
    assert checks in (2, 3)
    assert not sink.statistics().consumer_waiting
    # The sink is clean: a new consumer takes the item if it is still there.
    if items:
        assert await sink.wait_until(pop) == 5
