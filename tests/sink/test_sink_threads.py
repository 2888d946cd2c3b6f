"""WakeSink driven from plain threads.

Bounded stress ports of the Rust ``diatomic-waker`` crate's scenarios (many
producers, spurious notifications, a consumer that changes between waits: a new
task on the sink, or a new waker on a ``lowlevel.DiatomicWaker``), and the
coalescing promised by :mod:`anyio_waitmap.lowlevel`: any number of
notifications that arrive before the consumer runs cost one resumption, one
check of the predicate and at most one call into the event loop.

Every thread started here is a daemon joined with a timeout (and asserted to have
finished); every wait that only a lost notification could make long runs under
``anyio.fail_after``, so such a bug fails as a timeout instead of hanging. No test
asserts anything about timing. The lowlevel wakers across threads are tested in
tests/lowlevel/test_lowlevel_threads.py.
"""

from __future__ import annotations

import collections
import functools
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
from support.wakers_threads import SEED, _state, _until
from support.workers import JOIN_TIMEOUT, Worker, run_in_thread_now

from anyio_waitmap import WakeSink
from anyio_waitmap.lowlevel import DiatomicWaker, Waker

pytestmark = [pytest.mark.anyio, pytest.mark.threads]

T = TypeVar("T")

PRODUCERS = 4
TOKENS_PER_PRODUCER = 2_000
SPURIOUS_BURST = 300
#: Every this many tokens, a producer pauses until the consumer is parked, so
#: that every run exercises wake-ups of a parked consumer, not only a busy one.
RENDEZVOUS_EVERY = 500

CHANGING_PRODUCERS = 4
CHANGING_TOKENS_PER_PRODUCER = 600
NOTIFY_BURST = 1_000
NOTIFIER_THREADS = 4
COUNTER_ROUNDS = 300


# -- helpers -----------------------------------------------------------------------


def _finish_all(workers: list[Worker[T]]) -> list[T]:
    return [worker.finish() for worker in workers]


def _notify_many(notify: Callable[[], None], times: int) -> None:
    for _ in range(times):
        notify()


def _sink_waker(sink: WakeSink) -> Waker | None:
    """The waker registered in the sink right now, if any."""
    return sink._waker


def _consumer_parked(sink: WakeSink) -> bool:
    return _state(_sink_waker(sink)) == "parked"


def _wait_in_thread(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` from a plain thread; fail (not hang) if it never holds."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.0002)


@pytest.fixture
def slow_wake(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make some wake-ups from other threads linger once they resumed the task.

    A notifier that wakes a parked consumer still holds the sink's right to
    notify when Waker.wake() returns; a real thread can be descheduled right
    there. Sleeping there, at random, lets the consumer resume, check and park
    again, and other notifiers find the right taken, while the first still holds
    it: the window in which a notification handed over to the holder could be
    dropped. (Sleeping inside the call into the loop would not do: the waker's
    own lock is held there, so the consumer could not resume.) Returns the list
    of pauses made, one item each.
    """
    pauses: list[int] = []
    rng = random.Random(SEED + 99)
    loop_thread = threading.get_ident()  # sync fixtures run in the loop's thread
    original = Waker.wake

    def lingering(self: Waker) -> None:
        was_parked = _state(self) == "parked"
        original(self)
        from_thread = threading.get_ident() != loop_thread
        if was_parked and from_thread and rng.random() < 0.5:
            pauses.append(1)
            time.sleep(rng.random() * 0.001)

    monkeypatch.setattr(Waker, "wake", lingering)
    return pauses


class _CountingPredicate:
    """Counts its calls; returns ``value`` once it is set (None until then)."""

    def __init__(self) -> None:
        self.calls = 0
        self.value: object = None

    def __call__(self) -> object:
        self.calls += 1
        return self.value


# -- 1. diatomic-waker scenarios: many producers, spurious notifications -----------


def _produce(
    index: int,
    queue: collections.deque[tuple[int, int]],
    sink: WakeSink,
    start: threading.Barrier,
    seed: int,
) -> int:
    """Append this producer's tokens one by one, notifying after each; odd
    producers first send a burst of notifications with nothing new."""
    rng = random.Random(seed)
    source = sink.source()
    start.wait(JOIN_TIMEOUT)
    if index % 2:
        for _ in range(SPURIOUS_BURST):
            source.notify()
    for number in range(TOKENS_PER_PRODUCER):
        if number and number % RENDEZVOUS_EVERY == 0:
            _wait_in_thread(lambda: _consumer_parked(sink), "the consumer to park")
        queue.append((index, number))
        source.notify()
        if rng.random() < 0.05:
            source.notify()  # a spurious one in the middle
        if rng.random() < 0.02:
            time.sleep(rng.random() * 0.0005)
    return TOKENS_PER_PRODUCER


@pytest.mark.stress
async def test_stress_every_token_arrives_exactly_once(
    anyio_backend: object, slow_wake: list[int]
) -> None:
    """Port of diatomic-waker's multi-producer scenarios with spurious
    notifications: every token appended before a notify() reaches the consumer
    exactly once, in each producer's order, and no notification is lost (a lost
    one leaves the consumer parked with tokens queued: a timeout)."""
    master = random.Random(SEED)
    queue: collections.deque[tuple[int, int]] = collections.deque()
    sink = WakeSink()
    start = threading.Barrier(PRODUCERS + 1)
    producers = [
        Worker(
            functools.partial(
                _produce, index, queue, sink, start, master.randrange(2**32)
            ),
            f"producer {index}",
        )
        for index in range(PRODUCERS)
    ]
    received: list[tuple[int, int]] = []
    total = PRODUCERS * TOKENS_PER_PRODUCER
    for producer in producers:
        producer.start()
    try:
        start.wait(JOIN_TIMEOUT)
        with anyio.fail_after(JOIN_TIMEOUT):
            while len(received) < total:
                received.append(
                    await sink.wait_until(lambda: queue.popleft() if queue else None)
                )
    finally:
        start.abort()
        sent = _finish_all(producers)

    assert sum(sent) == total
    assert not queue
    expected = [(i, n) for i in range(PRODUCERS) for n in range(TOKENS_PER_PRODUCER)]
    assert sorted(received) == expected
    for index in range(PRODUCERS):
        mine = [number for who, number in received if who == index]
        assert mine == list(range(TOKENS_PER_PRODUCER)), "a producer's order changed"
    assert sink._waker is None
    assert sink.statistics().consumer_waiting is False


# -- 2. diatomic-waker scenarios: the consumer changes between waits ---------------


def _produce_slowly(
    index: int,
    queue: collections.deque[tuple[int, int]],
    notify: Callable[[], None],
    start: threading.Event,
    seed: int,
) -> int:
    rng = random.Random(seed)
    assert start.wait(JOIN_TIMEOUT)
    if index % 2:
        for _ in range(SPURIOUS_BURST):
            notify()
    for number in range(CHANGING_TOKENS_PER_PRODUCER):
        queue.append((index, number))
        notify()
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.0003)
    return CHANGING_TOKENS_PER_PRODUCER


async def _receive_with_sink(
    sink: WakeSink,
    queue: collections.deque[tuple[int, int]],
    count: int,
    received: list[tuple[int, int]],
) -> None:
    for _ in range(count):
        received.append(
            await sink.wait_until(lambda: queue.popleft() if queue else None)
        )


async def _receive_with_fresh_waker(
    diatomic: DiatomicWaker,
    queue: collections.deque[tuple[int, int]],
    count: int,
    received: list[tuple[int, int]],
) -> None:
    # The protocol by hand, with a waker nobody used before: register, check,
    # park, check again after every wake-up, unregister however we leave.
    waker = Waker()
    diatomic.register(waker)
    try:
        for _ in range(count):
            while not queue:
                await waker.park()
            received.append(queue.popleft())
    finally:
        diatomic.unregister()


@pytest.mark.stress
@pytest.mark.parametrize("consumer", ["sink_new_task", "new_task_new_waker"])
async def test_stress_changing_consumer_task_receives_every_token_once(
    anyio_backend: object, consumer: str, slow_wake: list[int]
) -> None:
    """Port of diatomic-waker's scenario where the consumer's waker changes
    between waits: every few tokens a new task (one at a time) takes over as the
    consumer; no token is lost or received twice, and no notification is lost."""
    master = random.Random(SEED + 1)
    queue: collections.deque[tuple[int, int]] = collections.deque()
    sink = WakeSink()
    diatomic = DiatomicWaker()
    notify = sink.notify if consumer == "sink_new_task" else diatomic.notify
    start = threading.Event()
    producers = [
        Worker(
            functools.partial(
                _produce_slowly, index, queue, notify, start, master.randrange(2**32)
            ),
            f"producer {index}",
        )
        for index in range(CHANGING_PRODUCERS)
    ]
    received: list[tuple[int, int]] = []
    total = CHANGING_PRODUCERS * CHANGING_TOKENS_PER_PRODUCER
    tasks = 0
    for producer in producers:
        producer.start()
    try:
        start.set()
        with anyio.fail_after(JOIN_TIMEOUT):
            while len(received) < total:
                count = min(master.randint(1, 4), total - len(received))
                async with anyio.create_task_group() as tg:
                    if consumer == "sink_new_task":
                        tg.start_soon(_receive_with_sink, sink, queue, count, received)
                    else:
                        tg.start_soon(
                            _receive_with_fresh_waker, diatomic, queue, count, received
                        )
                tasks += 1
                assert sink._waker is None
                assert not diatomic.registered
                assert not sink.statistics().consumer_waiting
    finally:
        start.set()
        sent = _finish_all(producers)

    assert sum(sent) == total
    assert tasks >= total // 4
    assert not queue
    expected = [
        (i, n)
        for i in range(CHANGING_PRODUCERS)
        for n in range(CHANGING_TOKENS_PER_PRODUCER)
    ]
    assert sorted(received) == expected


# -- 3. coalescing: a burst of notifications costs one check and one call ----------


@pytest.mark.parametrize("notifiers", ["one_thread", "threads", "loop_thread"])
async def test_burst_of_notifications_coalesces(
    anyio_backend: object, notifiers: str, unpark_calls: list[int]
) -> None:
    """A thousand notify() calls (from one thread, from four, or from the loop's
    own thread) while the consumer is parked, before it can run, cost one
    resumption: the predicate runs once more and one call goes into the loop."""
    sink = WakeSink()
    predicate = _CountingPredicate()
    result: list[object] = []

    async def consumer() -> None:
        result.append(await sink.wait_until(predicate))

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await _until(lambda: _consumer_parked(sink), "the consumer to park")
            checks_before = predicate.calls
            assert checks_before == 2  # before registering and after
            assert unpark_calls == []
            predicate.value = "ready"
            # No await until all notifications are sent: the consumer cannot run.
            if notifiers == "one_thread":
                run_in_thread_now(lambda: _notify_many(sink.notify, NOTIFY_BURST))
            elif notifiers == "threads":
                source = sink.source()
                workers = [
                    Worker(
                        functools.partial(
                            _notify_many,
                            source.notify,
                            NOTIFY_BURST // NOTIFIER_THREADS,
                        ),
                        f"notifier {i}",
                    )
                    for i in range(NOTIFIER_THREADS)
                ]
                for worker in workers:
                    worker.start()
                _finish_all(workers)
            else:
                _notify_many(sink.notify, NOTIFY_BURST)
            assert _state(_sink_waker(sink)) == "woken"
            assert predicate.calls == checks_before
            assert len(unpark_calls) == 1, "more than one call into the loop"
    assert result == ["ready"]
    assert predicate.calls <= 4
    assert predicate.calls == checks_before + 1
    assert len(unpark_calls) == 1
    assert sink._waker is None


# -- 4. concurrent notifiers never lose a request ----------------------------------


@pytest.mark.stress
async def test_stress_concurrent_notifiers_never_lose_a_request(
    anyio_backend: object, slow_wake: list[int]
) -> None:
    """Each round, four threads each hammer notify(), increment a shared counter
    and notify once more, then stop until the next round; the consumer waits for
    the counter to reach the round's target. The last increment's notification
    often meets another thread's notify() in progress: it must be passed on, not
    dropped (nobody notifies again until the consumer moves on)."""
    sink = WakeSink()
    counter = [0]
    counter_lock = threading.Lock()
    go = [threading.Event() for _ in range(COUNTER_ROUNDS)]
    stop = threading.Event()
    master = random.Random(SEED + 3)

    def notifier(seed: int) -> int:
        rng = random.Random(seed)
        source = sink.source()
        for round_ in range(COUNTER_ROUNDS):
            while not go[round_].wait(0.05):
                if stop.is_set():
                    return round_
            for _ in range(rng.randrange(30)):
                source.notify()
            if rng.random() < 0.5:  # spread the increments over the round
                time.sleep(rng.random() * 0.0005)
            with counter_lock:
                counter[0] += 1
            source.notify()
        return COUNTER_ROUNDS

    workers = [
        Worker(functools.partial(notifier, master.randrange(2**32)), f"notifier {i}")
        for i in range(NOTIFIER_THREADS)
    ]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(COUNTER_ROUNDS):
            target = NOTIFIER_THREADS * (round_ + 1)
            go[round_].set()

            def reached_target(target: int = target) -> int | None:
                return counter[0] if counter[0] >= target else None

            with anyio.fail_after(JOIN_TIMEOUT):
                reached = await sink.wait_until(reached_target)
            assert reached == target, "a thread ran ahead of its round"
    finally:
        stop.set()
        rounds = await anyio.to_thread.run_sync(_finish_all, workers)
    assert rounds == [COUNTER_ROUNDS] * NOTIFIER_THREADS
    assert counter[0] == NOTIFIER_THREADS * COUNTER_ROUNDS
    assert sink._waker is None


async def test_notification_while_another_notifier_is_in_progress_is_delivered(
    anyio_backend: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving where a notification could be lost, forced step by step:
    thread A's notify() has woken the consumer and has not returned yet; the
    consumer resumes, finds nothing, parks again; thread B changes the state and
    notifies. B must wake the consumer itself, without waiting for A or leaving
    the work to it: the consumer sees B's change while A is still held."""
    sink = WakeSink()
    predicate = _CountingPredicate()
    result: list[object] = []
    in_wake = threading.Event()
    release = threading.Event()
    # notify() makes its wake-up's transition in Waker._serve().
    original = Waker._serve  # pyright: ignore[reportPrivateUsage]

    def holding_serve(self: Waker) -> None:
        original(self)
        if threading.current_thread().name == "notifier A" and not in_wake.is_set():
            in_wake.set()  # the first wake-up of A: stay in notify() for a while
            assert release.wait(JOIN_TIMEOUT)

    monkeypatch.setattr(Waker, "_serve", holding_serve)

    async def consumer() -> None:
        result.append(await sink.wait_until(predicate))

    a = Worker(sink.notify, "notifier A")
    try:
        with anyio.fail_after(JOIN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await _until(lambda: _consumer_parked(sink), "the consumer to park")
                assert predicate.calls == 2
                a.start()  # a notification with nothing new
                await _until(in_wake.is_set, "A to wake the consumer")
                await _until(
                    lambda: predicate.calls == 3 and _consumer_parked(sink),
                    "the consumer to check and park again",
                )

                def change_and_notify() -> None:
                    predicate.value = "from B"
                    sink.notify()

                run_in_thread_now(change_and_notify)
                assert not _consumer_parked(sink), "B's notify() did not wake"
                await _until(lambda: bool(result), "the consumer to see B's change")
                assert a.is_alive()  # A is still in notify()
                release.set()
                await anyio.to_thread.run_sync(a.finish)
    finally:
        release.set()
        a.join(JOIN_TIMEOUT)
    assert not a.is_alive()
    assert result == ["from B"]
    assert predicate.calls == 4
    assert sink._waker is None


# -- 5. a consumer that left is unregistered ---------------------------------------


@pytest.mark.parametrize("how", ["returned", "returned_at_once", "cancelled", "raised"])
async def test_consumer_that_left_is_unregistered(
    anyio_backend: object, how: str, unpark_calls: list[int]
) -> None:
    """However the consumer leaves wait_until() (a value, a ready value, a
    cancellation, an exception from its predicate), nothing stays registered, and
    a later notify() from a thread touches nothing: the cached waker stays idle,
    nothing goes into the loop, and the next consumer parks and is woken as
    usual."""
    sink = WakeSink()
    predicate = _CountingPredicate()
    outcome: list[object] = []

    def failing() -> object:
        if predicate() is not None:
            raise LookupError("predicate failed")
        return None

    async def consumer() -> None:
        try:
            outcome.append(
                await sink.wait_until(failing if how == "raised" else predicate)
            )
        except LookupError as exc:
            outcome.append(exc)

    with anyio.fail_after(JOIN_TIMEOUT):
        if how == "returned_at_once":
            predicate.value = "ready"
            await consumer()
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await _until(lambda: _consumer_parked(sink), "the consumer to park")
                assert sink._waker is not None
                assert sink.statistics().consumer_waiting
                if how == "cancelled":
                    tg.cancel_scope.cancel()
                else:
                    predicate.value = "ready"
                    await anyio.to_thread.run_sync(sink.notify)

    if how in ("returned", "returned_at_once"):
        assert outcome == ["ready"]
    elif how == "raised":
        assert len(outcome) == 1
        assert isinstance(outcome[0], LookupError)
    else:
        assert outcome == []
    assert sink._waker is None
    assert sink.statistics().consumer_waiting is False
    assert "consumer waiting" not in repr(sink)

    cached = sink._cached
    calls_before = len(unpark_calls)
    run_in_thread_now(lambda: _notify_many(sink.notify, 10))
    assert sink._waker is None
    assert len(unpark_calls) == calls_before, "a notify() reached a departed consumer"
    if cached is not None:
        assert _state(cached) == "idle", "a notify() reached a departed consumer"

    # The sink still works: a new consumer parks, then is woken from a thread.
    later = _CountingPredicate()
    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:

            async def second_consumer() -> None:
                outcome.append(await sink.wait_until(later))

            tg.start_soon(second_consumer)
            await _until(lambda: _consumer_parked(sink), "the new consumer to park")
            assert later.calls == 2, "the new consumer was woken by a stale notify"
            later.value = "again"
            await anyio.to_thread.run_sync(sink.notify)
    assert outcome[-1] == "again"
    assert later.calls == 3
    assert sink._waker is None
