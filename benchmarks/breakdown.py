"""What one keyed hand-over is made of: the building blocks, timed alone.

The other benchmarks compare whole operations. This one times, in a running
event loop, each thing that ``WaitMap.wait`` and ``WaitMap.wake`` must do
(take a lock, find the running loop's binding, make a future, make the waiter
object, build an outcome) and the whole operations, next to the raw mechanism's
own steps (a ``dict`` operation, ``loop.create_future()``, ``set_result``); on
trio, how the run's binding is found. It shows which part of the gap to the raw
mechanism is our code and which part is the price of a building block that the
guarantees need (thread safety needs a lock; an outcome is a fresh object per
call).

Each line is the best of ``--repeat`` runs of ``--number`` calls (timeit), in
nanoseconds per call; the best run is the one least disturbed by the machine.

    python benchmarks/breakdown.py [--number 100000] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import timeit
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import trio
import trio.lowlevel
import uvloop
from anyio._core._eventloop import get_async_backend

from anyio_waitmap import NoMatch, WaitMap
from anyio_waitmap._backends import _trio, current_binding
from anyio_waitmap._registry import KeyWaiter

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def best(statement: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e9


async def measure(number: int, repeat: int) -> list[tuple[str, str, float]]:
    loop = asyncio.get_running_loop()
    wm: WaitMap[int, int] = WaitMap()
    binding = current_binding("breakdown")
    lock = threading.Lock()
    rlock = threading.RLock()
    plain: dict[int, int] = {}

    def with_lock() -> None:
        with lock:
            pass

    def with_rlock() -> None:
        with rlock:
            pass

    def rlock_acquire_release() -> None:
        rlock.acquire()
        rlock.release()

    def drive(coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            coroutine.send(None)
        except StopIteration:
            return
        raise AssertionError("the check yielded: is the task cancelled?")

    backend_check = get_async_backend("asyncio").checkpoint_if_cancelled

    def set_result() -> None:
        loop.create_future().set_result(None)

    def hand_over(
        coroutine: Coroutine[Any, Any, int], wake: Callable[[], object]
    ) -> None:
        # The coroutine runs by hand: up to where it parks, then the wake-up,
        # then the rest of it. No task and no loop iteration is involved.
        coroutine.send(None)
        wake()
        try:
            coroutine.send(None)
        except StopIteration:
            return
        raise AssertionError("the coroutine did not finish")

    futures: dict[int, asyncio.Future[int]] = {}

    async def raw_wait(key: int) -> int:
        future = futures[key] = loop.create_future()
        return await future

    def ours() -> None:
        hand_over(wm.wait(1), lambda: wm.wake(1, 1))

    def raw() -> None:
        hand_over(raw_wait(1), lambda: futures.pop(1).set_result(1))

    def new_waiter() -> object:
        return KeyWaiter(wm, binding, 1, None, False)

    rows: list[tuple[str, str, Callable[[], object]]] = [
        ("block", "dict.pop(key, None), missing key", lambda: plain.pop(1, None)),
        ("block", "with threading.Lock()", with_lock),
        ("block", "with threading.RLock()", with_rlock),
        ("block", "RLock acquire() + release() (the map's)", rlock_acquire_release),
        (
            "block",
            "anyio cancel check, plain asyncio task",
            lambda: drive(anyio.lowlevel.checkpoint_if_cancelled()),
        ),
        (
            "block",
            "the same, backend found once",
            lambda: drive(backend_check()),
        ),
        ("block", "find the running loop's binding", lambda: current_binding("x")),
        ("block", "loop.create_future()", loop.create_future),
        ("block", "create_future() + set_result()", set_result),
        ("block", "the waiter object (with its future)", new_waiter),
        ("block", "object(), the cheapest new object", object),
        ("block", "NoMatch(value) (a frozen dataclass)", lambda: NoMatch(1)),
        ("ours", "WaitMap.wake, nobody waiting", lambda: wm.wake(1, 1)),
        ("ours", "WaitMap: wait, wake, resume", ours),
        ("raw", "dict of futures: wait, set, resume", raw),
    ]
    return [(kind, name, best(call, number, repeat)) for kind, name, call in rows]


async def measure_trio(number: int, repeat: int) -> list[tuple[str, str, float]]:
    # On trio only the lookup of the run's binding differs: the rest of a
    # hand-over is trio's own (current_task, reschedule, wait_task_rescheduled).
    current_binding("breakdown")  # the run's first lookup makes its binding
    rows: list[tuple[str, str, Callable[[], object]]] = [
        ("block", "trio.lowlevel.current_task()", trio.lowlevel.current_task),
        ("block", "find the running run's binding", lambda: current_binding("x")),
        (
            "block",
            "the same by in_trio_run() + RunVar.get()",
            _trio.current_trio_binding,
        ),
    ]
    return [(kind, name, best(call, number, repeat)) for kind, name, call in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke test")
    options = parser.parse_args()
    number, repeat = (200, 2) if options.quick else (options.number, options.repeat)
    print("What a keyed hand-over is made of (ns per call, best of the runs)")
    for loop_name, run in LOOPS.items():
        for kind, name, ns in run(measure(number, repeat)):
            print(f"  {loop_name:8} {kind:6} {name:40} {ns:10,.0f}")
    for kind, name, ns in trio.run(measure_trio, number, repeat):
        print(f"  {'trio':8} {kind:6} {name:40} {ns:10,.0f}")


if __name__ == "__main__":
    main()
