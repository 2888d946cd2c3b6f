"""Parking on asyncio (and uvloop): one loop future per parked task."""

# A friend of the parking layer (_parking.py): a binding reads the handle of
# the task that parks, as the Parkable protocol of _base.py says. (What it reads
# of asyncio's and anyio's internals is said where it does.)
# pyright: reportPrivateUsage=false

from __future__ import annotations

import math
import types
from asyncio import (
    AbstractEventLoop,
    CancelledError,
    Future,
    Task,
    current_task,
    tasks,
)
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from anyio import current_effective_deadline
from anyio.lowlevel import checkpoint_if_cancelled

try:
    # anyio's asyncio backend, found once: anyio.lowlevel's functions look the
    # backend up again on every call, which costs more than the check itself.
    # This reaches into anyio (checked with 4.11 and 4.16). Should a later anyio
    # move it, the public function below makes the same check, only slower, and
    # tests/backends/test_binding.py says so.
    from anyio._core._eventloop import get_async_backend

    _checkpoint_if_cancelled: Callable[[], Awaitable[None]] = get_async_backend(
        "asyncio"
    ).checkpoint_if_cancelled
except (ImportError, AttributeError, LookupError, TypeError):  # pragma: no cover
    _checkpoint_if_cancelled = checkpoint_if_cancelled

if TYPE_CHECKING:
    from ._base import Parkable


# Task.uncancel() exists from Python 3.11 on; before, there is no count to keep.
_uncancel: Callable[[Task[Any]], object] = getattr(Task, "uncancel", lambda task: None)

# The task an asyncio loop is running, or None. Before Python 3.12,
# asyncio.current_task is a Python function that reads this dictionary; reading
# it directly saves a frame on every wait.
_current_tasks: object = getattr(tasks, "_current_tasks", None)
current_asyncio_task: Callable[[AbstractEventLoop], Any] = (
    cast("dict[AbstractEventLoop, object]", _current_tasks).get
    if isinstance(current_task, types.FunctionType) and isinstance(_current_tasks, dict)
    else current_task
)


@types.coroutine
def _yield() -> Generator[None, None, None]:
    # A bare yield: the task runs again after one turn of the loop. This is what
    # asyncio.sleep(0) does, and what anyio's checkpoint() does on asyncio,
    # without the frames in between.
    yield


@types.coroutine
def _shielded_yield(binding: AsyncioBinding) -> Generator[None, None, None]:
    # A bare yield, cheaper than anyio's shielded checkpoint (which enters a
    # shielded scope): a cancellation that arrives meanwhile is caught and
    # re-armed. An anyio scope keeps delivering its cancellation by itself until
    # it exits, so keep_cancellation() only re-arms native ones.
    try:
        yield
    except CancelledError as exc:
        binding.keep_cancellation(exc)


def _release(future: Future[None]) -> None:
    # Runs in the loop thread, scheduled from another thread. The future may have
    # been cancelled meanwhile (its task was cancelled); the task then sees that
    # it was woken and keeps the value.
    if not future.done():
        future.set_result(None)


class AsyncioBinding:
    """Parks tasks of one asyncio event loop on futures of that loop."""

    __slots__ = ("_loop",)

    name: ClassVar[str] = "asyncio"
    cancelled: ClassVar[type[BaseException]] = CancelledError

    def __init__(self, loop: AbstractEventLoop) -> None:
        self._loop = loop

    def new_handle(self) -> Future[None]:
        return self._loop.create_future()

    def park(self, task: Parkable) -> Future[None]:
        return task._handle  # type: ignore[no-any-return]

    def unpark(self, handle: Future[None]) -> bool | None:
        loop = self._loop
        if _get_running_loop() is loop:
            if not handle.done():
                handle.set_result(None)
                return True
            # Cancelled: its task was cancelled while parked, and will raise
            # CancelledError when it runs. The cancellation came first, as it
            # would on trio, where the abort function decides at once.
            return None
        # A closed loop will never run the task again. Both asyncio and uvloop
        # refuse the call with RuntimeError once closed; the check first saves
        # raising in the common case of a loop that finished long ago. Anything
        # else the call raises (MemoryError) comes before the callback is
        # queued: both write the byte that wakes the loop last, and asyncio
        # catches the OSError that write may raise.
        if loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(_release, handle)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    def keep_cancellation(self, exc: BaseException) -> None:
        if current_effective_deadline() == -math.inf:
            # An anyio cancel scope is cancelled: anyio delivers the cancellation
            # again at the next checkpoint by itself, and keeps its own count.
            return
        task = current_task()
        assert task is not None
        message = exc.args[0] if exc.args else None
        # Keep Task.cancelling() where it was, so that asyncio.timeout() and
        # TaskGroup still recognise the cancellation as theirs.
        _uncancel(task)
        task.cancel(message)

    # anyio's checkpoint on asyncio is a bare yield: at it, a task in a
    # cancelled anyio scope receives that scope's cancellation, and a native
    # cancellation is raised.
    checkpoint = staticmethod(_yield)

    def checkpoint_if_cancelled(self) -> Awaitable[None]:
        # anyio's check looks at the task's cancel scopes only. A Task.cancel()
        # that asyncio has not delivered yet (the task, or code it called,
        # cancelled the task since it last yielded) is kept in the task's
        # _must_cancel, in the C task and the Python one alike (3.10 to 3.14);
        # a task object without it is taken as having no such request. asyncio
        # raises it where the task yields next, and clears it, by itself.
        try:
            if current_asyncio_task(self._loop)._must_cancel:
                return _yield()
        except AttributeError:
            pass
        return _checkpoint_if_cancelled()

    def cancel_shielded_checkpoint(self) -> Awaitable[None]:
        return _shielded_yield(self)
