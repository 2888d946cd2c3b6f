"""What users read: reprs in every state, and the text of every error we raise.

A repr or an error message is part of what a user sees when something goes
wrong, so each one is checked word for word here, in every state it can show.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from anyio import create_task_group, wait_all_tasks_blocked

from anyio_waitmap import DuplicateWaiter, WaitMap, WaitMapClosed, WakeSink
from anyio_waitmap.lowlevel import AtomicWaker, DiatomicWaker, Waiter, Waker

# anyio.NoEventLoopError exists from anyio 4.11 on; with an older anyio the
# package raises a RuntimeError, which NoEventLoopError subclasses.
NoEventLoopError: type[RuntimeError] = getattr(anyio, "NoEventLoopError", RuntimeError)

pytestmark = pytest.mark.anyio


def backend_name(anyio_backend: tuple[str, dict[str, object]]) -> str:
    """The name a binding shows in reprs: uvloop is an asyncio loop."""
    return anyio_backend[0]


def outside_a_loop(coro: Coroutine[Any, Any, object]) -> None:
    """Drive ``coro`` one step with no event loop running, as a foreign runner
    would, and expect the error that names what was awaited."""
    try:
        coro.send(None)
    finally:
        coro.close()


NO_TASK = (
    " was called outside of a task: it needs a task of an asyncio or trio event "
    "loop running in this thread"
)


class TestNoRunningTask:
    """The error for a call made with no asyncio or trio task names that call."""

    @pytest.mark.parametrize(
        ("name", "make"),
        [
            ("Waiter", Waiter),
            ("Waker", Waker),
        ],
    )
    def test_constructors(self, name: str, make: Callable[[], object]) -> None:
        with pytest.raises(RuntimeError) as info:
            make()
        assert str(info.value) == f"{name}(){NO_TASK}"
        assert isinstance(info.value, NoEventLoopError)

    @pytest.mark.parametrize(
        ("name", "start"),
        [
            ("WaitMap.wait", lambda: WaitMap().wait("k")),
            ("WaitMap.take", lambda: WaitMap().take("k")),
            ("WaitMap.wait_for", lambda: WaitMap().wait_for("k", bool)),
            ("DiatomicWaker.wait_until", lambda: DiatomicWaker().wait_until(int)),
            ("WakeSink.wait_until", lambda: WakeSink().wait_until(int)),
        ],
    )
    def test_async_methods(
        self, name: str, start: Callable[[], Coroutine[Any, Any, object]]
    ) -> None:
        with pytest.raises(RuntimeError, match=f"^{re.escape(name)}\\(\\){NO_TASK}"):
            outside_a_loop(start())

    def test_a_sink_can_be_waited_on_again_after_the_error(self) -> None:
        sink = WakeSink()
        with pytest.raises(RuntimeError):
            outside_a_loop(sink.wait_until(int))
        assert not sink.statistics().consumer_waiting


class TestReprs:
    def test_waitmap_counts_and_flags(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        assert repr(wm) == "<anyio_waitmap.WaitMap 0 stored, 0 waiting on 0 keys>"
        wm["a"] = 1
        wm["b"] = 2
        wm.close()
        assert repr(wm) == (
            "<anyio_waitmap.WaitMap 2 stored, 0 waiting on 0 keys, closed>"
        )

    async def test_waitmap_with_waiters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        async with create_task_group() as tg:
            for key in ("a", "a", "b"):
                tg.start_soon(wm.wait, key)
            await wait_all_tasks_blocked()
            assert repr(wm) == "<anyio_waitmap.WaitMap 0 stored, 3 waiting on 2 keys>"
            tg.cancel_scope.cancel()

    async def test_waiter_in_each_state(
        self, anyio_backend: tuple[str, dict[str, object]]
    ) -> None:
        loop = backend_name(anyio_backend)

        def shows(waiter: Waiter[Any], state: str) -> None:
            assert repr(waiter) == f"<anyio_waitmap.lowlevel.Waiter {state} on {loop}>"

        woken: Waiter[int] = Waiter()
        shows(woken, "waiting")
        woken.wake(1)
        shows(woken, "woken")
        assert await woken.park() == 1

        thrown: Waiter[int] = Waiter()
        thrown.throw(LookupError("x"))
        shows(thrown, "thrown into")
        with pytest.raises(LookupError):
            await thrown.park()

        aborted: Waiter[int] = Waiter()
        with anyio.move_on_after(0):
            await aborted.park()
        shows(aborted, "aborted")

    def test_waiters_of_a_closed_loop(self) -> None:
        """Waiters parked in a loop that was closed with them parked."""
        loop = asyncio.new_event_loop()
        waiters: list[Waiter[int]] = []

        async def park() -> None:
            waiter: Waiter[int] = Waiter()
            waiters.append(waiter)
            await waiter.park()

        tasks = [loop.create_task(park()) for _ in range(2)]
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        to_wake, to_throw = waiters
        assert to_wake.wake(1) is False
        assert to_throw.throw(LookupError("x")) is False
        for waiter in (to_wake, to_throw):
            assert repr(waiter) == "<anyio_waitmap.lowlevel.Waiter dead on asyncio>"
        for task in tasks:  # the loop is gone: close the coroutines by hand
            task._log_destroy_pending = False  # type: ignore[attr-defined]
            coro = task.get_coro()
            assert coro is not None
            coro.close()

    async def test_waker_in_each_state(
        self, anyio_backend: tuple[str, dict[str, object]]
    ) -> None:
        loop = backend_name(anyio_backend)
        waker = Waker()

        def shows(state: str) -> None:
            assert repr(waker) == f"<anyio_waitmap.lowlevel.Waker {state} on {loop}>"

        shows("idle")
        waker.wake()
        shows("notified")
        await waker.park()
        shows("idle")
        async with create_task_group() as tg:
            tg.start_soon(waker.park)
            await wait_all_tasks_blocked()
            shows("parked")
            waker.wake()
            shows("woken")
        shows("idle")

    async def test_atomic_and_diatomic_wakers(self) -> None:
        atomic = AtomicWaker()
        diatomic = DiatomicWaker()
        assert repr(atomic) == "<anyio_waitmap.lowlevel.AtomicWaker empty>"
        assert repr(diatomic) == "<anyio_waitmap.lowlevel.DiatomicWaker idle>"
        waker = Waker()
        atomic.register(waker)
        diatomic.register(waker)
        assert repr(atomic) == "<anyio_waitmap.lowlevel.AtomicWaker registered>"
        assert repr(diatomic) == "<anyio_waitmap.lowlevel.DiatomicWaker registered>"
        assert atomic.take() is waker
        diatomic.unregister()
        assert repr(atomic) == "<anyio_waitmap.lowlevel.AtomicWaker empty>"
        assert repr(diatomic) == "<anyio_waitmap.lowlevel.DiatomicWaker idle>"

    async def test_sink_with_a_consumer(self) -> None:
        sink = WakeSink()
        source = sink.source()
        async with create_task_group() as tg:
            tg.start_soon(sink.wait_until, lambda: None)
            await wait_all_tasks_blocked()
            assert repr(sink) == "<anyio_waitmap.WakeSink open, consumer waiting>"
            assert repr(source) == (
                "<anyio_waitmap.WakeSource of "
                "<anyio_waitmap.WakeSink open, consumer waiting>>"
            )
            tg.cancel_scope.cancel()
        assert repr(sink) == "<anyio_waitmap.WakeSink open>"


class TestErrorMessages:
    async def test_sink_closed_before_and_while_waiting(self) -> None:
        sink = WakeSink()
        errors: list[str] = []

        async def consumer() -> None:
            try:
                await sink.wait_until(lambda: None)
            except anyio.ClosedResourceError as exc:
                errors.append(str(exc))

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            sink.close()
        assert errors == ["the WakeSink was closed while a task was waiting on it"]
        with pytest.raises(anyio.ClosedResourceError) as info:
            await sink.wait_until(lambda: 1)
        assert str(info.value) == "the WakeSink is closed"

    async def test_predicate_that_is_not_callable(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with pytest.raises(TypeError) as info:
            await wm.wait_for("k", 3)  # type: ignore[arg-type]
        assert str(info.value) == (
            "wait_for() needs a callable predicate, got 'int' object"
        )
        for consumer in (WakeSink(), DiatomicWaker()):
            with pytest.raises(TypeError) as info:
                await consumer.wait_until("ready")  # type: ignore[arg-type]
            assert str(info.value) == (
                "wait_until() needs a callable predicate, got 'str' object"
            )

    @pytest.mark.parametrize(
        ("operation", "change"),
        [
            ("wake()", lambda wm: wm.wake("other", 1)),
            ("storing a value", lambda wm: wm.__setitem__("other", 1)),
            ("cancel()", lambda wm: wm.cancel("other")),
            ("cancel_all()", lambda wm: wm.cancel_all()),
            ("close()", lambda wm: wm.close()),
        ],
    )
    async def test_predicate_that_changes_the_map(
        self, operation: str, change: Callable[[WaitMap[str, int]], object]
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1

        def predicate(value: int) -> bool:
            change(wm)
            return True

        with pytest.raises(RuntimeError) as info:
            await wm.wait_for("k", predicate)
        assert str(info.value) == (
            f"{operation} was called from a wait_for() predicate; predicates "
            "must not change the WaitMap that evaluates them"
        )
        assert not wm.closed
        assert dict(wm) == {"k": 1}

    async def test_closed_map(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        errors: list[str] = []

        async def waiter() -> None:
            try:
                await wm.take("k")
            except WaitMapClosed as exc:
                errors.append(str(exc))

        async with create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            wm.close()
        assert errors == [
            "the WaitMap was closed while this task was waiting on key 'k'"
        ]
        for method, name in ((wm.wait, "wait()"), (wm.take, "take()")):
            with pytest.raises(WaitMapClosed) as info:
                await method("k")
            assert str(info.value) == f"cannot {name} a closed WaitMap"
        with pytest.raises(WaitMapClosed) as info:
            await wm.wait_for("k", bool)
        assert str(info.value) == "cannot wait_for() a closed WaitMap"
        with pytest.raises(WaitMapClosed) as info:
            wm["k"] = 1
        assert str(info.value) == "cannot store a value in a closed WaitMap"

    async def test_duplicate_waiter(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        async with create_task_group() as tg:
            tg.start_soon(wm.wait, "k")
            await wait_all_tasks_blocked()
            with pytest.raises(DuplicateWaiter) as info:
                await wm.take("k")
            assert str(info.value) == (
                "another task is already waiting on key 'k' of this exclusive WaitMap"
            )
            tg.cancel_scope.cancel()
