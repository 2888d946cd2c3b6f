"""Await keys, and wake tasks from anywhere: on asyncio, uvloop and trio."""

from __future__ import annotations

from ._exceptions import DuplicateWaiter as DuplicateWaiter
from ._exceptions import KeyCancelled as KeyCancelled
from ._exceptions import WaitMapClosed as WaitMapClosed
from ._expectation import Expectation as Expectation
from ._outcomes import Closed as Closed
from ._outcomes import NoMatch as NoMatch
from ._outcomes import WaitMapStatistics as WaitMapStatistics
from ._outcomes import WakeOutcome as WakeOutcome
from ._outcomes import Woke as Woke
from ._sink import WakeSink as WakeSink
from ._sink import WakeSinkStatistics as WakeSinkStatistics
from ._sink import WakeSource as WakeSource
from ._waitmap import WaitMap as WaitMap

__all__ = [
    "Closed",
    "DuplicateWaiter",
    "Expectation",
    "KeyCancelled",
    "NoMatch",
    "WaitMap",
    "WaitMapClosed",
    "WaitMapStatistics",
    "WakeOutcome",
    "WakeSink",
    "WakeSinkStatistics",
    "WakeSource",
    "Woke",
]


def _set_public_module() -> None:
    # Show the public classes as anyio_waitmap.X in reprs, tracebacks and docs.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            obj.__module__ = __name__


_set_public_module()
