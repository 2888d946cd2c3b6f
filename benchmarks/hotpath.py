"""The three steps of one keyed hand-over, timed apart, on asyncio.

Drives the coroutines by hand (no tasks, no event loop iterations), so that
only our code and the raw mechanism are timed: *wait* runs ``wm.wait(key)`` up
to the point where it parks, *wake* is ``wm.wake(key, value)``, *resume* runs
the parked coroutine to its end. The raw row does the same with a ``dict`` of
futures. Best of ``--repeat`` runs of ``--keys`` keys each.

    python benchmarks/hotpath.py [--keys 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

from anyio_waitmap import WaitMap


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    for _ in range(options.repeat):
        for row, steps in asyncio.run(measure(options.keys)).items():
            for step, ns in steps.items():
                best.setdefault(row, {})[step] = min(
                    ns, best.get(row, {}).get(step, ns)
                )
    for row, steps in best.items():
        total = sum(steps.values())
        parts = "  ".join(f"{step} {ns:6,.0f}" for step, ns in steps.items())
        print(f"{row:16} {parts}  total {total:6,.0f} ns per key")


if __name__ == "__main__":
    main()
