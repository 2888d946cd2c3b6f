"""Keyed fan-in: N tasks wait on distinct keys, then each is woken with a value.

Prints, per event loop, the cost per key of each row, net of the cost of
spawning and finishing N tasks that do nothing (measured in the same round:
each sample minus the spawn-only sample of its round), and the ratio of its
median to the raw mechanism of that loop. The "floor" rows are what any
thread-safe keyed hand-over with the same guarantees must do, written out by
hand: the gap from raw to floor is the price of those guarantees, the gap from
floor to WaitMap is the library's own. Rows are sampled in
interleaved rounds, each sample in a fresh event loop, with the cyclic GC
collected before and disabled during the sample.

From the repository root (``python -m benchmarks.fanin`` works too):

    python benchmarks/fanin.py [--keys 10000] [--rounds 15] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import platform
from collections.abc import Awaitable, Callable
from typing import Any

import aiologic
import anyio
import outcome
import trio
import trio.testing
import uvloop

from anyio_waitmap import WaitMap
from benchmarks.common.floor import AsyncioFloor, TrioFloor
from benchmarks.common.timing import (
    print_header,
    print_legend,
    print_machine,
    print_row,
    sample,
    summarize,
)

N = 10_000


async def asyncio_spawn_only() -> None:
    async def task(key: int) -> None:
        pass

    await asyncio.gather(*[asyncio.create_task(task(key)) for key in range(N)])


async def asyncio_raw_futures() -> None:
    loop = asyncio.get_running_loop()
    futures: dict[int, asyncio.Future[int]] = {}

    async def task(key: int) -> int:
        future = futures[key] = loop.create_future()
        try:
            return await future
        finally:
            futures.pop(key, None)

    tasks = [asyncio.create_task(task(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        futures.pop(key).set_result(key)
    await asyncio.gather(*tasks)


async def asyncio_floor() -> None:
    """The least any thread-safe keyed hand-over with WaitMap's guarantees
    does, written out by hand (see common/floor.py)."""
    floor = AsyncioFloor()
    tasks = [asyncio.create_task(floor.wait(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        floor.wake(key, key)
    await asyncio.gather(*tasks)


async def asyncio_waitmap() -> None:
    wm: WaitMap[int, int] = WaitMap()
    tasks = [asyncio.create_task(wm.wait(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        wm.wake(key, key)
    await asyncio.gather(*tasks)


async def asyncio_waitmap_store() -> None:
    wm: WaitMap[int, int] = WaitMap()
    tasks = [asyncio.create_task(wm.wait(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        wm[key] = key  # stored, and handed to the waiter
    await asyncio.gather(*tasks)


async def asyncio_waitmap_take() -> None:
    wm: WaitMap[int, int] = WaitMap()
    tasks = [asyncio.create_task(wm.take(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        wm.wake(key, key)
    await asyncio.gather(*tasks)


async def asyncio_event_slot() -> None:
    events: dict[int, asyncio.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = asyncio.Event()
        await event.wait()
        return values.pop(key)

    tasks = [asyncio.create_task(task(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        values[key] = key
        events.pop(key).set()
    await asyncio.gather(*tasks)


async def asyncio_anyio_event() -> None:
    events: dict[int, anyio.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = anyio.Event()
        await event.wait()
        return values.pop(key)

    tasks = [asyncio.create_task(task(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        values[key] = key
        events.pop(key).set()
    await asyncio.gather(*tasks)


async def asyncio_aiologic_event() -> None:
    events: dict[int, aiologic.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = aiologic.Event()
        await event
        return values.pop(key)

    tasks = [asyncio.create_task(task(key)) for key in range(N)]
    await asyncio.sleep(0)
    for key in range(N):
        values[key] = key
        events.pop(key).set()
    await asyncio.gather(*tasks)


async def trio_spawn_only() -> None:
    async def task(key: int) -> None:
        pass

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)


async def trio_raw_reschedule() -> None:
    tasks: dict[int, trio.lowlevel.Task] = {}

    async def task(key: int) -> object:
        tasks[key] = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            tasks.pop(key, None)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            trio.lowlevel.reschedule(tasks.pop(key), outcome.Value(key))


async def trio_floor() -> None:
    """The trio twin of asyncio_floor (see common/floor.py)."""
    floor = TrioFloor()
    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(floor.wait, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            floor.wake(key, key)


async def trio_waitmap() -> None:
    wm: WaitMap[int, int] = WaitMap()
    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(wm.wait, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            wm.wake(key, key)


async def trio_waitmap_store() -> None:
    wm: WaitMap[int, int] = WaitMap()
    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(wm.wait, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            wm[key] = key  # stored, and handed to the waiter


async def trio_waitmap_take() -> None:
    wm: WaitMap[int, int] = WaitMap()
    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(wm.take, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            wm.wake(key, key)


async def trio_event_slot() -> None:
    events: dict[int, trio.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = trio.Event()
        await event.wait()
        return values.pop(key)

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            values[key] = key
            events.pop(key).set()


async def trio_anyio_event() -> None:
    events: dict[int, anyio.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = anyio.Event()
        await event.wait()
        return values.pop(key)

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            values[key] = key
            events.pop(key).set()


async def trio_parking_lot() -> None:
    lots: dict[int, trio.lowlevel.ParkingLot] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        lot = lots[key] = trio.lowlevel.ParkingLot()
        await lot.park()
        return values.pop(key)

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            values[key] = key
            lots.pop(key).unpark()


async def trio_aiologic_event() -> None:
    events: dict[int, aiologic.Event] = {}
    values: dict[int, int] = {}

    async def task(key: int) -> int:
        event = events[key] = aiologic.Event()
        await event
        return values.pop(key)

    async with trio.open_nursery() as nursery:
        for key in range(N):
            nursery.start_soon(task, key)
        await trio.testing.wait_all_tasks_blocked()
        for key in range(N):
            values[key] = key
            events.pop(key).set()


Runner = Callable[[Callable[[], Awaitable[None]]], None]
# The first row of each loop spawns tasks that do nothing (subtracted from the
# others); the second is the raw mechanism (the ratios' base).
ASYNCIO_ROWS = [
    asyncio_spawn_only,
    asyncio_raw_futures,
    asyncio_floor,
    asyncio_waitmap,
    asyncio_waitmap_store,
    asyncio_waitmap_take,
    asyncio_event_slot,
    asyncio_anyio_event,
    asyncio_aiologic_event,
]
TRIO_ROWS = [
    trio_spawn_only,
    trio_raw_reschedule,
    trio_floor,
    trio_waitmap,
    trio_waitmap_store,
    trio_waitmap_take,
    trio_event_slot,
    trio_anyio_event,
    trio_parking_lot,
    trio_aiologic_event,
]
LOOPS: dict[str, tuple[Runner, list[Callable[[], Awaitable[None]]]]] = {
    "asyncio": (lambda main: asyncio.run(main()), ASYNCIO_ROWS),  # type: ignore[arg-type]
    "uvloop": (lambda main: uvloop.run(main()), ASYNCIO_ROWS),  # type: ignore[arg-type]
    "trio": (trio.run, TRIO_ROWS),
}
# The WaitMap row of each loop, which scale.py follows as the keys grow.
WAITMAP_ROWS: dict[str, Callable[[], Awaitable[None]]] = {
    "asyncio": asyncio_waitmap,
    "uvloop": asyncio_waitmap,
    "trio": trio_waitmap,
}


def main() -> None:
    global N
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=N)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the raw samples (seconds) here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few keys, to check that every row runs (timings meaningless)",
    )
    options = parser.parse_args()
    N = options.keys
    if options.quick:
        N, options.rounds = 50, 1
    print(f"fanin.py: {N:,} keys, --rounds {options.rounds}")
    info = print_machine()
    report: dict[str, object] = {
        "scenario": "fan-in",
        "keys": N,
        "python": platform.python_version(),
        "machine": info,
        "loops": {},
    }
    print_legend()
    print_header(
        f"keyed fan-in, {N:,} keys (per key, net of spawning and finishing the "
        f"tasks, measured in the same round)",
        "ns/key",
    )
    for loop_name, (run, rows) in LOOPS.items():
        for row in rows:  # warm-up, untimed
            sample(run, row)
        samples: dict[str, list[float]] = {row.__name__: [] for row in rows}
        for _ in range(options.rounds):
            for row in rows:
                samples[row.__name__].append(sample(run, row))
        spawn_name = rows[0].__name__
        spawn = samples[spawn_name]
        # Net of the spawn cost of the same round: the rows of one round ran
        # within moments of each other, so a slow spell of the machine cancels.
        net = {
            name: summarize(
                [t - s for t, s in zip(values, spawn, strict=True)], 1e9 / N
            )
            for name, values in samples.items()
            if name != spawn_name
        }
        spawned = summarize(spawn, 1e9 / N)
        raw = net[rows[1].__name__].median
        for name, summary in net.items():
            print_row(loop_name, name, summary, raw)
        print(
            f"  {loop_name:8} ({spawn_name}: {spawned.median:,.0f} ns/key, "
            f"subtracted above)"
        )
        report["loops"][loop_name] = {  # type: ignore[index]
            "samples": samples,
            "net_ns_per_key": {name: s.median for name, s in net.items()},
            "net_min_ns_per_key": {name: s.minimum for name, s in net.items()},
            "spread": {name: s.spread for name, s in net.items()},
            "spawn_ns_per_key": spawned.median,
        }
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
