"""The "floor" of a keyed hand-over: the least that any thread-safe one with
WaitMap's guarantees does, written out by hand, for fanin.py, steps.py and
wakers_thread.py.

* A lock around both sides, since any thread may wake.
* The waiter's own event loop, found at each wait, since tasks of any loop may
  wait on one map.
* A slot that keeps a value handed over even if the task is cancelled before it
  resumes, and a cancelled waiter that leaves only if nothing was handed over.
* A wake that checks whether it runs in the waiter's loop thread, and otherwise
  goes through the loop's thread-safe call.

No stored values, counts, closing, predicates or several waiters per key.
"""

from __future__ import annotations

import asyncio
import threading
from asyncio.events import _get_running_loop
from typing import Any

import trio
import trio.lowlevel

_EMPTY: Any = object()


class _Slot:
    """One waiter: what it parks on, and where a wake leaves the value."""

    __slots__ = ("handle", "value")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.value: Any = _EMPTY


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncioFloor:
    """Tasks of any asyncio loop wait on a key; any thread wakes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[object, _Slot] = {}

    async def wait(self, key: object) -> Any:
        slot = _Slot(asyncio.get_running_loop().create_future())
        lock = self._lock
        lock.acquire()
        self._slots[key] = slot
        lock.release()
        try:
            await slot.handle
        except BaseException:
            lock.acquire()
            try:
                if self._slots.get(key) is slot:  # not woken: leave
                    del self._slots[key]
                    raise
            finally:
                lock.release()
        return slot.value

    def wake(self, key: object, value: object) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            slot = self._slots.pop(key, None)
            if slot is None:
                return False
            slot.value = value
            future = slot.handle
            loop = future.get_loop()
            if _get_running_loop() is loop:
                future.set_result(None)
            else:
                loop.call_soon_threadsafe(_set_if_pending, future)
            return True
        finally:
            lock.release()


class TrioFloor:
    """The trio twin of AsyncioFloor, for the trio run it is made in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[object, _Slot] = {}
        self._thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()

    async def wait(self, key: object) -> Any:
        slot = _Slot(trio.lowlevel.current_task())
        lock = self._lock
        slots = self._slots
        lock.acquire()
        slots[key] = slot
        lock.release()

        def abort(_: Any) -> trio.lowlevel.Abort:
            lock.acquire()
            try:
                if slots.get(key) is slot:  # not woken: leave
                    del slots[key]
                    return trio.lowlevel.Abort.SUCCEEDED
                return trio.lowlevel.Abort.FAILED
            finally:
                lock.release()

        await trio.lowlevel.wait_task_rescheduled(abort)
        return slot.value

    def wake(self, key: object, value: object) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            slot = self._slots.pop(key, None)
            if slot is None:
                return False
            slot.value = value
            if threading.get_ident() == self._thread:
                trio.lowlevel.reschedule(slot.handle)
            else:
                self._token.run_sync_soon(trio.lowlevel.reschedule, slot.handle)
            return True
        finally:
            lock.release()
