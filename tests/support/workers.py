"""Threads for tests: results and exceptions come back, and nothing hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long a test waits for a thread before it fails instead of hanging.
JOIN_TIMEOUT = 10.0


class Worker(threading.Thread, Generic[T]):
    """A daemon thread that keeps what its function returned or raised."""

    def __init__(self, function: Callable[[], T], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._function = function
        self._result: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._function()
        except BaseException as exc:
            self._error = exc

    def finish(self, timeout: float = JOIN_TIMEOUT) -> T:
        """Join the thread, fail if it is still alive, re-raise what it raised."""
        self.join(timeout)
        assert not self.is_alive(), f"thread {self.name!r} did not finish"
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def run_in_thread_now(function: Callable[[], T]) -> T:
    """Run ``function`` in a new thread and join it without yielding to the loop.

    Called from a task, this blocks the event loop for a moment, so no other task
    of the loop can run while ``function`` runs (a wake-up it sends is queued
    into the loop, not yet run). ``function`` must not need the loop.
    """
    worker = Worker(function, "synchronous helper")
    worker.start()
    return worker.finish()
