"""WakeSink and WakeSource: a path that only a rare interleaving reaches, forced.

The consumer takes its waker back between the two reads of the slot that a
``notify()`` makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support.edges import _state

from anyio_waitmap import WakeSource
from anyio_waitmap._wakers import ConsumerSlot
from anyio_waitmap.lowlevel import Waker

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings]


class _ConsumerLeavingBetweenTwoReads:
    """Stands in for a sink whose consumer unregisters its waker right after a
    notifier's first read of the slot: the reads return ``waker``, then None."""

    def __init__(self, waker: Waker) -> None:
        self.reads: list[Waker | None] = [waker, None]
        self.count = 0

    @property
    def _waker(self) -> Waker | None:
        self.count += 1
        return self.reads.pop(0) if self.reads else None


@pytest.mark.parametrize(
    "notify",
    [
        pytest.param(ConsumerSlot.notify, id="WakeSink"),
        pytest.param(lambda sink: WakeSource(sink).notify(), id="WakeSource"),
    ],
)
async def test_notify_when_the_consumer_leaves_between_its_two_reads(
    notify: Callable[[Any], None],
) -> None:
    # notify() tests the slot, then reads it again for the call: the waker that
    # the consumer took back in between is left alone.
    waker = Waker()
    sink = _ConsumerLeavingBetweenTwoReads(waker)
    notify(sink)
    assert sink.count == 2
    assert _state(waker) == "idle"
