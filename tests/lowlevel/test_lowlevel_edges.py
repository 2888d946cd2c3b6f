"""The wakers: paths that only a rare interleaving reaches, forced one by one.

Each test makes one narrow window happen on purpose: another party acts while a
waker's lock is held, or between two steps of a wake-up. The lock wrapper
(support.edges.HookedLock) runs such an action at an exact point of the waker's
own locking; a trace function stops a wake-up of another thread at an exact
line.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import CodeType
from typing import Any

import anyio
import anyio.to_thread
import pytest
from support.checkpoints import assert_yields
from support.edges import HookedLock, _state
from support.workers import JOIN_TIMEOUT, Worker

from anyio_waitmap import WakeSink, WakeSource
from anyio_waitmap._wakers import ConsumerSlot
from anyio_waitmap.lowlevel import DiatomicWaker, Waker

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings]


def _hook(waker: Waker, **points: dict[int, Callable[[], object]]) -> HookedLock:
    lock = HookedLock(waker._lock, **points)  # pyright: ignore[reportPrivateUsage]
    waker._lock = lock  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage,reportAttributeAccessIssue]
    return lock


# A waker is parked on in two places: Waker.park(), and the consumer's loop of
# wait_until(), which runs the same steps inlined. The tests that park run with
# both (the ``park`` fixture), and those that wake with Waker.wake() and with
# the two notify() methods, which run its steps inlined too (``wake_way``).

Park = Callable[[Waker], Awaitable[None]]


async def _park_on_the_waker(waker: Waker) -> None:
    await waker.park()


async def _park_in_wait_until(waker: Waker) -> None:
    """Park on ``waker`` once, in a consumer's wait_until(): its predicate says
    "not yet" at the checks before and after registering, and ends the wait at
    the check after the park."""
    slot = DiatomicWaker()
    slot._cached = waker  # the waker wait_until() parks on  # pyright: ignore[reportPrivateUsage]
    checks: list[None] = []

    def predicate() -> bool | None:
        checks.append(None)
        return True if len(checks) == 3 else None

    await slot.wait_until(predicate)


@pytest.fixture(
    params=[
        pytest.param(_park_on_the_waker, id="Waker.park"),
        pytest.param(_park_in_wait_until, id="wait_until"),
    ]
)
def park(request: pytest.FixtureRequest) -> Park:
    return request.param  # type: ignore[no-any-return]


@dataclass(frozen=True)
class WakeWay:
    """A way to wake a waker: ``bind(waker)`` returns the call; ``code`` is the
    code object of the function that makes the wake-up's request."""

    bind: Callable[[Waker], Callable[[], None]]
    code: CodeType


def _notify_of_a_slot(waker: Waker) -> Callable[[], None]:
    slot = DiatomicWaker()
    slot.register(waker)
    return slot.notify


def _notify_of_a_source(waker: Waker) -> Callable[[], None]:
    sink = WakeSink()
    sink._waker = waker  # as registered by a consumer  # pyright: ignore[reportPrivateUsage]
    return sink.source().notify


@pytest.fixture(
    params=[
        pytest.param(WakeWay(lambda w: w.wake, Waker.wake.__code__), id="wake"),
        pytest.param(
            WakeWay(_notify_of_a_slot, ConsumerSlot.notify.__code__), id="notify"
        ),
        pytest.param(
            WakeWay(_notify_of_a_source, WakeSource.notify.__code__),
            id="source-notify",
        ),
    ]
)
def wake_way(request: pytest.FixtureRequest) -> WakeWay:
    return request.param  # type: ignore[no-any-return]


class _Parker:
    """A task body that parks on ``waker`` once and counts its resumptions."""

    def __init__(self, waker: Waker, park: Park) -> None:
        self.waker = waker
        self.park = park
        self.resumed = 0

    async def __call__(self) -> None:
        await self.park(self.waker)
        self.resumed += 1


class TestWakeWhileTheLockIsHeld:
    """A wake-up that finds the waker's lock taken leaves a request, and the
    holder serves it: as from a signal handler that interrupted the holder, or
    from a thread that came at the wrong moment."""

    async def test_request_during_park_makes_park_return_at_once(
        self, park: Park
    ) -> None:
        waker = Waker()
        _hook(waker, after={0: waker.wake})
        # The task was about to park when the request came: it takes the
        # wake-up itself instead of parking, and park() is still a checkpoint.
        await assert_yields(lambda: park(waker))
        assert _state(waker) == "idle"

    async def test_request_while_taking_a_notification_is_kept(
        self, park: Park
    ) -> None:
        waker = Waker()
        waker.wake()  # notified: the next park() returns at once
        # A request made once park() has taken the notification (idle again),
        # but before it released the lock.
        _hook(waker, releasing={0: waker.wake})
        await park(waker)
        # The request is not lost: the next park returns at once too.
        assert _state(waker) == "notified"
        await park(waker)
        assert _state(waker) == "idle"

    async def test_request_served_by_another_party_before_the_task_takes_it(
        self, park: Park
    ) -> None:
        waker = Waker()
        # Acquisition 0: park() decides to park, and a request arrives.
        # Before acquisition 2 (park() about to take the request itself), the
        # requester's own retry (acquisition 1) serves it: the task must then
        # park and be resumed by that wake-up, exactly once.
        lock = _hook(
            waker,
            after={0: waker.wake},
            before={2: lambda: waker._serve()},  # pyright: ignore[reportPrivateUsage]
        )
        parker = _Parker(waker, park)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(parker)
        assert parker.resumed == 1
        assert lock.acquisitions >= 3
        assert _state(waker) == "idle"


async def test_wake_ups_while_one_is_due_take_no_lock(
    park: Park, wake_way: WakeWay
) -> None:
    waker = Waker()
    waker.wake()
    lock = _hook(waker)
    wake = wake_way.bind(waker)
    for _ in range(100):
        wake()  # notified already: folded into the pending one
    assert lock.acquisitions == 0
    await park(waker)
    assert _state(waker) == "idle"


async def test_cleanup_after_a_wake_up_takes_no_lock(
    park: Park, wake_way: WakeWay
) -> None:
    """Once a wake-up has resumed the task, only the task moves the waker on
    from woken: a wake-up meanwhile is folded into the resumption, and the
    task's clean-up needs no lock."""
    waker = Waker()
    parker = _Parker(waker, park)

    async with anyio.create_task_group() as tg:
        tg.start_soon(parker)
        await anyio.wait_all_tasks_blocked()
        waker.wake()
        lock = _hook(waker)
        wake_way.bind(waker)()
        assert _state(waker) == "woken"
    assert parker.resumed == 1
    assert lock.acquisitions == 0
    assert _state(waker) == "idle"


async def test_cleanup_waits_for_the_wake_up_still_in_progress(park: Park) -> None:
    """The wake-up that resumed the task may still hold the lock, in the middle
    of its call into the event loop from another thread. The task's clean-up
    then waits for it, and the waker stays woken meanwhile: a wake-up in that
    window folds into this resumption instead of causing another."""
    waker = Waker()
    real_lock = waker._lock  # pyright: ignore[reportPrivateUsage]
    parker = _Parker(waker, park)
    holding = threading.Event()
    go_on = threading.Event()
    seen_by_late_wake: list[str] = []

    def still_waking() -> None:
        with real_lock:
            holding.set()
            assert go_on.wait(JOIN_TIMEOUT)
            waker.wake()  # the next wake-up of a burst
            seen_by_late_wake.append(_state(waker))

    async with anyio.create_task_group() as tg:
        tg.start_soon(parker)
        await anyio.wait_all_tasks_blocked()
        waker.wake()
        holder = Worker(still_waking, "waker holding the lock")
        holder.start()
        assert holding.wait(JOIN_TIMEOUT)
        # The task's clean-up lets the holder go on when it asks for the lock.
        lock = _hook(waker, before={0: go_on.set})
    holder.finish()
    assert seen_by_late_wake == ["woken"]
    assert parker.resumed == 1
    assert lock.acquisitions == 1
    assert _state(waker) == "idle"


async def test_request_during_the_cleanup_that_waited_for_the_lock(
    park: Park,
) -> None:
    """As above, and a new wake-up comes once the clean-up made the waker idle,
    before it released the lock: the clean-up serves it after releasing, and
    the next park returns at once."""
    waker = Waker()
    real_lock = waker._lock  # pyright: ignore[reportPrivateUsage]
    parker = _Parker(waker, park)
    holding = threading.Event()
    go_on = threading.Event()

    def still_waking() -> None:
        with real_lock:
            holding.set()
            assert go_on.wait(JOIN_TIMEOUT)

    async with anyio.create_task_group() as tg:
        tg.start_soon(parker)
        await anyio.wait_all_tasks_blocked()
        waker.wake()
        holder = Worker(still_waking, "waker holding the lock")
        holder.start()
        assert holding.wait(JOIN_TIMEOUT)
        _hook(waker, before={0: go_on.set}, releasing={0: waker.wake})
    holder.finish()
    assert parker.resumed == 1
    assert _state(waker) == "notified"


async def _cancel_a_parked_task(
    park: Park, before_cancel: Callable[[Waker], object]
) -> Waker:
    """Park a task on a new waker, call ``before_cancel(waker)``, cancel it."""
    waker = Waker()
    scope = anyio.CancelScope()

    async def parker() -> None:
        with scope:
            await park(waker)

    async with anyio.create_task_group() as tg:
        tg.start_soon(parker)
        await anyio.wait_all_tasks_blocked()
        before_cancel(waker)
        scope.cancel()
    assert scope.cancelled_caught
    return waker


async def test_request_during_cleanup_after_a_cancellation(
    anyio_backend_name: str, park: Park
) -> None:
    # A wake-up arrives once the cancelled task's clean-up has made the waker
    # idle, before it released the lock. On trio the abort function takes and
    # releases the lock first.
    cleanup = 1 if anyio_backend_name == "trio" else 0
    waker = await _cancel_a_parked_task(
        park, lambda waker: _hook(waker, releasing={cleanup: waker.wake})
    )
    # The request is served once the lock is free, and kept for the next park.
    assert _state(waker) == "notified"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_cancelled_park_serves_a_request_made_during_the_abort(
    park: Park,
) -> None:
    # trio calls the abort function synchronously from cancel(); a wake-up
    # arrives while the abort holds the lock.
    waker = await _cancel_a_parked_task(
        park, lambda waker: _hook(waker, after={0: waker.wake})
    )
    # A cancelled park() never loses a wake-up: one that arrives while the task
    # leaves is kept, and the next park() returns at once.
    assert _state(waker) == "notified"


def test_hooked_lock_is_a_lock() -> None:
    """The wrapper itself: acquisitions are counted, hooks run once each."""
    calls: list[str] = []
    lock = HookedLock(
        threading.Lock(),
        before={0: lambda: calls.append("before 0")},
        after={1: lambda: calls.append("after 1")},
    )
    with lock:
        assert not lock.acquire(False)
    with lock:
        pass
    assert calls == ["before 0"]
    assert lock.acquisitions == 3


async def test_usable_here_outside_any_loop() -> None:
    waker = Waker()
    assert waker.usable_here()
    assert not await anyio.to_thread.run_sync(waker.usable_here)


async def test_diatomic_waker_repr() -> None:
    slot = DiatomicWaker()
    assert repr(slot) == "<anyio_waitmap.lowlevel.DiatomicWaker idle>"
    slot.register(Waker())
    assert repr(slot) == "<anyio_waitmap.lowlevel.DiatomicWaker registered>"


def _wake_pausing_after_its_state_check(
    waker: Waker,
    wake_way: WakeWay,
    checked: threading.Event,
    go_on: threading.Event,
) -> Worker[None]:
    """Start a thread whose wake-up stops right after it read the state (parked,
    say) until ``go_on`` is set; ``checked`` is set when it stops there."""
    call = wake_way.bind(waker)

    def pause_before_request(frame: Any, event: str, arg: object) -> Any:
        if frame.f_code is wake_way.code:
            if event == "line" and "_requested = True" in _line_of(frame):
                checked.set()
                assert go_on.wait(JOIN_TIMEOUT)
            return pause_before_request
        return None

    def wake() -> None:
        sys.settrace(pause_before_request)
        try:
            call()
        finally:
            sys.settrace(None)

    worker = Worker(wake, "paused waker")
    worker.start()
    assert checked.wait(JOIN_TIMEOUT)
    return worker


def test_second_wake_that_read_the_state_before_the_first_changed_it(
    park: Park, wake_way: WakeWay
) -> None:
    """Two wake-ups race: the second reads the state (parked) before the first
    moves it to woken, and makes its request while the first holds the lock.
    The first serves that request too, and it adds nothing: one resumption."""
    second_checked = threading.Event()
    first_done = threading.Event()

    async def main() -> int:
        waker = Waker()
        parker = _Parker(waker, park)
        async with anyio.create_task_group() as tg:
            tg.start_soon(parker)
            await anyio.wait_all_tasks_blocked()
            # It saw "parked".
            second = _wake_pausing_after_its_state_check(
                waker, wake_way, second_checked, first_done
            )
            # The first wake-up: while it holds the lock, having made the task
            # woken, the second one goes on and finds the lock taken.
            _hook(waker, releasing={0: lambda: (first_done.set(), second.finish())})
            waker.wake()
        assert _state(waker) == "idle"
        return parker.resumed

    assert anyio.run(main) == 1


async def test_late_request_of_a_wake_that_saw_the_task_parked(
    park: Park, wake_way: WakeWay
) -> None:
    """A wake-up reads the state (parked) and pauses; another resumes the task,
    which cleans up without the lock. The late request then finds the waker
    idle: it leaves it notified, so the next park() returns at once, and the
    task was resumed only once."""
    waker = Waker()
    parker = _Parker(waker, park)
    go_on = threading.Event()

    async with anyio.create_task_group() as tg:
        tg.start_soon(parker)
        await anyio.wait_all_tasks_blocked()
        late = _wake_pausing_after_its_state_check(
            waker, wake_way, threading.Event(), go_on
        )
        waker.wake()
    assert parker.resumed == 1
    assert _state(waker) == "idle"
    go_on.set()
    late.finish()
    assert _state(waker) == "notified"
    await assert_yields(lambda: park(waker))
    assert _state(waker) == "idle"


def _line_of(frame: Any) -> str:
    import linecache

    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)
