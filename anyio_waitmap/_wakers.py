"""Waker, AtomicWaker and DiatomicWaker; their design is documented in
:mod:`anyio_waitmap.lowlevel`.
"""

# The classes of this module work on one another's private state: the
# consumer's side of ConsumerSlot runs Waker.park() and Waker.wake() inlined.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final, TypeVar, final

import anyio

from ._backends import current_binding, ki_protected, load_trio_support

if TYPE_CHECKING:
    from ._backends._base import Binding

T = TypeVar("T")

IDLE: Final = 0
PARKED: Final = 1
WOKEN: Final = 2
NOTIFIED: Final = 3
STATE_NAMES: Final = ("idle", "parked", "woken", "notified")


@final
@ki_protected
class Waker:
    """A reusable handle for waking a parked task, from any thread.

    Create it in a task of the event loop whose tasks will park on it; one task
    at a time may park on it, and it can be used again and again. Any thread
    may call :meth:`wake` any number of times; wake-ups coalesce (see
    :mod:`anyio_waitmap.lowlevel`), so a burst of them costs one resumption and
    at most one call into the event loop.

    Raises:
        anyio.NoEventLoopError: no asyncio or trio task is running in this thread
            (a :exc:`RuntimeError`), as in a loop callback or a trio instrument.
            With anyio 4.9 and 4.10, which do not have
            :exc:`~anyio.NoEventLoopError`, a plain :exc:`RuntimeError`.
    """

    __slots__ = ("_binding", "_handle", "_lock", "_requested", "_state")

    def __init__(self) -> None:
        self._binding: Binding = current_binding("Waker()")
        # Held only for a few reads and writes, and never by wake() for long:
        # see _serve() for how wake() avoids waiting for it.
        self._lock = threading.Lock()
        self._state: int = IDLE
        self._handle: object = None
        self._requested = False

    def usable_here(self) -> bool:
        """Whether tasks of the running event loop can park on this waker."""
        try:
            return current_binding("Waker.usable_here()") is self._binding
        except RuntimeError:
            return False

    def wake(self) -> None:
        """Resume the task if it is parked on this waker, else make its next
        :meth:`park` return at once. Never blocks; idempotent until the task
        runs. Safe to call from a signal handler."""
        if self._state >= WOKEN:
            # WOKEN or NOTIFIED: a resumption is due and has not happened yet.
            # The task leaves that state only on its way to re-checking what it
            # waits for, after this read: nothing to add, and no lock needed.
            return
        self._requested = True
        self._serve()

    def _serve(self) -> None:
        # Carry out the requested wake-up, unless someone else holds the lock:
        # the holder serves the request after releasing it (every holder calls
        # _serve() then). So wake() never waits, not even when a signal handler
        # calls it while the thread it interrupted holds the lock. No request
        # is left behind: the requester sets the flag before trying the lock,
        # and the holder reads the flag after releasing it, so one of the two
        # sees the other.
        lock = self._lock
        while self._requested and lock.acquire(False):
            try:
                self._requested = False
                state = self._state
                if state == PARKED:
                    self._state = WOKEN
                    if not self._binding.unpark(self._handle):
                        # Its event loop has finished: it will never run again.
                        self._state = IDLE
                elif state == IDLE:
                    self._state = NOTIFIED
            finally:
                lock.release()

    async def park(self) -> None:
        """Wait for a wake-up; return at once if one arrived since the last return.

        Must be awaited by a task of the event loop the waker was created in, by
        one task at a time. This is a checkpoint. A wake-up is never lost to a
        cancellation: if this raises, a wake-up that was already there or that
        arrived meanwhile makes the next :meth:`park` return at once.
        """
        binding = self._binding
        lock = self._lock
        lock.acquire()
        try:
            notified = self._state == NOTIFIED
            if notified:
                self._state = IDLE
            else:
                # The handle first: if making it fails, the waker stays idle.
                self._handle = binding.new_handle()
                self._state = PARKED
        finally:
            lock.release()
        if self._requested:
            # Requested before or while we held the lock, and so ours to serve. If
            # we are about to park, take the wake-up here instead; otherwise keep
            # it for the next park().
            if notified:
                self._serve()
            else:
                notified = self._unpark_self()
        try:
            if notified:
                await binding.checkpoint()
                return
            await binding.park(self)
        except BaseException:
            self._leave(notified)
            raise
        lock = self._lock
        # _serve() may have changed the state from another thread.
        if self._state == WOKEN and not lock.locked():  # pyright: ignore[reportUnnecessaryComparison]
            # Resumed by a wake-up: only this task moves the state on from
            # WOKEN, since _serve() and wake() leave it alone, so no lock is
            # needed.
            self._state = IDLE
            self._handle = None
        else:
            # The wake-up that resumed the task holds the lock still, in the
            # middle of its call into the event loop from another thread:
            # waiting for it keeps the state WOKEN meanwhile, so that the
            # wake-ups of the rest of a burst fold into this resumption.
            lock.acquire()
            self._state = IDLE
            self._handle = None
            lock.release()
            if self._requested:
                self._serve()

    def _leave(self, notified: bool) -> None:
        # park() raises (a cancellation): keep the wake-up it had taken, or that
        # resumed it before the exception did (WOKEN), or that came after a trio
        # abort function made it idle (NOTIFIED). A wake-up may be deciding
        # under the lock right now, from another thread.
        with self._lock:
            keep = notified or self._state in (WOKEN, NOTIFIED)
            self._state = NOTIFIED if keep else IDLE
            self._handle = None
        if self._requested:
            self._serve()

    def _unpark_self(self) -> bool:
        # True if the task took the requested wake-up before parking; False if
        # someone else served it meanwhile and the task's resumption is on its way.
        with self._lock:
            # Cleared before the state is read, as in _serve(): a request made
            # from here on is served below.
            self._requested = False
            took = self._state == PARKED
            if took:
                self._state = IDLE
                self._handle = None
        self._serve()
        return took

    def _abort(self) -> bool:
        # trio's abort function: leave unless a wake-up already resumed the task.
        with self._lock:
            aborted = self._state == PARKED
            if aborted:
                self._state = IDLE
        self._serve()
        return aborted

    def __repr__(self) -> str:
        return (
            f"<anyio_waitmap.lowlevel.Waker {STATE_NAMES[self._state]} "
            f"on {self._binding.name}>"
        )


@final
@ki_protected
class AtomicWaker:
    """A slot for the waker of the one task that wants to be woken next.

    * :meth:`register` stores a waker; the last one registered wins, and an
      earlier one is not woken by later wake-ups.
    * :meth:`wake` takes the registered waker out and wakes it. With nothing
      registered it does nothing, and nothing is remembered for a later
      :meth:`register`.

    Use it as: register, check your condition, then park; producers change the
    condition, then :meth:`wake`. A wake-up racing the registration is not lost:
    either it comes after the registration and wakes the waker, or it comes
    before and the check after registering sees the changed condition.
    """

    __slots__ = ("_lock", "_waker")

    def __init__(self) -> None:
        load_trio_support()
        self._lock = threading.Lock()
        self._waker: Waker | None = None

    def register(self, waker: Waker) -> None:
        """Make ``waker`` the one that the next :meth:`wake` wakes."""
        with self._lock:
            self._waker = waker

    def take(self) -> Waker | None:
        """Remove and return the registered waker, without waking it."""
        if self._waker is None:
            return None
        with self._lock:
            waker = self._waker
            self._waker = None
        return waker

    def wake(self) -> bool:
        """Wake the registered waker and clear the registration.

        Returns:
            Whether a waker was registered.
        """
        waker = self.take()
        if waker is None:
            return False
        waker.wake()
        return True

    def __repr__(self) -> str:
        state = "empty" if self._waker is None else "registered"
        return f"<anyio_waitmap.lowlevel.AtomicWaker {state}>"


@ki_protected
class ConsumerSlot:
    """What :class:`DiatomicWaker` and :class:`~anyio_waitmap.WakeSink` share:
    the slot for the consumer's waker, and the consumer's and the notifiers'
    sides of the protocol.

    The two classes inherit these methods rather than one calling the other, so
    that ``WakeSink.wait_until`` is a single coroutine frame: every resumption
    of the consumer passes through each frame of the chain it awaits in.
    """

    __slots__ = ("_cached", "_closed", "_consumer", "_waker")

    #: How wait_until() names itself in an error message.
    _wait_until_name: ClassVar[str]

    def __init__(self) -> None:
        load_trio_support()
        # The registered waker, which notify() wakes: one reference, stored and
        # read without a lock.
        self._waker: Waker | None = None
        # The waker wait_until() used last, reused while the loop stays the same.
        self._cached: Waker | None = None
        # One token, which the waiting task holds: list.pop() and list.append()
        # are atomic, and cheaper than a lock's acquire(False) and release().
        self._consumer: list[None] = [None]
        self._closed = False  # set only by WakeSink.close()

    def notify(self) -> None:
        """Make the waiting task check its predicate again, if a task is waiting.

        Never blocks; callable from any thread, and from a signal handler. Costs
        one read when no task waits.
        """
        # Tested on the attribute first, the way asyncio.Event.set() tests its
        # flag, so that the common case costs no more; then read again for the
        # call, since the consumer may unregister it in between. What follows
        # is Waker.wake(), written out: every notification that finds the
        # consumer runs it, and calling it costs 21 % more per notify in a
        # burst (callgrind).
        if self._waker is not None:
            waker = self._waker
            if waker is not None and waker._state < WOKEN:  # pyright: ignore[reportUnnecessaryComparison]
                waker._requested = True
                waker._serve()

    async def wait_until(self, predicate: Callable[[], T | None]) -> T:
        """Return the first value other than ``None`` that ``predicate`` returns.

        ``predicate`` is called in the waiting task: once right away, once more
        after the task is registered for notifications (so that a notification
        between the two is not missed), and again after every notification. It
        may consume what it finds (``deque.popleft``): the value it returns is
        never lost to a cancellation.

        This is a checkpoint on every path. If the task is cancelled while
        waiting, it leaves nothing registered; if ``predicate`` had already
        returned a value, that value is returned and the cancellation is raised
        at the task's next checkpoint.

        Raises:
            TypeError: ``predicate`` is not callable.
            anyio.BusyResourceError: another task is already waiting here.
            anyio.ClosedResourceError: the :class:`~anyio_waitmap.WakeSink` is or
                gets closed.
            Exception: whatever ``predicate`` raised; nothing stays registered.
        """
        if not callable(predicate):
            raise TypeError(
                f"wait_until() needs a callable predicate, got "
                f"{type(predicate).__name__!r} object"
            )
        binding = current_binding(self._wait_until_name)
        consumer = self._consumer
        try:
            consumer.pop()
        except IndexError:
            await binding.checkpoint_if_cancelled()  # a cancellation comes first
            # anyio words it: "Another task is already waiting on this resource".
            raise anyio.BusyResourceError("waiting on") from None
        try:
            # Before anything else: a pending cancellation wins over the closed
            # sink, and leaves the predicate uncalled.
            await binding.checkpoint_if_cancelled()
            if self._closed:
                raise anyio.ClosedResourceError("the WakeSink is closed")
            value = predicate()
            if value is not None:
                await binding.cancel_shielded_checkpoint()
                return value
            waker = self._cached
            if waker is None or waker._binding is not binding:
                waker = self._cached = Waker()
            self._waker = waker
            try:
                while True:
                    # Also right after registering: a close() before that found
                    # nothing to wake.
                    if self._closed:
                        raise anyio.ClosedResourceError(
                            "the WakeSink was closed while a task was waiting on it"
                        )
                    value = predicate()
                    if value is not None:
                        return value
                    # `await waker.park()`, written out: every wait that parks
                    # runs it, and the consumer's resumptions then pass through
                    # one coroutine frame fewer; awaiting it costs 3.1 % more
                    # per WakeSink ping-pong round trip (callgrind), and 1-5 %
                    # more time (benchmarks/wakers.py when it was written out).
                    # Waker.park() explains each step.
                    lock = waker._lock
                    lock.acquire()
                    try:
                        notified = waker._state == NOTIFIED
                        if notified:
                            waker._state = IDLE
                        else:
                            waker._handle = binding.new_handle()
                            waker._state = PARKED
                    finally:
                        lock.release()
                    if waker._requested:
                        if notified:
                            waker._serve()
                        else:
                            notified = waker._unpark_self()
                    try:
                        if notified:
                            await binding.checkpoint()
                            continue
                        await binding.park(waker)
                    except BaseException:
                        waker._leave(notified)
                        raise
                    lock = waker._lock
                    # _serve() may have changed the state from another thread.
                    if waker._state == WOKEN and not lock.locked():  # pyright: ignore[reportUnnecessaryComparison]
                        waker._state = IDLE
                        waker._handle = None
                    else:
                        lock.acquire()
                        waker._state = IDLE
                        waker._handle = None
                        lock.release()
                        if waker._requested:
                            waker._serve()
            finally:
                self._waker = None
        finally:
            consumer.append(None)


@final
@ki_protected
class DiatomicWaker(ConsumerSlot):
    """One consumer waits until a condition holds; any thread notifies it.

    The protocol, and why it loses no notification and makes nobody wait, is
    described in the documentation of :mod:`anyio_waitmap.lowlevel`.
    :class:`~anyio_waitmap.WakeSink` is the high-level interface built on it.
    """

    __slots__ = ()

    _wait_until_name = "DiatomicWaker.wait_until()"

    def register(self, waker: Waker) -> None:
        """Make ``waker`` the one that :meth:`notify` wakes. Never blocks."""
        self._waker = waker

    def unregister(self) -> None:
        """Stop waking any waker. Never blocks."""
        self._waker = None

    @property
    def registered(self) -> bool:
        """Whether a waker is registered."""
        return self._waker is not None

    def waker(self) -> Waker:
        """A waker for the running event loop: the last one used, if it is one.

        Reusing it saves an allocation on every wait of a consumer that stays in
        one event loop.
        """
        waker = self._cached
        if waker is None or not waker.usable_here():
            waker = self._cached = Waker()
        return waker

    def __repr__(self) -> str:
        state = "idle" if self._waker is None else "registered"
        return f"<anyio_waitmap.lowlevel.DiatomicWaker {state}>"
