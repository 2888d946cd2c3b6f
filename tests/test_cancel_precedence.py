"""A cancellation that is already pending wins, on the ready paths and the error paths.

A checkpoint with a cancellation pending raises it before doing anything, as
``await asyncio.sleep(0)`` and ``await anyio.lowlevel.checkpoint()`` do. Every
async method here is a checkpoint, so a call made with a cancellation pending
raises it with no side effect: nothing is consumed (a stored value, a queued
item, a wake-up), nothing stays registered, and no error of ours
(``WaitMapClosed``, ``DuplicateWaiter``, ``ClosedResourceError``,
``BusyResourceError``, ``KeyCancelled``) comes first.

On asyncio the cancellation may be a native one that the task requested itself
(``Task.cancel()`` on the running task, by the task or by code it called
synchronously): asyncio raises it where the task yields next, and anyio's check
of cancel scopes does not see it. Those tests run under the native runners,
``asyncio.run`` and ``uvloop.run``; the others run on every backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio import create_task_group, wait_all_tasks_blocked

from anyio_waitmap import (
    DuplicateWaiter,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeSink,
    Woke,
)
from anyio_waitmap.lowlevel import DiatomicWaker, Waiter, Waker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import mpsc_channel
import oneshot

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test dependency group
    uvloop = None  # type: ignore[assignment]

RUNNERS: list[Any] = [pytest.param(asyncio.run, id="asyncio.run")]
if uvloop is not None:
    RUNNERS.append(pytest.param(uvloop.run, id="uvloop.run"))

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=RUNNERS)
def run_asyncio(request: pytest.FixtureRequest) -> Runner:
    return request.param  # type: ignore[no-any-return]


# -- the ready calls -------------------------------------------------------------


@dataclass
class ReadyCall:
    """An async call whose result is there at once, and what it must leave alone.

    ``prepare()`` builds the state and returns ``(call, untouched)``: ``call()``
    starts the call; ``untouched()`` checks, after the call raised the
    cancellation, that nothing was consumed and nothing is registered.
    """

    prepare: Callable[[], tuple[Callable[[], Awaitable[object]], Callable[[], None]]]


def _map_with_a_value(
    method: str,
) -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
    wm: WaitMap[str, int] = WaitMap()
    wm["k"] = 1
    calls: list[int] = []

    def predicate(value: int) -> bool:
        calls.append(value)
        return True

    call = {
        "wait": lambda: wm.wait("k"),
        "take": lambda: wm.take("k"),
        "wait_for": lambda: wm.wait_for("k", predicate),
    }[method]

    def untouched() -> None:
        assert dict(wm) == {"k": 1}, "the stored value was consumed"
        assert wm.statistics().tasks_waiting == 0, "a waiter stayed registered"
        assert calls == [], "the predicate ran"

    return call, untouched


def _sink_with_an_item(
    kind: type[WakeSink | DiatomicWaker],
) -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
    sink = kind()
    items = collections.deque([1])

    def pop() -> int | None:
        return items.popleft() if items else None

    def untouched() -> None:
        assert list(items) == [1], "the predicate consumed the item"
        assert sink._waker is None, "the consumer stayed registered"  # pyright: ignore[reportPrivateUsage]
        assert sink._consumer == [None], "the sink stayed busy"  # pyright: ignore[reportPrivateUsage]

    return lambda: sink.wait_until(pop), untouched


def _notified_waker() -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
    waker = Waker()
    waker.wake()  # no task parked: the next park() returns at once

    def untouched() -> None:
        assert "notified" in repr(waker), "the wake-up was consumed"

    return waker.park, untouched


def _channel_with_an_item() -> tuple[
    Callable[[], Awaitable[object]], Callable[[], None]
]:
    channel: mpsc_channel.Channel[int] = mpsc_channel.Channel()
    channel.send(1)

    def untouched() -> None:
        assert list(channel._items) == [1], "the item was consumed"  # pyright: ignore[reportPrivateUsage]

    return channel.receive, untouched


def _oneshot_sent() -> tuple[Callable[[], Awaitable[object]], Callable[[], None]]:
    channel: oneshot.Oneshot[int] = oneshot.Oneshot()
    channel.send(1)

    def untouched() -> None:
        assert channel._box is not None, "the value was consumed"  # pyright: ignore[reportPrivateUsage]
        assert not channel._sink.statistics().consumer_waiting  # pyright: ignore[reportPrivateUsage]

    return channel.receive, untouched


READY_CALLS: dict[str, ReadyCall] = {
    "WaitMap.wait": ReadyCall(lambda: _map_with_a_value("wait")),
    "WaitMap.take": ReadyCall(lambda: _map_with_a_value("take")),
    "WaitMap.wait_for": ReadyCall(lambda: _map_with_a_value("wait_for")),
    "WakeSink.wait_until": ReadyCall(lambda: _sink_with_an_item(WakeSink)),
    "DiatomicWaker.wait_until": ReadyCall(lambda: _sink_with_an_item(DiatomicWaker)),
    "Waker.park": ReadyCall(_notified_waker),
    "examples: Channel.receive": ReadyCall(_channel_with_an_item),
    "examples: Oneshot.receive": ReadyCall(_oneshot_sent),
}


# -- how a task cancels itself just before the call -------------------------------


def _cancel_me() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel("requested before the call")


@contextlib.contextmanager
def _cancelling_on_enter() -> Iterator[None]:
    _cancel_me()
    yield


async def _directly(call: Callable[[], Awaitable[object]]) -> object:
    _cancel_me()
    return await call()


async def _from_a_callback(call: Callable[[], Awaitable[object]]) -> object:
    callbacks = [_cancel_me]
    for callback in callbacks:  # as an event dispatcher would
        callback()
    return await call()


async def _in_a_context_manager(call: Callable[[], Awaitable[object]]) -> object:
    with _cancelling_on_enter():
        return await call()


CANCELLERS: dict[
    str, Callable[[Callable[[], Awaitable[object]]], Awaitable[object]]
] = {
    "by the task": _directly,
    "by a callback": _from_a_callback,
    "by __enter__": _in_a_context_manager,
}


@pytest.mark.parametrize("canceller", CANCELLERS)
@pytest.mark.parametrize("name", READY_CALLS)
def test_pending_task_cancel_wins_on_the_ready_path(
    run_asyncio: Runner, name: str, canceller: str
) -> None:
    """The call raises the CancelledError the task requested, with its message;
    the value, the item or the wake-up is still there, nothing is registered,
    ``Task.cancelling()`` counts the request, and the task ends cancelled."""
    seen: list[object] = []
    checks: list[Callable[[], None]] = []

    async def task() -> None:
        call, untouched = READY_CALLS[name].prepare()
        checks.append(untouched)
        try:
            seen.append(await CANCELLERS[canceller](call))
        except asyncio.CancelledError as exc:
            seen.append(("CancelledError", exc.args))
            if sys.version_info >= (3, 11):
                current = asyncio.current_task()
                assert current is not None
                seen.append(("cancelling", current.cancelling()))
            untouched()
            raise

    async def main() -> None:
        running = asyncio.create_task(task())
        with pytest.raises(asyncio.CancelledError):
            await running
        assert running.cancelled()

    run_asyncio(main())
    expected: list[object] = [("CancelledError", ("requested before the call",))]
    if sys.version_info >= (3, 11):
        expected.append(("cancelling", 1))
    assert seen == expected
    checks[0]()


@pytest.mark.parametrize("name", READY_CALLS)
def test_without_a_cancellation_the_ready_call_completes(
    run_asyncio: Runner, name: str
) -> None:
    """The same calls, not cancelled: each completes (so the test above tells a
    call that checks from one that cannot complete at all)."""

    async def main() -> None:
        call, _ = READY_CALLS[name].prepare()
        with anyio.fail_after(5):
            await call()

    run_asyncio(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_a_timeout_does_not_take_the_pending_cancellation_for_its_own(
    run_asyncio: Runner,
) -> None:
    """Inside ``asyncio.timeout()``, a ready call that raises the task's own
    pending cancellation: the timeout lets it through as CancelledError (it
    did not expire), and ``Task.cancelling()`` stays as asyncio counts it."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1

        async def take_in_a_timeout() -> None:
            async with asyncio.timeout(60):
                _cancel_me()
                await wm.take("k")

        with pytest.raises(asyncio.CancelledError):
            await take_in_a_timeout()
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 1
        current.uncancel()
        assert wm["k"] == 1

    run_asyncio(main())


def test_a_parked_task_whose_cancellation_came_first_is_handed_nothing(
    run_asyncio: Runner,
) -> None:
    """A task parks with its own cancellation pending: asyncio cancels its future
    as it parks. A hand-over from the same thread before the task runs again
    finds it leaving: ``wake()`` returns NoMatch, ``cancel()`` and ``close()``
    count it out, and the task raises CancelledError, not KeyCancelled or
    WaitMapClosed."""

    async def main() -> None:
        for end in ("wake", "cancel", "close"):
            wm: WaitMap[str, int] = WaitMap()

            async def waiter(wm: WaitMap[str, int] = wm) -> None:
                _cancel_me()
                await wm.take("k")

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0)  # it parks, and its future is cancelled
            assert wm.statistics().tasks_waiting == 1
            if end == "wake":
                assert wm.wake("k", 1) == NoMatch(1)
            elif end == "cancel":
                assert wm.cancel("k") == 0
            else:
                wm.close()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert wm.statistics().tasks_waiting == 0
            assert "k" not in wm

    run_asyncio(main())


def test_a_leaving_waiter_whose_predicate_raises_leaves_with_its_cancellation(
    run_asyncio: Runner,
) -> None:
    """The predicate of a wait_for() whose task is on its way out raises during
    a hand-over: the task still leaves with its cancellation, which came first,
    not with the predicate's error."""

    class Rejected(Exception):
        pass

    def refuse(value: int) -> bool:
        raise Rejected(value)

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()

        task = asyncio.create_task(wm.wait_for("k", refuse))
        await asyncio.sleep(0)  # it parks
        task.cancel()  # its future is cancelled; it has not run since
        assert wm.statistics().tasks_waiting == 1
        assert wm.wake("k", 1) == NoMatch(1)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wm.statistics().tasks_waiting == 0

    run_asyncio(main())


def test_a_store_passes_over_a_leaving_taker_to_the_next(run_asyncio: Runner) -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        received: list[int] = []

        async def leaving() -> None:
            _cancel_me()
            await wm.take("k")

        async def staying() -> None:
            received.append(await wm.take("k"))

        first = asyncio.create_task(leaving())
        second = asyncio.create_task(staying())
        await asyncio.sleep(0)
        wm["k"] = 7
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert received == [7]
        assert "k" not in wm
        assert wm.statistics().tasks_waiting == 0

    run_asyncio(main())


# -- errors never hide a cancellation, on every backend ----------------------------


def _closed_map() -> WaitMap[str, int]:
    wm: WaitMap[str, int] = WaitMap()
    wm["k"] = 1  # a stored value does not make a closed map's waits succeed
    wm.close()
    return wm


ERROR_CALLS: dict[str, tuple[type[BaseException], Callable[[], Any]]] = {
    "wait on a closed map": (WaitMapClosed, lambda: _closed_map().wait("k")),
    "take on a closed map": (WaitMapClosed, lambda: _closed_map().take("k")),
    "wait_for on a closed map": (
        WaitMapClosed,
        lambda: _closed_map().wait_for("k", bool),
    ),
}


async def _raises_cancellation(start: Callable[[], Awaitable[object]]) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await start()
    assert scope.cancelled_caught


@pytest.mark.anyio
@pytest.mark.parametrize("name", ERROR_CALLS)
async def test_cancelled_scope_wins_over_the_error(name: str) -> None:
    error, start = ERROR_CALLS[name]
    with pytest.raises(error):  # the error is there to be hidden
        await start()
    await _raises_cancellation(start)


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
async def test_cancelled_scope_wins_over_duplicate_waiter(method: str) -> None:
    wm: WaitMap[str, int] = WaitMap(exclusive=True)
    calls = {
        "wait": lambda: wm.wait("k"),
        "take": lambda: wm.take("k"),
        "wait_for": lambda: wm.wait_for("k", bool),
    }
    async with create_task_group() as tg:
        tg.start_soon(wm.wait, "k")
        await wait_all_tasks_blocked()
        with pytest.raises(DuplicateWaiter):
            await calls[method]()
        await _raises_cancellation(calls[method])
        assert wm.statistics().tasks_waiting == 1
        assert wm.wake("k", 1) == Woke(1)


@pytest.mark.anyio
async def test_cancelled_scope_wins_over_a_closed_sink() -> None:
    sink = WakeSink()
    sink.close()
    polled: list[None] = []

    def predicate() -> int | None:
        polled.append(None)
        return 1

    with pytest.raises(anyio.ClosedResourceError):
        await sink.wait_until(predicate)
    await _raises_cancellation(lambda: sink.wait_until(predicate))
    assert polled == []


@pytest.mark.anyio
async def test_cancelled_scope_wins_over_a_busy_sink() -> None:
    sink = WakeSink()
    async with create_task_group() as tg:
        tg.start_soon(sink.wait_until, lambda: None)
        await wait_all_tasks_blocked()
        with pytest.raises(anyio.BusyResourceError):
            await sink.wait_until(lambda: 1)
        await _raises_cancellation(lambda: sink.wait_until(lambda: 1))
        assert sink.statistics().consumer_waiting
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_cancelled_scope_parking_is_not_counted_by_cancel() -> None:
    """A task in a cancelled scope that has to park leaves at its park: on trio
    at once; on asyncio when anyio delivers the cancellation, in the next turn
    of the loop (see the guarantees in the docs). From then on, ``cancel()``
    does not count it, and it raises the cancellation, not KeyCancelled."""
    wm: WaitMap[str, int] = WaitMap()
    outcomes: list[str] = []

    async def waiter() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await wm.wait("k")
            except anyio.get_cancelled_exc_class():
                outcomes.append("cancelled")
                raise

    async with create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        await anyio.lowlevel.checkpoint()  # one more turn of the loop
        assert wm.cancel("k") == 0
    assert outcomes == ["cancelled"]
    assert wm.statistics().tasks_waiting == 0


# -- the same errors under a pending native cancellation --------------------------


NATIVE_ERROR_CALLS: dict[str, Callable[[], Awaitable[object]]] = {
    "take on a closed map": lambda: _closed_map().take("k"),
    "wait on a closed map": lambda: _closed_map().wait("k"),
    "wait_for on a closed map": lambda: _closed_map().wait_for("k", bool),
}


def _closed_sink() -> WakeSink:
    sink = WakeSink()
    sink.close()
    return sink


NATIVE_ERROR_CALLS["wait_until on a closed sink"] = lambda: _closed_sink().wait_until(
    lambda: 1
)


@pytest.mark.parametrize("name", NATIVE_ERROR_CALLS)
def test_pending_task_cancel_wins_over_the_error(
    run_asyncio: Runner, name: str
) -> None:
    async def main() -> None:
        async def task() -> None:
            _cancel_me()
            await NATIVE_ERROR_CALLS[name]()

        running = asyncio.create_task(task())
        with pytest.raises(asyncio.CancelledError):
            await running
        assert running.cancelled()

    run_asyncio(main())


def test_pending_task_cancel_wins_over_duplicate_waiter_and_busy(
    run_asyncio: Runner,
) -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap(exclusive=True)
        sink = WakeSink()
        parked = [
            asyncio.create_task(wm.wait("k")),
            asyncio.create_task(sink.wait_until(lambda: None)),
        ]
        await asyncio.sleep(0)
        for call in (lambda: wm.take("k"), lambda: sink.wait_until(lambda: 1)):

            async def task(call: Callable[[], Awaitable[object]] = call) -> None:
                _cancel_me()
                await call()

            running = asyncio.create_task(task())
            with pytest.raises(asyncio.CancelledError):
                await running
        assert wm.statistics().tasks_waiting == 1
        assert sink.statistics().consumer_waiting
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)

    run_asyncio(main())


# -- a waiter handed a value before it parked ---------------------------------------


@pytest.mark.anyio
async def test_waiter_woken_before_it_parks_in_a_cancelled_scope() -> None:
    """The hand-over came before the scope's cancellation: park() returns the
    value, and the cancellation is raised at the next checkpoint."""
    events: list[object] = []
    with anyio.CancelScope() as scope:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        scope.cancel()
        events.append(await waiter.park())
        await anyio.lowlevel.checkpoint()
        events.append("not cancelled")
    assert scope.cancelled_caught
    assert events == [5]


@pytest.mark.anyio
async def test_waiter_woken_before_it_parks_still_yields() -> None:
    """A lowlevel.Waiter that its own task woke before parking: ``park()``
    returns the value, and is still a checkpoint that lets others run."""
    from checkpoints import assert_yields

    async def park_woken() -> int:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        return await waiter.park()

    assert await assert_yields(park_woken) == 5


def test_waiter_woken_before_it_parks_keeps_the_value(run_asyncio: Runner) -> None:
    """The hand-over came before the cancellation: the value is returned, and
    the cancellation is raised at the next checkpoint."""
    events: list[object] = []

    async def task() -> None:
        waiter: Waiter[int] = Waiter()
        assert waiter.wake(5)
        _cancel_me()
        events.append(await waiter.park())
        await asyncio.sleep(0)
        events.append("not cancelled")

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(task())

    run_asyncio(main())
    assert events == [5]


def test_waker_cancelled_after_a_wake_up_keeps_it(run_asyncio: Runner) -> None:
    """A wake-up resumed a park() that ``Task.cancel()`` then ended with
    CancelledError before it could return: the wake-up is kept, and the next
    park() returns at once."""

    async def main() -> None:
        waker = Waker()
        parker = asyncio.create_task(waker.park())
        await asyncio.sleep(0)
        waker.wake()
        parker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await parker
        assert "notified" in repr(waker)
        with anyio.fail_after(5):
            await waker.park()
        assert "idle" in repr(waker)

    run_asyncio(main())
