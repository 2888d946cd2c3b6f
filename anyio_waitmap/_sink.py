"""WakeSink and WakeSource: one consumer waits for a condition, anyone notifies."""

# A friend of _wakers.py: WakeSource.notify() makes the request of
# Waker.wake() itself, on the waker's own state, as ConsumerSlot.notify() does.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from ._backends import ki_protected
from ._wakers import (
    WOKEN,
    ConsumerSlot,
)


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
class WakeSink(ConsumerSlot):
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

    __slots__ = ("__weakref__",)

    _wait_until_name = "WakeSink.wait_until()"

    def source(self) -> WakeSource:
        """Return a handle that producers can :meth:`~WakeSource.notify` through."""
        return WakeSource(self)

    def close(self) -> None:
        """Close the sink for good; idempotent.

        The waiting task, and every later :meth:`wait_until`, raises
        :exc:`anyio.ClosedResourceError`. Notifying a closed sink does nothing.
        """
        self._closed = True
        self.notify()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def statistics(self) -> WakeSinkStatistics:
        """Return a snapshot of the sink's state."""
        return WakeSinkStatistics(
            consumer_waiting=not self._consumer, closed=self._closed
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        waiting = "" if self._consumer else ", consumer waiting"
        return f"<anyio_waitmap.WakeSink {state}{waiting}>"


@final
@ki_protected
class WakeSource:
    """The producers' side of a :class:`WakeSink`: it can only notify.

    Get one with :meth:`WakeSink.source`; make as many as you like.
    """

    __slots__ = ("_sink",)

    def __init__(self, sink: WakeSink) -> None:
        self._sink = sink

    def notify(self) -> None:
        """Same as :meth:`WakeSink.notify`: never blocks, any thread."""
        # ConsumerSlot.notify(), written out: the same reads, and Waker.wake().
        # Calling it costs 28 % more per notify in a burst (callgrind).
        if self._sink._waker is not None:
            waker = self._sink._waker
            if waker is not None and waker._state < WOKEN:  # pyright: ignore[reportUnnecessaryComparison]
                waker._requested = True
                waker._serve()

    @property
    def closed(self) -> bool:
        """Whether the sink was closed."""
        return self._sink.closed

    def __repr__(self) -> str:
        return f"<anyio_waitmap.WakeSource of {self._sink!r}>"
