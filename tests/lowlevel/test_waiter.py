"""anyio_waitmap.lowlevel.Waiter on every backend."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.checkpoints import assert_cancellable, assert_yields

from anyio_waitmap.lowlevel import Waiter

pytestmark = pytest.mark.anyio


async def start_parked(
    tg: anyio.abc.TaskGroup, events: list[object], **options: Any
) -> Waiter[int]:
    """Start a task that parks on a new waiter; return the waiter once parked."""
    waiters: list[Waiter[int]] = []

    async def task() -> None:
        waiter: Waiter[int] = Waiter(**options)
        waiters.append(waiter)
        try:
            events.append(await waiter.park())
        except anyio.get_cancelled_exc_class():
            events.append("cancelled")
            raise
        except Exception as exc:
            events.append(exc)

    tg.start_soon(task)
    await wait_all_tasks_blocked()
    return waiters[0]


class TestWaiter:
    async def test_wake_resumes_with_the_value_once(self) -> None:
        events: list[object] = []
        async with create_task_group() as tg:
            waiter = await start_parked(tg, events)
            assert not waiter.done
            assert waiter.wake(1)
            assert waiter.done
            assert not waiter.wake(2)
            assert not waiter.throw(ValueError())
        assert events == [1]

    async def test_throw_raises_in_the_task(self) -> None:
        events: list[object] = []
        error = ValueError("from the waker")
        async with create_task_group() as tg:
            waiter = await start_parked(tg, events)
            assert waiter.throw(error)
            assert not waiter.wake(1)
        assert events == [error]

    async def test_on_abort_runs_once_under_the_lock_when_cancelled(self) -> None:
        events: list[object] = []
        lock = threading.Lock()
        aborts: list[bool] = []

        def on_abort() -> None:
            aborts.append(lock.locked())

        async with create_task_group() as tg:
            waiter = await start_parked(tg, events, lock=lock, on_abort=on_abort)
            assert waiter.lock is lock
            tg.cancel_scope.cancel()
        assert events == ["cancelled"]
        assert aborts == [True]
        assert waiter.done
        assert not waiter.wake(1), "a waiter whose task left cannot be woken"

    async def test_on_abort_not_called_after_wake(self) -> None:
        events: list[object] = []
        aborts: list[None] = []
        scope = CancelScope()

        async def task() -> None:
            with scope:
                waiter: Waiter[int] = Waiter(on_abort=lambda: aborts.append(None))
                waiters.append(waiter)
                events.append(await waiter.park())
                await anyio.lowlevel.checkpoint()
                events.append("not cancelled")

        waiters: list[Waiter[int]] = []
        async with create_task_group() as tg:
            tg.start_soon(task)
            await wait_all_tasks_blocked()
            assert waiters[0].wake(5)
            scope.cancel()  # before the task resumed: it still gets the value
        assert events == [5]
        assert scope.cancelled_caught
        assert aborts == []

    async def test_wake_locked_with_the_lock_held(self) -> None:
        events: list[object] = []
        async with create_task_group() as tg:
            waiter = await start_parked(tg, events)
            with waiter.lock:
                assert waiter.wake_locked(3)
                assert not waiter.throw_locked(ValueError())
        assert events == [3]

    async def test_wake_from_another_thread(self) -> None:
        events: list[object] = []
        async with create_task_group() as tg:
            waiter = await start_parked(tg, events)
            assert await anyio.to_thread.run_sync(waiter.wake, 9)
        assert events == [9]

    async def test_park_is_a_checkpoint(self) -> None:
        waiter: Waiter[int] = Waiter()
        await assert_cancellable(waiter.park)
        assert waiter.done

        async def woken_soon() -> int:
            waiter: Waiter[int] = Waiter()
            async with create_task_group() as tg:
                tg.start_soon(_wake_later, waiter)
                return await waiter.park()

        assert await assert_yields(woken_soon) == 4

    async def test_repr_shows_the_state(self) -> None:
        waiter: Waiter[int] = Waiter()
        assert repr(waiter).startswith("<anyio_waitmap.lowlevel.Waiter waiting on ")
        waiter.wake(1)
        assert "woken" in repr(waiter)
        assert await waiter.park() == 1
        thrown: Waiter[int] = Waiter()
        thrown.throw(KeyError("x"))
        assert "thrown into" in repr(thrown)
        with pytest.raises(KeyError):
            await thrown.park()

    async def test_exception_is_not_kept_after_raising(self) -> None:
        waiter: Waiter[int] = Waiter()
        waiter.throw(ValueError("once"))
        with pytest.raises(ValueError, match="once"):
            await waiter.park()
        assert waiter._result is None


def test_needs_a_running_task() -> None:
    with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
        Waiter()


async def _wake_later(waiter: Waiter[int]) -> None:
    waiter.wake(4)
