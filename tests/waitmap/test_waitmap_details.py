"""WaitMap behaviour at the edges: who receives a value when waiters of every
kind share a key, defaults of the mapping methods, and exceptions that keep
their key through pickling.
"""

from __future__ import annotations

import pickle
from typing import Any

import anyio
import pytest
from anyio import create_task_group, wait_all_tasks_blocked

from anyio_waitmap import KeyCancelled, WaitMap, WaitMapClosed, Woke

pytestmark = pytest.mark.anyio


class TestHandOverOrder:
    async def test_every_wait_served_behind_several_takers(self) -> None:
        """One value: the first taker consumes it, the takers after it keep
        waiting, and every wait() and matching wait_for() receives it, wherever
        it is in the line."""
        wm: WaitMap[str, int] = WaitMap()
        results: list[tuple[str, int]] = []

        async def record(name: str, method: str, *args: Any) -> None:
            results.append((name, await getattr(wm, method)("k", *args)))

        async with create_task_group() as tg:
            for name, method, *args in [
                ("taker 1", "take"),
                ("taker 2", "take"),
                ("waiter", "wait"),
                ("taker 3", "take"),
                ("matcher", "wait_for", lambda v: v > 0),
            ]:
                tg.start_soon(record, name, method, *args)
                await wait_all_tasks_blocked()
            assert wm.wake("k", 1) == Woke(3)
            await wait_all_tasks_blocked()
            assert sorted(results) == [("matcher", 1), ("taker 1", 1), ("waiter", 1)]
            assert wm.statistics().tasks_waiting == 2
            wm["k"] = 2
            await wait_all_tasks_blocked()
            assert wm.statistics().tasks_waiting == 1
            wm["k"] = 3
        assert results[3:] == [("taker 2", 2), ("taker 3", 3)]
        assert "k" not in wm

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_waiters_after_one_that_left_during_the_hand_over(self) -> None:
        """On trio, a predicate that cancels another waiter's scope makes it
        leave in the middle of the hand-over; the waiters after it are still
        served."""
        wm: WaitMap[str, int] = WaitMap()
        scope = anyio.CancelScope()
        results: list[object] = []

        def cancel_the_next(value: int) -> bool:
            scope.cancel()
            return True

        async def first() -> None:
            results.append(("first", await wm.wait_for("k", cancel_the_next)))

        async def second() -> None:
            with scope:
                await wm.wait("k")
            results.append(("second left", scope.cancelled_caught))

        async def third() -> None:
            results.append(("third", await wm.take("k")))

        async with create_task_group() as tg:
            for task in (first, second, third):
                tg.start_soon(task)
                await wait_all_tasks_blocked()
            assert wm.wake("k", 1) == Woke(2)
        assert sorted(map(repr, results)) == sorted(
            map(repr, [("first", 1), ("second left", True), ("third", 1)])
        )
        assert wm.statistics().tasks_waiting == 0


class _Interrupt(BaseException):
    """Stands for KeyboardInterrupt: an exception that is not an Exception."""


class TestPredicateInterrupted:
    """A predicate raising something that is not an Exception (as a
    KeyboardInterrupt would) while a value is handed to its only waiter: the
    caller gets it, a stored value is stored all the same, and the waiter
    keeps waiting."""

    async def test_store(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        def interrupted(value: int) -> bool:
            raise _Interrupt

        async with create_task_group() as tg:
            tg.start_soon(wm.wait_for, "k", interrupted)
            await wait_all_tasks_blocked()
            with pytest.raises(_Interrupt):
                wm["k"] = 1
            assert wm["k"] == 1
            assert wm.statistics().tasks_waiting == 1
            with pytest.raises(_Interrupt):
                wm.wake("k", 2)
            assert wm["k"] == 1
            assert wm.statistics().tasks_waiting == 1
            tg.cancel_scope.cancel()
        assert wm.statistics().tasks_waiting == 0


class TestMapping:
    def test_pop_with_a_default(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        assert wm.pop("missing", 5) == 5
        wm["k"] = 1
        assert wm.pop("k", 5) == 1
        assert wm.pop("k", 6) == 6
        with pytest.raises(KeyError):
            wm.pop("k")


class TestKeyCancelled:
    def test_keeps_its_key_through_args_repr_and_pickle(self) -> None:
        exc = KeyCancelled(("job", 7))
        assert exc.args == (("job", 7),)
        assert repr(exc) == "KeyCancelled(('job', 7))"
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is KeyCancelled
        assert copy.key == ("job", 7)
        assert str(copy) == "waiting on key ('job', 7) was cancelled"

    async def test_raised_in_a_waiter_carries_the_key(self) -> None:
        wm: WaitMap[tuple[str, int], int] = WaitMap()
        errors: list[KeyCancelled] = []

        async def waiter() -> None:
            try:
                await wm.wait(("job", 7))
            except KeyCancelled as exc:
                errors.append(exc)

        async with create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            assert wm.cancel(("job", 7)) == 1
        [exc] = errors
        assert exc.args == (("job", 7),)
        assert pickle.loads(pickle.dumps(exc)).key == ("job", 7)


class _CloseOnSecondAcquire:
    """Wraps the map's lock: closes the map just before the second time it is
    taken, that is, in the window between take()'s cancellation check and its
    consuming the stored value."""

    def __init__(self, wm: WaitMap[Any, Any]) -> None:
        self._wm = wm
        self._lock = wm._lock  # pyright: ignore[reportPrivateUsage]
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self._count += 1
        if self._count == 2:
            self._wm.close()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


async def test_take_closed_between_its_check_and_the_value() -> None:
    """The message is the one any take() of a closed map raises."""
    wm: WaitMap[str, int] = WaitMap()
    wm["k"] = 1
    wm._lock = _CloseOnSecondAcquire(wm)  # type: ignore[assignment]  # pyright: ignore[reportPrivateUsage,reportAttributeAccessIssue]
    with pytest.raises(WaitMapClosed) as info:
        await wm.take("k")
    assert str(info.value) == "cannot take() a closed WaitMap"
    assert wm["k"] == 1
