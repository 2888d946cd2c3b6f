"""Single-consumer wakers: notify with nobody waiting, ping-pong, thread wake-ups.

Scenarios, each on asyncio, asyncio+uvloop and trio:

* notify with nobody waiting (per call; timed inside the loop with timeit, the
  loop's start and end not charged); ``WaitMap.wake`` on a missing key is
  compared with ``dict.pop(key, None)`` (target: at most 4x);
* ping-pong between two tasks of one loop (per round trip);
* a wake-up of a parked task from another thread, in sequence (per wake-up): the
  task parks, the thread wakes it, the task resumes, and so on;
* bursts: per burst, a thread notifies 1,000 times while the consumer waits for
  the whole burst (per notify: the sample's time over all its notifies, the
  consumer's resumptions included). Also reported: the consumer's resumptions
  per burst, and the calls scheduled into its loop (``call_soon_threadsafe`` /
  ``TrioToken.run_sync_soon``, counted by wrapping them during the untimed
  warm-up).

In the two thread scenarios the thread waits at a gate that opens only once the
task has parked (a loop callback on asyncio, a helper task on trio; the same in
every row of a loop, so it adds the same small cost to each), so that every
wake-up finds the task parked.

The two thread scenarios run twice: in this process (free to use every CPU) and
in a child process pinned to one CPU (``os.sched_setaffinity``; the threads it
starts inherit the pinning), unless ``--no-pinned``. ``--pin CPU`` runs this
process pinned instead.

Every row is sampled in interleaved rounds (A B C A B C ...), each sample in a
fresh event loop after an untimed warm-up, with the cyclic GC collected before
and disabled during the sample.

From the repository root (``python -m benchmarks.wakers`` works too):

    python benchmarks/wakers.py [--rounds 15] [--json FILE] [--quick]
                                [--scenarios idle ping-pong thread burst]
                                [--pin CPU | --no-pinned]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import faulthandler
import json
import os
import subprocess
import sys
import tempfile
import threading
import timeit
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiologic
import aiologic.lowlevel
import anyio
import anyio.from_thread
import anyio.lowlevel
import trio
import uvloop
from anyio._core._eventloop import get_async_backend

from anyio_waitmap import WaitMap, WakeSink, _wakers
from anyio_waitmap._backends import current_binding
from benchmarks.common.floor import AsyncioFloor, TrioFloor
from benchmarks.common.timing import (
    Row,
    Runner,
    print_header,
    print_legend,
    print_machine,
    print_row,
    sample,
    summarize,
)

IDLE_CALLS = 200_000  # calls per sample of "notify with nobody waiting"
ROUNDS = 5_000  # ping-pong round trips per sample
THREAD_WAKES = 1_000  # wake-ups from a thread per sample
BURSTS = 20  # bursts per sample
BURST = 1_000  # notifies per burst


# -- counting: the consumer's resumptions, and calls into its loop -----------------

#: Resumptions of the consumer per burst, one list entry per sample, by row name.
RESUMPTIONS: dict[str, list[float]] = {}
#: Calls scheduled into the consumer's loop from other threads, per operation.
LOOP_CALLS: dict[str, float] = {}
#: Wake-ups that found the task not yet parked (and stored the value instead).
EARLY_WAKES: dict[str, int] = {}


@contextmanager
def counting_loop_calls() -> Iterator[list[int]]:
    """Count ``call_soon_threadsafe`` / ``TrioToken.run_sync_soon`` calls.

    Wraps the running asyncio loop's method (this loop only), or trio's
    ``TrioToken.run_sync_soon`` (for the whole process) while the block runs.
    The wrapper adds a Python call, so only untimed samples use it.
    """
    count = [0]
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        original = loop.call_soon_threadsafe

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = wrapped  # type: ignore[method-assign,assignment]
        try:
            yield count
        finally:
            del loop.call_soon_threadsafe
        return
    token_class = trio.lowlevel.TrioToken
    original_method = token_class.run_sync_soon

    def wrapped_method(self: trio.lowlevel.TrioToken, *args: Any, **kw: Any) -> None:
        count[0] += 1
        original_method(self, *args, **kw)

    token_class.run_sync_soon = wrapped_method  # type: ignore[method-assign,assignment]
    try:
        yield count
    finally:
        token_class.run_sync_soon = original_method  # type: ignore[method-assign]


def counted(row: Row, per: int) -> Row:
    """``row``, counting the calls it schedules into its loop (per ``per`` ops)."""

    async def wrapper() -> None:
        with counting_loop_calls() as count:
            await row()
        LOOP_CALLS[row.__name__] = count[0] / per

    wrapper.__name__ = row.__name__
    return wrapper


# -- notify with nobody waiting ----------------------------------------------------
# Synchronous calls, timed with timeit (the statement is compiled into its loop)
# inside each event loop, excluding the loop's start and end: none of them
# touches the loop, which the table shows.


#: Seconds a row timed itself, which replace the sample's time (by row name).
SELF_TIMED: dict[str, float] = {}


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


# -- ping-pong between two tasks ---------------------------------------------------


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


# -- a wake-up from another thread, in sequence ------------------------------------
# The task prepares its wait, opens the gate and parks; the thread passes the gate
# and wakes the task. The gate opens only once the task has parked, the same way
# in every row of a loop: on asyncio from a loop callback (callbacks run after the
# current task step), on trio from a helper task that the task reschedules just
# before parking (it runs after the task yields). So every wake-up finds the task
# parked, whatever the thread's timing.

Gated = Callable[[Callable[[], object], Callable[[], object]], Awaitable[None]]


async def gated(body: Gated) -> None:
    """Run ``body(open_gate, pass_gate)``: the task calls ``open_gate()`` just
    before it parks; a thread's ``pass_gate()`` returns once the task has parked.
    """
    gate = threading.Lock()
    gate.acquire()
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        call_soon, release = loop.call_soon, gate.release
        await body(lambda: call_soon(release), gate.acquire)
        return
    helper: list[trio.lowlevel.Task] = []

    async def opener(task_status: trio.TaskStatus[None]) -> None:
        helper.append(trio.lowlevel.current_task())
        task_status.started()
        while True:
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED
            )
            gate.release()

    async with trio.open_nursery() as nursery:
        await nursery.start(opener)
        task, reschedule = helper[0], trio.lowlevel.reschedule
        await body(lambda: reschedule(task), gate.acquire)
        nursery.cancel_scope.cancel()


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


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

        thread = _start(waker)
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

        thread = _start(waker)
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

        thread = _start(waker)
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

        thread = _start(waker)
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

        thread = _start(waker)
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

        thread = _start(waker)
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

        thread = _start(waker)
        for expected in range(1, THREAD_WAKES + 1):
            open_gate()
            await sink.wait_until(lambda e=expected: True if count[0] >= e else None)
        thread.join()

    await gated(body)


# -- bursts: many notifies from a thread per consumer resumption -------------------
# Per burst, the consumer opens the gate (see above) and waits until the whole
# burst is produced; the producer passes the gate, then bumps a counter and
# notifies, BURST times.


def _record_resumptions(row: Callable[..., Any], resumptions: int) -> None:
    RESUMPTIONS.setdefault(row.__name__, []).append(resumptions / BURSTS)


async def asyncio_event_burst() -> None:
    """raw: call_soon_threadsafe(asyncio.Event.set) per notify"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        produced = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    loop.call_soon_threadsafe(event.set)

        thread = _start(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event.clear()
                if produced[0] >= target:
                    break
                await event.wait()
                resumptions += 1
        thread.join()
        _record_resumptions(asyncio_event_burst, resumptions)

    await gated(body)


async def trio_event_burst() -> None:
    """raw: TrioToken.run_sync_soon(trio.Event.set) per notify"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        token = trio.lowlevel.current_trio_token()
        current = [trio.Event()]
        produced = [0]

        def set_current() -> None:
            current[0].set()

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    token.run_sync_soon(set_current)

        thread = _start(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event = current[0] = trio.Event()
                if produced[0] >= target:
                    break
                await event.wait()
                resumptions += 1
        thread.join()
        _record_resumptions(trio_event_burst, resumptions)

    await gated(body)


async def aiologic_revent_burst() -> None:
    """aiologic.REvent.set from the thread per notify (clear + wait)"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        event = aiologic.REvent()
        produced = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    event.set()

        thread = _start(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event.clear()
                if produced[0] >= target:
                    break
                await event
                resumptions += 1
        thread.join()
        _record_resumptions(aiologic_revent_burst, resumptions)

    await gated(body)


async def source_burst() -> None:
    """ours: WakeSource.notify per notify, WakeSink.wait_until"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        sink = WakeSink()
        source = sink.source()
        produced = [0]
        checks = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    source.notify()

        def burst_done(target: int) -> bool | None:
            checks[0] += 1
            return True if produced[0] >= target else None

        thread = _start(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            checks[0] = 0
            open_gate()
            await sink.wait_until(lambda target=burst * BURST: burst_done(target))
            # wait_until checks once, registers, checks again, then once after
            # every resumption: each check after the second follows one.
            resumptions += max(0, checks[0] - 2)
        thread.join()
        _record_resumptions(source_burst, resumptions)

    await gated(body)


# -- the scenarios -----------------------------------------------------------------


def run_asyncio(row: Row) -> None:
    asyncio.run(row())  # type: ignore[arg-type]


def run_uvloop(row: Row) -> None:
    uvloop.run(row())  # type: ignore[arg-type]


@dataclass
class Scenario:
    key: str  # the title, and the key in the JSON report
    group: str  # what --scenarios selects
    unit: str
    per: Callable[[], int]  # operations per sample
    rows: dict[str, list[Row]]  # per loop; the first row is the raw one
    # A row whose ratio is to another row than the first: {row: baseline}.
    baselines: dict[str, str] = field(default_factory=dict)
    count_loop_calls: bool = False
    burst: bool = False
    # The most a row may cost, as a ratio to its baseline: {row: ratio}.
    targets: dict[str, float] = field(default_factory=dict)


RUNNERS: dict[str, Runner] = {
    "asyncio": run_asyncio,
    "uvloop": run_uvloop,
    "trio": trio.run,
}

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
THREAD_COMMON: list[Row] = [
    anyio_from_thread,
    aiologic_event_threadsafe,
    waitmap_threadsafe,
    source_threadsafe,
]
BURST_COMMON: list[Row] = [aiologic_revent_burst, source_burst]


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "notify with nobody waiting (per call)",
            "idle",
            "ns/call",
            lambda: IDLE_CALLS,
            {"asyncio": IDLE_ASYNCIO, "uvloop": IDLE_ASYNCIO, "trio": IDLE_TRIO},
            baselines={
                "idle_waitmap_wake": "idle_dict_pop",
                "idle_asyncio_event_set": "idle_asyncio_event_set",
                "idle_trio_event_set": "idle_trio_event_set",
                "idle_asyncio_event_set_clear": "idle_asyncio_event_set",
                "idle_sink_notify": "event_set",
                "idle_source_notify": "event_set",
            },
            targets={"idle_waitmap_wake": 4.0},
        ),
        Scenario(
            "ping-pong (per round trip)",
            "ping-pong",
            "ns/trip",
            lambda: ROUNDS,
            {
                "asyncio": PING_PONG_ASYNCIO,
                "uvloop": PING_PONG_ASYNCIO,
                "trio": PING_PONG_TRIO,
            },
        ),
        Scenario(
            "wake from another thread (per wake-up)",
            "thread",
            "ns/wake",
            lambda: THREAD_WAKES,
            {
                "asyncio": [
                    asyncio_raw_threadsafe,
                    asyncio_floor_threadsafe,
                    *THREAD_COMMON,
                ],
                "uvloop": [
                    asyncio_raw_threadsafe,
                    asyncio_floor_threadsafe,
                    *THREAD_COMMON,
                ],
                "trio": [trio_raw_threadsafe, trio_floor_threadsafe, *THREAD_COMMON],
            },
            count_loop_calls=True,
        ),
        Scenario(
            f"burst of {BURST:,} notifies from a thread (per notify)",
            "burst",
            "ns/notify",
            lambda: BURSTS * BURST,
            {
                "asyncio": [asyncio_event_burst, *BURST_COMMON],
                "uvloop": [asyncio_event_burst, *BURST_COMMON],
                "trio": [trio_event_burst, *BURST_COMMON],
            },
            count_loop_calls=True,
            burst=True,
        ),
    ]


def baseline_of(scenario: Scenario, rows: list[Row], name: str) -> str:
    wanted = scenario.baselines.get(name, rows[0].__name__)
    if wanted == "event_set":  # the loop's own event: asyncio or trio
        wanted = next(r.__name__ for r in rows if r.__name__.endswith("_event_set"))
    return wanted


def run_scenario(scenario: Scenario, rounds: int, suffix: str) -> dict[str, object]:
    title = scenario.key + suffix
    extra = ""
    if scenario.count_loop_calls:
        extra += f" {'loop calls':>10}"
    if scenario.burst:
        extra += f" {'resumed':>8}"
    print()
    print_header(title, scenario.unit, extra)
    per = scenario.per()
    per_count = BURSTS if scenario.burst else per
    if scenario.count_loop_calls:
        unit = "burst" if scenario.burst else "wake-up"
        print(
            f"  (loop calls: call_soon_threadsafe / run_sync_soon calls per {unit}, "
            f"counted in the untimed warm-up)"
        )
    if scenario.burst:
        print("  (resumed: the consumer's resumptions per burst, median over samples)")
    result: dict[str, object] = {"per_sample": per}
    for loop_name, rows in scenario.rows.items():
        run = RUNNERS[loop_name]
        RESUMPTIONS.clear()
        LOOP_CALLS.clear()
        EARLY_WAKES.clear()
        for row in rows:  # warm-up, untimed (and where loop calls are counted)
            if scenario.count_loop_calls:
                sample(run, counted(row, per_count))
            else:
                sample(run, row)
        RESUMPTIONS.clear()
        EARLY_WAKES.clear()
        samples: dict[str, list[float]] = {row.__name__: [] for row in rows}
        for _ in range(rounds):
            for row in rows:
                seconds = sample(run, row)
                seconds = SELF_TIMED.pop(row.__name__, seconds)
                samples[row.__name__].append(seconds)
        summaries = {
            name: summarize(values, 1e9 / per) for name, values in samples.items()
        }
        for row in rows:
            name = row.__name__
            base_name = baseline_of(scenario, rows, name)
            columns = ""
            if scenario.count_loop_calls:
                columns += f" {LOOP_CALLS.get(name, float('nan')):10,.1f}"
            if scenario.burst:
                resumed = sorted(RESUMPTIONS.get(name, [float("nan")]))
                columns += f" {resumed[len(resumed) // 2]:8.2f}"
            label = "raw" if base_name == rows[0].__name__ else base_name
            if name in scenario.targets:
                limit = scenario.targets[name]
                ratio = summaries[name].median / summaries[base_name].median
                verdict = "met" if ratio <= limit else "MISSED"
                label += f" (target <= {limit:g}x: {verdict})"
            print_row(
                loop_name,
                name,
                summaries[name],
                summaries[base_name].median,
                label,
                columns,
            )
        for name, early in EARLY_WAKES.items():
            if early:
                print(f"    {name}: {early} wake-ups found the task not yet parked")
        result[loop_name] = {
            "samples": samples,
            "ns": {name: s.median for name, s in summaries.items()},
            "min_ns": {name: s.minimum for name, s in summaries.items()},
            "spread": {name: s.spread for name, s in summaries.items()},
            "loop_calls": dict(LOOP_CALLS),
            "resumptions_per_burst": dict(RESUMPTIONS),
            "early_wakes": dict(EARLY_WAKES),
        }
    print("  rows:")
    described: set[str] = set()
    for rows in scenario.rows.values():
        for row in rows:
            if row.__name__ not in described:
                described.add(row.__name__)
                print(f"    {row.__name__:32} {(row.__doc__ or '').strip()}")
    return result


# -- pinning -----------------------------------------------------------------------


def pin_process(cpu: int) -> None:
    """Pin every thread of this process, and the threads it starts later, to ``cpu``."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    os.sched_setaffinity(0, {cpu})
    seen: list[set[int]] = []
    checker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    checker.start()
    checker.join()
    if seen != [{cpu}]:  # pragma: no cover - would be a kernel surprise
        raise RuntimeError(f"a new thread runs on CPUs {seen}, not only {cpu}")


def run_pinned_child(options: argparse.Namespace) -> dict[str, Any]:
    """Run the thread scenarios again in a child process pinned to one CPU."""
    cpu = max(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "pinned.json")
        command = [
            sys.executable,
            __file__,
            "--pin",
            str(cpu),
            "--scenarios",
            "thread",
            "burst",
            "--rounds",
            str(options.rounds),
            "--json",
            path,
        ]
        if options.quick:
            command.append("--quick")
        sys.stdout.flush()
        subprocess.run(command, check=True, timeout=1_800)
        with open(path) as file:
            child: dict[str, Any] = json.load(file)
    pinned = {key: value for key, value in child.items() if ", pinned to CPU" in key}
    pinned["machine (pinned child)"] = child["machine"]
    return pinned


def main() -> None:
    global IDLE_CALLS, ROUNDS, THREAD_WAKES, BURSTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations, to check that every row runs (timings meaningless)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=["idle", "ping-pong", "thread", "burst"],
        default=["idle", "ping-pong", "thread", "burst"],
    )
    parser.add_argument(
        "--pin", type=int, metavar="CPU", help="pin the whole process to this CPU"
    )
    parser.add_argument(
        "--no-pinned",
        action="store_true",
        help="do not run the thread scenarios again in a process pinned to one CPU",
    )
    options = parser.parse_args()
    # A row that hangs (a thread that died) must not hang the test command.
    faulthandler.dump_traceback_later(120 if options.quick else 3_600, exit=True)
    if options.quick:
        IDLE_CALLS, ROUNDS, THREAD_WAKES, BURSTS = 1_000, 20, 5, 2
        options.rounds = 1
    suffix = ""
    if options.pin is not None:
        pin_process(options.pin)
        suffix = f", pinned to CPU {options.pin}"
    print(f"wakers.py{suffix or ' (not pinned)'}: --rounds {options.rounds}")
    report: dict[str, Any] = {"machine": print_machine(), "pinned": options.pin}
    print_legend()
    for scenario in scenarios():
        if scenario.group in options.scenarios:
            report[scenario.key + suffix] = run_scenario(
                scenario, options.rounds, suffix
            )
    can_pin = hasattr(os, "sched_setaffinity")
    threads_run = {"thread", "burst"} & set(options.scenarios)
    if options.pin is None and not options.no_pinned and threads_run and can_pin:
        print()
        report.update(run_pinned_child(options))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
