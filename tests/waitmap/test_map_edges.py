"""WaitMap: paths that only a rare interleaving reaches, forced one by one.

Each test makes one narrow window happen on purpose: another party acts while
the map's lock is held or between two steps of the map (the lock wrapper
support.edges.HookedLock runs such an action at an exact point of the map's own
locking), a predicate acts in the middle of a hand-over, or an exception is
thrown into a wait driven by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest
from support.edges import HookedLock

from anyio_waitmap import KeyCancelled, NoMatch, WaitMap, WaitMapClosed, Woke

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings]


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
