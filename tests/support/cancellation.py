"""Cancellations that come before a call, or after a hand-over.

A task that requests its own cancellation just before the call (``Task.cancel()``
on the running task), a call made in a cancelled scope, and a closed map whose
calls raise an error that the cancellation must win over: shared by
tests/*/test_*_cancel_precedence*.py. A task cancelled with ``Task.cancel()``
after it was handed a value, and what it must then have recorded: shared by
tests/*/test_*_native_handover.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from anyio_waitmap import WaitMap

# -- a cancellation that comes before the call -------------------------------------


def _cancel_me() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel("requested before the call")


async def _raises_cancellation(start: Callable[[], Awaitable[object]]) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await start()
    assert scope.cancelled_caught


def _closed_map() -> WaitMap[str, int]:
    wm: WaitMap[str, int] = WaitMap()
    wm["k"] = 1  # a stored value does not make a closed map's waits succeed
    wm.close()
    return wm


# -- a native cancellation that comes after the hand-over --------------------------


def cancelling() -> int | None:
    """``Task.cancelling()`` of the running task, where Python has it."""
    if sys.version_info < (3, 11):
        return None
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def run_and_cancel(
    call: Callable[[], Awaitable[object]], cancel_after: Callable[[], object]
) -> list[object]:
    """Start ``call()`` in a task, let it run to its first suspension, run
    ``cancel_after()`` and cancel the task with a message before it resumes.

    Returns what the task recorded: the value, ``Task.cancelling()`` right
    after, and the message of the cancellation that ended it.
    """
    events: list[object] = []

    async def task_body() -> None:
        events.append(await call())
        events.append(("cancelling", cancelling()))
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            events.append(("cancelled", exc.args))
            raise
        events.append("not cancelled")

    task = asyncio.create_task(task_body())
    await asyncio.sleep(0)
    cancel_after()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    if sys.version_info >= (3, 11):
        # Awaiting a cancelled task passes the message on from 3.11 (before,
        # the awaiter gets a CancelledError of its own, without it). Inside the
        # task the message is checked on every version (see expected()).
        assert info.value.args == ("stop",)
    assert task.cancelled()
    return events


def expected(value: object) -> list[object]:
    return [
        value,
        ("cancelling", None if sys.version_info < (3, 11) else 1),
        ("cancelled", ("stop",)),
    ]
