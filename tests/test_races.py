"""Deterministic races between a wake-up from another thread and a cancellation.

A thread hands something to a parked task; the call that resumes the task is
queued into its event loop but has not run, because the loop's thread has not
yielded since. The loop's thread then cancels the task. Whatever the backend
does with that (trio calls the abort function at once; asyncio cancels the
task's future), the hand-over must not be lost or delivered twice.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.workers import run_in_thread_now

from anyio_waitmap import WaitMap, WakeSink, Woke
from anyio_waitmap.lowlevel import Waiter

pytestmark = pytest.mark.anyio


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
