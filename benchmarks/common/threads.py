"""A task woken from another thread: the gate that makes every wake-up find
the task parked, and the thread that wakes it.

The task prepares its wait, opens the gate and parks; the thread passes the gate
and wakes the task. The gate opens only once the task has parked, the same way
in every row of a loop: on asyncio from a loop callback (callbacks run after the
current task step), on trio from a helper task that the task reschedules just
before parking (it runs after the task yields). So every wake-up finds the task
parked, whatever the thread's timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import trio
import trio.lowlevel

Gated = Callable[[Callable[[], object], Callable[[], object]], Awaitable[None]]


async def gated(body: Gated) -> None:
    """Run ``body(open_gate, pass_gate)``: the task calls ``open_gate()`` just
    before it parks; a thread's ``pass_gate()`` returns once the task has parked.
    """
    gate = threading.Lock()
    gate.acquire()
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        call_soon, release = loop.call_soon, gate.release
        await body(lambda: call_soon(release), gate.acquire)
        return
    helper: list[trio.lowlevel.Task] = []

    async def opener(task_status: trio.TaskStatus[None]) -> None:
        helper.append(trio.lowlevel.current_task())
        task_status.started()
        while True:
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED
            )
            gate.release()

    async with trio.open_nursery() as nursery:
        await nursery.start(opener)
        task, reschedule = helper[0], trio.lowlevel.reschedule
        await body(lambda: reschedule(task), gate.acquire)
        nursery.cancel_scope.cancel()


def start_thread(target: Callable[[], None]) -> threading.Thread:
    """Start ``target`` in a daemon thread, which the row joins once it is done."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
