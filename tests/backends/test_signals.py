"""Signals and KeyboardInterrupt, at every bytecode of the library's own code.

A Python signal handler runs in the main thread between two bytecodes of
whatever that thread is doing, so it can interrupt the library in the middle of
its bookkeeping. These tests put an action before every bytecode of the
package's frames (a trace function runs at exactly those points, like a signal
handler) and check:

* on trio, every such point is protected from KeyboardInterrupt, and a real
  SIGINT raised there is delivered at the next checkpoint, leaving the map
  consistent and no value lost;
* on asyncio, a signal handler may call ``WakeSource.notify()`` at any of
  those points: it never deadlocks on a lock that the interrupted code holds,
  and the consumer still sees the notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.testing
from support.workers import Worker

import anyio_waitmap
from anyio_waitmap import KeyCancelled, WaitMap, WaitMapClosed, WakeSink, Woke
from anyio_waitmap.lowlevel import AtomicWaker, Waiter, Waker

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

PACKAGE = str(Path(anyio_waitmap.__file__).parent)

pytestmark = [
    pytest.mark.skipif(
        threading.current_thread() is not threading.main_thread(),
        reason="signal handlers run in the main thread only",
    ),
    pytest.mark.signals,
]


@pytest.fixture(autouse=True)
def _sigint_raises_keyboard_interrupt() -> Iterator[None]:
    """Python's own SIGINT handler, for every test here: a process that starts
    with SIGINT ignored (as a shell starts a command it runs in the background)
    does not install it, and trio then leaves SIGINT alone too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class OpcodeHook:
    """Calls ``action(frame, n)`` before the n-th bytecode run in the package
    while the hook is installed (in the thread that installed it), inside a
    :func:`tracing` session. While the action runs, tracing is off (as in any
    trace function)."""

    def __init__(self, action: Callable[[FrameType, int], object]) -> None:
        self.action = action
        self.enabled = True
        self.count = 0
        self.functions: set[str] = set()

    def see(self, frame: FrameType) -> None:
        if self.enabled:
            self.functions.add(frame.f_code.co_name)
            self.action(frame, self.count)
            self.count += 1

    @contextmanager
    def installed(self) -> Iterator[OpcodeHook]:
        assert sys.gettrace() is _trace_calls, "install hooks inside tracing()"
        previous = getattr(_active, "hook", None)
        _active.hook = self
        try:
            yield self
        finally:
            _active.hook = previous


_active = threading.local()


def _trace_calls(frame: FrameType, event: str, arg: object) -> Any:
    if frame.f_code.co_filename.startswith(PACKAGE):
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return _trace_opcodes
    return None


def _trace_opcodes(frame: FrameType, event: str, arg: object) -> Any:
    if event == "opcode":
        hook: OpcodeHook | None = getattr(_active, "hook", None)
        if hook is not None:
            hook.see(frame)
    return _trace_opcodes


@contextmanager
def tracing() -> Iterator[None]:
    """Trace the package's frames in this thread for the whole block.

    From Python 3.12 on, a code object reports its bytecodes only from its
    second call after tracing starts, so each test keeps one session for all
    its runs and begins with a warm-up run.
    """
    previous = sys.gettrace()
    # On Python 3.12, a frame that sets f_trace_opcodes gets opcode events only
    # if some frame had it set when sys.settrace() was called (3.13 fixed it:
    # python/cpython#114480), so this frame has it set for the call.
    here = sys._getframe()
    here.f_trace_opcodes = True
    sys.settrace(_trace_calls)
    here.f_trace_opcodes = False
    try:
        yield
    finally:
        sys.settrace(previous)


# -- trio: KeyboardInterrupt protection -------------------------------------------


async def _ended(call: Callable[..., Awaitable[object]], *args: object) -> None:
    """Await ``call(*args)``; a cancelled key or a closed map is an end too."""
    with contextlib.suppress(KeyCancelled, WaitMapClosed):
        await call(*args)


async def _every_operation() -> None:
    """Exercise every public operation, fast and slow paths, under trio."""
    wm: WaitMap[str, int] = WaitMap()
    exclusive: WaitMap[str, int] = WaitMap(exclusive=True)
    sink = WakeSink()
    source = sink.source()
    flag = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wm.wait, "a")
        nursery.start_soon(wm.take, "b")
        nursery.start_soon(wm.wait_for, "c", lambda v: v > 1)
        nursery.start_soon(exclusive.take, "x")
        await trio.testing.wait_all_tasks_blocked()
        assert wm.wake("a", 1) == Woke(1)
        wm["b"] = 2
        wm.wake("c", 1)
        wm["c"] = 2
        exclusive.wake("x", 1)
        await trio.testing.wait_all_tasks_blocked()

        with trio.CancelScope() as scope:
            nursery.start_soon(wm.wait, "cancelled")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        nursery.cancel_scope.cancel()

    wm["d"] = 4
    assert await wm.wait("d") == 4
    assert await wm.wait_for("d", lambda v: True) == 4
    assert await wm.take("d") == 4
    wm.setdefault("e", 5)
    assert wm.pop("e") == 5
    wm["f"] = 6
    del wm["f"]
    wm["g"] = 7
    wm.popitem()
    wm.clear()
    assert wm.statistics().tasks_waiting == 0

    async def until_flag() -> bool | None:
        return await sink.wait_until(lambda: flag or None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(until_flag)
        nursery.start_soon(_ended, wm.wait, "h")
        nursery.start_soon(_ended, wm.take, "h")
        await trio.testing.wait_all_tasks_blocked()
        flag = True
        source.notify()
        assert wm.cancel("h") == 2

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ended, wm.wait, "i")
        await trio.testing.wait_all_tasks_blocked()
        assert wm.cancel_all() == 1

    waiter: Waiter[int] = Waiter()
    waiter.wake(8)
    assert await waiter.park() == 8
    thrown: Waiter[int] = Waiter()
    thrown.throw(ValueError("thrown"))
    with pytest.raises(ValueError, match="thrown"):
        await thrown.park()

    waker = Waker()
    slot = AtomicWaker()
    slot.register(waker)
    slot.wake()
    await waker.park()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ended, wm.wait, "j")
        await trio.testing.wait_all_tasks_blocked()
        wm.close()
    sink.close()


def test_trio_protects_every_bytecode_of_the_library() -> None:
    unprotected: list[tuple[str, int]] = []

    def check(frame: FrameType, n: int) -> None:
        if not trio.lowlevel.currently_ki_protected():
            code = frame.f_code
            where = f"{Path(code.co_filename).name}:{code.co_firstlineno}"
            unprotected.append((f"{code.co_name} ({where})", frame.f_lasti))

    hook = OpcodeHook(check)

    async def main() -> None:
        with hook.installed():
            await _every_operation()

    with tracing():
        trio.run(main)  # also the warm-up, see tracing()
        trio.run(main)
    assert not unprotected, sorted({where for where, _ in unprotected})
    # The hook did trace the library: the critical sections were all seen.
    assert hook.count > 1000
    assert {
        "wait",
        "take",
        "wait_for",
        "wake",
        "__setitem__",
        "cancel",
        "cancel_all",
        "close",
        "_dispatch",
        "wake_locked",
        "throw_locked",
        "_abort",
        "notify",
        "wait_until",
        "park",
        "_serve",
    } <= hook.functions


def _run_interrupted(scenario: Callable[[OpcodeHook], Awaitable[None]]) -> None:
    """Count the scenario's bytecodes, then SIGINT it at each one in turn."""
    with tracing():
        trio.run(scenario, OpcodeHook(lambda frame, n: None))  # the warm-up
        dry = OpcodeHook(lambda frame, n: None)
        trio.run(scenario, dry)
        _interrupt_each(scenario, dry.count)


def _interrupt_each(
    scenario: Callable[[OpcodeHook], Awaitable[None]], count: int
) -> None:
    assert count > 20
    for target in range(count):
        escaped: list[int] = []

        def interrupt(
            frame: FrameType, n: int, target: int = target, escaped: list[int] = escaped
        ) -> None:
            if n == target:
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:
                    escaped.append(n)
                    raise

        with pytest.raises(KeyboardInterrupt):
            trio.run(scenario, OpcodeHook(interrupt))
        # trio deferred it to a checkpoint instead of raising it in our code.
        assert not escaped, f"KeyboardInterrupt raised inside, at bytecode {target}"


def test_sigint_during_store_to_a_taker_loses_nothing() -> None:
    outcomes: list[object] = []

    async def scenario(hook: OpcodeHook) -> None:
        wm: WaitMap[str, int] = WaitMap()
        outcomes.clear()

        async def taker() -> None:
            outcomes.append(await wm.take("k"))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(taker)
                await trio.testing.wait_all_tasks_blocked()
                with hook.installed():
                    wm["k"] = 1
                outcomes.append("stored")
                await trio.lowlevel.checkpoint()
        finally:
            # The store finished, and the value went to the taker exactly once,
            # whether or not the KeyboardInterrupt cancelled it afterwards.
            assert "stored" in outcomes
            assert outcomes.count(1) + ("k" in wm) == 1
            assert wm.statistics().tasks_waiting == 0

    _run_interrupted(_unwrap_ki(scenario))


def test_sigint_while_registering_a_waiter_leaves_nothing() -> None:
    async def scenario(hook: OpcodeHook) -> None:
        wm: WaitMap[str, int] = WaitMap()
        try:
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    with hook.installed():
                        await wm.take("k")

                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert wm.statistics().tasks_waiting == 1
                assert wm.wake("k", 1) == Woke(1)
        finally:
            assert wm.statistics().tasks_waiting == 0
            assert wm._waiting == {}  # pyright: ignore[reportPrivateUsage]

    _run_interrupted(_unwrap_ki(scenario))


def test_sigint_during_notify_wakes_the_consumer_once() -> None:
    async def scenario(hook: OpcodeHook) -> None:
        sink = WakeSink()
        state = {"ready": False, "checks": 0}

        def ready() -> bool | None:
            state["checks"] += 1
            return state["ready"] or None

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink.wait_until, ready)
                await trio.testing.wait_all_tasks_blocked()
                state["ready"] = True
                with hook.installed():
                    sink.notify()
                await trio.testing.wait_all_tasks_blocked()
        finally:
            assert not sink.statistics().consumer_waiting

    _run_interrupted(_unwrap_ki(scenario))


def _unwrap_ki(
    scenario: Callable[[OpcodeHook], Awaitable[None]],
) -> Callable[[OpcodeHook], Awaitable[None]]:
    """Let a KeyboardInterrupt out of a nursery as itself, not in a group."""

    async def unwrapped(hook: OpcodeHook) -> None:
        try:
            await scenario(hook)
        except BaseExceptionGroup as group:
            matched, rest = group.split(KeyboardInterrupt)
            if rest is None and matched is not None:
                raise KeyboardInterrupt from group
            raise

    return unwrapped


# -- a signal handler that notifies -------------------------------------------------


async def _consume_notified_at(target: int) -> int:
    """A consumer waits on a sink; a "signal handler" changes the state and
    notifies before the ``target``-th bytecode that the library runs in this
    thread. Returns how many bytecodes ran before the consumer blocked."""
    sink = WakeSink()
    source = sink.source()
    state = {"ready": False}

    def handler(frame: FrameType, n: int) -> None:
        if n == target:
            state["ready"] = True
            source.notify()

    hook = OpcodeHook(handler)
    done = anyio.Event()

    async def consumer() -> None:
        with hook.installed():
            await sink.wait_until(lambda: state["ready"] or None)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        # Enough scheduler rounds for the consumer to start, block and, if it
        # was notified, resume and return. (anyio's wait_all_tasks_blocked()
        # polls every 0.1 s on asyncio, too slow for hundreds of rounds.)
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        # Count only what the consumer ran, not this task's calls below.
        hook.enabled = False
        count = hook.count
        assert done.is_set() or sink.statistics().consumer_waiting
        if 0 <= target < count:
            # Notified before it blocked: it must have seen it by now.
            assert done.is_set(), f"notification lost at bytecode {target}"
        state["ready"] = True
        source.notify()
    assert not sink.statistics().consumer_waiting
    return count


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(
            ("asyncio", {"use_uvloop": True}),
            id="asyncio+uvloop",
            marks=pytest.mark.skipif(sys.platform == "win32", reason="no uvloop"),
        ),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def test_notify_from_a_handler_at_every_bytecode(
    backend: tuple[str, dict[str, Any]],
) -> None:
    async def every_target() -> int:
        await _consume_notified_at(-1)  # the first round also sets up the binding
        count = await _consume_notified_at(-1)
        for target in range(count):
            await _consume_notified_at(target)
        return count

    def run_all() -> int:
        name, options = backend
        with tracing():
            return anyio.run(every_target, backend=name, backend_options=options)

    # In a thread of its own, so that a deadlock fails instead of hanging.
    worker = Worker(run_all, "consumer")
    worker.start()
    assert worker.finish(timeout=60) > 20


def _loop_factories() -> list[Any]:
    factories: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    if sys.platform != "win32":
        import uvloop

        factories.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return factories


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_real_signal_handlers_notify(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    sink = WakeSink()
    source = sink.source()
    received: list[str] = []

    def raw_handler(signum: int, frame: FrameType | None) -> None:
        received.append("raw")
        source.notify()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A handler installed with signal.signal runs between two bytecodes of
        # the main thread, whatever it is doing.
        previous = signal.signal(signal.SIGUSR1, raw_handler)
        try:
            loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(
                sink.wait_until(lambda: "raw" in received or None), 10
            )
        finally:
            signal.signal(signal.SIGUSR1, previous)

        # One installed through the event loop runs as a loop callback.
        def loop_handler() -> None:
            received.append("loop")
            source.notify()

        loop.add_signal_handler(signal.SIGUSR1, loop_handler)
        try:
            loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(
                sink.wait_until(lambda: "loop" in received or None), 10
            )
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    loop = loop_factory()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert received == ["raw", "loop"]
