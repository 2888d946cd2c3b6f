"""Single-consumer wakers: notify with nobody waiting, ping-pong, cross-thread wake.

Prints medians of interleaved rounds (each sample in a fresh event loop, cyclic
GC collected before and disabled during the sample) and ratios to the raw
mechanism of each loop.

    python benchmarks/wakers.py [--rounds 15] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import threading
import timeit
from collections.abc import Awaitable, Callable

import anyio
import trio
import uvloop
from _timing import sample

from anyio_waitmap import WakeSink

ROUNDS = 5_000  # ping-pong rounds per sample
THREAD_WAKES = 1_000  # cross-thread wake-ups per sample


# -- notify with nobody waiting ------------------------------------------------


def idle_notify(number: int = 1_000_000) -> dict[str, float]:
    sink = WakeSink()
    source = sink.source()
    event = asyncio.Event()
    event.set()
    unset = asyncio.Event()
    rows = {
        "asyncio.Event.set (set)": event.set,
        "asyncio.Event.set (unset, no waiter)": lambda: unset.set() or unset.clear(),
        "WakeSink.notify": sink.notify,
        "WakeSource.notify": source.notify,
    }
    results: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(5):
        for name, call in rows.items():
            results[name].append(timeit.timeit(call, number=number) / number * 1e9)
    return {name: min(samples) for name, samples in results.items()}


# -- ping-pong between two tasks ---------------------------------------------------


async def asyncio_raw_futures() -> None:
    loop = asyncio.get_running_loop()
    slots: list[asyncio.Future[None] | None] = [None, None]

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            future = slots[other]
            if future is not None:
                slots[other] = None
                future.set_result(None)
            mine = slots[me] = loop.create_future()
            await mine
        future = slots[other]
        if future is not None:
            future.set_result(None)

    first = asyncio.create_task(player(0))
    await player(1)
    await first


async def asyncio_raw_plus_cancel_check() -> None:
    """Raw futures plus the cancellation check every checkpoint must make: the
    least a primitive that is a checkpoint can cost on this loop."""
    loop = asyncio.get_running_loop()
    slots: list[asyncio.Future[None] | None] = [None, None]

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            future = slots[other]
            if future is not None:
                slots[other] = None
                future.set_result(None)
            await anyio.lowlevel.checkpoint_if_cancelled()
            mine = slots[me] = loop.create_future()
            await mine
        future = slots[other]
        if future is not None:
            future.set_result(None)

    first = asyncio.create_task(player(0))
    await player(1)
    await first


async def asyncio_event() -> None:
    events = [asyncio.Event(), asyncio.Event()]

    async def player(me: int) -> None:
        for _ in range(ROUNDS):
            events[1 - me].set()
            await events[me].wait()
            events[me].clear()
        events[1 - me].set()

    first = asyncio.create_task(player(0))
    await player(1)
    await first


async def sink_ping_pong() -> None:
    sinks = [WakeSink(), WakeSink()]
    turns = [0, 0]

    async def player(me: int) -> None:
        other = 1 - me
        for round_ in range(1, ROUNDS + 1):
            turns[other] += 1
            sinks[other].notify()
            await sinks[me].wait_until(
                lambda round_=round_: True if turns[me] >= round_ else None
            )
        turns[other] += 1
        sinks[other].notify()

    async with anyio.create_task_group() as tg:
        tg.start_soon(player, 0)
        await player(1)


async def trio_raw_reschedule() -> None:
    parked: list[trio.lowlevel.Task | None] = [None, None]

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            task = parked[other]
            if task is not None:
                parked[other] = None
                trio.lowlevel.reschedule(task)
            parked[me] = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED
            )
        task = parked[other]
        if task is not None:
            trio.lowlevel.reschedule(task)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(player, 0)
        await player(1)


async def trio_raw_plus_cancel_check() -> None:
    """Raw trio plus the cancellation check of a checkpoint."""
    parked: list[trio.lowlevel.Task | None] = [None, None]

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            task = parked[other]
            if task is not None:
                parked[other] = None
                trio.lowlevel.reschedule(task)
            await anyio.lowlevel.checkpoint_if_cancelled()
            parked[me] = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED
            )
        task = parked[other]
        if task is not None:
            trio.lowlevel.reschedule(task)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(player, 0)
        await player(1)


async def trio_event() -> None:
    events = [trio.Event(), trio.Event()]

    async def player(me: int) -> None:
        for _ in range(ROUNDS):
            events[1 - me].set()
            await events[me].wait()
            events[me] = trio.Event()
        events[1 - me].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(player, 0)
        await player(1)


# -- a wake-up from another thread -------------------------------------------------


async def asyncio_raw_threadsafe() -> None:
    loop = asyncio.get_running_loop()
    ack = threading.Semaphore(0)
    futures: list[asyncio.Future[None]] = []
    ready = threading.Semaphore(0)

    def waker() -> None:
        for _ in range(THREAD_WAKES):
            ready.acquire()
            loop.call_soon_threadsafe(futures[-1].set_result, None)
        ack.release()

    thread = threading.Thread(target=waker)
    thread.start()
    for _ in range(THREAD_WAKES):
        futures.append(loop.create_future())
        ready.release()
        await futures[-1]
    await asyncio.to_thread(ack.acquire)
    thread.join()


async def sink_threadsafe() -> None:
    sink = WakeSink()
    ready = threading.Semaphore(0)
    count = [0]
    done = threading.Event()

    def waker() -> None:
        for _ in range(THREAD_WAKES):
            ready.acquire()
            count[0] += 1
            sink.notify()
        done.set()

    thread = threading.Thread(target=waker)
    thread.start()
    for expected in range(1, THREAD_WAKES + 1):
        ready.release()
        await sink.wait_until(lambda e=expected: True if count[0] >= e else None)
    thread.join()


async def trio_raw_threadsafe() -> None:
    token = trio.lowlevel.current_trio_token()
    ready = threading.Semaphore(0)
    parked: list[trio.lowlevel.Task] = []

    def waker() -> None:
        for _ in range(THREAD_WAKES):
            ready.acquire()
            token.run_sync_soon(trio.lowlevel.reschedule, parked[-1])

    thread = threading.Thread(target=waker)
    thread.start()
    for _ in range(THREAD_WAKES):
        parked.append(trio.lowlevel.current_task())
        ready.release()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
    thread.join()


Row = Callable[[], Awaitable[None]]
SCENARIOS: dict[str, dict[str, tuple[Callable[[Row], None], list[Row]]]] = {
    "ping-pong (per round trip)": {
        "asyncio": (
            lambda main: asyncio.run(main()),  # type: ignore[arg-type]
            [
                asyncio_raw_futures,
                asyncio_raw_plus_cancel_check,
                sink_ping_pong,
                asyncio_event,
            ],
        ),
        "uvloop": (
            lambda main: uvloop.run(main()),  # type: ignore[arg-type]
            [
                asyncio_raw_futures,
                asyncio_raw_plus_cancel_check,
                sink_ping_pong,
                asyncio_event,
            ],
        ),
        "trio": (
            trio.run,
            [
                trio_raw_reschedule,
                trio_raw_plus_cancel_check,
                sink_ping_pong,
                trio_event,
            ],
        ),
    },
    "wake from another thread (per wake-up)": {
        "asyncio": (
            lambda main: asyncio.run(main()),  # type: ignore[arg-type]
            [asyncio_raw_threadsafe, sink_threadsafe],
        ),
        "uvloop": (
            lambda main: uvloop.run(main()),  # type: ignore[arg-type]
            [asyncio_raw_threadsafe, sink_threadsafe],
        ),
        "trio": (trio.run, [trio_raw_threadsafe, sink_threadsafe]),
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations, to check that every row runs (timings meaningless)",
    )
    options = parser.parse_args()
    global ROUNDS, THREAD_WAKES
    idle_calls = 1_000_000
    if options.quick:
        ROUNDS, THREAD_WAKES, idle_calls, options.rounds = 20, 5, 1_000, 1
    per = {
        "ping-pong (per round trip)": ROUNDS,
        "wake from another thread (per wake-up)": THREAD_WAKES,
    }
    report: dict[str, dict[str, object]] = {
        "python": {"version": platform.python_version()}
    }
    print("notify with nobody waiting (best of 5, ns per call)")
    idle = idle_notify(idle_calls)
    base = idle["asyncio.Event.set (set)"]
    for name, ns in idle.items():
        print(f"  {name:40} {ns:7.1f} ns   {ns / base:5.2f}x Event.set")
    report["notify with nobody waiting"] = {"ns": idle}
    for scenario, loops in SCENARIOS.items():
        print(scenario)
        for loop_name, (run, rows) in loops.items():
            for row in rows:
                sample(run, row)
            samples: dict[str, list[float]] = {row.__name__: [] for row in rows}
            for _ in range(options.rounds):
                for row in rows:
                    samples[row.__name__].append(sample(run, row))
            per_op = {
                name: statistics.median(s) / per[scenario] * 1e9
                for name, s in samples.items()
            }
            raw = per_op[rows[0].__name__]
            report.setdefault(scenario, {})[loop_name] = {
                "samples": samples,
                "ns": per_op,
            }
            for name, ns in per_op.items():
                print(f"  {loop_name:8} {name:24} {ns:9,.0f} ns   {ns / raw:5.2f}x raw")
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
