"""A native cancellation already pending wins, on the ready paths and the error paths.

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
of cancel scopes does not see it. These tests run under the native runners,
``asyncio.run`` and ``uvloop.run``. Those of the ready paths and of the errors
are parametrized over every async method of the package, not only the map's:
``WakeSink.wait_until``, the lowlevel wakers and the channels of examples/ too.

A cancelled scope, on every backend: test_map_cancel_precedence.py here, and
the same modules in tests/sink/ and tests/lowlevel/.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from support.cancellation import _cancel_me, _closed_map
from support.loops import Runner

from anyio_waitmap import NoMatch, WaitMap, WakeSink
from anyio_waitmap.lowlevel import DiatomicWaker, Waker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import mpsc_channel
import oneshot

pytestmark = pytest.mark.native

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
