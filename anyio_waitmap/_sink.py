"""WakeSink and WakeSource: one consumer waits for a condition, anyone notifies."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, final

import anyio

from ._backends import ki_protected
from ._wakers import DiatomicWaker

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class WakeSinkStatistics:
    """A snapshot of a :class:`~anyio_waitmap.WakeSink`, from
    :meth:`~anyio_waitmap.WakeSink.statistics`."""

    #: Whether a task is in :meth:`~anyio_waitmap.WakeSink.wait_until`.
    consumer_waiting: bool
    #: Whether :meth:`~anyio_waitmap.WakeSink.close` was called.
    closed: bool


@final
@ki_protected
class WakeSink:
    """Lets one task wait until a condition holds, and anyone wake it to re-check.

    The condition lives in your own state (a deque, a counter, a flag): the
    consumer passes a predicate that reads it to :meth:`wait_until`, and the
    producers change the state and then call :meth:`notify` (or
    :meth:`WakeSource.notify`), from any task or thread. Notifications are not
    stored: they only make the consumer check again. Many notifications before
    the consumer runs cost one check, and from other threads at most one call
    into its event loop.

    Two sinks are equal only if they are the same object.
    """

    __slots__ = ("__weakref__", "_closed", "_consumer", "_waker")

    def __init__(self) -> None:
        self._waker = DiatomicWaker()
        self._consumer = threading.Lock()  # held while a task is in wait_until()
        self._closed = False

    def source(self) -> WakeSource:
        """Return a handle that producers can :meth:`~WakeSource.notify` through."""
        return WakeSource(self)

    def notify(self) -> None:
        """Make the waiting task check its predicate again, if a task is waiting.

        Never blocks; callable from any thread. Costs one read when no task waits.
        """
        waker = self._waker
        if waker._waker is not None:  # pyright: ignore[reportPrivateUsage]
            waker.notify()

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
            anyio.BusyResourceError: another task is already waiting on this sink.
            anyio.ClosedResourceError: the sink is or gets closed.
            Exception: whatever ``predicate`` raised; nothing stays registered.
        """
        if not callable(predicate):
            raise TypeError(
                f"wait_until() needs a callable predicate, got "
                f"{type(predicate).__name__!r} object"
            )
        if not self._consumer.acquire(False):
            # anyio words it: "Another task is already waiting on this resource".
            raise anyio.BusyResourceError("waiting on")
        try:
            if self._closed:
                raise anyio.ClosedResourceError("the WakeSink is closed")

            def check() -> T | None:
                if self._closed:
                    raise anyio.ClosedResourceError(
                        "the WakeSink was closed while a task was waiting on it"
                    )
                return predicate()

            return await self._waker.wait_until(check)
        finally:
            self._consumer.release()

    def close(self) -> None:
        """Close the sink for good; idempotent.

        The waiting task, and every later :meth:`wait_until`, raises
        :exc:`anyio.ClosedResourceError`. Notifying a closed sink does nothing.
        """
        self._closed = True
        self._waker.notify()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def statistics(self) -> WakeSinkStatistics:
        """Return a snapshot of the sink's state."""
        return WakeSinkStatistics(
            consumer_waiting=self._consumer.locked(), closed=self._closed
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        waiting = ", consumer waiting" if self._consumer.locked() else ""
        return f"<anyio_waitmap.WakeSink {state}{waiting}>"


@final
@ki_protected
class WakeSource:
    """The producers' side of a :class:`WakeSink`: it can only notify.

    Get one with :meth:`WakeSink.source`; make as many as you like.
    """

    __slots__ = ("_sink", "_waker")

    def __init__(self, sink: WakeSink) -> None:
        self._sink = sink
        self._waker = sink._waker  # pyright: ignore[reportPrivateUsage]

    def notify(self) -> None:
        """Same as :meth:`WakeSink.notify`: never blocks, any thread."""
        waker = self._waker
        if waker._waker is not None:  # pyright: ignore[reportPrivateUsage]
            waker.notify()

    @property
    def closed(self) -> bool:
        """Whether the sink was closed."""
        return self._sink.closed

    def __repr__(self) -> str:
        return f"<anyio_waitmap.WakeSource of {self._sink!r}>"
