"""Fault injection: the wakers and lowlevel.Waiter stay consistent after faults.

The faults, one section each:

1. a task whose event loop finished while it was parked, or finishes during the
   wake-up, woken through a Waker, an AtomicWaker, a Waiter, or a WakeSink
   (``notify()``, ``WakeSource.notify()``, ``close()``);
2. ``MemoryError`` at the allocation points of a park;
3. a ``lowlevel.Waiter`` whose ``on_abort`` raises.

As the map's fault tests (tests/waitmap/test_map_faults.py), with the helpers of
support/faults.py.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import create_task_group, wait_all_tasks_blocked
from support.faults import (
    GONE,
    Token,
    Unblocked,
    assert_all_dead,
    assert_refused,
    fail_once,
    hosting,
    leaves,
    make_gone,
    run_on,
    sink_round_trip,
    waitmap_round_trip,
    waker_state,
)
from support.workers import JOIN_TIMEOUT

from anyio_waitmap import WaitMap, WakeSink
from anyio_waitmap.lowlevel import AtomicWaker, Waiter, Waker

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


# == 1. tasks whose event loop is gone, or goes during the wake-up =================


@pytest.mark.parametrize(("kind", "ending"), GONE)
@pytest.mark.parametrize(
    "target",
    ["sink_notify", "source_notify", "sink_close", "waker", "atomic_waker", "waiter"],
)
def test_wakers_whose_loop_is_gone(kind: str, ending: str, target: str) -> None:
    """Notifying or waking a task whose loop is gone raises nothing and leaves the
    waker idle, not believing that a resumption is on its way."""
    sink = WakeSink()
    atomic = AtomicWaker()
    made: list[Any] = []

    async def consume() -> None:
        with contextlib.suppress(anyio.ClosedResourceError):
            await sink.wait_until(lambda: None)

    async def park_on_waker() -> None:
        waker = Waker()
        made.append(waker)
        if target == "atomic_waker":
            atomic.register(waker)
        await waker.park()

    async def park_on_waiter() -> None:
        waiter: Waiter[Token] = Waiter()
        made.append(waiter)
        await waiter.park()

    if target.startswith(("sink", "source")):
        call, ready = (
            consume,
            lambda: sink._waker is not None and waker_state(sink._waker) == "parked",
        )
    elif target == "waiter":
        call, ready = park_on_waiter, lambda: bool(made)
    else:
        call, ready = (
            park_on_waker,
            lambda: bool(made) and waker_state(made[0]) == "parked",
        )

    with hosting(kind) as gone:
        gone.start([call], ready)
        waker = sink._waker if target.startswith(("sink", "source")) else None
        if target in ("waker", "atomic_waker"):
            waker = made[0]
        make_gone(gone, ending)
        value = Token("v")
        value_ref = weakref.ref(value)

        for attempt in range(2):  # again, once the loop is known to be gone
            if target == "sink_notify":
                sink.notify()
            elif target == "source_notify":
                sink.source().notify()
            elif target == "sink_close":
                sink.close()
            elif target == "waker":
                made[0].wake()
            elif target == "atomic_waker":
                assert atomic.wake() is (attempt == 0)  # then the slot is empty
            else:
                assert made[0].wake(value) is False
                assert made[0].throw(Unblocked()) is False
            if waker is not None:
                # The first wake-up found it parked and could not deliver: idle,
                # not "woken". A later one may leave a notification behind for
                # a park that will never come, which is harmless.
                states = ("idle",) if attempt == 0 else ("idle", "notified")
                assert waker_state(waker) in states
        assert_refused(gone, ending, expected_calls=1)
        if target == "waiter":
            assert made[0].done
            assert "dead" in repr(made[0])
            assert made[0]._result is None
        del value
        assert_all_dead([value_ref])
        gone.dispose((waker,) if waker is not None else ())
    made.clear()
    assert sink._waker is None
    assert not sink.statistics().consumer_waiting
    if target == "sink_close":
        assert sink.closed
    else:
        run_on(kind, lambda: sink_round_trip(sink))


# == 2. MemoryError while parking ==================================================


@pytest.mark.parametrize("point", ["new_handle", "park"])
async def test_memory_error_parking_on_waker(
    monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    waker = Waker()
    failures = fail_once(monkeypatch, point)
    with pytest.raises(MemoryError, match="no memory left"):
        await waker.park()
    monkeypatch.undo()
    assert failures, "the allocation was not reached"
    assert waker_state(waker) == "idle"
    waker.wake()  # nobody is parked: the next park returns at once
    assert waker_state(waker) == "notified"
    with anyio.fail_after(JOIN_TIMEOUT):
        await waker.park()
    assert waker_state(waker) == "idle"

    resumed: list[bool] = []

    async def parker() -> None:
        await waker.park()
        resumed.append(True)

    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            tg.start_soon(parker)
            await wait_all_tasks_blocked()
            assert waker_state(waker) == "parked"
            await anyio.to_thread.run_sync(waker.wake)
    assert resumed == [True]
    assert waker_state(waker) == "idle"


@pytest.mark.parametrize("point", ["new_handle", "park"])
async def test_memory_error_parking_on_lowlevel_waiter(
    monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    # The handle is made when the task parks (so that a waiter can be woken
    # before it parks): either allocation fails in park().
    aborted: list[bool] = []
    failures = fail_once(monkeypatch, point)
    waiter: Waiter[Token] = Waiter(on_abort=lambda: aborted.append(True))
    with pytest.raises(MemoryError, match="no memory left"):
        await waiter.park()
    assert aborted == [True], "the waiter did not unlink itself exactly once"
    assert waiter.done
    assert waiter.wake(Token("late")) is False
    assert "aborted" in repr(waiter)
    monkeypatch.undo()
    assert failures, "the allocation was not reached"

    got: list[Token] = []

    async def parker() -> None:
        fresh: Waiter[Token] = Waiter()
        waiters.append(fresh)
        got.append(await fresh.park())

    waiters: list[Waiter[Token]] = []
    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            tg.start_soon(parker)
            await wait_all_tasks_blocked()
            assert await anyio.to_thread.run_sync(waiters[0].wake, Token("v"))
    assert got == [Token("v")]


# == 3. a lowlevel.Waiter whose on_abort raises ====================================


async def test_on_abort_that_raises_reaches_the_task() -> None:
    """on_abort must not raise; if it does, the task's park() raises it (on trio
    too, where the abort function hands it to the task instead of failing the
    run), and the waiter is left aborted."""

    class Broken(Exception):
        pass

    def on_abort() -> None:
        raise Broken("on_abort failed")

    waiters: list[Waiter[Token]] = []

    async def parker() -> None:
        waiter: Waiter[Token] = Waiter(on_abort=on_abort)
        waiters.append(waiter)
        await waiter.park()

    async def park_and_cancel() -> None:
        async with create_task_group() as tg:
            tg.start_soon(parker)
            await wait_all_tasks_blocked()
            tg.cancel_scope.cancel()

    with anyio.fail_after(JOIN_TIMEOUT):
        with pytest.raises(BaseExceptionGroup) as info:
            await park_and_cancel()
        assert [leaves(exc) for exc in info.value.exceptions] == [
            "Broken: on_abort failed"
        ]
        assert waiters[0].done
        assert "aborted" in repr(waiters[0])
        await waitmap_round_trip(WaitMap(), "the run goes on")
