"""The interface every event loop binding provides."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, ClassVar, Protocol


class Parkable(Protocol):
    """What a binding needs of the object a task parks on."""

    #: What :meth:`Binding.new_handle` made for this park.
    _handle: Any

    def _abort(self) -> bool:
        """The parked task is being cancelled: True if it may leave now, False if
        it was already resumed and will see the cancellation later. Called with
        no lock held, in the task's thread."""
        ...


class Binding(Protocol):
    """How to park and unpark tasks of one running event loop."""

    #: ``"asyncio"`` or ``"trio"``.
    name: ClassVar[str]
    #: The exception a cancellation raises in a task of this loop.
    cancelled: ClassVar[type[BaseException]]

    def new_handle(self) -> Any:
        """Make what :meth:`park` waits on and :meth:`unpark` releases.

        Called by the task that is about to park.
        """
        ...

    def park(self, task: Parkable) -> Awaitable[object]:
        """What to await to suspend the current task until :meth:`unpark` is
        called on its handle.

        An awaitable rather than a coroutine function, so that the hot path
        awaits the backend's own object (a future) with no frame in between.
        Awaiting it raises the backend's cancellation exception if the task is
        cancelled first; on trio, only after ``task._abort()`` agreed to it.
        """
        ...

    def unpark(self, handle: Any) -> bool | None:
        """Resume the task parked on ``handle``; callable from any thread.

        Called at most once per handle. Returns True if the task will resume;
        False if it never can, because its event loop has finished; None if it
        was cancelled first and is on its way out of its park with the
        cancellation (it will call its ``_abort()`` and leave). An exception
        means that the event loop could not be reached: the task stays parked.
        """
        ...

    def keep_cancellation(self, exc: BaseException) -> None:
        """Re-arm a cancellation that was caught to keep a handed-over value.

        The cancellation is then raised at the task's next checkpoint.
        """

    # The three checkpoints return what to await (as park() does), so that a
    # binding can hand out the backend's own coroutine with no frame in between.

    def checkpoint(self) -> Awaitable[None]:
        """Check for cancellation and let other tasks run."""
        ...

    def checkpoint_if_cancelled(self) -> Awaitable[None]:
        """Raise the cancellation if the task is cancelled; do not otherwise yield."""
        ...

    def cancel_shielded_checkpoint(self) -> Awaitable[None]:
        """Let other tasks run without raising a cancellation, as trio's
        function of that name does.

        Used after a value was consumed: a cancellation that arrives meanwhile is
        left for the next checkpoint instead of losing the value.
        """
        ...
