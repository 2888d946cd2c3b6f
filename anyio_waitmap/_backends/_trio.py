"""Parking on trio: ``wait_task_rescheduled`` with an abort function that unlinks."""

# A friend of the parking layer (_parking.py): a binding reads the handle of
# the task that parks and calls its abort, as the Parkable protocol of _base.py
# says. (What it reads of trio's internals is said where it does.)
# pyright: reportPrivateUsage=false

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import trio
from outcome import Error
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    RunVar,
    Task,
    TrioToken,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    current_task,
    current_trio_token,
    enable_ki_protection,
    in_trio_task,
    reschedule,
    wait_task_rescheduled,
)

if TYPE_CHECKING:
    from ._base import Parkable


class TrioBinding:
    """Parks tasks of one ``trio.run`` with ``wait_task_rescheduled``."""

    __slots__ = ("_thread", "_token")

    name: ClassVar[str] = "trio"
    cancelled: ClassVar[type[BaseException]] = trio.Cancelled

    def __init__(self) -> None:
        self._token: TrioToken = current_trio_token()
        self._thread = threading.get_ident()

    def new_handle(self) -> Task:
        return current_task()

    def park(self, task: Parkable) -> Coroutine[Any, Any, object]:
        def abort(raise_cancel: RaiseCancelT) -> Abort:
            # Runs in the run's thread while the task is parked, and must not
            # raise: trio would take it for a bug of its own and end the run.
            try:
                return Abort.SUCCEEDED if task._abort() else Abort.FAILED
            except BaseException as exc:
                # An unlink that failed (a lowlevel.Waiter's on_abort raised):
                # the task leaves with the error instead, as it does on asyncio.
                reschedule(task._handle, Error(exc))
                return Abort.FAILED

        # Returned, not awaited: the caller awaits it, saving a coroutine frame.
        return wait_task_rescheduled(abort)  # noqa: ASYNC105

    def unpark(self, handle: Task) -> bool:
        if threading.get_ident() == self._thread:
            try:
                running = current_task()
            except RuntimeError:
                # No task is running in this thread: the run has finished (the
                # token says so below), or the run loop itself calls, between
                # tasks (from an instrument or a signal handler, say). The loop
                # may be about to sleep on I/O, so it must be woken through its
                # token.
                running = handle
            if running is not handle:
                reschedule(handle)
                return True
            # Or the task to resume is the one running: a signal handler
            # interrupted it between deciding to park and parking. It is parked
            # by the time the run loop calls back.
        try:
            self._token.run_sync_soon(reschedule, handle)
        except trio.RunFinishedError:
            return False
        except OSError:
            # Raised by the write that wakes the run, which comes after the
            # callback was queued: the run calls it when it next wakes up.
            # Anything else (MemoryError) comes before.
            return True
        return True

    def keep_cancellation(self, exc: BaseException) -> None:
        # Nothing to do: a cancel scope stays cancelled, and trio raises
        # Cancelled again at the task's next checkpoint by itself. (A woken task
        # gets here only from a checkpoint of ours: its abort function refuses
        # the cancellation once it was woken.)
        pass

    # What anyio's checkpoints do on trio, called directly: anyio would look the
    # backend up again on every call.
    checkpoint = staticmethod(checkpoint)
    checkpoint_if_cancelled = staticmethod(checkpoint_if_cancelled)
    cancel_shielded_checkpoint = staticmethod(cancel_shielded_checkpoint)


#: The RunVar that holds each run's binding.
binding_var: Final[RunVar[TrioBinding]] = RunVar("anyio_waitmap binding")

run_context: Any
try:
    # trio's state of the run in this thread, which current_binding() reads
    # directly: the running task is run_context.task (absent between tasks),
    # and a run's RunVar values are in its runner's _locals, where RunVar.get()
    # finds them. in_trio_task() and RunVar.get() would each read run_context
    # again behind a call of their own, which costs more than the lookup itself
    # on every wait. This reaches into trio (checked with 0.32 and 0.35). Should
    # a later trio move it, current_binding() falls back to
    # current_trio_binding(), only slower, and tests/backends/test_binding.py
    # says so.
    from trio._core import _run

    run_context = _run.GLOBAL_RUN_CONTEXT
except (ImportError, AttributeError):  # pragma: no cover
    run_context = None


def current_trio_binding() -> TrioBinding | None:
    """The binding of the trio run in this thread, or None outside of a trio
    task; made at the run's first lookup."""
    if not in_trio_task():
        return None
    try:
        return binding_var.get()
    except LookupError:
        binding = TrioBinding()
        binding_var.set(binding)
        return binding


def protect(functions: Iterable[Callable[..., object]]) -> None:
    """Have trio defer a KeyboardInterrupt while any of ``functions`` runs."""
    for function in functions:
        enable_ki_protection(function)
