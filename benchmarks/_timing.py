"""What every benchmark here shares: how one sample is timed."""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable

Row = Callable[[], Awaitable[None]]
Runner = Callable[[Row], None]


def sample(run: Runner, row: Row) -> float:
    """Seconds that ``run(row)`` takes in a fresh event loop.

    The cyclic garbage collector runs before the sample and is disabled during
    it, so that a collection triggered by an earlier row is not charged here.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        run(row)
        return time.perf_counter() - start
    finally:
        gc.enable()
