"""Ping-pong: two tasks of one loop wake each other in turn.

Per round trip, on asyncio, asyncio+uvloop and trio: ``WakeSink.wait_until`` and
``notify`` (one sink per player) compared with the raw mechanism (a new loop
future per round, or trio's ``wait_task_rescheduled`` and ``reschedule``); also
the raw mechanism plus anyio's cancellation check (the least a checkpoint
costs), the loop's own ``Event``, ``anyio.Event``, ``aiologic.Event`` and
aiologic's low-level event, and an ablation that is no alternative: ``WakeSink``
with each wait told its loop instead of finding it.

Rows are sampled as ``common/scenario.py`` says; ``wakers.py`` runs this scenario
with the others, into one report.

From the repository root (``python -m benchmarks.wakers_ping_pong`` works too):

    python benchmarks/wakers_ping_pong.py [--rounds 15] [--json FILE] [--quick]
                                          [--pin CPU]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio

import aiologic
import aiologic.lowlevel
import anyio
import trio
from anyio._core._eventloop import get_async_backend

from anyio_waitmap import WakeSink, _wakers
from anyio_waitmap._backends import current_binding
from benchmarks.common import cli
from benchmarks.common.scenario import Scenario
from benchmarks.common.timing import Row

ROUNDS = 5_000  # round trips per sample


def quick() -> None:
    global ROUNDS
    ROUNDS = 20


async def asyncio_raw_futures() -> None:
    """raw: a new loop future per round, set_result"""
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
    """raw + anyio's cancel check, in anyio tasks: the least a checkpoint costs"""
    loop = asyncio.get_running_loop()
    slots: list[asyncio.Future[None] | None] = [None, None]
    # The check the way anyio_waitmap makes it: anyio's asyncio backend found
    # once, not on every call as anyio.lowlevel.checkpoint_if_cancelled does.
    checkpoint_if_cancelled = get_async_backend("asyncio").checkpoint_if_cancelled

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            future = slots[other]
            if future is not None:
                slots[other] = None
                future.set_result(None)
            await checkpoint_if_cancelled()
            mine = slots[me] = loop.create_future()
            await mine
        future = slots[other]
        if future is not None:
            future.set_result(None)

    # In anyio tasks, like the WakeSink row: anyio's check costs more in a task
    # anyio does not know (it looks the task up and misses).
    async with anyio.create_task_group() as tg:
        tg.start_soon(player, 0)
        await player(1)


async def asyncio_event() -> None:
    """asyncio.Event, clear + wait (one event per player)"""
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


async def trio_raw_reschedule() -> None:
    """raw: wait_task_rescheduled + reschedule"""
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
    """raw + the cancel check anyio makes on trio: the least a checkpoint costs"""
    parked: list[trio.lowlevel.Task | None] = [None, None]

    async def player(me: int) -> None:
        other = 1 - me
        for _ in range(ROUNDS):
            task = parked[other]
            if task is not None:
                parked[other] = None
                trio.lowlevel.reschedule(task)
            await trio.lowlevel.checkpoint_if_cancelled()
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
    """trio.Event, a new one per round"""
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


async def anyio_event_ping_pong() -> None:
    """anyio.Event, a new one per round"""
    events = [anyio.Event(), anyio.Event()]

    async def player(me: int) -> None:
        for _ in range(ROUNDS):
            events[1 - me].set()
            await events[me].wait()
            events[me] = anyio.Event()
        events[1 - me].set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(player, 0)
        await player(1)


async def aiologic_event_ping_pong() -> None:
    """aiologic.Event, a new one per round"""
    events = [aiologic.Event(), aiologic.Event()]

    async def player(me: int) -> None:
        for _ in range(ROUNDS):
            events[1 - me].set()
            await events[me]
            events[me] = aiologic.Event()
        events[1 - me].set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(player, 0)
        await player(1)


async def aiologic_lowlevel_ping_pong() -> None:
    """aiologic.lowlevel.create_async_event() (one waiter), new per round"""
    create = aiologic.lowlevel.create_async_event
    events = [create(), create()]

    async def player(me: int) -> None:
        for _ in range(ROUNDS):
            events[1 - me].set()
            await events[me]
            events[me] = create()
        events[1 - me].set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(player, 0)
        await player(1)


async def sink_ping_pong() -> None:
    """ours: WakeSink.wait_until + notify (one sink per player)"""
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


async def sink_ping_pong_loop_known() -> None:
    """ablation, not usable: ours with each wait told its loop instead of finding it"""
    binding = current_binding("benchmark")
    # wait_until() finds its loop with current_binding(); here a function that
    # returns the binding it was given stands in for it, so the row costs what
    # sink_ping_pong costs less the lookup (but one call, and one coroutine
    # frame more for one player: this row errs on the slow side). A sink that
    # never looks could serve tasks of one loop only.
    namespace = vars(_wakers)
    original = namespace["current_binding"]

    def told(caller: str) -> object:
        return binding

    namespace["current_binding"] = told
    try:
        await sink_ping_pong()
    finally:
        namespace["current_binding"] = original


PING_PONG_ASYNCIO: list[Row] = [
    asyncio_raw_futures,
    asyncio_raw_plus_cancel_check,
    sink_ping_pong,
    sink_ping_pong_loop_known,
    asyncio_event,
    anyio_event_ping_pong,
    aiologic_event_ping_pong,
    aiologic_lowlevel_ping_pong,
]
PING_PONG_TRIO: list[Row] = [
    trio_raw_reschedule,
    trio_raw_plus_cancel_check,
    sink_ping_pong,
    sink_ping_pong_loop_known,
    trio_event,
    anyio_event_ping_pong,
    aiologic_event_ping_pong,
    aiologic_lowlevel_ping_pong,
]

SCENARIO = Scenario(
    "ping-pong (per round trip)",
    "ping-pong",
    "ns/trip",
    lambda: ROUNDS,
    {
        "asyncio": PING_PONG_ASYNCIO,
        "uvloop": PING_PONG_ASYNCIO,
        "trio": PING_PONG_TRIO,
    },
    quick,
)


def main() -> None:
    cli.main(__file__, __doc__, [SCENARIO])


if __name__ == "__main__":
    main()
