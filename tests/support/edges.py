"""Helpers of the tests that force a narrow window (tests/*/test_*_edges.py).

A lock wrapper that runs an action at an exact point of the library's own
locking, and a waker's state as its repr shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anyio_waitmap.lowlevel import Waker


class HookedLock:
    """A lock that runs ``before[n]`` before and ``after[n]`` after its n-th
    acquisition (counted from 0, whether it succeeds or not), and
    ``releasing[n]`` just before its n-th release (the lock still held)."""

    def __init__(
        self,
        lock: Any,
        before: dict[int, Callable[[], object]] | None = None,
        after: dict[int, Callable[[], object]] | None = None,
        releasing: dict[int, Callable[[], object]] | None = None,
    ) -> None:
        self._lock = lock
        self._before = before or {}
        self._after = after or {}
        self._releasing = releasing or {}
        self.acquisitions = 0
        self.releases = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        n = self.acquisitions
        self.acquisitions += 1
        if n in self._before:
            self._before.pop(n)()
        acquired: bool = self._lock.acquire(blocking, timeout)
        if acquired and n in self._after:
            self._after.pop(n)()
        return acquired

    def release(self) -> None:
        n = self.releases
        self.releases += 1
        if n in self._releasing:
            self._releasing.pop(n)()
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _state(waker: Waker) -> str:
    return repr(waker).split()[1]
