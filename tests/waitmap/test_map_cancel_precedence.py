"""WaitMap: a cancellation already pending wins over the errors, on every backend.

A checkpoint with a cancellation pending raises it before doing anything, as
``await asyncio.sleep(0)`` and ``await anyio.lowlevel.checkpoint()`` do. Every
async method here is a checkpoint, so a call made with a cancellation pending
raises it with no side effect: nothing is consumed (a stored value, a queued
item, a wake-up), nothing stays registered, and no error of ours
(``WaitMapClosed``, ``DuplicateWaiter``, ``ClosedResourceError``,
``BusyResourceError``, ``KeyCancelled``) comes first.

Here the cancellation is that of a cancelled scope, on every backend. A native
``Task.cancel()`` that a task requested itself is in
test_map_cancel_precedence_native.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import create_task_group, wait_all_tasks_blocked
from support.cancellation import _closed_map, _raises_cancellation

from anyio_waitmap import DuplicateWaiter, WaitMap, WaitMapClosed, Woke

# -- errors never hide a cancellation, on every backend ----------------------------


ERROR_CALLS: dict[str, tuple[type[BaseException], Callable[[], Any]]] = {
    "wait on a closed map": (WaitMapClosed, lambda: _closed_map().wait("k")),
    "take on a closed map": (WaitMapClosed, lambda: _closed_map().take("k")),
    "wait_for on a closed map": (
        WaitMapClosed,
        lambda: _closed_map().wait_for("k", bool),
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", ERROR_CALLS)
async def test_cancelled_scope_wins_over_the_error(name: str) -> None:
    error, start = ERROR_CALLS[name]
    with pytest.raises(error):  # the error is there to be hidden
        await start()
    await _raises_cancellation(start)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
async def test_cancelled_scope_wins_over_duplicate_waiter(method: str) -> None:
    wm: WaitMap[str, int] = WaitMap(exclusive=True)
    calls = {
        "wait": lambda: wm.wait("k"),
        "take": lambda: wm.take("k"),
        "wait_for": lambda: wm.wait_for("k", bool),
    }
    async with create_task_group() as tg:
        tg.start_soon(wm.wait, "k")
        await wait_all_tasks_blocked()
        with pytest.raises(DuplicateWaiter):
            await calls[method]()
        await _raises_cancellation(calls[method])
        assert wm.statistics().tasks_waiting == 1
        assert wm.wake("k", 1) == Woke(1)


@pytest.mark.anyio
async def test_cancelled_scope_parking_is_not_counted_by_cancel() -> None:
    """A task in a cancelled scope that has to park leaves at its park: on trio
    at once; on asyncio when anyio delivers the cancellation, in the next turn
    of the loop (see the guarantees in the docs). From then on, ``cancel()``
    does not count it, and it raises the cancellation, not KeyCancelled."""
    wm: WaitMap[str, int] = WaitMap()
    outcomes: list[str] = []

    async def waiter() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await wm.wait("k")
            except anyio.get_cancelled_exc_class():
                outcomes.append("cancelled")
                raise

    async with create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        await anyio.lowlevel.checkpoint()  # one more turn of the loop
        assert wm.cancel("k") == 0
    assert outcomes == ["cancelled"]
    assert wm.statistics().tasks_waiting == 0
