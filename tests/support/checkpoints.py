"""Checks that an async call is a checkpoint, on any anyio backend.

A checkpoint does two things: it raises the cancellation if the task is in a
cancelled scope, and it lets other tasks run. Each is checked separately, so a
fast path that only does one of them fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import trio.testing
from trio.lowlevel import in_trio_task

T = TypeVar("T")


async def assert_yields(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call()`` and fail unless it let other tasks run.

    On trio, the scheduler's own accounting says so: trio picks the order of
    runnable tasks at random, so "did this other task run" would be a coin toss.
    On asyncio, runnable tasks run in order, so a task started just before the
    call runs while the call is suspended, and only then.
    """
    if in_trio_task():
        with trio.testing.assert_checkpoints():
            return await call()
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        result = await call()
        assert ran, "the call returned without letting other tasks run"
    return result


async def assert_cancellable(call: Callable[[], Awaitable[object]]) -> None:
    """Run ``call()`` in a cancelled scope; fail unless it raises the cancellation."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await call()
    assert scope.cancelled_caught, "the call did not check for cancellation"


async def assert_checkpoint(
    call: Callable[[], Awaitable[T]], prepare: Callable[[], object] = lambda: None
) -> T:
    """Both checks; ``prepare()`` runs before each, to set up the same path."""
    prepare()
    await assert_cancellable(call)
    prepare()
    return await assert_yields(call)
