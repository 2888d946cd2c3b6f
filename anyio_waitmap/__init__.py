"""Await keys, and wake tasks from anywhere: on asyncio, uvloop and trio."""

from __future__ import annotations

from ._exceptions import DuplicateWaiter as DuplicateWaiter
from ._exceptions import KeyCancelled as KeyCancelled
from ._exceptions import WaitMapClosed as WaitMapClosed
from ._outcomes import Closed as Closed
from ._outcomes import NoMatch as NoMatch
from ._outcomes import WaitMapStatistics as WaitMapStatistics
from ._outcomes import WakeOutcome as WakeOutcome
from ._outcomes import Woke as Woke
from ._waitmap import WaitMap as WaitMap

__all__ = [
    "Closed",
    "DuplicateWaiter",
    "KeyCancelled",
    "NoMatch",
    "WaitMap",
    "WaitMapClosed",
    "WaitMapStatistics",
    "WakeOutcome",
    "Woke",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and _name != "WakeOutcome":
        _obj.__module__ = __name__
del _name, _obj
