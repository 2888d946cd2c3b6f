"""Event loops in several threads: trio runs waking each other, bindings that
stay the same while other loops come and go, and loops that stop running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import trio
import trio.testing
from support.workers import JOIN_TIMEOUT, Worker, run_in_thread_now

from anyio_waitmap import NoMatch, WaitMap, Woke
from anyio_waitmap.lowlevel import DiatomicWaker, Waker

pytestmark = [pytest.mark.native, pytest.mark.threads]


def test_trio_runs_in_two_threads_wake_each_other() -> None:
    """A task of one trio run hands values to tasks of another trio run, running
    in another thread, through a WaitMap and a Waker."""
    wm: WaitMap[str, int] = WaitMap()
    parked = threading.Event()
    wakers: list[Waker] = []

    async def other_run() -> list[int]:
        results: list[int] = []

        async def take() -> None:
            results.append(await wm.take("k"))

        async def park() -> None:
            waker = Waker()
            wakers.append(waker)
            await waker.park()
            results.append(-1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take)
            nursery.start_soon(park)
            await trio.testing.wait_all_tasks_blocked()
            parked.set()
        return results

    worker = Worker(lambda: trio.run(other_run), "other trio run")
    worker.start()
    assert parked.wait(JOIN_TIMEOUT)

    async def this_run() -> None:
        assert wm.wake("k", 1) == Woke(1)
        wakers[0].wake()

    trio.run(this_run)
    assert sorted(worker.finish()) == [-1, 1]
    assert wm.statistics().tasks_waiting == 0


async def _make_waker() -> Waker:
    return Waker()


def test_waker_stays_usable_while_other_loops_come_and_go() -> None:
    """``usable_here()`` keeps answering for the loop the waker was made in,
    after loops in other threads used the package; and a DiatomicWaker keeps
    reusing its waker then."""

    async def main() -> None:
        waker = Waker()
        slot = DiatomicWaker()
        cached = slot.waker()
        for _ in range(2):
            other = run_in_thread_now(lambda: asyncio.run(_make_waker()))
            assert not other.usable_here()
            assert waker.usable_here()
            assert slot.waker() is cached

    asyncio.run(main())


class _RefusingLoop(asyncio.SelectorEventLoop):
    """A loop that refuses calls from other threads while it is being closed,
    before ``is_closed()`` says so: the window in which a hand-over races
    with the end of a loop."""

    closing = False

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        if self.closing:
            raise RuntimeError("Event loop is closed")
        return super().call_soon_threadsafe(*args, **kwargs)


StartInStoppedLoop = Callable[
    [Callable[[], Coroutine[Any, Any, object]]], _RefusingLoop
]


@pytest.fixture
def stopped_loop() -> Iterator[StartInStoppedLoop]:
    """Run a coroutine in a loop of another thread until it is suspended, then
    stop that loop (with the task still pending) and hand it over."""
    left: list[tuple[_RefusingLoop, asyncio.Task[Any]]] = []

    def start(call: Callable[[], Coroutine[Any, Any, object]]) -> _RefusingLoop:
        loop = _RefusingLoop()

        def run() -> None:
            task = loop.create_task(call())
            left.append((loop, task))
            # One step is enough to park: every call here parks at once.
            loop.run_until_complete(asyncio.sleep(0))

        run_in_thread_now(run)
        return loop

    yield start
    for loop, task in left:
        # The loop will not run again: close the coroutine here instead, and
        # tell the task not to complain that it was destroyed pending.
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        task.get_coro().close()  # type: ignore[union-attr]
        loop.close()


def test_value_for_a_loop_that_refuses_it_is_stored(
    stopped_loop: StartInStoppedLoop,
) -> None:
    """The taker's loop is closing and refuses the wake-up: the value is stored,
    not handed to a task that will never return it."""
    wm: WaitMap[str, int] = WaitMap()
    loop = stopped_loop(lambda: wm.take("k"))
    assert wm.statistics().tasks_waiting == 1
    loop.closing = True
    wm["k"] = 1
    assert wm["k"] == 1
    assert wm.statistics().tasks_waiting == 0


def test_wake_for_a_loop_that_refuses_it_reaches_nobody(
    stopped_loop: StartInStoppedLoop,
) -> None:
    wm: WaitMap[str, int] = WaitMap()
    loop = stopped_loop(lambda: wm.wait("k"))
    loop.closing = True
    assert wm.wake("k", 1) == NoMatch(1)
    assert wm.statistics().tasks_waiting == 0


def test_waker_of_a_closed_loop_goes_back_to_idle(
    stopped_loop: StartInStoppedLoop,
) -> None:
    """Waking a task whose loop has ended cannot resume it: the waker is left
    idle (and a later wake-up is kept for a next park, as on any idle waker)."""
    wakers: list[Waker] = []

    async def park() -> None:
        waker = Waker()
        wakers.append(waker)
        await waker.park()

    loop = stopped_loop(park)
    [waker] = wakers
    assert "parked" in repr(waker)
    loop.close()
    waker.wake()
    assert repr(waker) == "<anyio_waitmap.lowlevel.Waker idle on asyncio>"
    waker.wake()
    assert repr(waker) == "<anyio_waitmap.lowlevel.Waker notified on asyncio>"
