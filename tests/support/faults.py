"""Helpers of the fault-injection tests of the map, the sink and the wakers.

How a test checks the object after a fault (a map's bookkeeping consistent,
nothing kept alive, a round trip that goes through), event loops in other
threads whose tasks are left waiting while the loop finishes or refuses the
wake-up, and the allocation points where a registration is made to fail with
MemoryError. The tests are tests/waitmap/test_map_faults.py,
tests/sink/test_sink_faults.py and tests/lowlevel/test_lowlevel_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, final

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel
import trio.testing
from anyio import create_task_group, wait_all_tasks_blocked

import anyio_waitmap._backends._trio as trio_backend
import anyio_waitmap._registry as registry_module
import anyio_waitmap._wakers as wakers_module
from anyio_waitmap import WaitMap, WakeSink, Woke
from anyio_waitmap._backends._asyncio import AsyncioBinding
from anyio_waitmap._backends._trio import TrioBinding
from anyio_waitmap._parking import PENDING
from anyio_waitmap.lowlevel import Waker
from support.workers import JOIN_TIMEOUT, Worker

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


@final
class Token:
    """A value that compares by name; tests follow its lifetime with weak references."""

    __slots__ = ("__weakref__", "name")

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Token({self.name!r})"


class Unblocked(Exception):
    """Thrown by the test into a task that nothing else could end."""


def linked_waiters(wm: WaitMap[Any, Any]) -> list[Any]:
    """Every waiter in the map's per-key table, in table order."""
    found: list[Any] = []
    for entry in wm._waiting.values():
        found.extend(entry if isinstance(entry, dict) else [entry])
    return found


def assert_consistent(wm: WaitMap[Any, Any]) -> None:
    """The map's counts agree with its tables, and only live waiters are linked."""
    waiters = 0
    for key, entry in wm._waiting.items():
        group = list(entry) if isinstance(entry, dict) else [entry]
        assert group, f"an empty waiter table is left under {key!r}"
        for waiter in group:
            assert waiter._state == PENDING, f"a resolved waiter is linked: {key!r}"
            assert waiter.key == key, f"{waiter.key!r} is linked under {key!r}"
        waiters += len(group)
    stats = wm.statistics()
    assert stats.tasks_waiting == waiters, (stats, wm._waiting)
    assert stats.keys_waiting == len(wm._waiting), stats
    assert stats.values_stored == len(wm) == len(list(wm)), stats
    assert not wm._dispatching, "the map still thinks a predicate is running"


def assert_no_waiters(wm: WaitMap[Any, Any]) -> None:
    assert_consistent(wm)
    assert wm.statistics().tasks_waiting == 0
    assert wm._waiting == {}


def assert_all_dead(refs: list[weakref.ref[Any]]) -> None:
    if any(ref() is not None for ref in refs):
        gc.collect()  # only cycles are left to free: the slow way
    alive = [obj for obj in (ref() for ref in refs) if obj is not None]
    assert not alive, f"still referenced after the test let go: {alive}"


def leaves(exc: BaseException) -> str:
    """The exceptions inside ``exc``, which may be a (nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(leaves(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}".split("\n")[0]


def waker_state(waker: Waker | None) -> str:
    """``idle``, ``parked``, ``woken`` or ``notified``, as the waker's repr says."""
    assert waker is not None
    return repr(waker).split()[1]


async def sink_round_trip(sink: WakeSink) -> None:
    """A consumer parks, is notified with nothing to find, then with a value."""
    box: list[str] = []
    got: list[str] = []

    async def consumer() -> None:
        got.append(await sink.wait_until(lambda: box[0] if box else None))

    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            assert sink.statistics().consumer_waiting
            sink.source().notify()  # a check that finds nothing
            await wait_all_tasks_blocked()
            assert got == []
            box.append("item")
            await anyio.to_thread.run_sync(sink.source().notify)
    assert got == ["item"]
    assert sink._waker is None
    assert not sink.statistics().consumer_waiting


async def waitmap_round_trip(wm: WaitMap[Any, Any], key: object) -> None:
    """wait + wake, then take + store, on ``key`` (which has no stored value)."""
    got: list[object] = []

    async def call(method: Callable[[object], Awaitable[object]]) -> None:
        got.append(await method(key))

    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            tg.start_soon(call, wm.wait)
            await wait_all_tasks_blocked()
            assert wm.wake(key, Token("round trip 1")) == Woke(1)
            await wait_all_tasks_blocked()
            tg.start_soon(call, wm.take)
            await wait_all_tasks_blocked()
            wm[key] = Token("round trip 2")
    assert got == [Token("round trip 1"), Token("round trip 2")]
    assert key not in wm
    assert_no_waiters(wm)


# -- event loops of other threads whose tasks are left waiting ---------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    assert kind == "asyncio"
    return asyncio.new_event_loop()


class FinishedRunToken:
    """Stands in for the TrioToken of a run that finished a moment ago."""

    def __init__(self, refused: list[str]) -> None:
        self.refused = refused

    def run_sync_soon(self, *args: object, **kwargs: object) -> None:
        self.refused.append("RunFinishedError")
        raise trio.RunFinishedError("the run finished")


class Host:
    """Tasks of an event loop in another thread, left waiting on our objects.

    asyncio and uvloop: the loop runs in a thread until the tasks have parked,
    then stops; :meth:`finish` closes it, as a thread does when its
    ``asyncio.run`` returns. trio: the run goes on in its thread, the tasks
    parked, until :meth:`dispose`.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.token: trio.lowlevel.TrioToken | None = None
        self.binding: TrioBinding | None = None
        self.scope: trio.CancelScope | None = None
        self.worker: Worker[None] | None = None
        #: The wake-ups that the loop refused: what the fault path saw.
        self.refused: list[str] = []

    def start(
        self,
        calls: list[Callable[[], Coroutine[Any, Any, object]]],
        ready: Callable[[], bool],
    ) -> None:
        """Run ``calls`` as tasks until ``ready()`` says they are all parked."""
        if self.kind == "trio":
            self._start_trio(calls)
        else:
            self._start_asyncio(calls, ready)
        assert ready(), "the tasks did not park"

    def _start_asyncio(
        self,
        calls: list[Callable[[], Coroutine[Any, Any, object]]],
        ready: Callable[[], bool],
    ) -> None:
        loop = self.loop = new_loop(self.kind)

        async def until_ready() -> None:
            self.tasks = [loop.create_task(call()) for call in calls]
            for _ in range(100):  # each task parks within its first steps
                if ready():
                    return
                await asyncio.sleep(0)

        worker = Worker(lambda: loop.run_until_complete(until_ready()), self.kind)
        worker.start()
        worker.finish()

    def _start_trio(
        self, calls: list[Callable[[], Coroutine[Any, Any, object]]]
    ) -> None:
        started = threading.Event()

        async def main() -> None:
            try:
                self.token = trio.lowlevel.current_trio_token()
                self.binding = trio_backend.current_trio_binding()
                async with trio.open_nursery() as nursery:
                    self.scope = nursery.cancel_scope
                    for call in calls:
                        nursery.start_soon(call)
                    await trio.testing.wait_all_tasks_blocked()
                    started.set()
            finally:
                started.set()

        self.worker = Worker(lambda: trio.run(main), "trio")
        self.worker.start()
        assert started.wait(JOIN_TIMEOUT), "the trio run did not start"

    def finish(self) -> None:
        """Close the stopped asyncio loop with its tasks still parked."""
        assert self.loop is not None
        self.loop.close()

    def fail_wakeups(self) -> None:
        """Make the loop go away between a waker's check and its call into it.

        asyncio: the next ``call_soon_threadsafe`` closes the loop first, then
        makes the call, which raises RuntimeError; the waker had found the loop
        open. trio: ``run_sync_soon`` raises RunFinishedError.
        """
        if self.kind == "trio":
            assert self.binding is not None
            self.binding._token = FinishedRunToken(self.refused)  # type: ignore[assignment]
            return
        loop = self.loop
        assert loop is not None
        assert not loop.is_closed()
        original = loop.call_soon_threadsafe
        refused = self.refused

        def close_first(*args: Any, **kwargs: Any) -> Any:
            loop.close()
            try:
                return original(*args, **kwargs)
            except RuntimeError as exc:
                refused.append(f"RuntimeError: {exc}")
                raise

        loop.call_soon_threadsafe = close_first  # type: ignore[method-assign,assignment]

    def dispose(self, stuck: tuple[Waker, ...] = ()) -> None:
        """End the tasks; ``stuck`` are wakers whose wake-up the loop refused."""
        if self.kind != "trio":
            for task in self.tasks:
                # The loop is gone: close the coroutines, which runs their finally
                # blocks now, and keep the tasks from logging that they were
                # destroyed while pending.
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                coro = task.get_coro()
                assert coro is not None
                coro.close()
            self.tasks.clear()
            if self.loop is not None and not self.loop.is_closed():
                self.loop.close()
            return
        if self.worker is None:
            return
        token = self.token
        assert token is not None
        assert self.binding is not None
        assert self.scope is not None
        self.binding._token = token

        def resume_stuck() -> None:
            # A waker whose wake-up was refused believes nobody is parked (it is
            # idle or notified, yet its task is still suspended), and would
            # refuse the cancellation: resume its task by hand.
            for waker in stuck:
                handle = waker._handle
                if waker_state(waker) != "woken" and handle is not None:
                    trio.lowlevel.reschedule(handle)  # type: ignore[arg-type]

        # The run ends by itself once its tasks have: then there is nothing to do.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(resume_stuck, trio_token=token)
            trio.from_thread.run_sync(self.scope.cancel, trio_token=token)
        self.worker.finish()
        self.worker = None


@contextlib.contextmanager
def hosting(kind: str) -> Iterator[Host]:
    host = Host(kind)
    try:
        yield host
    finally:
        host.dispose()


def run_on(kind: str, main: Callable[[], Awaitable[object]]) -> None:
    """Run ``main`` under anyio.run on a live loop of ``kind``, in this thread."""
    if kind == "trio":
        anyio.run(main, backend="trio")
    else:
        anyio.run(
            main, backend="asyncio", backend_options={"use_uvloop": kind == "uvloop"}
        )


UVLOOP = pytest.mark.skipif(sys.platform == "win32", reason="no uvloop on Windows")
#: How a waiter's loop goes: it finished before the wake-up ("finished", asyncio
#: only: a trio run cannot end with a task parked), or it finishes during it.
GONE = [
    pytest.param("asyncio", "finished", id="asyncio-finished"),
    pytest.param("uvloop", "finished", id="uvloop-finished", marks=UVLOOP),
    pytest.param("asyncio", "finishing", id="asyncio-finishing"),
    pytest.param("uvloop", "finishing", id="uvloop-finishing", marks=UVLOOP),
    pytest.param("trio", "finishing", id="trio-finishing"),
]


def make_gone(host: Host, ending: str) -> None:
    if ending == "finished":
        host.finish()
    else:
        host.fail_wakeups()


def assert_refused(host: Host, ending: str, expected_calls: int) -> None:
    """The fault path ran: the loop refused the first wake-up that reached it."""
    if ending == "finished":
        assert host.refused == []
    elif host.kind == "trio":
        assert host.refused == ["RunFinishedError"] * expected_calls
    else:
        # The first call closed the loop; later wake-ups saw it closed.
        assert host.refused == ["RuntimeError: Event loop is closed"]


# -- where a registration allocates ------------------------------------------------

#: Where a registration allocates, by name: each patched so that its first call
#: raises MemoryError (only the running backend's binding is ever called).
ALLOCATIONS: dict[str, list[tuple[object, str]]] = {
    # The future (asyncio) or task handle (trio) a parked task waits on.
    "new_handle": [(AsyncioBinding, "new_handle"), (TrioBinding, "new_handle")],
    # Entering the park itself: asyncio hands out the future, trio enters
    # wait_task_rescheduled. Here the waiter is already linked.
    "park": [(AsyncioBinding, "park"), (trio_backend, "wait_task_rescheduled")],
    # The WaitMap's waiter record.
    "waiter_init": [(registry_module, "KeyWaiter")],
    # The waker a WakeSink consumer registers.
    "waker_init": [(wakers_module, "Waker")],
}


def fail_once(monkeypatch: pytest.MonkeyPatch, point: str) -> list[str]:
    """Make the next allocation at ``point`` raise MemoryError; returns a list
    that records it when it happens."""
    failures: list[str] = []
    for owner, name in ALLOCATIONS[point]:
        original = getattr(owner, name)

        def failing(
            *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            if not failures:
                failures.append(_name)
                raise MemoryError(f"no memory left for {_name}")
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, failing)
    return failures
