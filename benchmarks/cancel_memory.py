"""Cancelling many parked waiters, and the memory a parked waiter costs.

Cancellation: N tasks park (each on its own key), then one cancel scope
cancels them all. Reported: time per cancelled waiter (from the cancel until
every task has finished), what each implementation left behind (entries still
in its bookkeeping) and how many objects only the cyclic GC could free.

Memory: N tasks park; tracemalloc reports the memory allocated while they
park, per task (the task and its coroutine included), and as a ratio to raw.

    python benchmarks/cancel_memory.py [--waiters 10000] [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import trio
import trio.testing

from anyio_waitmap import WaitMap

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
    "trio": [trio_raw_row, waitmap_row, anyio_event_row],
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


def run(backend: str, main: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return anyio.run(main, *args, backend=backend)


def main() -> None:
    global N
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=N)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    N = 50 if options.quick else options.waiters
    rounds = 1 if options.quick else options.rounds
    print(f"cancelling {N:,} parked waiters (median of {rounds}), per waiter")
    for backend, rows in ROWS.items():
        times: dict[str, list[float]] = {row.__name__: [] for row in rows}
        left: dict[str, int] = {}
        cyclic: dict[str, int] = {}
        for row in rows:  # warm-up
            run(backend, cancel_all, row)
        for _ in range(rounds):
            for row in rows:
                gc.collect()
                gc.disable()
                try:
                    outcome = run(backend, cancel_all, row)
                finally:
                    cyclic[row.__name__] = gc.collect()
                    gc.enable()
                times[row.__name__].append(outcome.seconds)
                left[row.__name__] = max(left.get(row.__name__, 0), outcome.left)
        raw = statistics.median(times[rows[0].__name__])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(
                f"  {backend:8} {name:18} {median / N * 1e9:8,.0f} ns "
                f"{median / raw:5.2f}x raw   left behind {left[name]}   "
                f"cyclic garbage {cyclic[name]} objects (whole run)"
            )
    print(f"memory allocated while {N:,} tasks park, per task (tracemalloc)")
    for backend, rows in ROWS.items():
        per_task = {row.__name__: run(backend, parked_memory, row) for row in rows}
        raw = per_task[rows[0].__name__]
        for name, size in per_task.items():
            print(f"  {backend:8} {name:18} {size:8,.0f} B   {size / raw:5.2f}x raw")


if __name__ == "__main__":
    main()
