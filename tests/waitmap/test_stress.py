"""Everything at once: event loops of every kind and plain threads share one map.

Several threads each run an event loop of their own (``asyncio.run``,
``uvloop.run`` and ``trio.run``) while plain threads with no loop call the
synchronous methods. All of them share one :class:`~anyio_waitmap.WaitMap` and
several :class:`~anyio_waitmap.WakeSink` / :class:`~anyio_waitmap.WakeSource`
pairs:

* producers (plain threads, and one task in each loop) hand out unique values
  with ``wake``, store them (``wm[k] = v``, ``update``, ``setdefault``), remove
  stored ones (``pop``, ``popitem``), ``cancel(key)``, append tokens to the
  sinks' queues and notify them (sometimes with nothing new);
* in each loop, tasks ``take``, ``wait`` and ``wait_for`` random keys, and are
  cancelled while they do: a short random ``move_on_after``, a sibling that
  cancels their scope after a few checkpoints, a scope cancelled before the
  call; some ``wait_for`` predicates raise. Other waits have no timeout: only a
  value, ``cancel(key)`` or ``close()`` ends them, so a lost wake-up shows;
* in each loop, the consumer of a sink waits for tokens, sometimes from a
  fresh task, sometimes with a timeout or a cancelled scope.

In the ``drain`` form, the map stays open: at the end the test hands values to
the waits with no timeout, and every task leaves by itself. In the ``close``
form, a producer closes the map while the others keep going.

What is checked (each wait of the test is bounded by ``JOIN_TIMEOUT`` from
``tests/support/workers.py``, so a lost wake-up fails, never hangs):

* every value is accounted for exactly once: a stored value was consumed by one
  ``take``, ``pop`` or ``popitem``, or is still stored; a woken one was returned
  by exactly as many tasks as ``Woke(n)`` said (at most one of them a taker);
  one handed back (``NoMatch``, ``Closed``, a store refused) reached nobody;
* every returned value came from the key waited on and satisfies the
  ``wait_for`` predicate; ``KeyCancelled`` was raised no more often than
  ``cancel`` counted, and the difference is made up of tasks that a cancellation
  reached first (on asyncio it then wins over the ``KeyCancelled``);
* while it runs, the map never counts more waiting tasks than there are tasks
  inside a wait; at the end nothing is left waiting: ``statistics()``, the
  map's per-key bookkeeping, every sink's statistics and registration;
* every sink consumer received each token exactly once, in each producer's
  order; once its producers are done and it waits with no timeout, the test
  changes its state and notifies it many times in a row, one token at a time
  (mostly while it is parked), and it must wake up for each;
* no thread is left running and no exception escaped any thread.

Two forms:

* by default (the normal test run), each producer makes a fixed number of
  operations, bounded by a couple of seconds: the module takes a few seconds;
* ``WAITMAP_STRESS_SECONDS=120 pytest tests/waitmap/test_stress.py`` runs the
  long form: the producers keep going until that many seconds have passed in all
  (split evenly between the module's tests), then everything stops by itself;
  the per-test timeout grows accordingly.

The randomness (which operation, key, kind of wait, cancellation, jitter) comes
from one seed, printed at the start of each test (pytest shows it when the test
fails) and settable with ``WAITMAP_STRESS_SEED=<int>``. Thread interleavings
are not reproducible, but the seed reproduces what every thread and task tries.

Sleeps here are jitter in the hammering loops and short pauses between the
test's rounds of checks at the end; no result depends on their length.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from support.workers import JOIN_TIMEOUT, Worker

from anyio_waitmap import (
    Closed,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeSink,
    WakeSource,
    Woke,
)
from anyio_waitmap._wakers import PARKED

pytestmark = pytest.mark.threads

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test dependency group
    uvloop = None  # type: ignore[assignment]

# -- configuration ---------------------------------------------------------------------

ENDINGS = ("drain", "close")


def _env_seconds() -> float:
    text = os.environ.get("WAITMAP_STRESS_SECONDS", "").strip()
    seconds = float(text) if text else 0.0
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"WAITMAP_STRESS_SECONDS must be >= 0, got {text!r}")
    return seconds


def _env_seed() -> int:
    text = os.environ.get("WAITMAP_STRESS_SEED", "").strip()
    return int(text, 0) if text else random.SystemRandom().randrange(2**32)


LONG_SECONDS = _env_seconds()
SEED = _env_seed()
if LONG_SECONDS:
    #: How long the producers of one test keep going.
    HAMMER_SECONDS = LONG_SECONDS / len(ENDINGS)
    #: Operations per producer: in the long form, only the time bounds them.
    OPS_PER_PRODUCER = 2**62
else:
    HAMMER_SECONDS = 2.0
    OPS_PER_PRODUCER = 1000
#: Every wait that only a bug can make long is bounded: the tasks' own guards
#: fire JOIN_TIMEOUT after the hammering's deadline, the test gives them
#: JOIN_TIMEOUT more to finish, and JOIN_TIMEOUT more to release a hung thread.
TEST_TIMEOUT = max(60, math.ceil(HAMMER_SECONDS + 3 * JOIN_TIMEOUT + 15))

N_KEYS = 6
N_THREAD_PRODUCERS = 3
N_SINKS = 4
MAP_CONSUMERS_PER_LOOP = 6
#: At the end, once every producer is done and a sink's consumer waits with no
#: timeout, the test appends PROBES tokens to its queue one at a time (each
#: once the previous one was received), notifying after each, then CLOSING.
PROBES = 40
PROBE = -2
CLOSING = (-1, -1)

# -- values and predicates -------------------------------------------------------------


class _PredicateError(Exception):
    """Raised on purpose by some wait_for() predicates."""


def _accepts(value: int, residue: int, raises: bool, producers: int) -> bool:
    """A wait_for() predicate: pure, cheap, sometimes raising."""
    number = value // producers
    if raises and number % 5 == 0:
        raise _PredicateError(value)
    return number % 3 != residue


# -- what each actor records -----------------------------------------------------------


@dataclass
class _ProducerLog:
    woke: dict[int, tuple[int, int]] = field(default_factory=dict)  # v: (key, n)
    no_match: dict[int, int] = field(default_factory=dict)  # v: key
    closed: dict[int, int] = field(default_factory=dict)  # v: key
    given: dict[int, int] = field(default_factory=dict)  # stored (or handed over)
    refused: dict[int, int] = field(default_factory=dict)  # store did not take it
    removed: list[tuple[int, int]] = field(default_factory=list)  # pop/popitem
    cancel_counted: int = 0
    sent: list[int] = field(default_factory=lambda: [0] * N_SINKS)
    ops: int = 0
    closed_map: bool = False


@dataclass
class _ConsumerLog:
    #: The number of the event loop the task runs in.
    loop: int
    #: (kind, key, value, residue, raises) for every value a task returned.
    returned: list[tuple[str, int, int, int, bool]] = field(default_factory=list)
    key_cancelled: int = 0
    cancelled: int = 0
    predicate_errors: int = 0
    saw_close: bool = False


@dataclass
class _SinkLog:
    received: list[tuple[int, int]] = field(default_factory=list)
    waits: int = 0
    cancelled: int = 0


@dataclass
class _LoopLog:
    consumers: list[_ConsumerLog]
    sinks: dict[int, _SinkLog]


# -- the shared state ------------------------------------------------------------------


@dataclass
class _Shared:
    wm: WaitMap[int, int]
    sinks: list[WakeSink]
    queues: list[deque[tuple[int, int]]]
    final_mode: list[threading.Event]
    stop: threading.Event
    keys: list[int]
    key_locks: list[threading.Lock]
    #: The keys of the waits that only a value, cancel(key) or close() can end,
    #: so that the test can end them with values once the hammering is over.
    patient: dict[object, int]
    patient_lock: threading.Lock
    #: Per event loop: how many waits its tasks started and ended. Only that
    #: loop's thread writes them; at any time, the map's count of waiting tasks
    #: is at most ``sum(entered) - sum(left)``.
    entered: list[int]
    left: list[int]
    producers: int
    deadline: float
    #: When a task that still waits for what the end of the hammering should
    #: have brought gives up, and fails the test: deadline + JOIN_TIMEOUT.
    hang_at: float
    #: Producer 0 closes the map after this many operations or at this time
    #: (the ``close`` form only).
    close_after_ops: int | None
    close_at_time: float | None


class _Producer:
    """Hands out unique values, removes stored ones, cancels keys, notifies sinks.

    The same steps run in a plain thread or in a task of an event loop.
    """

    def __init__(self, shared: _Shared, index: int, seed: int) -> None:
        self.shared = shared
        self.index = index
        self.rng = random.Random(seed)
        self.log = _ProducerLog()
        self.sources: list[WakeSource] = [sink.source() for sink in shared.sinks]
        self._number = 0

    def _new_value(self) -> int:
        value = self.index + self.shared.producers * self._number
        self._number += 1
        return value

    def running(self) -> bool:
        return (
            self.log.ops < OPS_PER_PRODUCER and time.monotonic() < self.shared.deadline
        )

    def _close_now(self) -> bool:
        shared = self.shared
        if self.index != 0 or self.log.closed_map:
            return False
        if (
            shared.close_after_ops is not None
            and self.log.ops >= shared.close_after_ops
        ):
            return True
        return shared.close_at_time is not None and time.monotonic() >= (
            shared.close_at_time
        )

    def step(self) -> None:
        log, rng = self.log, self.rng
        log.ops += 1
        if self._close_now():
            self.shared.wm.close()
            log.closed_map = True
            return
        key = rng.choice(self.shared.keys)
        roll = rng.random()
        if roll < 0.35:
            self._wake(key)
        elif roll < 0.6:
            self._store(key)
        elif roll < 0.7:
            self._remove(key)
        elif roll < 0.74:
            log.cancel_counted += self.shared.wm.cancel(key)
        else:
            self._notify(rng.randrange(N_SINKS))
        if rng.random() < 0.1:
            self._check_bookkeeping()

    def _check_bookkeeping(self) -> None:
        """The map counts no more waiting tasks than there are tasks in a wait.

        Read in this order, ``entered - left`` is at least the number of tasks
        that were inside a wait when the statistics were taken.
        """
        shared = self.shared
        left = sum(shared.left)
        statistics = shared.wm.statistics()
        inside = sum(shared.entered) - left
        assert 0 <= statistics.keys_waiting <= statistics.tasks_waiting <= inside, (
            f"{statistics}, but only {inside} tasks are in a wait"
        )

    def drain(self, key: int) -> None:
        """Hand values to whoever waits on ``key``, to let them leave.

        Two values with consecutive numbers: every wait_for() predicate of this
        module accepts (or raises for) at least one of them, so no waiter can
        be passed over round after round.
        """
        self._wake(key)
        self._wake(key)

    def finish(self) -> None:
        closer = self.shared.close_after_ops is not None and self.index == 0
        if closer and not self.log.closed_map:
            # The close form closes the map in any case.
            self.shared.wm.close()
            self.log.closed_map = True

    def _wake(self, key: int) -> None:
        value = self._new_value()
        outcome = self.shared.wm.wake(key, value)
        if isinstance(outcome, Woke):
            assert outcome.count >= 1, outcome
            self.log.woke[value] = (key, outcome.count)
        elif isinstance(outcome, NoMatch):
            assert outcome.value == value, outcome
            self.log.no_match[value] = key
        else:
            assert isinstance(outcome, Closed), outcome
            assert outcome.value == value, outcome
            self.log.closed[value] = key

    def _store(self, key: int) -> None:
        # Producers never replace a stored value (a replaced value would be lost
        # by design, as in a dict): they store under a lock of their own, only
        # when the key holds nothing; consumers may still take or pop meanwhile.
        wm, value, style = self.shared.wm, self._new_value(), self.rng.randrange(3)
        with self.shared.key_locks[key]:
            try:
                if style == 0 and key not in wm:
                    wm[key] = value
                    kept = value
                elif style == 1 and key not in wm:
                    wm.update({key: value})
                    kept = value
                else:
                    kept = wm.setdefault(key, value)
            except WaitMapClosed:
                assert wm.closed
                kept = None
        if kept == value:
            self.log.given[value] = key
        else:
            self.log.refused[value] = key

    def _remove(self, key: int) -> None:
        wm = self.shared.wm
        if self.rng.random() < 0.85:
            value = wm.pop(key, None)
            if value is not None:
                self.log.removed.append((key, value))
        else:
            try:
                item = wm.popitem()
            except KeyError:
                return
            self.log.removed.append(item)

    def _notify(self, sink: int) -> None:
        rng = self.rng
        if rng.random() < 0.1:  # nothing new: a spurious notification
            self.sources[sink].notify()
            return
        self.shared.queues[sink].append((self.index, self.log.sent[sink]))
        self.log.sent[sink] += 1
        if rng.random() < 0.2:
            self.shared.sinks[sink].notify()
        else:
            self.sources[sink].notify()

    def run_in_thread(self) -> _ProducerLog:
        rng = self.rng
        while self.running():
            self.step()
            jitter = rng.random()
            if jitter < 0.3:
                time.sleep(0)
            elif jitter < 0.33:
                time.sleep(rng.random() * 0.0005)
        self.finish()
        return self.log

    async def run_in_task(self, done: threading.Event) -> None:
        rng = self.rng
        try:
            while self.running():
                self.step()
                for _ in range(rng.randrange(3)):
                    await anyio.lowlevel.checkpoint()
                if rng.random() < 0.03:
                    await anyio.sleep(rng.random() * 0.0005)
            self.finish()
        finally:
            done.set()


# -- the tasks in the event loops ------------------------------------------------------


async def _cancel_after(scope: anyio.CancelScope, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    scope.cancel()


async def _wait_once(
    shared: _Shared, rng: random.Random, key: int, kind: str, log: _ConsumerLog
) -> None:
    """One wait of ``kind`` on ``key``, its outcome recorded as soon as it ends."""
    wm = shared.wm
    residue, raises = rng.randrange(3), rng.random() < 0.15
    shared.entered[log.loop] += 1
    try:
        if kind == "take":
            value = await wm.take(key)
        elif kind == "wait":
            value = await wm.wait(key)
        else:
            value = await wm.wait_for(
                key,
                functools.partial(
                    _accepts, residue=residue, raises=raises, producers=shared.producers
                ),
            )
    except WaitMapClosed:
        assert wm.closed
        log.saw_close = True
        return
    except KeyCancelled as exc:
        if exc.key != key:
            raise AssertionError(f"waited on {key}, cancelled for {exc.key}") from exc
        log.key_cancelled += 1
        return
    except _PredicateError:
        assert kind == "wait_for"
        assert raises
        log.predicate_errors += 1
        return
    except anyio.get_cancelled_exc_class():
        log.cancelled += 1
        raise
    finally:
        shared.left[log.loop] += 1
    # No checkpoint since the value was returned: it is recorded before a
    # cancellation that arrived meanwhile can be raised.
    log.returned.append((kind, key, value, residue, raises))


async def _wait_patiently(
    shared: _Shared, rng: random.Random, key: int, kind: str, log: _ConsumerLog
) -> None:
    """A wait with no timeout: a wake-up that never comes fails the test."""
    token = object()
    with shared.patient_lock:
        shared.patient[token] = key
    try:
        with anyio.move_on_after(shared.hang_at - time.monotonic()) as guard:
            await _wait_once(shared, rng, key, kind, log)
    finally:
        with shared.patient_lock:
            del shared.patient[token]
    if guard.cancel_called:
        raise AssertionError(
            f"{kind}({key}) was not resumed although the hammering ended long "
            f"ago: a wake-up was lost"
        )


async def _consume_map(shared: _Shared, seed: int, log: _ConsumerLog) -> None:
    rng = random.Random(seed)
    while not (shared.stop.is_set() or log.saw_close):
        key = rng.choice(shared.keys)
        kind = rng.choice(("take", "take", "wait", "wait_for"))
        for _ in range(rng.randrange(3)):
            await anyio.lowlevel.checkpoint()
        mode = rng.random()
        if mode < 0.2:  # patient: only a value, cancel(key) or close() ends it
            await _wait_patiently(shared, rng, key, kind, log)
        elif mode < 0.55:  # a short random timeout
            with anyio.move_on_after(rng.random() * 0.002):
                await _wait_once(shared, rng, key, kind, log)
        elif mode < 0.85:  # a sibling cancels the scope after a few checkpoints
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_after, tg.cancel_scope, rng.randrange(6))
                await _wait_once(shared, rng, key, kind, log)
        else:  # the scope is cancelled before the call
            with anyio.CancelScope() as scope:
                scope.cancel()
                await _wait_once(shared, rng, key, kind, log)


async def _consume_sink(shared: _Shared, index: int, seed: int, log: _SinkLog) -> None:
    rng = random.Random(seed)
    sink, queue, stop = shared.sinks[index], shared.queues[index], shared.stop

    def grab_or_none() -> list[tuple[int, int]] | None:
        if not queue:
            return None
        items = []
        while queue:  # only this task removes: popleft() cannot fail
            items.append(queue.popleft())
        return items

    def grab_or_stop() -> list[tuple[int, int]] | None:
        items = grab_or_none()
        if items is None and stop.is_set():
            return []
        return items

    async def in_new_task(box: list[list[tuple[int, int]]]) -> None:
        box.append(await sink.wait_until(grab_or_stop))

    # Hammering: waits of every kind, until the test says stop (and notifies).
    with anyio.move_on_after(shared.hang_at - time.monotonic()) as guard:
        while not stop.is_set():
            got: list[tuple[int, int]] | None = None
            mode = rng.random()
            log.waits += 1
            try:
                if mode < 0.3:  # until notified
                    got = await sink.wait_until(grab_or_stop)
                elif mode < 0.5:  # until notified, in a task of its own
                    box: list[list[tuple[int, int]]] = []
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(in_new_task, box)
                    got = box[0]
                elif mode < 0.8:
                    with anyio.move_on_after(rng.random() * 0.002):
                        got = await sink.wait_until(grab_or_stop)
                elif mode < 0.95:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_cancel_after, tg.cancel_scope, rng.randrange(6))
                        got = await sink.wait_until(grab_or_stop)
                else:
                    with anyio.CancelScope() as scope:
                        scope.cancel()
                        got = await sink.wait_until(grab_or_stop)
            except anyio.get_cancelled_exc_class():
                log.cancelled += 1
                raise
            if got is not None:
                log.received.extend(got)
    if guard.cancelled_caught:
        raise AssertionError(
            f"sink {index}: the consumer still waited long after the hammering "
            f"ended, although the test changed its state and notified it"
        )

    # The end: from now on, only notifications wake this task (no timeouts that
    # would make it look again by itself). Once this event is set, the test
    # appends the probes, then CLOSING, each followed by a notification.
    shared.final_mode[index].set()

    async def receive_in_new_task() -> None:
        log.received.extend(await sink.wait_until(grab_or_none))

    with anyio.move_on_after(JOIN_TIMEOUT) as guard:
        while CLOSING not in log.received:
            if rng.random() < 0.5:
                log.received.extend(await sink.wait_until(grab_or_none))
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive_in_new_task)
    if guard.cancelled_caught:
        raise AssertionError(
            f"sink {index}: the consumer missed the notification that made its "
            f"predicate true; it holds {log.received[-3:]}, the queue "
            f"{list(queue)}"
        )


async def _loop_main(
    shared: _Shared,
    number: int,
    consumer_seeds: list[int],
    sink_seeds: dict[int, int],
    producer: _Producer,
    producer_done: threading.Event,
    ready: threading.Event,
) -> _LoopLog:
    log = _LoopLog(
        consumers=[_ConsumerLog(loop=number) for _ in consumer_seeds],
        sinks={index: _SinkLog() for index in sink_seeds},
    )
    async with anyio.create_task_group() as tg:
        for seed, consumer_log in zip(consumer_seeds, log.consumers, strict=True):
            tg.start_soon(_consume_map, shared, seed, consumer_log)
        for index, seed in sink_seeds.items():
            tg.start_soon(_consume_sink, shared, index, seed, log.sinks[index])
        tg.start_soon(producer.run_in_task, producer_done)
        ready.set()
    return log


def _run_asyncio(main: Callable[[], Coroutine[Any, Any, _LoopLog]]) -> _LoopLog:
    return asyncio.run(main())


def _run_uvloop(main: Callable[[], Coroutine[Any, Any, _LoopLog]]) -> _LoopLog:
    assert uvloop is not None
    return uvloop.run(main())


def _run_trio(main: Callable[[], Awaitable[_LoopLog]]) -> _LoopLog:
    return trio.run(main)


LOOPS: list[tuple[str, Callable[[Callable[[], Any]], _LoopLog]]] = [
    ("asyncio", _run_asyncio),
    ("trio", _run_trio),
]
if uvloop is not None:
    LOOPS.insert(1, ("asyncio+uvloop", _run_uvloop))


def _consumer_parked(sink: WakeSink) -> bool:
    """Whether the consumer of ``sink`` is parked, waiting for a notification."""
    waker = sink._waker
    return waker is not None and waker._state == PARKED


# -- the test's own bounded waits ------------------------------------------------------


def _wait_event(event: threading.Event, owner: threading.Thread, until: float) -> bool:
    """Wait for ``event``; give up once ``owner`` has died or at ``until``."""
    while not event.wait(0.005):
        if not owner.is_alive() or time.monotonic() > until:
            return event.is_set()
    return True


def _join(workers: list[Worker[Any]], until: float) -> tuple[dict[str, Any], list[str]]:
    """Join every worker by ``until``; return their results and what went wrong."""
    results: dict[str, Any] = {}
    problems: list[str] = []
    for worker in workers:
        worker.join(max(0.0, until - time.monotonic()))
        if worker.is_alive():
            problems.append(f"thread {worker.name!r} is still running")
            continue
        try:
            results[worker.name] = worker.finish(0)
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc))
            problems.append(f"thread {worker.name!r} raised:\n{text}")
    return results, problems


# -- the test --------------------------------------------------------------------------


@pytest.mark.stress
@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("ending", ENDINGS)
def test_stress_mixed_loops_and_threads_share_map_and_sinks(ending: str) -> None:
    print(
        f"WAITMAP_STRESS_SEED={SEED} (form: "
        f"{'long' if LONG_SECONDS else 'short'}, {ending}, "
        f"{HAMMER_SECONDS:g} s at most)"
    )
    master = random.Random(f"{SEED}/{ending}")
    started = time.monotonic()
    # The thread producers, one producer task per loop, and the drainer (the
    # test's own thread, which hands values to the waits left at the end).
    producer_count = N_THREAD_PRODUCERS + len(LOOPS) + 1
    shared = _Shared(
        wm=WaitMap(),
        sinks=[WakeSink() for _ in range(N_SINKS)],
        queues=[deque() for _ in range(N_SINKS)],
        final_mode=[threading.Event() for _ in range(N_SINKS)],
        stop=threading.Event(),
        keys=list(range(N_KEYS)),
        key_locks=[threading.Lock() for _ in range(N_KEYS)],
        patient={},
        patient_lock=threading.Lock(),
        entered=[0] * len(LOOPS),
        left=[0] * len(LOOPS),
        producers=producer_count,
        deadline=started + HAMMER_SECONDS,
        hang_at=started + HAMMER_SECONDS + JOIN_TIMEOUT,
        close_after_ops=None,
        close_at_time=None,
    )
    if ending == "close":
        if LONG_SECONDS:
            shared.close_at_time = started + HAMMER_SECONDS * master.uniform(0.85, 0.97)
        else:
            shared.close_after_ops = master.randrange(
                OPS_PER_PRODUCER // 2, OPS_PER_PRODUCER * 9 // 10
            )
    wm, sinks = shared.wm, shared.sinks
    producers = [
        _Producer(shared, index, master.randrange(2**32))
        for index in range(producer_count)
    ]
    thread_producers = producers[:N_THREAD_PRODUCERS]
    task_producers = producers[N_THREAD_PRODUCERS:-1]
    drainer = producers[-1]
    probe_rng = random.Random(master.randrange(2**32))

    producer_done = [threading.Event() for _ in LOOPS]
    loop_ready = [threading.Event() for _ in LOOPS]
    sink_hosts = {index: index % len(LOOPS) for index in range(N_SINKS)}
    loop_workers: list[Worker[Any]] = []
    for number, (name, run) in enumerate(LOOPS):
        main = functools.partial(
            _loop_main,
            shared,
            number,
            [master.randrange(2**32) for _ in range(MAP_CONSUMERS_PER_LOOP)],
            {
                index: master.randrange(2**32)
                for index, host in sink_hosts.items()
                if host == number
            },
            task_producers[number],
            producer_done[number],
            loop_ready[number],
        )
        loop_workers.append(Worker(functools.partial(run, main), name))
    producer_workers: list[Worker[Any]] = [
        Worker(producer.run_in_thread, f"producer {producer.index}")
        for producer in thread_producers
    ]
    everyone = loop_workers + producer_workers
    problems: list[str] = []
    closing = [shared.sinks[index].source() for index in range(N_SINKS)]

    try:
        for worker in loop_workers:
            worker.start()
        for worker, ready in zip(loop_workers, loop_ready, strict=True):
            if not _wait_event(ready, worker, shared.hang_at):
                problems.append(f"{worker.name}: its tasks never started")
        for worker in producer_workers:
            worker.start()

        # Hammering, until every producer is done (by count or by time).
        _, thread_problems = _join(producer_workers, shared.hang_at)
        problems += thread_problems
        for worker, done in zip(loop_workers, producer_done, strict=True):
            if not _wait_event(done, worker, shared.hang_at):
                problems.append(f"{worker.name}: its producer task never finished")
        hammered = time.monotonic() - started

        # Stop: the map consumers leave after their current wait, and the test
        # hands values to those that wait with no timeout. The sink consumers
        # are told through their predicates, and notified; once each waits with
        # no timeout at all, the test appends the probes to its queue one by
        # one, then CLOSING, and notifies after each.
        shared.stop.set()
        for source in closing:
            source.notify()
        probes_sent = [0] * N_SINKS
        probe_when_parked = [True] * N_SINKS
        pending = set(range(N_SINKS))
        # The tasks' own guards fire by hang_at (and a sink consumer's last one
        # JOIN_TIMEOUT after it got there): then their threads end with errors.
        until = max(time.monotonic(), shared.hang_at) + JOIN_TIMEOUT
        while time.monotonic() < until:
            for index in sorted(pending):
                if not loop_workers[sink_hosts[index]].is_alive():
                    pending.discard(index)
                    problems.append(f"sink {index}: its consumer's loop ended")
                    continue
                if not shared.final_mode[index].is_set():
                    continue
                if shared.queues[index] or (
                    probe_when_parked[index] and not _consumer_parked(sinks[index])
                ):
                    continue  # the previous token is not received yet
                if probes_sent[index] < PROBES:
                    shared.queues[index].append((PROBE, probes_sent[index]))
                    probes_sent[index] += 1
                else:
                    shared.queues[index].append(CLOSING)
                    pending.discard(index)
                if probe_rng.random() < 0.5:
                    closing[index].notify()
                else:
                    sinks[index].notify()
                # Mostly into a parked consumer: the wake-up from another
                # thread; otherwise whatever the consumer is doing.
                probe_when_parked[index] = probe_rng.random() < 0.8
            with shared.patient_lock:
                patient_keys = sorted(set(shared.patient.values()))
            for key in patient_keys:
                drainer.drain(key)
            if not pending and not any(w.is_alive() for w in loop_workers):
                break
            # A pause between rounds: a wait that was about to park when it was
            # woken (NoMatch) gets another value in a later round, and the sink
            # consumers get to take their tokens.
            time.sleep(0.0002)
        problems += [
            f"sink {index}: its consumer never got to the end" for index in pending
        ]
        results, loop_problems = _join(loop_workers, until)
        problems += loop_problems

        # What is left, taken before anything else could change it.
        statistics = wm.statistics()
        bookkeeping = dict(wm._waiting)
        final = dict(wm)
        sink_statistics = [sink.statistics() for sink in sinks]
        sinks_registered = [sink._waker is not None for sink in sinks]
    finally:
        if any(worker.is_alive() for worker in everyone):
            # Something hangs: release every task and thread, then fail below.
            shared.stop.set()
            wm.close()
            for sink in sinks:
                sink.close()
            until = time.monotonic() + JOIN_TIMEOUT
            for worker in everyone:
                worker.join(max(0.0, until - time.monotonic()))
    assert not problems, "\n".join(problems)
    assert not any(worker.is_alive() for worker in everyone)

    loop_logs: list[_LoopLog] = [results[name] for name, _ in LOOPS]
    consumer_logs = [log for loop in loop_logs for log in loop.consumers]
    sink_logs = {i: log for loop in loop_logs for i, log in loop.sinks.items()}
    producer_logs = [producer.log for producer in producers]

    # -- nothing is left waiting -------------------------------------------------
    assert statistics.tasks_waiting == 0, statistics
    assert statistics.keys_waiting == 0, statistics
    assert statistics.values_stored == len(final), (statistics, final)
    assert statistics.closed == (ending == "close"), statistics
    assert bookkeeping == {}, bookkeeping

    # -- every value is accounted for exactly once ---------------------------------
    produced_key: dict[int, int] = {}
    category: dict[int, str] = {}
    for log in producer_logs:
        for name, values in (
            ("woke", {value: key for value, (key, _) in log.woke.items()}),
            ("no_match", log.no_match),
            ("closed", log.closed),
            ("given", log.given),
            ("refused", log.refused),
        ):
            for value, key in values.items():
                assert value not in category, f"value {value} produced twice"
                category[value] = name
                produced_key[value] = key
    woke = {value: n for log in producer_logs for value, (_, n) in log.woke.items()}

    returned_by_tasks: Counter[int] = Counter()
    consumed: Counter[int] = Counter()  # by take, pop and popitem
    for consumer_log in consumer_logs:
        for kind, key, value, residue, raises in consumer_log.returned:
            assert value in produced_key, f"{kind} returned {value}, never produced"
            assert produced_key[value] == key, (
                f"{kind}({key}) returned {value}, produced for {produced_key[value]}"
            )
            if kind == "wait_for":
                assert _accepts(value, residue, raises, producer_count), (
                    f"wait_for returned {value}, which its predicate rejects"
                )
            returned_by_tasks[value] += 1
            if kind == "take":
                consumed[value] += 1
    for log in producer_logs:
        for key, value in log.removed:
            assert category.get(value) == "given", (
                f"pop removed {value}, which was never stored ({category.get(value)})"
            )
            assert produced_key[value] == key, (key, value)
            consumed[value] += 1
    for key, value in final.items():
        assert category.get(value) == "given", (key, value, category.get(value))
        assert produced_key[value] == key, (key, value)

    for value, name in category.items():
        times_consumed = consumed[value]
        kept = final.get(produced_key[value]) == value
        if name == "given":
            # Taken, popped or still stored: exactly one of these.
            assert times_consumed + kept == 1, (
                f"stored value {value}: consumed {times_consumed} times, "
                f"{'still' if kept else 'not'} stored"
            )
        elif name == "woke":
            assert not kept
            assert times_consumed <= 1, f"woken value {value} taken {times_consumed}x"
            assert returned_by_tasks[value] == woke[value], (
                f"wake returned Woke({woke[value]}) for {value}, but "
                f"{returned_by_tasks[value]} tasks returned it"
            )
        else:
            # Handed back to its producer: nobody got it.
            assert not kept
            assert returned_by_tasks[value] == 0, (
                f"{value} came back to its producer ({name}) yet "
                f"{returned_by_tasks[value]} tasks returned it"
            )

    # -- KeyCancelled: raised at most as often as cancel() counted -----------------
    counted = sum(log.cancel_counted for log in producer_logs)
    raised = sum(log.key_cancelled for log in consumer_logs)
    cancelled = sum(log.cancelled for log in consumer_logs)
    assert raised <= counted <= raised + cancelled, (raised, counted, cancelled)

    if ending == "close":
        assert producer_logs[0].closed_map

    # -- every sink consumer got every token once, in order, and the last one ----
    for index, sink_log in sink_logs.items():
        received = sink_log.received
        assert received.count(CLOSING) == 1, f"sink {index}: {received[-5:]}"
        assert received[-1] == CLOSING, f"sink {index}: {received[-5:]}"
        for producer in producers:
            mine = [number for who, number in received if who == producer.index]
            assert mine == list(range(producer.log.sent[index])), (
                f"sink {index}, producer {producer.index}: "
                f"{len(mine)} tokens received, {producer.log.sent[index]} sent"
            )
        probes = [number for who, number in received if who == PROBE]
        assert probes == list(range(PROBES)), f"sink {index}: probes {probes}"
        assert len(received) == 1 + PROBES + sum(p.log.sent[index] for p in producers)
        assert not shared.queues[index]
    assert len(sink_logs) == N_SINKS
    for index in range(N_SINKS):
        assert not sink_statistics[index].consumer_waiting, (index, sink_statistics)
        assert not sink_statistics[index].closed
        assert not sinks_registered[index], f"sink {index} still has a waker"

    # -- it did hammer -----------------------------------------------------------
    outcomes = Counter(category.values())
    kinds = Counter(
        kind for consumer_log in consumer_logs for kind, *_ in consumer_log.returned
    )
    woke_many = sum(1 for n in woke.values() if n > 1)
    print(
        f"hammered {hammered:.2f} s, {sum(log.ops for log in producer_logs)} ops; "
        f"values: {dict(outcomes)}, Woke(n>1): {woke_many}; returned: {dict(kinds)}; "
        f"removed: {sum(len(log.removed) for log in producer_logs)}; "
        f"left stored: {len(final)}; KeyCancelled: {raised}/{counted}; "
        f"cancelled waits: {cancelled}; predicate errors: "
        f"{sum(log.predicate_errors for log in consumer_logs)}; sink tokens: "
        f"{sum(len(log.received) for log in sink_logs.values())}, sink waits: "
        f"{sum(log.waits for log in sink_logs.values())}"
    )
    assert outcomes["woke"] > 0, "no wake() ever reached a parked task"
    assert kinds["take"] > 0, "no take() ever returned"
