"""Event loop bindings: the only place that knows which backend is running.

A *binding* is one small object per running event loop (one asyncio loop, or one
``trio.run``). It knows how to park the current task, how to unpark a parked task
from any thread, and how to yield without losing a value that was already handed
over. Everything above this package talks to a binding and never asks which
backend it is on.

The binding for the current loop is looked up once per loop and cached: for
asyncio in a thread-local slot keyed by the running loop, for trio in a
:class:`trio.lowlevel.RunVar`.
"""

from __future__ import annotations

import sys
import threading
from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop  # pyright: ignore[reportPrivateUsage]
from collections.abc import Callable
from importlib import import_module
from types import FunctionType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._asyncio import AsyncioBinding, current_asyncio_task

try:
    from anyio import NoEventLoopError
except ImportError:  # pragma: no cover - anyio 4.9 and 4.10 (see pyproject.toml)
    NoEventLoopError = RuntimeError  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from ._base import Binding

__all__ = [
    "NoEventLoopError",
    "current_binding",
    "ki_protected",
    "load_trio_support",
    "no_task_error",
]

_C = TypeVar("_C", bound=type)
# Functions whose code trio must treat as KeyboardInterrupt-protected; handed to
# trio when the trio binding is first imported.
_critical_code: list[Callable[..., object]] = []


def ki_protected(cls: _C) -> _C:
    """Class decorator: the methods of ``cls`` are critical sections on trio.

    A KeyboardInterrupt that arrives on trio while one of them runs is delivered
    at the task's next checkpoint instead, so that it cannot leave our
    bookkeeping half-updated (a waiter linked but never parked, a value handed
    over but not recorded). trio keys that protection on code objects, so it
    costs nothing when the functions run; asyncio has no such mechanism.
    """
    for attribute in vars(cls).values():
        functions: list[object]
        if isinstance(attribute, property):
            functions = [attribute.fget, attribute.fset]
        else:
            functions = [attribute]
        _critical_code.extend(f for f in functions if isinstance(f, FunctionType))
    if _trio_protect is not None:
        _trio_protect(_critical_code)
    else:
        load_trio_support()
    return cls


def load_trio_support() -> None:
    """Load the trio binding if trio is imported; nothing otherwise (cheap).

    Called at the first wait and when a primitive is created, and at import:
    the protection of :func:`ki_protected` starts when this first finds trio.
    The binding is imported on first use only, so that asyncio users never
    import trio.
    """
    global _current_trio_binding, _trio_protect, _trio_run_context, _trio_binding_var
    if _trio_protect is None and "trio" in sys.modules:
        trio_module = import_module("._trio", __name__)
        trio_module.protect(_critical_code)
        _trio_protect = trio_module.protect
        _trio_run_context = trio_module.run_context
        _trio_binding_var = trio_module.binding_var
        _current_trio_binding = trio_module.current_trio_binding


class _ThreadCache(threading.local):
    # The binding of the asyncio loop this thread ran most recently. It keeps that
    # loop referenced until the thread runs another one; one loop per thread at most.
    loop: object = None
    binding: AsyncioBinding | None = None


_cache = _ThreadCache()
# The binding of the loop that asked last, in any thread.
_last: tuple[object, AsyncioBinding] = (None, cast(AsyncioBinding, None))
_current_trio_binding: Callable[[], Binding | None] | None = None
_trio_protect: Callable[[list[Callable[..., object]]], None] | None = None
# trio's state of the run in this thread, and the RunVar of the run's binding:
# None until the trio binding is loaded (see _trio.py).
_trio_run_context: Any = None
_trio_binding_var: object = None


def _asyncio_binding(loop: AbstractEventLoop) -> AsyncioBinding:
    global _last
    cache = _cache
    binding = cache.binding
    if cache.loop is not loop or binding is None:
        binding = AsyncioBinding(loop)
        cache.binding = binding
        cache.loop = loop
    _last = (loop, binding)
    return binding


def current_binding(caller: str) -> Binding:
    """Return the binding of the event loop running the current task.

    Args:
        caller: the public name of the calling function or class, with its
            parentheses (``"WaitMap.wait()"``), for the error message.

    Raises:
        NoEventLoopError: no asyncio or trio task is running in this thread
            (a :exc:`RuntimeError`).
    """
    loop = _get_running_loop()
    # asyncio first, the cheaper lookup. A trio.run() called synchronously by an
    # asyncio task is taken for asyncio: telling the two apart (trio notes its
    # runs in a thread-local of sniffio's) would cost one more thread-local read
    # on every wait, about 20 ns, for a program that blocks its asyncio loop
    # for the whole trio run. trio then refuses the asyncio park with a
    # TypeError that says so. The reverse, asyncio.run() called by a trio task,
    # is found right: the innermost run is asyncio's, which is looked for first.
    if loop is not None and current_asyncio_task(loop) is not None:
        # One read of an immutable pair, so no lock: right for the common case of
        # one loop, and never wrong when several threads run loops.
        last = _last
        if last[0] is loop:
            return last[1]
        return _asyncio_binding(loop)
    # No asyncio task is running. A loop that is running all the same may be
    # the host of a trio run in guest mode (trio.lowlevel.start_guest_run),
    # whose tasks run in the loop's callbacks, or a task may have called
    # trio.run(): look for a trio task.

    try:
        # trio: the run's binding, read where RunVar.get() reads it, without a
        # call (see _trio.py), and only while a trio task runs.
        return _trio_run_context.task._runner._locals[_trio_binding_var]  # type: ignore[no-any-return]
    except (AttributeError, KeyError):
        # Outside a trio task, the run's first lookup, trio not loaded yet, or a
        # trio that keeps its run state elsewhere.
        pass
    if _current_trio_binding is None:
        load_trio_support()
    if _current_trio_binding is not None:
        binding = _current_trio_binding()
        if binding is not None:
            return binding

    raise no_task_error(caller)


def no_task_error(caller: str) -> RuntimeError:
    """The error of a call that needs a task and was made outside of one."""
    return NoEventLoopError(
        f"{caller} was called outside of a task: it needs a task of an asyncio or "
        f"trio event loop running in this thread"
    )
