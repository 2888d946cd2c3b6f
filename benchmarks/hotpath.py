"""The three steps of one keyed hand-over, timed apart, on asyncio.

Drives the coroutines by hand (no tasks, no event loop iterations), so that
only our code and the raw mechanism are timed: *wait* runs ``wm.wait(key)`` up
to the point where it parks, *wake* is ``wm.wake(key, value)``, *resume* runs
the parked coroutine to its end. The raw row does the same with a ``dict`` of
futures. Best of ``--repeat`` runs of ``--keys`` keys each, after a small
untimed warm-up, with the cyclic GC collected before and disabled during a run.

On asyncio and asyncio+uvloop only: driving coroutines by hand needs a future
to suspend on, and trio's parking (``wait_task_rescheduled``) reschedules the
task that runs the benchmark, so it cannot be driven this way.

From the repository root (``python -m benchmarks.hotpath`` works too):

    python benchmarks/hotpath.py [--keys 100000] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from anyio_waitmap import WaitMap
from benchmarks.common.timing import print_machine


def timed(step: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) / count * 1e9


def finish(coroutines: list[Coroutine[Any, Any, object]]) -> None:
    for coroutine in coroutines:
        try:
            coroutine.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover - would be a bug in the benchmark
            raise AssertionError("the coroutine did not finish")


async def measure(keys: int) -> dict[str, dict[str, float]]:
    loop = asyncio.get_running_loop()
    wm: WaitMap[int, int] = WaitMap()
    ours: list[Coroutine[Any, Any, object]] = []

    def wait() -> None:
        for key in range(keys):
            coroutine = wm.wait(key)
            coroutine.send(None)
            ours.append(coroutine)

    def wake() -> None:
        for key in range(keys):
            wm.wake(key, key)

    futures: dict[int, asyncio.Future[int]] = {}
    raw: list[Coroutine[Any, Any, object]] = []

    async def raw_wait(key: int) -> int:
        future = futures[key] = loop.create_future()
        try:
            return await future
        finally:
            futures.pop(key, None)

    def wait_raw() -> None:
        for key in range(keys):
            coroutine = raw_wait(key)
            coroutine.send(None)
            raw.append(coroutine)

    def set_raw() -> None:
        for key in range(keys):
            futures.pop(key).set_result(key)

    gc.collect()
    gc.disable()
    try:
        result = {
            "WaitMap": {
                "wait": timed(wait, keys),
                "wake": timed(wake, keys),
                "resume": timed(lambda: finish(ours), keys),
            },
            "dict of futures": {
                "wait": timed(wait_raw, keys),
                "wake": timed(set_raw, keys),
                "resume": timed(lambda: finish(raw), keys),
            },
        }
    finally:
        gc.enable()
    return result


LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    if options.quick:
        options.keys, options.repeat = 100, 1
    print(f"hotpath.py: --keys {options.keys:,} --repeat {options.repeat}")
    report: dict[str, Any] = {"machine": print_machine(), "keys": options.keys}
    print("ns per key, best of the runs for each step")
    for loop_name, run in LOOPS.items():
        run(measure(min(options.keys, 1_000)))  # warm-up
        best: dict[str, dict[str, float]] = {}
        for _ in range(options.repeat):
            for row, steps in run(measure(options.keys)).items():
                for step, ns in steps.items():
                    best.setdefault(row, {})[step] = min(
                        ns, best.get(row, {}).get(step, ns)
                    )
        raw_total = sum(best["dict of futures"].values())
        for row, steps in best.items():
            total = sum(steps.values())
            parts = "  ".join(f"{step} {ns:6,.0f}" for step, ns in steps.items())
            print(
                f"  {loop_name:8} {row:16} {parts}  total {total:6,.0f} ns "
                f"{total / raw_total:5.2f}x raw"
            )
        report[loop_name] = best
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
