"""WakeSink: a cancellation already pending wins over the errors, on every backend.

A call made in a cancelled scope raises the cancellation, not
``ClosedResourceError`` or ``BusyResourceError``, and polls nothing. The sink's
ready path, and its errors under a native ``Task.cancel()`` that the task
requested itself, are tested with those of the other components in
tests/waitmap/test_map_cancel_precedence_native.py.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from anyio import create_task_group, wait_all_tasks_blocked
from support.cancellation import _raises_cancellation

from anyio_waitmap import WakeSink

# -- errors never hide a cancellation, on every backend ----------------------------


@pytest.mark.anyio
async def test_cancelled_scope_wins_over_a_closed_sink() -> None:
    sink = WakeSink()
    sink.close()
    polled: list[None] = []

    def predicate() -> int | None:
        polled.append(None)
        return 1

    with pytest.raises(anyio.ClosedResourceError):
        await sink.wait_until(predicate)
    await _raises_cancellation(lambda: sink.wait_until(predicate))
    assert polled == []


@pytest.mark.anyio
async def test_cancelled_scope_wins_over_a_busy_sink() -> None:
    sink = WakeSink()
    async with create_task_group() as tg:
        tg.start_soon(sink.wait_until, lambda: None)
        await wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await sink.wait_until(lambda: 1)
        await _raises_cancellation(lambda: sink.wait_until(lambda: 1))
        assert sink.statistics().consumer_waiting
        tg.cancel_scope.cancel()
