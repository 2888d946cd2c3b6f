"""The lowlevel wakers driven from plain threads.

The AtomicWaker contract across threads, and the coalescing promised by
:mod:`anyio_waitmap.lowlevel`: two wake-ups that arrive before the parked task
runs, one from the loop's thread and one from another, cost one resumption and
one call into the event loop.

Every thread started here is a daemon joined with a timeout (and asserted to have
finished); every wait that only a lost notification could make long runs under
``anyio.fail_after``, so such a bug fails as a timeout instead of hanging. No test
asserts anything about timing. The sink across threads is tested in
tests/sink/test_sink_threads.py.
"""

from __future__ import annotations

import functools
import random
import threading
import time

import anyio
import anyio.lowlevel
import pytest
from support.wakers_threads import SEED, _state, _until
from support.workers import JOIN_TIMEOUT, Worker, run_in_thread_now

from anyio_waitmap.lowlevel import AtomicWaker, Waker

pytestmark = [pytest.mark.anyio, pytest.mark.threads]

#: Hang guard for joins and waits that only a bug could make long.
#: How long a park that must not return is given to (wrongly) return.
SHORT = 0.05

RACE_ROUNDS = 500


# -- 1. AtomicWaker across threads -------------------------------------------------


@pytest.mark.parametrize("waker_side", ["thread", "task"])
async def test_atomic_waker_register_then_wake_wakes_parked_task(
    anyio_backend: object, waker_side: str
) -> None:
    """A waker registered and parked on is resumed by wake(), which reports that
    a waker was registered, from another task or from a plain thread."""
    slot = AtomicWaker()
    waker = Waker()
    slot.register(waker)
    resumed = 0

    async def sleeper() -> None:
        nonlocal resumed
        await waker.park()
        resumed += 1

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await _until(lambda: _state(waker) == "parked", "the task to park")
            if waker_side == "thread":
                woke = await anyio.to_thread.run_sync(slot.wake)
            else:
                woke = slot.wake()
            assert woke is True
    assert resumed == 1
    assert _state(waker) == "idle"
    assert slot.take() is None, "wake() cleared the registration"
    assert slot.wake() is False


async def test_atomic_waker_wake_before_register_is_not_remembered(
    anyio_backend: object,
) -> None:
    """wake() with nothing registered returns False and stores nothing: a waker
    registered afterwards is not woken by it."""
    slot = AtomicWaker()
    assert run_in_thread_now(slot.wake) is False
    assert slot.wake() is False
    waker = Waker()
    slot.register(waker)
    assert "registered" in repr(slot)
    assert _state(waker) == "idle"
    with anyio.move_on_after(SHORT) as scope:
        await waker.park()
    assert scope.cancelled_caught, "an earlier wake() reached a later registration"
    assert _state(waker) == "idle"
    assert slot.take() is waker


async def test_atomic_waker_last_register_wins(anyio_backend: object) -> None:
    """With two wakers registered in turn, wake() (from a thread) resumes only the
    last one; the first stays parked, untouched."""
    slot = AtomicWaker()
    first, second = Waker(), Waker()
    done: list[str] = []

    async def sleeper(name: str, waker: Waker) -> None:
        await waker.park()
        done.append(name)

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, "first", first)
            tg.start_soon(sleeper, "second", second)
            await _until(
                lambda: _state(first) == _state(second) == "parked",
                "both tasks to park",
            )
            slot.register(first)
            slot.register(second)
            assert run_in_thread_now(slot.wake) is True
            await _until(lambda: done == ["second"], "the second task to resume")
            await anyio.sleep(SHORT)
            assert done == ["second"], "the first waker was woken too"
            assert _state(first) == "parked"
            assert _state(second) == "idle"
            assert slot.wake() is False, "the first waker is not registered any more"
            first.wake()  # let the first task finish
    assert done == ["second", "first"]


@pytest.mark.stress
async def test_stress_atomic_waker_wake_racing_register_is_never_lost(
    anyio_backend: object,
) -> None:
    """Each round, a thread sets a flag then calls wake() just as the task
    registers a fresh waker, checks the flag and parks only if it is unset: the
    task always resumes, since either the wake-up finds the new waker or the
    check sees the flag."""
    slot = AtomicWaker()
    flags = [threading.Event() for _ in range(RACE_ROUNDS)]
    go = [threading.Event() for _ in range(RACE_ROUNDS)]
    # Set once the producer's wake() of a round has returned, so that it cannot
    # take the waker of the next round (a legitimate but spurious wake-up).
    done = [threading.Event() for _ in range(RACE_ROUNDS)]
    stop = threading.Event()
    rng = random.Random(SEED + 2)

    def producer(seed: int) -> int:
        thread_rng = random.Random(seed)
        woke = 0
        for round_ in range(RACE_ROUNDS):
            while not go[round_].wait(0.05):
                if stop.is_set():
                    return woke
            for _ in range(thread_rng.randrange(4)):
                time.sleep(0)
            flags[round_].set()
            woke += slot.wake()
            done[round_].set()
        return woke

    worker = Worker(functools.partial(producer, rng.randrange(2**32)), "producer")
    worker.start()
    parked = 0
    try:
        for round_ in range(RACE_ROUNDS):
            # Blocks the loop for a moment: the producer never needs it.
            assert round_ == 0 or done[round_ - 1].wait(JOIN_TIMEOUT)
            waker = Waker()
            go[round_].set()
            for _ in range(rng.randrange(3)):
                await anyio.lowlevel.checkpoint()
            slot.register(waker)
            if not flags[round_].is_set():
                parked += 1
                with anyio.fail_after(JOIN_TIMEOUT):
                    await waker.park()
                assert flags[round_].is_set(), "woken before the flag was set"
    finally:
        stop.set()
        woke = await anyio.to_thread.run_sync(worker.finish)
    assert 0 <= woke <= RACE_ROUNDS
    assert woke >= parked, "a parked round resumed without a successful wake()"


# -- 2. two wake-ups, from the loop and from a thread, resume the task once --------


@pytest.mark.parametrize("order", ["thread_then_loop", "loop_then_thread"])
async def test_parked_task_woken_from_loop_and_thread_resumes_once(
    anyio_backend: object, order: str, unpark_calls: list[int]
) -> None:
    """Two wake-ups before the parked task runs, one from a thread and one from
    the loop's own thread, resume it exactly once, with one call into the loop,
    and leave no pending wake-up behind: its next park() really parks."""
    waker = Waker()
    resumptions = 0

    async def sleeper() -> None:
        nonlocal resumptions
        while True:
            await waker.park()
            resumptions += 1

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            await _until(lambda: _state(waker) == "parked", "the task to park")
            # No await from here on until both wake-ups are done: the task
            # cannot run in between.
            if order == "thread_then_loop":
                run_in_thread_now(waker.wake)
                assert _state(waker) == "woken"
                waker.wake()
            else:
                waker.wake()
                assert _state(waker) == "woken"
                run_in_thread_now(waker.wake)
            assert _state(waker) == "woken"
            assert resumptions == 0
            await _until(
                lambda: resumptions >= 1 and _state(waker) == "parked",
                "the task to resume and park again",
            )
            await anyio.sleep(SHORT)
            assert resumptions == 1
            assert _state(waker) == "parked", "a second wake-up was remembered"
            tg.cancel_scope.cancel()
    assert resumptions == 1
    assert _state(waker) == "idle"
    assert len(unpark_calls) == 1
