"""The lowlevel wakers on every backend (single loop): Waker, AtomicWaker and
DiatomicWaker.

The multi-threaded tests are in test_lowlevel_threads.py.
"""

from __future__ import annotations

import collections
from typing import Any

import anyio
import pytest
from anyio import create_task_group, wait_all_tasks_blocked
from support.checkpoints import assert_cancellable, assert_yields

from anyio_waitmap.lowlevel import AtomicWaker, DiatomicWaker, Waker

pytestmark = pytest.mark.anyio


class TestWaker:
    async def test_wake_before_park_makes_park_return_at_once(self) -> None:
        waker = Waker()
        assert "idle" in repr(waker)
        waker.wake()
        waker.wake()
        assert "notified" in repr(waker)
        await waker.park()
        assert "idle" in repr(waker)
        with anyio.move_on_after(0.05) as scope:
            await waker.park()
        assert scope.cancelled_caught, "two wake-ups were remembered as two"
        assert "idle" in repr(waker)

    async def test_parked_task_resumes_once(self) -> None:
        waker = Waker()
        resumed = 0

        async def sleeper() -> None:
            nonlocal resumed
            await waker.park()
            resumed += 1

        async with create_task_group() as tg:
            tg.start_soon(sleeper)
            await wait_all_tasks_blocked()
            assert "parked" in repr(waker)
            waker.wake()
            assert "woken" in repr(waker)
            waker.wake()
            assert "woken" in repr(waker)
        assert resumed == 1
        assert "idle" in repr(waker)

    async def test_park_is_a_checkpoint(self) -> None:
        waker = Waker()
        await assert_cancellable(waker.park)
        assert "idle" in repr(waker)
        waker.wake()
        await assert_cancellable(waker.park)
        waker.wake()
        await assert_yields(waker.park)

    async def test_reusable_by_successive_tasks(self) -> None:
        waker = Waker()
        for _ in range(3):
            async with create_task_group() as tg:
                tg.start_soon(waker.park)
                await wait_all_tasks_blocked()
                waker.wake()
        assert "idle" in repr(waker)

    def test_needs_a_running_task(self) -> None:
        with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
            Waker()


class TestAtomicWaker:
    async def test_register_wake_take(self) -> None:
        slot = AtomicWaker()
        assert not slot.wake()
        assert slot.take() is None
        first, second = Waker(), Waker()
        slot.register(first)
        slot.register(second)
        assert "registered" in repr(slot)
        assert slot.wake()
        assert "notified" in repr(second)
        assert "idle" in repr(first)
        assert not slot.wake(), "a wake-up consumes the registration"
        slot.register(first)
        assert slot.take() is first
        assert "empty" in repr(slot)


class TestDiatomicWaker:
    async def test_register_notify_unregister(self) -> None:
        diatomic = DiatomicWaker()
        diatomic.notify()  # nobody registered: nothing happens
        waker = diatomic.waker()
        assert diatomic.waker() is waker, "the waker is cached"
        diatomic.register(waker)
        assert diatomic.registered
        diatomic.notify()
        assert "notified" in repr(waker)
        diatomic.unregister()
        assert not diatomic.registered
        await waker.park()  # consumes the notification
        diatomic.notify()
        assert "idle" in repr(waker)

    async def test_second_consumer_is_refused(self) -> None:
        diatomic = DiatomicWaker()
        async with create_task_group() as tg:
            tg.start_soon(diatomic.wait_until, lambda: None)
            await wait_all_tasks_blocked()
            waker = diatomic._waker
            with pytest.raises(anyio.BusyResourceError):
                await diatomic.wait_until(lambda: 1)
            # The refused task left the first one's registration alone.
            assert diatomic._waker is waker is not None
            tg.cancel_scope.cancel()
        assert not diatomic.registered
        assert await diatomic.wait_until(lambda: 2) == 2

    async def test_wait_until_reuses_the_cached_waker(self) -> None:
        diatomic = DiatomicWaker()
        items: collections.deque[int] = collections.deque()
        seen: list[Any] = []

        async def consumer() -> None:
            for _ in range(3):
                seen.append(
                    await diatomic.wait_until(
                        lambda: items.popleft() if items else None
                    )
                )
                seen.append(diatomic._cached)

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            for value in range(3):
                await wait_all_tasks_blocked()
                items.append(value)
                diatomic.notify()
        assert seen[0::2] == [0, 1, 2]
        assert seen[1] is seen[3] is seen[5] is not None
        assert not diatomic.registered
