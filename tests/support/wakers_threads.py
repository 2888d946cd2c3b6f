"""Helpers of the thread tests of the sink and of the lowlevel wakers.

tests/sink/test_sink_threads.py and tests/lowlevel/test_lowlevel_threads.py;
the fixture ``unpark_calls`` that both use is in conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

from anyio_waitmap.lowlevel import Waker
from support.workers import JOIN_TIMEOUT

#: The seed of every random choice of these tests: the same every run.
SEED = 20240611


def _state(waker: Waker | None) -> str:
    """The waker's state as its repr shows it: idle, parked, woken or notified."""
    if waker is None:
        return "unregistered"
    return repr(waker).split()[1]


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Let other tasks run until ``condition`` holds; fail if it never does."""
    with anyio.move_on_after(JOIN_TIMEOUT):
        while True:
            if condition():
                return
            await anyio.sleep(0.0005)
    raise AssertionError(f"gave up waiting for {what}")
