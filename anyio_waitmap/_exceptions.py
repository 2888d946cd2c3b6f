"""Exceptions raised by anyio-waitmap."""

from __future__ import annotations

from typing import final

import anyio


@final
class KeyCancelled(LookupError):
    """Raised in a task waiting on :attr:`key` when the key was cancelled.

    See :meth:`WaitMap.cancel <anyio_waitmap.WaitMap.cancel>` and
    :meth:`WaitMap.cancel_all <anyio_waitmap.WaitMap.cancel_all>`.

    Attributes:
        key: the key whose waiters were cancelled.
    """

    def __init__(self, key: object) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"waiting on key {self.key!r} was cancelled"


@final
class WaitMapClosed(anyio.ClosedResourceError):
    """Raised by waiting on, or storing into, a closed :class:`~anyio_waitmap.WaitMap`.

    Stored values stay readable after :meth:`~anyio_waitmap.WaitMap.close`.
    """


@final
class DuplicateWaiter(anyio.BusyResourceError):
    """Raised in an ``exclusive=True`` map by a second task that would wait on a key.

    The task already waiting on the key is unaffected.
    """

    def __init__(self, message: str) -> None:
        # BusyResourceError formats its own message from an action name.
        Exception.__init__(self, message)
