"""Notify with nobody waiting: what a wake-up call costs when it finds no waiter.

Per call, on asyncio, asyncio+uvloop and trio: ``WaitMap.wake`` on a missing key
compared with ``dict.pop(key, None)`` (target: at most 4x) and with a Python
method that only calls it; ``WakeSink.notify`` and ``WakeSource.notify``
compared with the loop's own ``Event.set`` on an event already set. The calls
are synchronous: each row times them itself with ``timeit`` (the statement is
compiled into its loop) inside the event loop, whose start and end are not
charged. None of them touches the loop, which the table shows.

Rows are sampled as ``common/scenario.py`` says; ``wakers.py`` runs this scenario
with the others, into one report.

From the repository root (``python -m benchmarks.wakers_idle`` works too):

    python benchmarks/wakers_idle.py [--rounds 15] [--json FILE] [--quick]
                                     [--pin CPU]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
import timeit

import trio

from anyio_waitmap import WaitMap, WakeSink
from benchmarks.common import cli
from benchmarks.common.scenario import SELF_TIMED, Scenario
from benchmarks.common.timing import Row

IDLE_CALLS = 200_000  # calls per sample


def quick() -> None:
    global IDLE_CALLS
    IDLE_CALLS = 1_000


def _time_calls(statement: str, **names: object) -> None:
    # Timed here, so that starting and closing the event loop is not charged.
    row = sys._getframe(1).f_code.co_name
    SELF_TIMED[row] = timeit.Timer(statement, globals=names).timeit(IDLE_CALLS)


async def idle_dict_pop() -> None:
    """raw for WaitMap.wake: dict.pop(key, None), key missing"""
    _time_calls("pop(1, None)", pop={}.pop)


class _PopInAMethod:
    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[int, None] = {}

    def wake(self, key: int, value: None) -> None:
        return self._data.pop(key, value)


async def idle_python_method_pop() -> None:
    """floor of any Python method: one that calls dict.pop(key, None)"""
    _time_calls("wake(1, None)", wake=_PopInAMethod().wake)


async def idle_waitmap_wake() -> None:
    """WaitMap.wake(key, value), no task waits on any key"""
    _time_calls("wake(1, None)", wake=WaitMap[int, None]().wake)


async def idle_asyncio_event_set() -> None:
    """raw for notify: asyncio.Event.set on an event already set"""
    event = asyncio.Event()
    event.set()
    _time_calls("set()", set=event.set)


async def idle_trio_event_set() -> None:
    """raw for notify: trio.Event.set on an event already set"""
    event = trio.Event()
    event.set()
    _time_calls("set()", set=event.set)


async def idle_asyncio_event_set_clear() -> None:
    """asyncio.Event set then clear, nobody waiting"""
    event = asyncio.Event()
    _time_calls("set(); clear()", set=event.set, clear=event.clear)


async def idle_sink_notify() -> None:
    """WakeSink.notify, nobody waiting"""
    _time_calls("notify()", notify=WakeSink().notify)


async def idle_source_notify() -> None:
    """WakeSource.notify, nobody waiting"""
    _time_calls("notify()", notify=WakeSink().source().notify)


IDLE_ASYNCIO: list[Row] = [
    idle_dict_pop,
    idle_python_method_pop,
    idle_waitmap_wake,
    idle_asyncio_event_set,
    idle_asyncio_event_set_clear,
    idle_sink_notify,
    idle_source_notify,
]
IDLE_TRIO: list[Row] = [
    idle_dict_pop,
    idle_python_method_pop,
    idle_waitmap_wake,
    idle_trio_event_set,
    idle_sink_notify,
    idle_source_notify,
]

SCENARIO = Scenario(
    "notify with nobody waiting (per call)",
    "idle",
    "ns/call",
    lambda: IDLE_CALLS,
    {"asyncio": IDLE_ASYNCIO, "uvloop": IDLE_ASYNCIO, "trio": IDLE_TRIO},
    quick,
    baselines={
        "idle_waitmap_wake": "idle_dict_pop",
        "idle_asyncio_event_set": "idle_asyncio_event_set",
        "idle_trio_event_set": "idle_trio_event_set",
        "idle_asyncio_event_set_clear": "idle_asyncio_event_set",
        "idle_sink_notify": "event_set",
        "idle_source_notify": "event_set",
    },
    targets={"idle_waitmap_wake": 4.0},
)


def main() -> None:
    cli.main(__file__, __doc__, [SCENARIO])


if __name__ == "__main__":
    main()
