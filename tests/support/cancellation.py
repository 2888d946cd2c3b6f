"""Cancellations that come before a call, for the cancel-precedence tests.

A task that requests its own cancellation just before the call (``Task.cancel()``
on the running task), a call made in a cancelled scope, and a closed map whose
calls raise an error that the cancellation must win over. Shared by
tests/*/test_*_cancel_precedence*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from anyio_waitmap import WaitMap


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
