"""From the floor to WaitMap, one step at a time (keyed fan-in).

``fanin.py`` shows how much a ``WaitMap`` hand-over costs more than the floor
(``common/floor.py``: the least a thread-safe keyed hand-over with the same
guarantees does). This script splits that gap: each row is the row before it
with one more thing that ``WaitMap`` does, and the last row is ``WaitMap``
itself.

* ``floor``: ``common.floor.AsyncioFloor``, the floor row of ``fanin.py``.
* ``+ binding``: the loop found with the package's ``current_binding()``
  (which also checks that a task is running, and serves tasks of any loop)
  and the future made by the binding, instead of ``asyncio.get_running_loop()``.
* ``+ RLock``: the map's reentrant lock instead of a ``threading.Lock``.
* ``+ waiter object``: ``WaitMap``'s waiter (nine fields, made by its
  ``__init__``) and the binding's ``park()``, instead of a two-field slot.
* ``+ unpark call``: the wake-up through the binding's ``unpark()``, instead of
  the same checks written inline.
* ``WaitMap``: the ``WaitMap`` row of ``fanin.py``. What remains: stored
  values looked up at each wait, the closed flag, the ``exclusive`` check,
  several waiters per key, the counts behind ``statistics()``, and the method
  calls that hold it together.

On trio the same steps start from ``common.floor.TrioFloor``, and the
binding's lookup replaces no lookup at all: the trio floor is made in one run
and serves only that one.

Per key, net of spawning and finishing the tasks (the spawn-only row of the
same round subtracted), on asyncio, asyncio+uvloop and trio; rows sampled in
interleaved rounds, each sample in a fresh event loop, with the cyclic GC
collected before and disabled during the sample.

From the repository root (``python -m benchmarks.steps`` works too):

    python benchmarks/steps.py [--keys 10000] [--rounds 11] [--json FILE] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import threading
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.lowlevel
import trio.testing

from anyio_waitmap._backends import current_binding
from anyio_waitmap._parking import VALUE
from anyio_waitmap._registry import KeyWaiter
from benchmarks import fanin
from benchmarks.common.floor import AsyncioFloor, TrioFloor, _Slot
from benchmarks.common.timing import print_machine, sample, summarize


class BindingFloor(AsyncioFloor):
    """The floor, with the loop found and the future made by the binding."""

    async def wait(self, key: object) -> Any:
        binding = current_binding("benchmark")
        slot = _Slot(binding.new_handle())
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


class RLockFloor(BindingFloor):
    """And the map's reentrant lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()  # type: ignore[assignment]


class WaiterFloor(RLockFloor):
    """And WaitMap's waiter object, parked through the binding."""

    async def wait(self, key: object) -> Any:
        binding = current_binding("benchmark")
        lock = self._lock
        lock.acquire()
        try:
            waiter: Any = KeyWaiter(self, binding, key, None, False)  # type: ignore[arg-type]
            self._slots[key] = waiter
        finally:
            lock.release()
        try:
            await binding.park(waiter)
        except BaseException as exc:
            if waiter._abort():
                raise
            return waiter._outcome_after(exc)
        if waiter._state == VALUE:
            return waiter._result
        return waiter._outcome()

    def _remove(self, key: object, waiter: object) -> None:
        # What a cancelled KeyWaiter calls on its map (with the lock held).
        if self._slots.get(key) is waiter:
            del self._slots[key]

    def wake(self, key: object, value: object) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            waiter: Any = self._slots.pop(key, None)
            if waiter is None:
                return False
            waiter._result = value
            waiter._state = VALUE
            future = waiter._handle
            loop = future.get_loop()
            if _get_running_loop() is loop:
                future.set_result(None)
            else:
                loop.call_soon_threadsafe(future.set_result, None)
            return True
        finally:
            lock.release()


class UnparkFloor(WaiterFloor):
    """And the wake-up through the binding's unpark()."""

    def wake(self, key: object, value: object) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            waiter: Any = self._slots.pop(key, None)
            if waiter is None:
                return False
            waiter._result = value
            waiter._state = VALUE
            return bool(waiter._binding.unpark(waiter._handle))
        finally:
            lock.release()


class TrioBindingFloor(TrioFloor):
    """The trio floor, with the run found and the task read by the binding."""

    async def wait(self, key: object) -> Any:
        binding = current_binding("benchmark")
        slot = _Slot(binding.new_handle())
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


class TrioRLockFloor(TrioBindingFloor):
    """And the map's reentrant lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()  # type: ignore[assignment]


class TrioWaiterFloor(TrioRLockFloor):
    """And WaitMap's waiter object, parked through the binding."""

    wait = WaiterFloor.wait
    _remove = WaiterFloor._remove

    def wake(self, key: object, value: object) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            waiter: Any = self._slots.pop(key, None)
            if waiter is None:
                return False
            waiter._result = value
            waiter._state = VALUE
            if threading.get_ident() == self._thread:
                trio.lowlevel.reschedule(waiter._handle)
            else:
                self._token.run_sync_soon(trio.lowlevel.reschedule, waiter._handle)
            return True
        finally:
            lock.release()


class TrioUnparkFloor(TrioWaiterFloor):
    """And the wake-up through the binding's unpark()."""

    wake = UnparkFloor.wake


Row = Callable[[], Awaitable[None]]


def fan_in(make: Callable[[], Any]) -> Row:
    """``fanin.py``'s keyed fan-in over what ``make()`` returns, on asyncio."""

    async def row() -> None:
        target = make()
        keys = range(fanin.N)
        tasks = [asyncio.create_task(target.wait(key)) for key in keys]
        await asyncio.sleep(0)
        for key in keys:
            target.wake(key, key)
        await asyncio.gather(*tasks)

    return row


def trio_fan_in(make: Callable[[], Any]) -> Row:
    """The trio twin of :func:`fan_in`."""

    async def row() -> None:
        target = make()
        keys = range(fanin.N)
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(target.wait, key)
            await trio.testing.wait_all_tasks_blocked()
            for key in keys:
                target.wake(key, key)

    return row


# Each loop's rows, labelled: first the spawn-only row (subtracted from the
# others), then the steps. The floor, WaitMap and spawn-only rows are fanin.py's.
ASYNCIO_ROWS: list[tuple[str, Row]] = [
    ("spawn only", fanin.asyncio_spawn_only),
    ("floor", fanin.asyncio_floor),
    ("+ binding", fan_in(BindingFloor)),
    ("+ RLock", fan_in(RLockFloor)),
    ("+ waiter object", fan_in(WaiterFloor)),
    ("+ unpark call", fan_in(UnparkFloor)),
    ("WaitMap", fanin.asyncio_waitmap),
]
TRIO_ROWS: list[tuple[str, Row]] = [
    ("spawn only", fanin.trio_spawn_only),
    ("floor", fanin.trio_floor),
    ("+ binding", trio_fan_in(TrioBindingFloor)),
    ("+ RLock", trio_fan_in(TrioRLockFloor)),
    ("+ waiter object", trio_fan_in(TrioWaiterFloor)),
    ("+ unpark call", trio_fan_in(TrioUnparkFloor)),
    ("WaitMap", fanin.trio_waitmap),
]
LOOPS: dict[str, tuple[Callable[[Row], None], list[tuple[str, Row]]]] = {
    "asyncio": (fanin.LOOPS["asyncio"][0], ASYNCIO_ROWS),
    "uvloop": (fanin.LOOPS["uvloop"][0], ASYNCIO_ROWS),
    "trio": (fanin.LOOPS["trio"][0], TRIO_ROWS),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=fanin.N)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", help="write the raw samples (seconds) here")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    # fanin.py's rows, and the steps between them, all read fanin.N.
    N = fanin.N = 50 if options.quick else options.keys
    if options.quick:
        options.rounds = 1
    print(f"steps.py: {N:,} keys, --rounds {options.rounds}")
    report: dict[str, Any] = {"machine": print_machine(), "keys": N, "loops": {}}
    print(
        "(median over the rounds; step = median minus the row above; spread = "
        "interquartile range / median; ratio = median / median of the floor row)"
    )
    print(
        "from the floor to WaitMap, one step at a time (keyed fan-in, ns per key, "
        "net of spawning and finishing the tasks)"
    )
    print(
        f"  {'loop':8} {'row':18} {'ns/key median':>14} {'step':>7} "
        f"{'spread':>7}  ratio"
    )
    for loop, (run, rows) in LOOPS.items():
        for _, row in rows:  # warm-up, untimed
            sample(run, row)
        samples: dict[str, list[float]] = {name: [] for name, _ in rows}
        for _ in range(options.rounds):
            for name, row in rows:
                samples[name].append(sample(run, row))
        spawn = samples.pop(rows[0][0])
        net = {
            name: summarize(
                [t - s for t, s in zip(values, spawn, strict=True)], 1e9 / N
            )
            for name, values in samples.items()
        }
        floor = net["floor"].median
        previous: float | None = None
        for name, summary in net.items():
            step = "" if previous is None else f"{summary.median - previous:+7,.0f}"
            print(
                f"  {loop:8} {name:18} {summary.median:14,.0f} {step:>7} "
                f"{summary.spread:7.0%}  {summary.median / floor:5.2f}x floor"
            )
            previous = summary.median
        report["loops"][loop] = {
            "samples": {"spawn_only": spawn, **samples},
            "net_ns_per_key": {name: s.median for name, s in net.items()},
        }
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
