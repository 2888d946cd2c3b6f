"""Cancelling many parked waiters, and the memory a parked waiter costs.

Cancellation: N tasks park (each on its own key), then one cancel scope
cancels them all. Reported, on asyncio, asyncio+uvloop and trio: time per
cancelled waiter (from the cancel until every task has finished; interleaved
rounds, a fresh event loop per sample, cyclic GC collected before and disabled
during the sample), what each implementation left behind (entries still in its
bookkeeping), and the objects that only the cyclic GC could free once the run
is over, beyond what a run with no waiter leaves. Where that is not nothing,
a "why" line breaks it down by type against the raw row of the same loop: what
the raw row leaves comes from the event loop and anyio's task group, not from
the way the task waits.

Memory: N tasks park; tracemalloc reports the memory allocated while they
park, per task (the task and its coroutine included), and as a ratio to raw.

From the repository root (``python -m benchmarks.cancel_memory`` works too):

    python benchmarks/cancel_memory.py [--waiters 10000] [--rounds 9] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import gc
import json
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import anyio
import trio
import trio.testing

from anyio_waitmap import WaitMap
from benchmarks.common.timing import (
    print_header,
    print_legend,
    print_machine,
    print_row,
    summarize,
)

N = 10_000


@dataclass
class Outcome:
    seconds: float  # from the cancel until every task finished
    left: int  # entries still in the implementation's bookkeeping


# -- parking rows: each returns (park one key, bookkeeping size) -------------------


def asyncio_raw_row() -> tuple[Callable[[int], Awaitable[Any]], Callable[[], int]]:
    futures: dict[int, asyncio.Future[int]] = {}

    async def park(key: int) -> int:
        future = futures[key] = asyncio.get_running_loop().create_future()
        try:
            return await future
        finally:
            del futures[key]

    return park, lambda: len(futures)


def trio_raw_row() -> tuple[Callable[[int], Awaitable[Any]], Callable[[], int]]:
    tasks: dict[int, trio.lowlevel.Task] = {}

    async def park(key: int) -> object:
        tasks[key] = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            del tasks[key]
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    return park, lambda: len(tasks)


def waitmap_row() -> tuple[Callable[[int], Awaitable[Any]], Callable[[], int]]:
    wm: WaitMap[int, int] = WaitMap()
    return wm.wait, lambda: wm.statistics().tasks_waiting + len(wm._waiting)


def anyio_event_row() -> tuple[Callable[[int], Awaitable[Any]], Callable[[], int]]:
    events: dict[int, anyio.Event] = {}

    async def park(key: int) -> None:
        event = events[key] = anyio.Event()
        try:
            await event.wait()
        finally:
            del events[key]

    return park, lambda: len(events)


ROWS: dict[str, list[Callable[[], Any]]] = {
    "asyncio": [asyncio_raw_row, waitmap_row, anyio_event_row],
    "uvloop": [asyncio_raw_row, waitmap_row, anyio_event_row],
    "trio": [trio_raw_row, waitmap_row, anyio_event_row],
}
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


async def cancel_all(make_row: Callable[[], Any]) -> Outcome:
    park, bookkeeping = make_row()
    async with anyio.create_task_group() as tg:
        for key in range(N):
            tg.start_soon(park, key)
        await anyio.wait_all_tasks_blocked()
        start = time.perf_counter()
        tg.cancel_scope.cancel()
    return Outcome(time.perf_counter() - start, bookkeeping())


async def parked_memory(make_row: Callable[[], Any]) -> float:
    park, _ = make_row()
    async with anyio.create_task_group() as tg:
        await anyio.wait_all_tasks_blocked()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key in range(N):
            tg.start_soon(park, key)
        await anyio.wait_all_tasks_blocked()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tg.cancel_scope.cancel()
    return (after - before) / N


def run(loop: str, main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    backend, backend_options = BACKENDS[loop]
    return anyio.run(main, *args, backend=backend, backend_options=backend_options)


@dataclass
class Garbage:
    """What only the cyclic GC could free after one run."""

    count: int
    types: Counter[str]
    frames: Counter[str]


def cyclic_garbage() -> Garbage:
    """Collect, and describe, what only the cyclic GC can free now.

    Call it with the collector disabled since the run started, so that nothing
    was collected during the run.
    """
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    types = Counter(type(obj).__qualname__ for obj in found)
    frames = Counter(
        # co_qualname is new in 3.11.
        getattr(obj.f_code, "co_qualname", obj.f_code.co_name)
        for obj in found
        if isinstance(obj, FrameType)
    )
    count = len(found)
    del found
    return Garbage(count, types, frames)


def cancel_sample(loop: str, row: Callable[[], Any]) -> tuple[Outcome, Garbage]:
    """One timed sample of ``cancel_all`` in a fresh event loop."""
    gc.collect()
    gc.disable()
    try:
        outcome = run(loop, cancel_all, row)
        return outcome, cyclic_garbage()
    finally:
        gc.enable()


def per_waiter(counter: Counter[str], count: int) -> str:
    """``counter`` divided by ``count``, most common first, as text."""
    parts = [
        f"{name} {number / count:+.2f}"
        for name, number in counter.most_common()
        if abs(number) / count >= 0.005
    ]
    return ", ".join(parts) or "nothing per waiter"


# What the types and frames found in the cycles are, where we know.
NOTES = {
    "TaskGroup._spawn.<locals>.task_done": (
        "anyio's task_done() callback keeps the task's CancelledError in a local "
        "of its own frame, which the exception's traceback holds: a cycle that "
        "keeps the task's frames and what they reference"
    ),
    "KeyWaiter": (
        "KeyWaiter: our waiter, a local of the WaitMap.wait frame held by that "
        "cycle; it is in no cycle of its own"
    ),
    "TrioBinding": (
        "TrioBinding, TrioToken: our per-run binding, kept in a trio RunVar and "
        "freed with the cycle every trio run leaves (see the run with no waiter)"
    ),
}


def notes(names: Iterator[str]) -> str:
    found = [NOTES[name] for name in names if name in NOTES]
    return "; ".join(found)


def explain(
    name: str, raw_name: str, garbage: dict[str, Garbage], empty: Garbage
) -> str | None:
    """Why ``name`` left objects to the cyclic GC, next to the raw row."""
    mine = garbage[name]
    extra = mine.count - empty.count
    if extra <= 0:
        return None
    left = mine.types.copy()
    left.subtract(empty.types)
    frames = ", ".join(mine.frames - empty.frames) or "none"
    if name == raw_name:
        note = notes(iter(mine.frames))
        return (
            f"the baseline: the event loop and anyio's task group leave this for "
            f"every cancelled task whatever it waits on ({per_waiter(left, N)} per "
            f"waiter; frames in the cycles: {frames})" + (f". {note}" if note else "")
        )
    raw = garbage[raw_name]
    more = mine.types.copy()
    more.subtract(raw.types)
    more = Counter({key: value for key, value in more.items() if value})
    difference = (mine.count - raw.count) / N
    constant = mine.count - raw.count
    if raw.count > empty.count:
        start = (
            f"the raw row's baseline ({(raw.count - empty.count) / N:.2f} per waiter)"
        )
    else:
        start = "nothing in the raw row"
    if not more:
        change = "nothing more"
    elif abs(difference) >= 0.005:
        change = f"{difference:+.2f} per waiter: {per_waiter(more, N)}"
    else:
        described = ", ".join(f"{k} {v:+d}" for k, v in more.most_common())
        change = f"{constant:+d} in all, not per waiter ({described})"
    note = notes(key for key, value in more.items() if value > 0)
    return f"{start}, and {change}" + (f". {note}" if note else "")


def main() -> None:
    global N
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=N)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    N = 50 if options.quick else options.waiters
    rounds = 1 if options.quick else options.rounds
    print(f"cancel_memory.py: {N:,} waiters, --rounds {rounds}")
    report: dict[str, Any] = {"machine": print_machine(), "waiters": N}
    print_legend()
    print_header(
        f"cancelling {N:,} parked waiters with one cancel scope (per waiter, from "
        f"the cancel until every task finished)",
        "ns/waiter",
        f" {'left':>5} {'cyclic/waiter':>14}",
    )
    print(
        "  (left: entries left in the row's own bookkeeping; cyclic/waiter: objects"
        " that only the cyclic GC could free, beyond those of a run with no waiter)"
    )
    report["cancel"] = {}
    for loop, rows in ROWS.items():
        for row in rows:  # warm-up
            cancel_sample(loop, row)
        empty_row = rows[0]
        saved, N = N, 0
        empty = cancel_sample(loop, empty_row)[1]  # what a run with no waiter leaves
        N = saved
        times: dict[str, list[float]] = {row.__name__: [] for row in rows}
        left: dict[str, int] = {}
        garbage: dict[str, Garbage] = {}
        for _ in range(rounds):
            for row in rows:
                outcome, found = cancel_sample(loop, row)
                name = row.__name__
                times[name].append(outcome.seconds)
                left[name] = max(left.get(name, 0), outcome.left)
                if name not in garbage or found.count > garbage[name].count:
                    garbage[name] = found
        summaries = {name: summarize(t, 1e9 / N) for name, t in times.items()}
        raw_name = rows[0].__name__
        for name, summary in summaries.items():
            cyclic = (garbage[name].count - empty.count) / N
            extra_objects = garbage[name].count - empty.count
            if extra_objects <= 0:
                text = "nothing"
            elif cyclic < 0.005:
                text = f"{extra_objects} per run"
            else:
                text = f"{cyclic:.2f}"
            print_row(
                loop,
                name,
                summary,
                summaries[raw_name].median,
                extra=f" {left[name]:5} {text:>14}",
            )
        for name in summaries:
            why = explain(name, raw_name, garbage, empty)
            if why:
                print(f"      {name}: why: {why}")
        report["cancel"][loop] = {
            "samples": times,
            "ns": {name: s.median for name, s in summaries.items()},
            "left": left,
            "cyclic_objects": {name: g.count for name, g in garbage.items()},
            "cyclic_objects_empty_run": empty.count,
            "cyclic_types": {name: dict(g.types) for name, g in garbage.items()},
        }
    print()
    print(f"memory allocated while {N:,} tasks park, per task (tracemalloc, median)")
    report["memory"] = {}
    for loop, rows in ROWS.items():
        sizes: dict[str, list[float]] = {row.__name__: [] for row in rows}
        for _ in range(min(rounds, 3)):
            for row in rows:
                sizes[row.__name__].append(run(loop, parked_memory, row))
        per_task = {name: statistics.median(v) for name, v in sizes.items()}
        raw = per_task[rows[0].__name__]
        for name, size in per_task.items():
            print(f"  {loop:8} {name:18} {size:8,.0f} B   {size / raw:5.2f}x raw")
        report["memory"][loop] = per_task
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
