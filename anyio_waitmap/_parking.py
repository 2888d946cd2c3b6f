"""One parked task: its value slot and its one-shot "who won" state.

A task that wants to wait creates a :class:`ParkedTask`, links it somewhere a
waker can find it (under the owner's lock), and calls :meth:`ParkedTask.park`.
Three parties may then race to decide how the wait ends:

* a waker hands over a value (:meth:`~ParkedTask.wake_locked`),
* a waker hands over an exception (:meth:`~ParkedTask.throw_locked`),
* the task itself is cancelled and tries to leave (``_abort``).

All three decide under the owner's lock, and only the first one takes effect:
the state moves once from ``PENDING`` to ``VALUE``, ``ERROR``, ``ABORTED`` or
``DEAD`` and never again. The winner is the only one that may touch the owner's
bookkeeping for this task, so nothing is unlinked twice, no value is delivered
twice, and a value that won the race is returned even if a cancellation arrives
before the task resumes (the cancellation is then raised at the task's next
checkpoint).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from ._backends import current_binding, ki_protected

if TYPE_CHECKING:
    from types import TracebackType

    from ._backends._base import Binding

T = TypeVar("T")

PENDING: Final = 0
VALUE: Final = 1
ERROR: Final = 2
# ABORTED and DEAD come last: `state >= ABORTED` tests for either.
ABORTED: Final = 3
DEAD: Final = 4  # its event loop finished before it could be resumed


class Lock(Protocol):
    """What :class:`ParkedTask` needs of a lock: :class:`threading.Lock` or RLock."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...


@ki_protected
class ParkedTask(Generic[T]):
    """Base of every parked task; subclasses say how to unlink themselves."""

    __slots__ = ("_binding", "_handle", "_lock", "_result", "_state")

    def __init__(self, lock: Lock, binding: Binding) -> None:
        self._lock = lock
        self._binding = binding
        # What the task parks on, made when it parks (see _prepare_park()):
        # until then, a hand-over only records the outcome for the task to find.
        self._handle: Any = None
        self._state: int = PENDING
        self._result: Any = None

    # -- called by the owner, with its lock held -----------------------------------

    def wake_locked(self, value: T) -> bool:
        """Hand ``value`` to the task if nothing else decided its fate yet.

        The owner's lock must be held. Returns True if the task will return
        ``value`` from :meth:`park`. Otherwise the state says why not: still
        ``PENDING`` if the task is on its way out with a cancellation that came
        first (it will unlink itself), ``DEAD`` if its event loop has finished.

        Raises:
            Exception: the call into the task's event loop failed
                (:exc:`MemoryError`). The waiter is then ``DEAD`` as well: the
                value was not handed over, and the task, which nothing can
                resume any more, leaves when it is cancelled.
        """
        if self._state != PENDING:
            return False
        self._result = value
        self._state = VALUE
        return self._resume()

    def throw_locked(self, exc: BaseException) -> bool:
        """Make the task's :meth:`park` raise ``exc``, if nothing decided yet.

        The owner's lock must be held. Returns True if the task will raise it;
        otherwise as :meth:`wake_locked`.
        """
        if self._state != PENDING:
            return False
        self._result = exc
        self._state = ERROR
        return self._resume()

    def _resume(self) -> bool:
        if self._handle is None:
            return True  # not parked yet: the task finds the outcome when it does
        try:
            resumed = self._binding.unpark(self._handle)
        except BaseException:
            self._state = DEAD
            self._result = None
            raise
        if resumed:
            return True
        self._result = None
        self._state = PENDING if resumed is None else DEAD
        return False

    # -- hooks ---------------------------------------------------------------------

    def _on_abort(self) -> None:
        """Unlink from the owner; called once, with the lock held, if cancelled."""

    def _on_abandon(self, value: T) -> None:
        """A value was handed over but the task left with a non-cancellation
        exception (e.g. one thrown into its coroutine): give the value back."""

    # -- called by the parked task -------------------------------------------------

    def _abort(self) -> bool:
        """Try to end the wait because the task is leaving; True if it may leave."""
        if self._state >= ABORTED:
            # ABORTED or DEAD, which are final: no lock needed. On trio this is
            # the second call of a cancelled wait, after the abort function's.
            return True
        lock = self._lock
        lock.acquire()
        try:
            if self._state == PENDING:
                self._state = ABORTED
                self._on_abort()
                return True
            return self._state >= ABORTED
        finally:
            lock.release()

    async def park(self) -> T:
        """Wait until the waiter is woken or thrown into; await it once.

        Must be awaited once, by a task of the event loop the waiter was made
        in. This is a checkpoint, also when the waiter was woken before it
        parked.

        Returns:
            The value handed over by a wake. If the task is cancelled after the
            value was handed over but before it could resume, the value is still
            returned and the cancellation is raised at its next checkpoint.

        Raises:
            BaseException: the exception handed over by a throw, or the
                backend's cancellation exception if the task was cancelled before
                anything was handed over (``on_abort`` has then been called).
        """
        binding = self._binding
        try:
            if self._prepare_park(binding):
                # Decided before the task parked: still a checkpoint, and what
                # was handed over is kept (a cancellation is re-armed below).
                await binding.checkpoint_if_cancelled()
                await binding.cancel_shielded_checkpoint()
            else:
                await binding.park(self)
        except BaseException as exc:
            if self._abort():
                raise
            return self._outcome_after(exc)
        return self._outcome()

    def _prepare_park(self, binding: Binding) -> bool:
        """Before the task parks: True if its wait was decided already (it must
        not park then); otherwise make the handle it parks on. If that fails
        (MemoryError), the task leaves as if cancelled, and the error
        propagates."""
        lock = self._lock
        lock.acquire()
        try:
            if self._state != PENDING:
                return True
            try:
                self._handle = binding.new_handle()
            except BaseException:
                self._state = ABORTED
                self._on_abort()
                raise
            return False
        finally:
            lock.release()

    # The two halves of park(), for the owners in this package that await
    # ``binding.park(task)`` themselves to save a coroutine frame on their hot
    # path. Private: lowlevel.Waiter users call park().

    def _outcome(self) -> T:
        """Return the value, or raise the exception, that ended a wait."""
        if self._state == VALUE:
            return self._result  # type: ignore[no-any-return]
        error: BaseException = self._result
        self._result = None
        try:
            raise error
        finally:
            del error

    def _outcome_after(self, exc: BaseException) -> T:
        """The parked task got ``exc`` after its wait was decided.

        Call it from the ``except`` block, only once ``_abort()`` returned False
        (when it returns True, the task simply re-raises: nothing was handed
        over, and this frame stays out of the traceback). Re-raises ``exc``,
        unless something was handed over and ``exc`` is a cancellation: then the
        value is returned, or the exception handed over raised, and the
        cancellation re-armed for the task's next checkpoint. A value that the
        task cannot return (``exc`` is not a cancellation) is given back to the
        owner through ``_on_abandon``.
        """
        try:
            binding = self._binding
            if self._state == VALUE:
                # Handed over before the task could leave: never drop it.
                value: T = self._result
                if isinstance(exc, binding.cancelled):
                    binding.keep_cancellation(exc)
                    return value
                self._on_abandon(value)
            elif self._state == ERROR and isinstance(exc, binding.cancelled):
                # An exception was handed over first (KeyCancelled, say): it
                # wins, as a value would, and the cancellation comes next.
                binding.keep_cancellation(exc)
                return self._outcome()
            raise exc
        finally:
            # This frame is in exc's traceback: break the cycle.
            del exc


def new_lock() -> threading.RLock:
    """The lock owners use: reentrant, so that a trio abort function that runs
    while its owner holds the lock (a scope cancelled from a predicate) cannot
    deadlock."""
    return threading.RLock()


__all__ = [
    "ABORTED",
    "DEAD",
    "ERROR",
    "PENDING",
    "VALUE",
    "Lock",
    "ParkedTask",
    "current_binding",
    "new_lock",
]
