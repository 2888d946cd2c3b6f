"""The bindings at their edges: wake-ups from where no task runs, and trio found late.

A trio instrument or a ``run_sync_soon`` callback wakes a task from the run's
own thread while no task is running; an asyncio loop callback is not a task;
the trio binding is loaded at the first use in a trio run, and not before.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
import trio
import trio.lowlevel
import trio.testing

from anyio_waitmap import WaitMap, Woke, _backends
from anyio_waitmap._backends import _trio
from anyio_waitmap.lowlevel import Waker

pytestmark = pytest.mark.anyio


def test_trio_wake_from_the_run_loop_between_tasks() -> None:
    """An instrument runs in the run loop itself, with no task running (as a
    signal handler or a garbage collector callback may)."""
    results: list[int] = []
    outcomes: list[object] = []

    class WakeBeforeIOWait(trio.abc.Instrument):
        def __init__(self, wm: WaitMap[str, int]) -> None:
            self.wm: WaitMap[str, int] | None = wm

        def before_io_wait(self, timeout: float) -> None:
            if self.wm is not None:
                with pytest.raises(RuntimeError):
                    trio.lowlevel.current_task()  # indeed no task is running
                outcomes.append(self.wm.wake("k", 1))
                self.wm = None

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(WakeBeforeIOWait(wm))

    trio.run(main)
    assert outcomes == [Woke(1)]
    assert results == [1]


def test_trio_wake_from_a_run_sync_soon_callback() -> None:
    """run_sync_soon callbacks run in the run's thread, in a system task."""
    results: list[int] = []

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        token = trio.lowlevel.current_trio_token()

        async def waiter() -> None:
            results.append(await wm.wait("k"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            outcomes: list[object] = []
            token.run_sync_soon(lambda: outcomes.append(wm.wake("k", 1)))
            await trio.testing.wait_all_tasks_blocked()
            assert outcomes == [Woke(1)]

    trio.run(main)
    assert results == [1]


def test_waker_needs_a_task_not_a_loop_callback() -> None:
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            Waker()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    # A loop that no task of ours has used yet, so nothing is cached for it.
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(callback)
        loop.run_forever()
    finally:
        loop.close()
    assert len(errors) == 1
    assert "Waker() was called outside of a task" in str(errors[0])


def _forget_the_trio_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the package back in the state it has before trio is first found."""
    for name in (
        "_current_trio_binding",
        "_trio_protect",
        "_trio_run_context",
        "_trio_binding_var",
    ):
        monkeypatch.setattr(_backends, name, None)


def test_without_trio_imported_nothing_of_trio_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "trio")
    _forget_the_trio_binding(monkeypatch)
    with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
        Waker()
    assert _backends._current_trio_binding is None  # pyright: ignore[reportPrivateUsage]


def test_trio_imported_after_the_package_is_found_at_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forget_the_trio_binding(monkeypatch)

    async def main() -> None:
        Waker()  # the first use in a trio run loads the trio binding

    assert _backends._trio_protect is None  # pyright: ignore[reportPrivateUsage]
    trio.run(main)
    assert _backends._trio_protect is not None  # pyright: ignore[reportPrivateUsage]
    # ... and with it what current_binding() reads the run's binding from.
    assert _backends._trio_run_context is _trio.run_context  # pyright: ignore[reportPrivateUsage]
    assert _backends._trio_binding_var is _trio.binding_var  # pyright: ignore[reportPrivateUsage]
