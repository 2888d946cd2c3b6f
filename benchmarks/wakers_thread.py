"""Wake from another thread: a thread wakes a parked task, one wake-up at a time.

Per wake-up, on asyncio, asyncio+uvloop and trio: the task parks, the thread
wakes it, the task resumes, and so on. ``WaitMap.wake`` (the task parked in
``WaitMap.take``) and ``WakeSource.notify`` (in ``WakeSink.wait_until``)
compared with the loop's own thread-safe call (raw), the floor
(``common/floor.py``: the least thread-safe keyed hand-over),
``anyio.from_thread.run_sync`` and ``aiologic.Event.set``. Also reported: the
calls scheduled into the loop per wake-up (``call_soon_threadsafe`` /
``TrioToken.run_sync_soon``, counted by wrapping them during the untimed
warm-up).

The thread waits at a gate that opens only once the task has parked (a loop
callback on asyncio, a helper task on trio: ``common/threads.py``; the same in
every row of a loop, so it adds the same small cost to each), so that every
wake-up finds the task parked.

It runs twice: in this process (free to use every CPU) and in a child process
pinned to one CPU (``os.sched_setaffinity``; the threads it starts inherit the
pinning), unless ``--no-pinned``. ``--pin CPU`` runs this process pinned
instead.

Rows are sampled as ``common/scenario.py`` says; ``wakers.py`` runs this scenario
with the others, into one report.

From the repository root (``python -m benchmarks.wakers_thread`` works too):

    python benchmarks/wakers_thread.py [--rounds 15] [--json FILE] [--quick]
                                       [--pin CPU | --no-pinned]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
from collections.abc import Callable

import aiologic
import anyio
import anyio.from_thread
import anyio.lowlevel
import trio

from anyio_waitmap import WaitMap, WakeSink
from benchmarks.common import cli
from benchmarks.common.floor import AsyncioFloor, TrioFloor
from benchmarks.common.scenario import EARLY_WAKES, Scenario
from benchmarks.common.threads import gated, start_thread
from benchmarks.common.timing import Row

THREAD_WAKES = 1_000  # wake-ups per sample


def quick() -> None:
    global THREAD_WAKES
    THREAD_WAKES = 5


async def asyncio_raw_threadsafe() -> None:
    """raw: loop.call_soon_threadsafe(future.set_result)"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        loop = asyncio.get_running_loop()
        slot: list[asyncio.Future[None]] = []

        def waker() -> None:
            for _ in range(THREAD_WAKES):
                pass_gate()
                loop.call_soon_threadsafe(slot[0].set_result, None)

        thread = start_thread(waker)
        for _ in range(THREAD_WAKES):
            future = loop.create_future()
            slot[:] = [future]
            open_gate()
            await future
        thread.join()

    await gated(body)


async def trio_raw_threadsafe() -> None:
    """raw: TrioToken.run_sync_soon(reschedule, task)"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def waker() -> None:
            for _ in range(THREAD_WAKES):
                pass_gate()
                token.run_sync_soon(trio.lowlevel.reschedule, task)

        thread = start_thread(waker)
        for _ in range(THREAD_WAKES):
            open_gate()
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.FAILED
            )
        thread.join()

    await gated(body)


async def _floor_threadsafe(floor: AsyncioFloor | TrioFloor) -> None:
    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        def waker() -> None:
            for key in range(THREAD_WAKES):
                pass_gate()
                floor.wake(key, key)

        thread = start_thread(waker)
        for key in range(THREAD_WAKES):
            open_gate()
            await floor.wait(key)
        thread.join()

    await gated(body)


async def asyncio_floor_threadsafe() -> None:
    """floor: fanin.py's least thread-safe keyed hand-over, woken from the thread"""
    await _floor_threadsafe(AsyncioFloor())


async def trio_floor_threadsafe() -> None:
    """floor: the trio twin of asyncio_floor_threadsafe"""
    await _floor_threadsafe(TrioFloor())


async def anyio_from_thread() -> None:
    """anyio.from_thread.run_sync(anyio.Event.set, token=...), new event per wake"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        token = anyio.lowlevel.current_token()
        slot: list[anyio.Event] = []

        def waker() -> None:
            for _ in range(THREAD_WAKES):
                pass_gate()
                anyio.from_thread.run_sync(slot[0].set, token=token)

        thread = start_thread(waker)
        for _ in range(THREAD_WAKES):
            event = anyio.Event()
            slot[:] = [event]
            open_gate()
            await event.wait()
        thread.join()

    await gated(body)


async def aiologic_event_threadsafe() -> None:
    """aiologic.Event.set from the thread, new event per wake"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        slot: list[aiologic.Event] = []

        def waker() -> None:
            for _ in range(THREAD_WAKES):
                pass_gate()
                slot[0].set()

        thread = start_thread(waker)
        for _ in range(THREAD_WAKES):
            event = aiologic.Event()
            slot[:] = [event]
            open_gate()
            await event
        thread.join()

    await gated(body)


async def waitmap_threadsafe() -> None:
    """ours: WaitMap.take(key) parked, WaitMap.wake(key, value) from the thread"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        wm: WaitMap[int, int] = WaitMap()
        early = [0]

        def waker() -> None:
            for key in range(THREAD_WAKES):
                pass_gate()
                if not wm.wake(key, key):
                    # Cannot happen with the gate; if it did, take() finds it.
                    early[0] += 1
                    wm[key] = key

        thread = start_thread(waker)
        for key in range(THREAD_WAKES):
            open_gate()
            await wm.take(key)
        thread.join()
        name = waitmap_threadsafe.__name__
        EARLY_WAKES[name] = EARLY_WAKES.get(name, 0) + early[0]

    await gated(body)


async def source_threadsafe() -> None:
    """ours: WakeSink.wait_until parked, WakeSource.notify from the thread"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        sink = WakeSink()
        source = sink.source()
        count = [0]

        def waker() -> None:
            for _ in range(THREAD_WAKES):
                pass_gate()
                count[0] += 1
                source.notify()

        thread = start_thread(waker)
        for expected in range(1, THREAD_WAKES + 1):
            open_gate()
            await sink.wait_until(lambda e=expected: True if count[0] >= e else None)
        thread.join()

    await gated(body)


THREAD_COMMON: list[Row] = [
    anyio_from_thread,
    aiologic_event_threadsafe,
    waitmap_threadsafe,
    source_threadsafe,
]

SCENARIO = Scenario(
    "wake from another thread (per wake-up)",
    "thread",
    "ns/wake",
    lambda: THREAD_WAKES,
    {
        "asyncio": [asyncio_raw_threadsafe, asyncio_floor_threadsafe, *THREAD_COMMON],
        "uvloop": [asyncio_raw_threadsafe, asyncio_floor_threadsafe, *THREAD_COMMON],
        "trio": [trio_raw_threadsafe, trio_floor_threadsafe, *THREAD_COMMON],
    },
    quick,
    from_thread=True,
)


def main() -> None:
    cli.main(__file__, __doc__, [SCENARIO])


if __name__ == "__main__":
    main()
