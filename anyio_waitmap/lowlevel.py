"""Building blocks for writing your own waiting primitives.

The high-level classes of :mod:`anyio_waitmap` are built from these parts.

:class:`Waiter` is a handle on one task that is about to wait. The task links the
waiter into a structure of yours (under your lock), then awaits
:meth:`Waiter.park`; any thread can later :meth:`~Waiter.wake` it with a value or
:meth:`~Waiter.throw` an exception into it. The waiter resolves exactly once:
whichever of wake, throw or the task's own cancellation comes first wins, under
your lock, so nothing is delivered twice and a delivered value is never lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, final

from ._backends import current_binding as _current_binding
from ._parking import PENDING as _PENDING
from ._parking import ParkedTask as _ParkedTask

__all__ = ["Waiter"]

_T = TypeVar("_T")


@final
class Waiter(_ParkedTask[_T]):
    """A handle on the current task, for parking it until something arrives.

    Create it in the task that will wait, link it where wakers can find it while
    holding ``lock``, release the lock, then ``await waiter.park()``.

    Args:
        lock: the lock that guards your structure (a :class:`threading.Lock` or
            :class:`threading.RLock`). Resolving the waiter and cancelling the task
            take it, so whoever holds it sees a consistent state. A new
            :class:`threading.RLock` if omitted.
        on_abort: called (with ``lock`` held, at most once) if the task leaves
            :meth:`park` before it was woken or thrown into, typically because it
            was cancelled: unlink the waiter from your structure there. It must not
            raise.

    Raises:
        RuntimeError: no asyncio or trio task is running in this thread.
    """

    __slots__ = ("_abort_callback",)

    def __init__(
        self,
        lock: threading.Lock | threading.RLock | None = None,
        on_abort: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(
            threading.RLock() if lock is None else lock, _current_binding("Waiter")
        )
        self._abort_callback = on_abort

    @property
    def lock(self) -> threading.Lock | threading.RLock:
        """The lock that guards this waiter's resolution."""
        return self._lock  # type: ignore[return-value]

    @property
    def done(self) -> bool:
        """Whether the waiter was woken, thrown into or abandoned by its task."""
        return self._state != _PENDING

    def wake(self, value: _T) -> bool:
        """Resume the task with ``value``, unless its wait already ended.

        Takes :attr:`lock`; from a thread that already holds it, use
        :meth:`wake_locked`. Never blocks otherwise; callable from any thread.

        Returns:
            True if :meth:`park` will return ``value``. False if the waiter was
            already resolved, its task left, or its event loop has finished.
        """
        with self._lock:
            return self.wake_locked(value)

    def throw(self, exc: BaseException) -> bool:
        """Resume the task by raising ``exc`` from :meth:`park`, unless its wait ended.

        Takes :attr:`lock`; from a thread that already holds it, use
        :meth:`throw_locked`.

        Returns:
            True if :meth:`park` will raise ``exc``.
        """
        with self._lock:
            return self.throw_locked(exc)

    def _on_abort(self) -> None:
        callback = self._abort_callback
        if callback is not None:
            callback()

    def __repr__(self) -> str:
        state = ("waiting", "woken", "thrown into", "aborted", "dead")[self._state]
        return f"<anyio_waitmap.lowlevel.Waiter {state} on {self._binding.name}>"
