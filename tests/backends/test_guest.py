"""A trio run in guest mode on an asyncio or uvloop host.

The guest run's tasks and the host loop's tasks run in one thread, and the host
loop counts as running while a guest task runs: each kind must still be found as
what it is, and each must be able to wake the other.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

import pytest
import trio
from outcome import Outcome
from support.loops import LOOP_FACTORIES

from anyio_waitmap import NoMatch, WaitMap, WakeSink, Woke

T = TypeVar("T")

#: A bound on each test's loop, well above the milliseconds a run takes.
TIMEOUT: Final = 10.0

pytestmark = [pytest.mark.parametrize("new_loop", LOOP_FACTORIES), pytest.mark.native]

NewLoop = Callable[[], asyncio.AbstractEventLoop]


def run_host(main: Callable[[], Coroutine[Any, Any, T]], new_loop: NewLoop) -> T:
    """Run ``main()`` in a new loop of the host's kind, within TIMEOUT."""
    loop = new_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def run_guest(guest: Callable[[], Awaitable[T]]) -> T:
    """Run ``guest()`` as a trio guest run on the running loop; return its result."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Outcome[T]] = loop.create_future()
    trio.lowlevel.start_guest_run(
        guest,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=done.set_result,
        host_uses_signal_set_wakeup_fd=True,
    )
    return (await done).unwrap()


# The conditions are the package's own state (a task parked, say), which no
# event signals: polling it, one turn of the loop at a time, is the point.


async def until(condition: Callable[[], bool]) -> None:
    """Let the host's other callbacks run (the guest's ticks among them) until
    ``condition()`` holds."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


async def trio_until(condition: Callable[[], bool]) -> None:
    """Let the guest's other tasks and the host's callbacks run until
    ``condition()`` holds."""
    while not condition():
        await trio.lowlevel.checkpoint()


def test_guest_and_host_tasks_wake_each_other_through_a_map(
    new_loop: NewLoop,
) -> None:
    async def main() -> tuple[int, int]:
        wm: WaitMap[str, int] = WaitMap()

        async def guest() -> int:
            with trio.fail_after(TIMEOUT):
                got = await wm.wait("to guest")
                await trio_until(lambda: wm.statistics().tasks_waiting == 1)
                assert wm.wake("to host", got + 1) == Woke(1)
                return got

        async def host() -> int:
            await until(lambda: wm.statistics().tasks_waiting == 1)
            assert wm.wake("to guest", 1) == Woke(1)
            return await wm.take("to host")

        from_guest, from_host = await asyncio.gather(run_guest(guest), host())
        return from_guest, from_host

    assert run_host(main, new_loop) == (1, 2)


def test_guest_and_host_tasks_wake_each_other_through_sinks(
    new_loop: NewLoop,
) -> None:
    async def main() -> tuple[list[int], list[int]]:
        to_guest: deque[int] = deque()
        to_host: deque[int] = deque()
        guest_sink = WakeSink()
        host_sink = WakeSink()

        async def guest() -> list[int]:
            received: list[int] = []
            with trio.fail_after(TIMEOUT):
                for _ in range(3):
                    item = await guest_sink.wait_until(
                        lambda: to_guest.popleft() if to_guest else None
                    )
                    received.append(item)
                    # The host's consumer is parked before each reply.
                    await trio_until(lambda: host_sink.statistics().consumer_waiting)
                    to_host.append(item * 10)
                    host_sink.notify()
            return received

        async def host() -> list[int]:
            received: list[int] = []
            for item in range(3):
                # The guest's consumer is parked before each item.
                await until(lambda: guest_sink.statistics().consumer_waiting)
                to_guest.append(item)
                guest_sink.notify()
                received.append(
                    await host_sink.wait_until(
                        lambda: to_host.popleft() if to_host else None
                    )
                )
            return received

        from_guest, from_host = await asyncio.gather(run_guest(guest), host())
        return from_guest, from_host

    assert run_host(main, new_loop) == ([0, 1, 2], [0, 10, 20])


def test_cancelled_guest_task_leaves_nothing_and_the_host_task_is_served(
    new_loop: NewLoop,
) -> None:
    async def main() -> int:
        wm: WaitMap[str, int] = WaitMap()

        async def guest() -> None:
            with trio.fail_after(TIMEOUT):
                async with trio.open_nursery() as nursery:
                    scope = trio.CancelScope()

                    async def waiter() -> None:
                        with scope:
                            await wm.wait("k")
                            raise AssertionError("the wait was not cancelled")

                    nursery.start_soon(waiter)
                    # The host's task and the guest's waiter both wait.
                    await trio_until(lambda: wm.statistics().tasks_waiting == 2)
                    scope.cancel()
                assert scope.cancelled_caught
                assert wm.statistics().tasks_waiting == 1  # only the host's task
                assert wm.wake("k", 7) == Woke(1)

        async def host() -> int:
            return await wm.wait("k")

        waited = asyncio.ensure_future(host())
        await run_guest(guest)
        result = await waited
        assert wm.statistics().tasks_waiting == 0
        assert isinstance(wm.wake("k", 8), NoMatch)
        return result

    assert run_host(main, new_loop) == 7


def test_a_host_callback_is_not_a_task_while_a_guest_runs(
    new_loop: NewLoop,
) -> None:
    async def main() -> BaseException | None:
        wm: WaitMap[str, int] = WaitMap()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException | None] = loop.create_future()

        def callback() -> None:
            # A coroutine driven by hand from a host callback, in the middle of
            # the guest run: awaited outside any task.
            coro = wm.wait("k")
            try:
                coro.send(None)
            except BaseException as exc:
                outcome.set_result(exc)
            else:  # the wait parked
                outcome.set_result(None)
            finally:
                coro.close()

        async def guest() -> BaseException | None:
            with trio.fail_after(TIMEOUT):
                loop.call_soon(callback)  # runs while the guest run is in progress
                await trio_until(outcome.done)
                return outcome.result()

        error = await run_guest(guest)
        assert wm.statistics().tasks_waiting == 0
        return error

    assert isinstance(run_host(main, new_loop), RuntimeError)
