"""lowlevel.Waiter and Waker: a hand-over that came before a native cancellation wins.

Under the native runners (``asyncio.run``, ``uvloop.run``): a Waiter woken
before its task requested its own cancellation returns the value, and a Waker
whose park() a ``Task.cancel()`` ended after the wake-up keeps the wake-up for
the next park().
"""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest
from support.cancellation import _cancel_me
from support.loops import Runner

from anyio_waitmap.lowlevel import Waiter, Waker

pytestmark = pytest.mark.native

# -- a waiter handed a value before it parked ---------------------------------------


def test_waiter_woken_before_it_parks_keeps_the_value(run_asyncio: Runner) -> None:
    """The hand-over came before the cancellation: the value is returned, and
    the cancellation is raised at the next checkpoint."""
    events: list[object] = []

    async def task() -> None:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        _cancel_me()
        events.append(await waiter.park())
        await asyncio.sleep(0)
        events.append("not cancelled")

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(task())

    run_asyncio(main())
    assert events == [5]


def test_waker_cancelled_after_a_wake_up_keeps_it(run_asyncio: Runner) -> None:
    """A wake-up resumed a park() that ``Task.cancel()`` then ended with
    CancelledError before it could return: the wake-up is kept, and the next
    park() returns at once."""

    async def main() -> None:
        waker = Waker()
        parker = asyncio.create_task(waker.park())
        await asyncio.sleep(0)
        waker.wake()
        parker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await parker
        assert "notified" in repr(waker)
        with anyio.fail_after(5):
            await waker.park()
        assert "idle" in repr(waker)

    run_asyncio(main())
