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
from asyncio import current_task as _asyncio_current_task
from asyncio.events import _get_running_loop  # pyright: ignore[reportPrivateUsage]
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, NoReturn, cast

from ._asyncio import AsyncioBinding

if TYPE_CHECKING:
    from ._base import Binding

__all__ = ["current_binding"]


class _ThreadCache(threading.local):
    # The binding of the asyncio loop this thread ran most recently. It keeps that
    # loop referenced until the thread runs another one; one loop per thread at most.
    loop: object = None
    binding: AsyncioBinding | None = None


_cache = _ThreadCache()
# The binding of the loop that asked last, in any thread.
_last: tuple[object, AsyncioBinding] = (None, cast(AsyncioBinding, None))
_current_trio_binding: Callable[[], Binding | None] | None = None


def _asyncio_binding(loop: AbstractEventLoop, caller: str) -> AsyncioBinding:
    global _last
    if _asyncio_current_task(loop) is None:
        _raise_no_task(caller)
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
        caller: the public name of the calling function, for the error message.

    Raises:
        RuntimeError: if no asyncio or trio task is running in this thread.
    """
    loop = _get_running_loop()
    if loop is not None:
        # One read of an immutable pair, so no lock: right for the common case of
        # one loop, and never wrong when several threads run loops.
        last = _last
        if last[0] is loop:
            return last[1]
        return _asyncio_binding(loop, caller)

    global _current_trio_binding
    if _current_trio_binding is None and "trio" in sys.modules:
        # Imported on first use only, so that asyncio users never import trio.
        _current_trio_binding = import_module("._trio", __name__).current_trio_binding
    if _current_trio_binding is not None:
        binding = _current_trio_binding()
        if binding is not None:
            return binding

    _raise_no_task(caller)


def _raise_no_task(caller: str) -> NoReturn:
    raise RuntimeError(
        f"{caller}() must be awaited by a task running in an asyncio or trio event "
        f"loop, but no such task is running in this thread"
    )
