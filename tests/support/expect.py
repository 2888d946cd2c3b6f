"""Helpers of the tests of WaitMap.expect() (tests/waitmap/test_expect*.py)."""

from __future__ import annotations

from typing import Any

from anyio_waitmap import WaitMap


def assert_nothing_left(wm: WaitMap[Any, Any]) -> None:
    stats = wm.statistics()
    assert (stats.tasks_waiting, stats.keys_waiting) == (0, 0), stats
    assert wm._waiting == {}  # pyright: ignore[reportPrivateUsage]
