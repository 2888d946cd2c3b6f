"""Which event loop and task a call belongs to, found the same way every time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest
import trio
import trio.testing
from anyio._core._eventloop import get_async_backend

from anyio_waitmap import WaitMap, Woke, _backends
from anyio_waitmap._backends import (
    _asyncio,
    _trio,
    current_binding,
)
from anyio_waitmap.lowlevel import Waiter, Waker

# anyio.NoEventLoopError exists from anyio 4.11 on; with an older anyio the
# package raises a RuntimeError, which NoEventLoopError subclasses.
NoEventLoopError: type[RuntimeError] = getattr(anyio, "NoEventLoopError", RuntimeError)


def _in_a_loop_callback(call: Callable[[], object]) -> BaseException | None:
    """Run ``call()`` in a callback of a loop whose tasks already used the
    package; return what it raised."""

    async def main() -> BaseException | None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 1
        assert await wm.wait("k") == 1  # a task of this loop used the package
        Waker()
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[BaseException | None] = loop.create_future()

        def callback() -> None:
            try:
                call()
            except BaseException as exc:
                outcome.set_result(exc)
            else:
                outcome.set_result(None)

        loop.call_soon(callback)
        return await outcome

    return asyncio.run(main())


def _drive_one_step() -> None:
    # A coroutine driven by hand from a callback is awaited outside any task.
    wm: WaitMap[str, int] = WaitMap()
    coro = wm.wait("k")
    try:
        coro.send(None)
    finally:
        coro.close()
        assert wm.statistics().tasks_waiting == 0


@pytest.mark.parametrize(
    ("name", "call"),
    [("Waker", Waker), ("Waiter", Waiter), ("WaitMap.wait", _drive_one_step)],
)
def test_no_task_in_a_loop_callback_whatever_ran_before(
    name: str, call: Callable[[], object]
) -> None:
    """Outside a task, these raise RuntimeError (as documented, and as they do
    in a loop that no task has used yet), also in a loop whose tasks used the
    package a moment before."""
    error = _in_a_loop_callback(call)
    assert isinstance(error, RuntimeError), f"{name}() did not raise: {error!r}"
    assert str(error).startswith(f"{name}() was called outside of a task")


def test_asyncio_checks_cancellation_with_anyio_backend_found_once() -> None:
    # The fallback, anyio.lowlevel's own function, is correct but looks the
    # backend up on every call: a change of anyio that forces it shows here.
    expected = get_async_backend("asyncio").checkpoint_if_cancelled
    assert _asyncio._checkpoint_if_cancelled == expected  # pyright: ignore[reportPrivateUsage]


def test_asyncio_binding_found_in_the_cache_after_the_first_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The lookup that makes or finds the binding is correct but slower: a change
    # that sends every lookup there shows here.
    def slow_lookup(loop: object) -> None:
        raise AssertionError("the binding was looked up the slow way")

    async def main() -> None:
        first = current_binding("test")
        with monkeypatch.context() as patch:
            patch.setattr(_backends, "_asyncio_binding", slow_lookup)
            assert current_binding("test") is first

    asyncio.run(main())


def test_asyncio_current_task_lookup_matches_asyncio() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert _asyncio.current_asyncio_task(loop) is asyncio.current_task()
        seen: list[object] = []
        loop.call_soon(lambda: seen.append(_asyncio.current_asyncio_task(loop)))
        await asyncio.sleep(0)
        assert seen == [None]

    asyncio.run(main())


def test_trio_binding_found_without_the_public_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fallback, in_trio_run() and RunVar.get(), is correct but slower: a
    # change of trio that forces it on every lookup shows here.
    def public_lookup() -> None:
        raise AssertionError("the binding was looked up the slow way")

    async def main() -> None:
        first = current_binding("test")  # the run's first lookup makes it
        assert first is _trio.binding_var.get()
        with monkeypatch.context() as patch:
            patch.setattr(_backends, "_current_trio_binding", public_lookup)
            assert current_binding("test") is first

    trio.run(main)


def test_trio_binding_fallback_finds_the_same_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        first = current_binding("test")
        with monkeypatch.context() as patch:
            patch.setattr(_backends, "_trio_run_context", None)
            assert current_binding("test") is first

    async def first_lookup_by_fallback() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(_backends, "_trio_run_context", None)
            made = current_binding("test")
        assert current_binding("test") is made

    trio.run(main)
    trio.run(first_lookup_by_fallback)
    assert _trio.current_trio_binding() is None  # outside a run
    with monkeypatch.context() as patch:
        patch.setattr(_backends, "_trio_run_context", None)
        with pytest.raises(RuntimeError, match="outside of a task"):
            current_binding("test")


def test_each_trio_run_has_its_own_binding() -> None:
    async def binding() -> object:
        return current_binding("test")

    first = trio.run(binding)
    second = trio.run(binding)
    assert first is not second


def test_no_trio_task_in_the_run_loop_itself() -> None:
    """In a trio run but outside its tasks (an instrument, which the run loop
    calls between tasks), there is no task to park: a Waker made there is
    refused with the error of any call outside a task, also once the run has
    a binding. (run_sync_soon callbacks run in a system task, which is one.)"""
    errors: list[BaseException] = []

    class BeforeIOWait(trio.abc.Instrument):
        def before_io_wait(self, timeout: float) -> None:
            trio.lowlevel.remove_instrument(self)
            try:
                Waker()
            except RuntimeError as exc:
                errors.append(exc)

    async def main() -> None:
        Waker()  # a task of this run used the package: the binding exists
        trio.lowlevel.add_instrument(BeforeIOWait())
        await trio.sleep(0.01)

    trio.run(main)
    assert len(errors) == 1
    assert isinstance(errors[0], NoEventLoopError)
    assert str(errors[0]).startswith("Waker() was called outside of a task")


def test_trio_run_inside_an_asyncio_task_is_refused_by_trio() -> None:
    """A trio run started synchronously by an asyncio task (which blocks that
    loop for the whole run) is taken for asyncio, as documented in
    current_binding(): trio refuses the asyncio park with its TypeError, and
    the wait leaves nothing behind."""
    wm: WaitMap[str, str] = WaitMap()

    async def trio_main() -> None:
        await wm.take("k")

    async def asyncio_main() -> None:
        with pytest.raises(TypeError, match="unrecognized yield message"):
            trio.run(trio_main)

    asyncio.run(asyncio_main())
    assert wm.statistics().tasks_waiting == 0


def test_asyncio_run_inside_a_trio_task() -> None:
    async def asyncio_main() -> str:
        assert current_binding("test").name == "asyncio"
        wm: WaitMap[str, str] = WaitMap()
        taker = asyncio.create_task(wm.take("k"))
        await asyncio.sleep(0)
        assert wm.wake("k", "from asyncio") == Woke(1)
        return await taker

    async def trio_main() -> str:
        assert current_binding("test").name == "trio"
        result = asyncio.run(asyncio_main())  # blocks this trio run meanwhile
        assert current_binding("test").name == "trio"
        return result

    assert trio.run(trio_main) == "from asyncio"


def test_asyncio_task_without_a_cancel_request_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A current task that is not an asyncio.Task (a loop of another library may
    register its own) has no pending Task.cancel() to read: the check falls
    back to anyio's, and does not fail."""

    class ForeignTask:
        pass

    async def main() -> None:
        binding = current_binding("test")
        monkeypatch.setattr(
            _asyncio, "current_asyncio_task", lambda loop: ForeignTask()
        )
        await binding.checkpoint_if_cancelled()

    asyncio.run(main())
