"""Paths that only a rare interleaving reaches, forced one by one.

Each test makes one narrow window happen on purpose: another party acts while
a lock is held, between two steps of the library, or from a place with no task
running. The lock wrappers below run such an action at an exact point of the
library's own locking.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import CodeType
from typing import Any

import anyio
import anyio.to_thread
import pytest
import trio
import trio.lowlevel
import trio.testing
from support.checkpoints import assert_yields
from support.workers import JOIN_TIMEOUT, Worker

from anyio_waitmap import (
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeSink,
    WakeSource,
    Woke,
    _backends,
)
from anyio_waitmap._backends import _trio
from anyio_waitmap._wakers import ConsumerSlot
from anyio_waitmap.lowlevel import DiatomicWaker, Waker

pytestmark = pytest.mark.anyio


class HookedLock:
    """A lock that runs ``before[n]`` before and ``after[n]`` after its n-th
    acquisition (counted from 0, whether it succeeds or not), and
    ``releasing[n]`` just before its n-th release (the lock still held)."""

    def __init__(
        self,
        lock: Any,
        before: dict[int, Callable[[], object]] | None = None,
        after: dict[int, Callable[[], object]] | None = None,
        releasing: dict[int, Callable[[], object]] | None = None,
    ) -> None:
        self._lock = lock
        self._before = before or {}
        self._after = after or {}
        self._releasing = releasing or {}
        self.acquisitions = 0
        self.releases = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        n = self.acquisitions
        self.acquisitions += 1
        if n in self._before:
            self._before.pop(n)()
        acquired: bool = self._lock.acquire(blocking, timeout)
        if acquired and n in self._after:
            self._after.pop(n)()
        return acquired

    def release(self) -> None:
        n = self.releases
        self.releases += 1
        if n in self._releasing:
            self._releasing.pop(n)()
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _hook(waker: Waker, **points: dict[int, Callable[[], object]]) -> HookedLock:
    lock = HookedLock(waker._lock, **points)  # pyright: ignore[reportPrivateUsage]
    waker._lock = lock  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage,reportAttributeAccessIssue]
    return lock


def _state(waker: Waker) -> str:
    return repr(waker).split()[1]


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


def test_trio_wake_from_the_run_loop_between_tasks() -> None:
    """An instrument runs in the run loop itself, with no task running (as a
    signal handler or a garbage collector callback may)."""
    results: list[int] = []
    outcomes: list[object] = []

    class WakeBeforeIOWait(trio.abc.Instrument):
        def __init__(self, wm: WaitMap[str, int]) -> None:
            self.wm: WaitMap[str, int] | None = wm

        def before_io_wait(self, timeout: float) -> None:
            if self.wm is not None:
                with pytest.raises(RuntimeError):
                    trio.lowlevel.current_task()  # indeed no task is running
                outcomes.append(self.wm.wake("k", 1))
                self.wm = None

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(WakeBeforeIOWait(wm))

    trio.run(main)
    assert outcomes == [Woke(1)]
    assert results == [1]


def test_trio_wake_from_a_run_sync_soon_callback() -> None:
    """run_sync_soon callbacks run in the run's thread, in a system task."""
    results: list[int] = []

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        token = trio.lowlevel.current_trio_token()

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            outcomes: list[object] = []
            token.run_sync_soon(lambda: outcomes.append(wm.wake("k", 1)))
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == [Woke(1)]

    trio.run(main)
    assert results == [1]


def test_waker_needs_a_task_not_a_loop_callback() -> None:
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            Waker()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    # A loop that no task of ours has used yet, so nothing is cached for it.
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(callback)
        loop.run_forever()
    finally:
        loop.close()
    assert len(errors) == 1
    assert "Waker() was called outside of a task" in str(errors[0])


def _forget_the_trio_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the package back in the state it has before trio is first found."""
    for name in (
        "_current_trio_binding",
        "_trio_protect",
        "_trio_run_context",
        "_trio_binding_var",
    ):
        monkeypatch.setattr(_backends, name, None)


def test_without_trio_imported_nothing_of_trio_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "trio")
    _forget_the_trio_binding(monkeypatch)
    with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
        Waker()
    assert _backends._current_trio_binding is None  # pyright: ignore[reportPrivateUsage]


def test_trio_imported_after_the_package_is_found_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forget_the_trio_binding(monkeypatch)

    async def main() -> None:
        Waker()  # the first use in a trio run loads the trio binding

    assert _backends._trio_protect is None  # pyright: ignore[reportPrivateUsage]
    trio.run(main)
    assert _backends._trio_protect is not None  # pyright: ignore[reportPrivateUsage]
    # ... and with it what current_binding() reads the run's binding from.
    assert _backends._trio_run_context is _trio.run_context  # pyright: ignore[reportPrivateUsage]
    assert _backends._trio_binding_var is _trio.binding_var  # pyright: ignore[reportPrivateUsage]


async def test_waiter_leaves_between_the_lock_free_look_and_the_lock() -> None:
    """wake() saw a waiter without the lock; by the time it holds the lock,
    the waiter is gone (another thread cancelled it): nobody was woken."""
    wm: WaitMap[str, int] = WaitMap()
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            with pytest.raises(KeyCancelled):
                await wm.wait("k")

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        hooked = HookedLock(
            wm._lock,  # pyright: ignore[reportPrivateUsage]
            before={0: lambda: wm.cancel("k")},
        )
        wm._lock = hooked  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage]
        assert wm.wake("k", 1) == NoMatch(1)
    assert wm.statistics().tasks_waiting == 0


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


class TestMapWindows:
    """The windows of WaitMap's own two-step paths."""

    async def test_take_finds_the_value_gone_after_its_checkpoint(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        results: list[int] = []

        async def taker() -> None:
            results.append(await wm.take("k"))

        # take() saw the value, then checked for cancellation; before it takes
        # the lock again, another thread takes the value: it waits instead.
        wm._lock = HookedLock(  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage,reportAttributeAccessIssue]
            wm._lock,  # pyright: ignore[reportPrivateUsage]
            before={1: lambda: results.append(wm.pop("k"))},
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(taker)
            await anyio.wait_all_tasks_blocked()
            assert wm.statistics().tasks_waiting == 1
            wm["k"] = 2
        assert results == [1, 2]
        assert "k" not in wm

    async def test_take_finds_the_map_closed_after_its_checkpoint(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        wm._lock = HookedLock(  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage,reportAttributeAccessIssue]
            wm._lock,  # pyright: ignore[reportPrivateUsage]
            before={1: wm.close},
        )
        with pytest.raises(WaitMapClosed, match="take"):
            await wm.take("k")
        assert wm["k"] == 1  # stored values stay readable

    @pytest.mark.parametrize(
        ("name", "meddle"),
        [
            ("wake()", lambda wm: wm.wake("k", 2)),
            ("wake()", lambda wm: wm.wake("other", 2)),
            ("cancel()", lambda wm: wm.cancel("k")),
            ("cancel_all()", lambda wm: wm.cancel_all()),
            ("close()", lambda wm: wm.close()),
        ],
    )
    async def test_predicate_must_not_call_back_into_the_map(
        self, name: str, meddle: Callable[[WaitMap[str, int]], object]
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        errors: list[BaseException] = []

        def predicate(value: int) -> bool:
            try:
                meddle(wm)
            except RuntimeError as exc:
                errors.append(exc)
            return True

        async with anyio.create_task_group() as tg:
            tg.start_soon(wm.wait_for, "k", predicate)
            await anyio.wait_all_tasks_blocked()
            assert wm.wake("k", 1) == Woke(1)
        assert len(errors) == 1
        assert name in str(errors[0])
        assert not wm.closed
        assert wm.statistics().tasks_waiting == 0

    async def test_give_back_wakes_waiters_and_stores_when_nobody_takes(
        self,
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        coro = wm.take("k")
        coro.send(None)  # parked by hand, so that an exception can be thrown in
        assert wm.wake("k", 7) == Woke(1)
        results: list[int] = []

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            # The taker cannot return its value: it goes to the waiting task,
            # and is stored as well, since no taker consumed it.
            with pytest.raises(ValueError, match="thrown in"):
                coro.throw(ValueError("thrown in"))
        assert results == [7]
        assert wm["k"] == 7


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_predicate_cancelling_a_later_waiter_of_the_same_key() -> None:
    """On trio, cancel() runs abort functions at once: a predicate that cancels
    another waiter's scope unlinks it in the middle of the hand-over, and the
    hand-over skips it."""
    wm: WaitMap[str, int] = WaitMap()
    scope = anyio.CancelScope()
    results: list[object] = []

    def cancel_the_other(value: int) -> bool:
        scope.cancel()
        return True

    async def first() -> None:
        results.append(("first", await wm.wait_for("k", cancel_the_other)))

    async def second() -> None:
        with scope:
            results.append(("second", await wm.wait("k")))
        results.append(("second cancelled", scope.cancelled_caught))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert wm.wake("k", 1) == Woke(1)
    assert sorted(map(str, results)) == sorted(
        map(str, [("first", 1), ("second cancelled", True)])
    )
    assert wm.statistics().tasks_waiting == 0


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("how", ["wake", "store"])
@pytest.mark.parametrize("alone", [True, False], ids=["alone", "with_a_taker"])
async def test_predicate_cancelling_its_own_waiter(how: str, alone: bool) -> None:
    """On trio, a predicate that cancels the scope of the very task it decides
    for unlinks it in the middle of the hand-over: the hand-over finds it gone,
    and the value is not handed to it (but to a taker after it, if any)."""
    wm: WaitMap[str, int] = WaitMap()
    scope = anyio.CancelScope()
    results: list[object] = []

    async def taker() -> None:
        results.append(("taker", await wm.take("k")))

    def cancel_myself(value: int) -> bool:
        scope.cancel()
        return True

    async def waiter() -> None:
        with scope:
            results.append(await wm.wait_for("k", cancel_myself))
        results.append(("cancelled", scope.cancelled_caught))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        if not alone:
            tg.start_soon(taker)
            await anyio.wait_all_tasks_blocked()
        if how == "wake":
            assert wm.wake("k", 1) == (NoMatch(1) if alone else Woke(1))
        else:
            wm["k"] = 1
    assert sorted(map(repr, results)) == sorted(
        [repr(("cancelled", True))] + ([] if alone else [repr(("taker", 1))])
    )
    assert wm.statistics().tasks_waiting == 0
    assert dict(wm) == ({"k": 1} if how == "store" and alone else {})


async def test_usable_here_outside_any_loop() -> None:
    waker = Waker()
    assert waker.usable_here()
    assert not await anyio.to_thread.run_sync(waker.usable_here)


async def test_diatomic_waker_repr() -> None:
    slot = DiatomicWaker()
    assert repr(slot) == "<anyio_waitmap.lowlevel.DiatomicWaker idle>"
    slot.register(Waker())
    assert repr(slot) == "<anyio_waitmap.lowlevel.DiatomicWaker registered>"


class _ConsumerLeavingBetweenTwoReads:
    """Stands in for a sink whose consumer unregisters its waker right after a
    notifier's first read of the slot: the reads return ``waker``, then None."""

    def __init__(self, waker: Waker) -> None:
        self.reads: list[Waker | None] = [waker, None]
        self.count = 0

    @property
    def _waker(self) -> Waker | None:
        self.count += 1
        return self.reads.pop(0) if self.reads else None


@pytest.mark.parametrize(
    "notify",
    [
        pytest.param(ConsumerSlot.notify, id="WakeSink"),
        pytest.param(lambda sink: WakeSource(sink).notify(), id="WakeSource"),
    ],
)
async def test_notify_when_the_consumer_leaves_between_its_two_reads(
    notify: Callable[[Any], None],
) -> None:
    # notify() tests the slot, then reads it again for the call: the waker that
    # the consumer took back in between is left alone.
    waker = Waker()
    sink = _ConsumerLeavingBetweenTwoReads(waker)
    notify(sink)
    assert sink.count == 2
    assert _state(waker) == "idle"


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


async def test_two_predicates_interrupting_one_hand_over() -> None:
    class Interrupt(BaseException):
        pass

    def interrupting(value: int) -> bool:
        raise Interrupt(value)

    wm: WaitMap[str, int] = WaitMap()
    results: list[int] = []

    async def waiter() -> None:
        results.append(await wm.wait("k"))

    async def interrupted() -> None:
        with pytest.raises(KeyCancelled):
            await wm.wait_for("k", interrupting)

    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(interrupted)
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        # The first interrupt reaches the caller once the hand-over is done:
        # the plain waiter got the value, both interrupted ones still wait.
        with pytest.raises(Interrupt):
            wm.wake("k", 1)
        await anyio.wait_all_tasks_blocked()
        assert results == [1]
        assert wm.statistics().tasks_waiting == 2
        assert wm.cancel("k") == 2


def test_exception_thrown_in_after_an_exception_was_handed_over() -> None:
    """Something other than a cancellation ends the task after cancel(key)
    handed it KeyCancelled: that something is what the task raises; there is
    no value to pass on."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        coro = wm.wait("k")
        coro.send(None)  # parked by hand, so that an exception can be thrown in
        assert wm.cancel("k") == 1
        with pytest.raises(ValueError, match="thrown in"):
            coro.throw(ValueError("thrown in"))
        assert wm.statistics().tasks_waiting == 0
        assert "k" not in wm

    asyncio.run(main())
