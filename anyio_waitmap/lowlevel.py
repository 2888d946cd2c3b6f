"""Building blocks for writing your own waiting primitives.

The high-level classes of :mod:`anyio_waitmap` are built from these parts.

:class:`Waiter` is a handle on one task that is about to wait. The task links the
waiter into a structure of yours (under your lock), then awaits
:meth:`Waiter.park`; any thread can later :meth:`~Waiter.wake` it with a value or
:meth:`~Waiter.throw` an exception into it. The waiter resolves exactly once:
whichever of wake, throw or the task's own cancellation comes first wins, under
your lock, so nothing is delivered twice and a delivered value is never lost.

The task may do other things between linking the waiter and parking, awaited
ones included, such as sending the request whose reply it waits for (as
:meth:`WaitMap.expect <anyio_waitmap.WaitMap.expect>` does): a wake-up in
between is kept, and :meth:`Waiter.park` then returns the value at once (still a
checkpoint). If the task leaves without parking, unlink the waiter yourself. One
difference with ``expect``: a waiter that was handed a value returns it from
:meth:`~Waiter.park` even when a cancellation is pending (the cancellation
follows at the next checkpoint), since the waiter has nowhere to pass the value
on to.

Wakers: wake a task again and again, from any thread
----------------------------------------------------

A :class:`Waker` belongs to one event loop. One task of that loop at a time
parks on it; anyone wakes it. It has four states, changed under its own small
lock (with one exception, below):

``IDLE``
    The task is not parked and no wake-up is pending.
``PARKED``
    The task is suspended in :meth:`Waker.park`.
``WOKEN``
    A wake-up resumed the parked task (one call into its event loop is on its
    way), and the task has not run yet.
``NOTIFIED``
    A wake-up arrived while the task was not parked; its next :meth:`Waker.park`
    returns at once.

``wake()`` moves ``PARKED`` to ``WOKEN`` (and is the only transition that calls
into the event loop) and ``IDLE`` to ``NOTIFIED``; in ``WOKEN`` and ``NOTIFIED`` it
does nothing, not even take the lock, because a resumption is already due (the
task leaves those states only on its way to re-checking what it waits for).

``wake()`` never waits for the lock. It sets a "requested" flag, then tries the
lock without blocking; if it gets it, it clears the flag and makes the
transition. If someone else holds the lock, it leaves: every holder looks at the
flag after releasing the lock and serves the request itself. The flag is set
before the lock is tried and read after it is released, so one of the two always
sees the other, and no wake-up is lost. So ``wake()`` is safe even in a signal
handler that interrupted the waker's own task in the middle of
:meth:`Waker.park`; if the task takes the request there, before it parks, it
returns at once instead of parking. That is the coalescing: any
number of wake-ups between two resumptions cost one resumption and at most one
cross-thread call. When ``park()`` returns, the state is ``IDLE`` again; when
it raises (a cancellation), ``NOTIFIED`` if a wake-up had come, so that no
wake-up is lost to a cancellation. From
``WOKEN`` the task moves it there without the lock, since nobody else moves a
waker out of ``WOKEN``, unless the wake-up that resumed it still holds the lock
(from another thread, in its call into the event loop): then the task waits for
it, and the wake-ups of the rest of a burst meanwhile fold into this resumption.
A
wake-up that was folded into a pending one happened before the task resumed, so
whatever the task checks after ``park()`` returns already sees its effects.

:class:`AtomicWaker` and :class:`DiatomicWaker` hold the waker of the task that
wants to be woken, so that producers can find it. Both rely only on operations
that are atomic without the GIL: a lock, a non-blocking lock acquisition, a
list's ``pop()`` and ``append()``, and single reads and writes of an object
reference (a reference is one machine word: a reader sees the old object or the
new one, never a mix).

The :class:`DiatomicWaker` protocol
-----------------------------------

One consumer, any number of notifiers, any threads.

The consumer, in :meth:`~DiatomicWaker.wait_until`: checks its predicate;
*registers* its waker (one reference store into the slot); checks again; parks;
after every resumption checks again; *unregisters* (stores ``None``) when it
leaves, however it leaves. A notifier first changes the state the predicate
reads, then calls :meth:`~DiatomicWaker.notify`.

Why no notification is lost: a notifier reads the slot after changing the state.
If it reads ``None``, the consumer had not registered yet, so its check after
registering comes later and sees the new state. If it reads the waker, it wakes
it: the consumer is either parked (and resumes) or about to park (and the
waker's ``NOTIFIED`` state makes that park return at once).

Why nobody waits on anybody: registering and unregistering are single stores
that never take a lock, so the consumer never makes a notifier wait, and a
notifier never delays a consumer that registers. A notify is a read of the slot
and the steps of :meth:`Waker.wake`, which never wait (see above), so notifiers
do not wait on each other either, and their wake-ups coalesce in the waker. A
notifier may read a waker just before the consumer unregisters it and wake it
late: that only makes the consumer's next :meth:`Waker.park` on it return at
once, and the consumer checks its predicate again. A notify with nobody
registered is one read of the slot; when that read finds a waker, the notify
reads the slot again for the call, and does nothing if it is ``None`` by then:
the consumer has left since, and it checks its predicate again at its next wait
before it parks.

:meth:`~DiatomicWaker.wait_until` keeps to one consumer with a one-element list
of which the waiting task pops the element and pushes it back when it leaves:
``list.pop()`` and ``list.append()`` are atomic, so a second consumer finds the
list empty and is refused.

The Rust ``diatomic-waker`` crate needs two waker slots, because there a waker
is several words that a notifier copies while the consumer may replace it; a
Python reference is replaced and read atomically, so one slot gives the same
guarantees here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, final

from ._backends import current_binding as _current_binding
from ._backends import ki_protected as _ki_protected
from ._parking import PENDING as _PENDING
from ._parking import ParkedTask as _ParkedTask
from ._wakers import AtomicWaker as AtomicWaker
from ._wakers import DiatomicWaker as DiatomicWaker
from ._wakers import Waker as Waker

__all__ = ["AtomicWaker", "DiatomicWaker", "Waiter", "Waker"]

_T = TypeVar("_T")


@final
@_ki_protected
class Waiter(_ParkedTask[_T]):
    """A handle on one wait of a task, for parking it until something arrives.

    Create it in the task that will wait, link it where wakers can find it while
    holding ``lock``, release the lock, then ``await waiter.park()``. In between
    the task may do other things, awaited ones included (send the request whose
    reply it waits for): a wake-up meanwhile is kept for :meth:`park`. A waiter
    that is never parked must be unlinked by its owner.

    Args:
        lock: the lock that guards your structure (a :class:`threading.Lock` or
            :class:`threading.RLock`). Resolving the waiter and cancelling the task
            take it, so whoever holds it sees a consistent state. A new
            :class:`threading.RLock` if omitted.
        on_abort: called (with ``lock`` held, at most once) if the task leaves
            :meth:`park` before it was woken or thrown into, typically because it
            was cancelled: unlink the waiter from your structure there. It must not
            raise; if it does, :meth:`park` raises that exception instead of the
            cancellation.

    Raises:
        anyio.NoEventLoopError: no asyncio or trio task is running in this thread
            (a :exc:`RuntimeError`; a plain :exc:`RuntimeError` with anyio
            4.9 and 4.10, which do not have :exc:`~anyio.NoEventLoopError`).
    """

    __slots__ = ("_abort_callback",)

    def __init__(
        self,
        lock: threading.Lock | threading.RLock | None = None,
        on_abort: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(
            threading.RLock() if lock is None else lock, _current_binding("Waiter()")
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
            already resolved, if its task left or is on its way out with a
            cancellation that came first (``on_abort`` is then called as it
            leaves), or if its event loop has finished (then nothing more
            happens: unlink it yourself).

        Raises:
            MemoryError: the call into the task's event loop from another
                thread failed. The waiter is then resolved as if its event loop
                had finished, and its task leaves when it is cancelled.
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


def _set_public_module() -> None:
    # Show the public classes as anyio_waitmap.lowlevel.X in reprs and docs.
    for name in __all__:  # classes only
        globals()[name].__module__ = __name__


_set_public_module()
