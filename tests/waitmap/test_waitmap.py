"""WaitMap on every backend: methods, outcomes, checkpoints and guarantees."""

from __future__ import annotations

import gc
import pickle
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.checkpoints import assert_cancellable, assert_checkpoint, assert_yields

from anyio_waitmap import (
    Closed,
    DuplicateWaiter,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WaitMapStatistics,
    Woke,
)

pytestmark = pytest.mark.anyio


def stats(wm: WaitMap[Any, Any]) -> tuple[int, int, int]:
    s = wm.statistics()
    return s.tasks_waiting, s.keys_waiting, s.values_stored


def assert_empty_of_waiters(wm: WaitMap[Any, Any]) -> None:
    assert wm.statistics().tasks_waiting == 0
    assert wm.statistics().keys_waiting == 0
    assert wm._waiting == {}


class Token:
    """A value whose lifetime the leak tests follow with a weak reference."""


@contextmanager
def none_of_ours_in_cycles() -> Iterator[None]:
    """Fail if the block leaves objects of this package, or a :class:`Token`, to
    the cyclic GC.

    Only our own objects are checked: the event loop, anyio's task groups and the
    test runner make cyclic garbage of their own that is not ours to judge.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        gc.set_debug(0)
        ours = Counter(
            type(obj).__qualname__
            for obj in gc.garbage
            if type(obj).__module__.startswith("anyio_waitmap") or type(obj) is Token
        )
        gc.garbage.clear()
        gc.enable()
    assert not ours, f"only the cyclic GC could free these objects: {ours}"


class Recorder:
    """Runs waits in tasks and records how each one ended."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def run(self, name: str, call: Callable[[], Any]) -> Callable[[], Any]:
        async def task() -> None:
            try:
                value = await call()
            except anyio.get_cancelled_exc_class():
                self.events.append((name, "cancelled"))
                raise
            except Exception as exc:
                self.events.append((name, type(exc)))
            else:
                self.events.append((name, value))

        return task


# -- the mapping ------------------------------------------------------------------


class TestMapping:
    def test_is_a_mutable_mapping(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        assert isinstance(wm, MutableMapping)
        wm["a"] = 1
        wm.update({"b": 2}, c=3)
        assert len(wm) == 3
        assert "a" in wm
        assert "z" not in wm
        assert sorted(wm) == ["a", "b", "c"]
        assert sorted(wm.items()) == [("a", 1), ("b", 2), ("c", 3)]
        assert sorted(wm.values()) == [1, 2, 3]
        assert wm["b"] == 2
        assert wm.get("z") is None
        assert wm.get("z", 9) == 9
        assert wm.setdefault("a", 5) == 1
        assert wm.setdefault("d", 4) == 4
        assert wm.pop("d") == 4
        assert wm.pop("d", None) is None
        with pytest.raises(KeyError):
            wm.pop("d")
        del wm["c"]
        with pytest.raises(KeyError):
            del wm["c"]
        with pytest.raises(KeyError):
            wm["c"]
        assert wm.popitem() in {("a", 1), ("b", 2)}
        wm.clear()
        assert len(wm) == 0
        with pytest.raises(KeyError):
            wm.popitem()

    def test_iteration_takes_a_snapshot(self) -> None:
        wm: WaitMap[int, int] = WaitMap()
        wm.update({1: 1, 2: 2})
        for key in wm:
            del wm[key]
            wm[key + 10] = key
        assert sorted(wm) == [11, 12]

    def test_identity_equality(self) -> None:
        first: WaitMap[int, int] = WaitMap()
        second: WaitMap[int, int] = WaitMap()
        assert first == first
        assert first != second
        assert first != {}
        assert len({first, second}) == 2

    def test_statistics_and_repr(self) -> None:
        wm: WaitMap[int, int] = WaitMap(exclusive=True)
        wm[1] = 1
        assert wm.statistics() == WaitMapStatistics(
            tasks_waiting=0, keys_waiting=0, values_stored=1, closed=False
        )
        assert repr(wm) == (
            "<anyio_waitmap.WaitMap 1 stored, 0 waiting on 0 keys, exclusive>"
        )
        assert wm.exclusive
        wm.close()
        assert repr(wm).endswith(", exclusive, closed>")
        assert wm.statistics().closed

    def test_outcomes(self) -> None:
        assert Woke(2)
        assert Woke(2).count == 2
        assert not NoMatch("v")
        assert not Closed("v")
        for outcome, expected in [
            (Woke(3), 3),
            (NoMatch("x"), "x"),
            (Closed("y"), "y"),
        ]:
            match outcome:
                case Woke(count):
                    assert count == expected
                case NoMatch(value):
                    assert value == expected
                case Closed(value):
                    assert value == expected
        with pytest.raises(AttributeError):
            Woke(1).count = 2  # type: ignore[misc]

    def test_exceptions(self) -> None:
        error = KeyCancelled("k")
        assert isinstance(error, LookupError)
        assert error.key == "k"
        assert "'k'" in str(error)
        assert issubclass(WaitMapClosed, anyio.ClosedResourceError)
        assert issubclass(DuplicateWaiter, anyio.BusyResourceError)

    def test_wake_without_waiters(self) -> None:
        wm: WaitMap[int, str] = WaitMap()
        assert wm.wake(1, "v") == NoMatch("v")
        assert 1 not in wm

    def test_wake_without_waiters_returns_a_whole_nomatch(self) -> None:
        # That path builds its NoMatch without calling NoMatch(): it must be
        # indistinguishable from one that was.
        wm: WaitMap[int, list[int]] = WaitMap()
        value = [1]
        outcome = wm.wake(1, value)
        assert type(outcome) is NoMatch
        assert outcome.value is value
        assert outcome == NoMatch([1])
        assert repr(outcome) == "NoMatch(value=[1])"
        assert not outcome
        match outcome:
            case NoMatch(found):
                assert found is value
            case _:  # pragma: no cover - the assertion above would fail first
                pytest.fail("not matched as NoMatch")
        with pytest.raises(AttributeError):
            outcome.value = [2]  # type: ignore[misc]
        assert pickle.loads(pickle.dumps(outcome)) == outcome
        other = wm.wake(2, (1, 2))
        assert hash(other) == hash(NoMatch((1, 2)))


# -- waiting and handing over ---------------------------------------------------


class TestWaiting:
    async def test_wait_returns_stored_value_and_keeps_it(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["a"] = 1
        assert await wm.wait("a") == 1
        assert wm["a"] == 1

    async def test_take_consumes_stored_value(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["a"] = 1
        assert await wm.take("a") == 1
        assert "a" not in wm

    async def test_wait_for_checks_stored_value_first(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["a"] = 4
        assert await wm.wait_for("a", lambda v: v % 2 == 0) == 4
        assert wm["a"] == 4

    async def test_store_wakes_all_waiters(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            for name in "xyz":
                tg.start_soon(rec.run(name, lambda: wm.wait("k")))
            await wait_all_tasks_blocked()
            assert stats(wm) == (3, 1, 0)
            wm["k"] = 7
        assert sorted(rec.events) == [("x", 7), ("y", 7), ("z", 7)]
        assert wm["k"] == 7
        assert_empty_of_waiters(wm)

    async def test_store_goes_to_first_taker_and_is_not_stored(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("watcher", lambda: wm.wait("k")))
            for name in ("t1", "t2"):
                tg.start_soon(rec.run(name, lambda: wm.take("k")))
                await wait_all_tasks_blocked()
            wm["k"] = 1
            await wait_all_tasks_blocked()
            assert "k" not in wm
            assert sorted(rec.events) == [("t1", 1), ("watcher", 1)]
            assert stats(wm) == (1, 1, 0)
            wm["k"] = 2
        assert ("t2", 2) in rec.events
        assert "k" not in wm
        assert_empty_of_waiters(wm)

    async def test_takers_are_served_in_fifo_order(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            for index in range(5):
                tg.start_soon(rec.run(f"t{index}", lambda: wm.take("k")))
                await wait_all_tasks_blocked()
            for value in range(5):
                assert wm.wake("k", value) == Woke(1)
        assert sorted(rec.events) == [(f"t{i}", i) for i in range(5)]

    async def test_wake_counts_receivers(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("w1", lambda: wm.wait("k")))
            tg.start_soon(rec.run("w2", lambda: wm.wait("k")))
            tg.start_soon(rec.run("odd", lambda: wm.wait_for("k", lambda v: v % 2)))
            # Takers one at a time: trio starts new tasks in random order.
            for name in ("t1", "t2"):
                tg.start_soon(rec.run(name, lambda: wm.take("k")))
                await wait_all_tasks_blocked()
            assert wm.wake("k", 2) == Woke(3)  # w1, w2 and the first taker
            await wait_all_tasks_blocked()
            assert stats(wm) == (2, 1, 0)
            assert wm.wake("k", 3) == Woke(2)  # odd and the second taker
            assert wm.wake("k", 5) == NoMatch(5)
        assert "k" not in wm
        assert sorted(rec.events, key=str) == sorted(
            [("w1", 2), ("w2", 2), ("t1", 2), ("odd", 3), ("t2", 3)], key=str
        )

    async def test_wait_for_skips_values_that_do_not_match(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("big", lambda: wm.wait_for("k", lambda v: v > 10)))
            await wait_all_tasks_blocked()
            assert wm.wake("k", 3) == NoMatch(3)
            wm["k"] = 5
            await wait_all_tasks_blocked()
            assert rec.events == []
            assert wm.statistics().tasks_waiting == 1
            wm["k"] = 11
        assert rec.events == [("big", 11)]
        assert wm["k"] == 11

    async def test_predicate_error_at_start_propagates_and_registers_nothing(
        self,
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 0
        with pytest.raises(ZeroDivisionError):
            await wm.wait_for("k", lambda v: 1 / v)
        assert_empty_of_waiters(wm)

    async def test_predicate_error_in_waker_goes_to_that_waiter(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("bad", lambda: wm.wait_for("k", lambda v: 1 / v)))
            tg.start_soon(rec.run("good", lambda: wm.wait("k")))
            await wait_all_tasks_blocked()
            assert wm.wake("k", 0) == Woke(1)
        assert sorted(rec.events, key=str) == sorted(
            [("bad", ZeroDivisionError), ("good", 0)], key=str
        )
        assert_empty_of_waiters(wm)

    async def test_predicate_must_not_change_the_map(self) -> None:
        wm: WaitMap[str, int] = WaitMap()

        def meddling(value: int) -> bool:
            wm["other"] = value
            return True

        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("meddler", lambda: wm.wait_for("k", meddling)))
            await wait_all_tasks_blocked()
            assert wm.wake("k", 1) == NoMatch(1)
        assert rec.events == [("meddler", RuntimeError)]
        assert "other" not in wm
        wm["k"] = 1  # the map is usable again
        assert wm["k"] == 1

    async def test_predicate_may_read_the_map(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["limit"] = 5
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(
                rec.run("reader", lambda: wm.wait_for("k", lambda v: v > wm["limit"]))
            )
            await wait_all_tasks_blocked()
            assert wm.wake("k", 3) == NoMatch(3)
            assert wm.wake("k", 6) == Woke(1)
        assert rec.events == [("reader", 6)]

    async def test_setdefault_and_update_hand_over(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("taker", lambda: wm.take("a")))
            tg.start_soon(rec.run("waiter", lambda: wm.wait("b")))
            await wait_all_tasks_blocked()
            assert wm.setdefault("a", 1) == 1
            wm.update(b=2)
        assert sorted(rec.events) == [("taker", 1), ("waiter", 2)]
        assert "a" not in wm  # consumed by the taker
        assert wm["b"] == 2


class TestCancelAndClose:
    async def test_cancel_key(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["other"] = 1
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("w", lambda: wm.wait("k")))
            tg.start_soon(rec.run("t", lambda: wm.take("k")))
            tg.start_soon(rec.run("f", lambda: wm.wait_for("k", bool)))
            tg.start_soon(rec.run("o", lambda: wm.wait("o")))
            await wait_all_tasks_blocked()
            assert wm.cancel("k") == 3
            assert wm.cancel("k") == 0
            await wait_all_tasks_blocked()
            assert stats(wm) == (1, 1, 1)
            assert wm.cancel_all() == 1
        assert sorted(rec.events, key=str) == sorted(
            [(n, KeyCancelled) for n in "wtfo"], key=str
        )
        assert wm["other"] == 1
        assert_empty_of_waiters(wm)

    async def test_key_cancelled_carries_the_key(self) -> None:
        wm: WaitMap[tuple[int, int], int] = WaitMap()
        errors: list[KeyCancelled] = []

        async def waiter() -> None:
            try:
                await wm.wait((1, 2))
            except KeyCancelled as exc:
                errors.append(exc)

        async with create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            wm.cancel((1, 2))
        assert errors[0].key == (1, 2)

    async def test_close(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["stored"] = 1
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("w", lambda: wm.wait("k")))
            tg.start_soon(rec.run("t", lambda: wm.take("k")))
            await wait_all_tasks_blocked()
            wm.close()
            wm.close()  # idempotent
        assert sorted(rec.events) == [("t", WaitMapClosed), ("w", WaitMapClosed)]
        assert wm.closed
        assert_empty_of_waiters(wm)
        # Every later wait raises, even for a key with a stored value.
        for call in (
            lambda: wm.wait("stored"),
            lambda: wm.take("stored"),
            lambda: wm.wait_for("stored", bool),
        ):
            with pytest.raises(WaitMapClosed, match="closed WaitMap"):
                await call()
        with pytest.raises(WaitMapClosed, match="store a value"):
            wm["x"] = 1
        with pytest.raises(WaitMapClosed):
            wm.setdefault("x", 1)
        assert wm.wake("k", 5) == Closed(5)
        assert wm.cancel("k") == 0
        assert wm.cancel_all() == 0
        # Stored values stay readable and removable.
        assert wm["stored"] == 1
        assert wm.setdefault("stored", 2) == 1
        assert wm.pop("stored") == 1
        assert len(wm) == 0


class TestExclusive:
    async def test_second_waiter_raises_at_once(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        rec = Recorder()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("first", lambda: wm.take("k")))
            await wait_all_tasks_blocked()
            for call in (
                lambda: wm.wait("k"),
                lambda: wm.take("k"),
                lambda: wm.wait_for("k", bool),
            ):
                with pytest.raises(DuplicateWaiter, match="'k'"):
                    await call()
            assert stats(wm) == (1, 1, 0)
            # Other keys are independent.
            tg.start_soon(rec.run("other", lambda: wm.wait("j")))
            await wait_all_tasks_blocked()
            assert wm.wake("k", 1) == Woke(1)
            assert wm.wake("j", 2) == Woke(1)
        assert sorted(rec.events) == [("first", 1), ("other", 2)]

    async def test_stored_value_never_conflicts(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        wm["k"] = 1
        rec = Recorder()
        async with create_task_group() as tg:
            # Parks: the stored value does not match.
            tg.start_soon(rec.run("big", lambda: wm.wait_for("k", lambda v: v > 5)))
            await wait_all_tasks_blocked()
            assert await wm.wait("k") == 1
            assert await wm.wait_for("k", lambda v: v == 1) == 1
            assert await wm.take("k") == 1
            with pytest.raises(DuplicateWaiter):
                await wm.wait("k")
            wm["k"] = 9
        assert rec.events == [("big", 9)]


# -- checkpoints ------------------------------------------------------------------


class TestCheckpoints:
    async def test_wait_fast_path(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        assert await assert_checkpoint(lambda: wm.wait("k")) == 1

    async def test_take_fast_path(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        await assert_cancellable(lambda: wm.take("k"))
        assert wm["k"] == 1, "a cancelled take() consumed the value"
        assert await assert_yields(lambda: wm.take("k")) == 1
        assert "k" not in wm

    async def test_wait_for_fast_path(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        assert await assert_checkpoint(lambda: wm.wait_for("k", bool)) == 1

    @pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
    async def test_slow_path_in_cancelled_scope(self, method: str) -> None:
        wm: WaitMap[str, int] = WaitMap()
        calls: dict[str, Callable[[], Any]] = {
            "wait": lambda: wm.wait("k"),
            "take": lambda: wm.take("k"),
            "wait_for": lambda: wm.wait_for("k", bool),
        }
        await assert_cancellable(calls[method])
        assert_empty_of_waiters(wm)

    @pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
    async def test_slow_path_yields(self, method: str) -> None:
        wm: WaitMap[str, int] = WaitMap()
        calls: dict[str, Callable[[], Any]] = {
            "wait": lambda: wm.wait("k"),
            "take": lambda: wm.take("k"),
            "wait_for": lambda: wm.wait_for("k", bool),
        }

        async def store_later() -> None:
            wm["k"] = 1

        async with create_task_group() as tg:
            tg.start_soon(store_later)
            assert await calls[method]() == 1

    async def test_errors_raised_before_parking(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        wm.close()
        # Raising at once is allowed for misuse: no checkpoint needed there.
        with pytest.raises(WaitMapClosed):
            await wm.wait("k")


# -- guarantee 1: no leak ---------------------------------------------------------


class TestNoLeak:
    @pytest.mark.parametrize(
        "way_out", ["value", "cancel_key", "close", "scope_cancel", "timeout"]
    )
    @pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
    async def test_every_way_out_leaves_nothing(
        self, method: str, way_out: str
    ) -> None:
        wm: WaitMap[str, Token] = WaitMap()
        parked: list[Any] = []
        ended: list[str] = []
        scope = CancelScope()
        token = Token()
        token_ref = weakref.ref(token)

        async def waiter() -> None:
            call: dict[str, Callable[[], Any]] = {
                "wait": lambda: wm.wait("k"),
                "take": lambda: wm.take("k"),
                "wait_for": lambda: wm.wait_for("k", bool),
            }
            try:
                # The task's own scopes catch its cancellation, so that the
                # exception does not end up in the task group's reference cycles.
                with scope, anyio.move_on_after(0.01 if way_out == "timeout" else 60):
                    got = await call[method]()
                    ended.append("value" if got is token_ref() else "wrong value")
                    return
                ended.append("cancelled")
            except (KeyCancelled, WaitMapClosed) as exc:
                ended.append(type(exc).__name__)

        with none_of_ours_in_cycles():
            async with create_task_group() as tg:
                tg.start_soon(waiter)
                await wait_all_tasks_blocked()
                parked.extend(wm._waiting.values())
                if way_out == "value":
                    assert wm.wake("k", token) == Woke(1)
                elif way_out == "cancel_key":
                    wm.cancel("k")
                elif way_out == "close":
                    wm.close()
                elif way_out == "scope_cancel":
                    scope.cancel()
            del token
            assert_empty_of_waiters(wm)
            # Only `parked` still refers to the waiter. Counted outside the assert
            # statement, whose rewriting keeps its own reference to sub-expressions.
            references = sys.getrefcount(parked[0]) - 2  # the argument, and `parked`
            referrers = [
                ref for ref in gc.get_referrers(parked[0]) if ref is not parked
            ]
            assert references == 0, referrers
            parked.clear()
            assert token_ref() is None, "the value outlived its last user"
        expected = {
            "value": "value",
            "cancel_key": "KeyCancelled",
            "close": "WaitMapClosed",
            "scope_cancel": "cancelled",
            "timeout": "cancelled",
        }
        assert ended == [expected[way_out]]

    async def test_many_waiters_on_one_key_cancelled_in_any_order(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        scopes: list[CancelScope] = []

        async def waiter(index: int) -> None:
            with CancelScope() as scope:
                scopes.append(scope)
                await (wm.take("k") if index % 2 else wm.wait("k"))

        async with create_task_group() as tg:
            for index in range(6):
                tg.start_soon(waiter, index)
            await wait_all_tasks_blocked()
            assert stats(wm) == (6, 1, 0)
            for index in (3, 0, 5, 1, 4, 2):
                scopes[index].cancel()
                await wait_all_tasks_blocked()
        assert_empty_of_waiters(wm)
        assert wm.wake("k", 1) == NoMatch(1)

    async def test_duplicate_waiter_and_predicate_errors_leave_nothing(self) -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        async with create_task_group() as tg:
            tg.start_soon(wm.wait, "k")
            await wait_all_tasks_blocked()
            with pytest.raises(DuplicateWaiter):
                await wm.take("k")
            wm["k"] = 1
        wm["j"] = 0
        with pytest.raises(ZeroDivisionError):
            await wm.wait_for("j", lambda v: 1 / v)
        assert_empty_of_waiters(wm)


# -- guarantee 2: no lost value ---------------------------------------------------


class TestWokenThenCancelled:
    """A task that was handed a value returns it, even if cancelled before it ran."""

    @pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
    @pytest.mark.parametrize("hand_over", ["wake", "store"])
    async def test_handed_over_then_scope_cancelled(
        self, method: str, hand_over: str
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []
        scope = CancelScope()

        async def waiter() -> None:
            with scope:
                call: dict[str, Callable[[], Any]] = {
                    "wait": lambda: wm.wait("k"),
                    "take": lambda: wm.take("k"),
                    "wait_for": lambda: wm.wait_for("k", bool),
                }
                events.append(await call[method]())
                await anyio.lowlevel.checkpoint()
                events.append("not cancelled")
            events.append(("cancelled_caught", scope.cancelled_caught))

        async with create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            # Hand over and cancel in the same step: the waiter has not run yet.
            if hand_over == "wake":
                assert wm.wake("k", 7) == Woke(1)
            else:
                wm["k"] = 7
            scope.cancel()
        assert events == [7, ("cancelled_caught", True)]
        assert ("k" in wm) == (hand_over == "store" and method != "take")
        assert_empty_of_waiters(wm)

    @pytest.mark.parametrize("method", ["wait", "take"])
    async def test_cancelled_then_handed_over_in_the_same_step(
        self, method: str
    ) -> None:
        # Which one wins depends on the backend (trio aborts at once, asyncio only
        # when the task runs); either way the outcome and the task must agree.
        wm: WaitMap[str, int] = WaitMap()
        events: list[object] = []
        scope = CancelScope()

        async def waiter() -> None:
            with scope:
                events.append(
                    await (wm.take("k") if method == "take" else wm.wait("k"))
                )
                await anyio.lowlevel.checkpoint()
                events.append("not cancelled")

        async with create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_all_tasks_blocked()
            scope.cancel()
            outcome = wm.wake("k", 7)
        assert scope.cancelled_caught
        if outcome == Woke(1):
            assert events == [7]
        else:
            assert outcome == NoMatch(7)
            assert events == []
        assert_empty_of_waiters(wm)

    async def test_taken_value_handed_on_when_first_taker_was_cancelled(
        self,
    ) -> None:
        wm: WaitMap[str, int] = WaitMap()
        rec = Recorder()
        scope = CancelScope()

        async def first() -> None:
            with scope:
                await rec.run("first", lambda: wm.take("k"))()

        async with create_task_group() as tg:
            tg.start_soon(first)
            await wait_all_tasks_blocked()
            tg.start_soon(rec.run("second", lambda: wm.take("k")))
            await wait_all_tasks_blocked()
            scope.cancel()
            await wait_all_tasks_blocked()
            wm["k"] = 1
        assert sorted(rec.events, key=str) == [("first", "cancelled"), ("second", 1)]


# -- guarantee 3: no lost wake-up (single loop; threads in test_threads.py) -------


class TestNoLostWakeup:
    async def test_store_between_start_and_park(self) -> None:
        wm: WaitMap[int, int] = WaitMap()
        results: list[int] = []

        async def waiter(key: int) -> None:
            results.append(await wm.take(key))

        async with create_task_group() as tg:
            for key in range(100):
                tg.start_soon(waiter, key)
                # Stored before, at or after the moment the task parks.
                if key % 3 == 0:
                    wm[key] = key
                elif key % 3 == 1:
                    await anyio.lowlevel.checkpoint()
                    wm[key] = key
                else:
                    await wait_all_tasks_blocked()
                    wm[key] = key
        assert sorted(results) == list(range(100))
        assert len(wm) == 0


# -- bad input --------------------------------------------------------------------


class BadKey:
    """A key whose __hash__ or __eq__ raises when told to."""

    def __init__(self, fail_hash: bool = False, fail_eq: bool = False) -> None:
        self.fail_hash = fail_hash
        self.fail_eq = fail_eq

    def __hash__(self) -> int:
        if self.fail_hash:
            raise ValueError("hash failed")
        return 42

    def __eq__(self, other: object) -> bool:
        # Either side may be the one a dict asks: fail whichever it is.
        if self.fail_eq or getattr(other, "fail_eq", False):
            raise ValueError("eq failed")
        return self is other


class TestBadInput:
    async def test_unhashable_key(self) -> None:
        wm: WaitMap[Any, int] = WaitMap()
        key: list[int] = []
        for call in (
            lambda: wm.wait(key),
            lambda: wm.take(key),
            lambda: wm.wait_for(key, bool),
        ):
            with pytest.raises(TypeError, match="unhashable type: 'list'"):
                await call()
        with pytest.raises(TypeError, match="list"):
            wm[key] = 1
        with pytest.raises(TypeError, match="list"):
            wm.wake(key, 1)
        with pytest.raises(TypeError, match="list"):
            wm.cancel(key)
        assert wm.statistics() == WaitMapStatistics(0, 0, 0, False)

    async def test_predicate_not_callable(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        with pytest.raises(TypeError, match="callable predicate, got 'int'"):
            await wm.wait_for("k", 5)  # type: ignore[arg-type]
        assert_empty_of_waiters(wm)

    async def test_raising_hash_propagates_and_changes_nothing(self) -> None:
        wm: WaitMap[Any, int] = WaitMap()
        good = BadKey()
        wm[good] = 1
        bad = BadKey(fail_hash=True)
        with pytest.raises(ValueError, match="hash failed"):
            await wm.wait(bad)
        with pytest.raises(ValueError, match="hash failed"):
            wm[bad] = 2
        with pytest.raises(ValueError, match="hash failed"):
            wm.wake(bad, 2)
        assert wm.statistics() == WaitMapStatistics(0, 0, 1, False)
        assert await wm.take(good) == 1

    async def test_raising_eq_propagates_and_changes_nothing(self) -> None:
        wm: WaitMap[Any, int] = WaitMap()
        rec = Recorder()
        first = BadKey()
        async with create_task_group() as tg:
            tg.start_soon(rec.run("first", lambda: wm.wait(first)))
            await wait_all_tasks_blocked()
            clashing = BadKey(fail_eq=True)  # same hash as `first`
            with pytest.raises(ValueError, match="eq failed"):
                await wm.wait(clashing)
            with pytest.raises(ValueError, match="eq failed"):
                wm[clashing] = 1
            assert stats(wm) == (1, 1, 0)
            assert wm.wake(first, 5) == Woke(1)
        assert rec.events == [("first", 5)]

    def test_awaited_outside_an_event_loop(self) -> None:
        wm: WaitMap[str, int] = WaitMap()
        for coro in (wm.wait("k"), wm.take("k"), wm.wait_for("k", bool)):
            with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
                coro.send(None)
            coro.close()
        assert wm.statistics().tasks_waiting == 0
