"""lowlevel.Waiter: a hand-over that came before the cancellation wins.

A waiter handed a value before it parked, in a scope cancelled after that:
``park()`` returns the value, is still a checkpoint, and the cancellation comes
at the next one. The same under a native ``Task.cancel()``, and a Waker woken
before its cancellation, are in test_lowlevel_cancel_precedence_native.py.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from anyio_waitmap.lowlevel import Waiter

# -- a waiter handed a value before it parked ---------------------------------------


@pytest.mark.anyio
async def test_waiter_woken_before_it_parks_in_a_cancelled_scope() -> None:
    """The hand-over came before the scope's cancellation: park() returns the
    value, and the cancellation is raised at the next checkpoint."""
    events: list[object] = []
    with anyio.CancelScope() as scope:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        scope.cancel()
        events.append(await waiter.park())
        await anyio.lowlevel.checkpoint()
        events.append("not cancelled")
    assert scope.cancelled_caught
    assert events == [5]


@pytest.mark.anyio
async def test_waiter_woken_before_it_parks_still_yields() -> None:
    """A lowlevel.Waiter that its own task woke before parking: ``park()``
    returns the value, and is still a checkpoint that lets others run."""
    from support.checkpoints import assert_yields

    async def park_woken() -> int:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        return await waiter.park()

    assert await assert_yields(park_woken) == 5
