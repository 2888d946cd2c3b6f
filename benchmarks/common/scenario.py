"""The scenarios of wakers.py: rows per event loop, sampled and printed alike.

A :class:`Scenario` lists its rows per event loop; :func:`run_scenario` samples
them in interleaved rounds (A B C A B C ...), each sample in a fresh event loop
after an untimed warm-up, with the cyclic GC collected before and disabled
during the sample, and prints the table. The rows report what the table shows
beyond their time through the dictionaries below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import uvloop

from benchmarks.common.timing import (
    Row,
    Runner,
    print_header,
    print_row,
    sample,
    summarize,
)

# -- what rows report besides their time, and the calls into the loop counted -----

#: Resumptions of the consumer per burst, one list entry per sample, by row name.
RESUMPTIONS: dict[str, list[float]] = {}
#: Calls scheduled into the consumer's loop from other threads, per operation.
LOOP_CALLS: dict[str, float] = {}
#: Wake-ups that found the task not yet parked (and stored the value instead).
EARLY_WAKES: dict[str, int] = {}
#: Seconds a row timed itself, which replace the sample's time (by row name).
SELF_TIMED: dict[str, float] = {}


@contextmanager
def counting_loop_calls() -> Iterator[list[int]]:
    """Count ``call_soon_threadsafe`` / ``TrioToken.run_sync_soon`` calls.

    Wraps the running asyncio loop's method (this loop only), or trio's
    ``TrioToken.run_sync_soon`` (for the whole process) while the block runs.
    The wrapper adds a Python call, so only untimed samples use it.
    """
    count = [0]
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        original = loop.call_soon_threadsafe

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = wrapped  # type: ignore[method-assign,assignment]
        try:
            yield count
        finally:
            del loop.call_soon_threadsafe
        return
    token_class = trio.lowlevel.TrioToken
    original_method = token_class.run_sync_soon

    def wrapped_method(self: trio.lowlevel.TrioToken, *args: Any, **kw: Any) -> None:
        count[0] += 1
        original_method(self, *args, **kw)

    token_class.run_sync_soon = wrapped_method  # type: ignore[method-assign,assignment]
    try:
        yield count
    finally:
        token_class.run_sync_soon = original_method  # type: ignore[method-assign]


def counted(row: Row, per: int) -> Row:
    """``row``, counting the calls it schedules into its loop (per ``per`` ops)."""

    async def wrapper() -> None:
        with counting_loop_calls() as count:
            await row()
        LOOP_CALLS[row.__name__] = count[0] / per

    wrapper.__name__ = row.__name__
    return wrapper


# -- the scenarios -----------------------------------------------------------------


def run_asyncio(row: Row) -> None:
    asyncio.run(row())  # type: ignore[arg-type]


def run_uvloop(row: Row) -> None:
    uvloop.run(row())  # type: ignore[arg-type]


@dataclass
class Scenario:
    key: str  # the title, and the key in the JSON report
    group: str  # what wakers.py's --scenarios selects
    unit: str
    per: Callable[[], int]  # operations per sample
    rows: dict[str, list[Row]]  # per loop; the first row is the raw one
    quick: Callable[[], None]  # --quick: a few operations per sample
    # A row whose ratio is to another row than the first: {row: baseline}.
    baselines: dict[str, str] = field(default_factory=dict)
    # A thread wakes the loop: the calls into the loop are counted, and the
    # scenario runs again in a process pinned to one CPU.
    from_thread: bool = False
    # Bursts per sample, where the consumer's resumptions per burst are reported.
    bursts: Callable[[], int] | None = None
    # The most a row may cost, as a ratio to its baseline: {row: ratio}.
    targets: dict[str, float] = field(default_factory=dict)


RUNNERS: dict[str, Runner] = {
    "asyncio": run_asyncio,
    "uvloop": run_uvloop,
    "trio": trio.run,
}


def baseline_of(scenario: Scenario, rows: list[Row], name: str) -> str:
    wanted = scenario.baselines.get(name, rows[0].__name__)
    if wanted == "event_set":  # the loop's own event: asyncio or trio
        wanted = next(r.__name__ for r in rows if r.__name__.endswith("_event_set"))
    return wanted


def run_scenario(scenario: Scenario, rounds: int, suffix: str) -> dict[str, object]:
    """Sample every row of ``scenario`` and print its table (``suffix`` ends the
    title); return the scenario's part of the JSON report."""
    title = scenario.key + suffix
    extra = ""
    if scenario.from_thread:
        extra += f" {'loop calls':>10}"
    if scenario.bursts:
        extra += f" {'resumed':>8}"
    print()
    print_header(title, scenario.unit, extra)
    per = scenario.per()
    per_count = scenario.bursts() if scenario.bursts else per
    if scenario.from_thread:
        unit = "burst" if scenario.bursts else "wake-up"
        print(
            f"  (loop calls: call_soon_threadsafe / run_sync_soon calls per {unit}, "
            f"counted in the untimed warm-up)"
        )
    if scenario.bursts:
        print("  (resumed: the consumer's resumptions per burst, median over samples)")
    result: dict[str, object] = {"per_sample": per}
    for loop_name, rows in scenario.rows.items():
        run = RUNNERS[loop_name]
        RESUMPTIONS.clear()
        LOOP_CALLS.clear()
        EARLY_WAKES.clear()
        for row in rows:  # warm-up, untimed (and where loop calls are counted)
            if scenario.from_thread:
                sample(run, counted(row, per_count))
            else:
                sample(run, row)
        RESUMPTIONS.clear()
        EARLY_WAKES.clear()
        samples: dict[str, list[float]] = {row.__name__: [] for row in rows}
        for _ in range(rounds):
            for row in rows:
                seconds = sample(run, row)
                seconds = SELF_TIMED.pop(row.__name__, seconds)
                samples[row.__name__].append(seconds)
        summaries = {
            name: summarize(values, 1e9 / per) for name, values in samples.items()
        }
        for row in rows:
            name = row.__name__
            base_name = baseline_of(scenario, rows, name)
            columns = ""
            if scenario.from_thread:
                columns += f" {LOOP_CALLS.get(name, float('nan')):10,.1f}"
            if scenario.bursts:
                resumed = sorted(RESUMPTIONS.get(name, [float("nan")]))
                columns += f" {resumed[len(resumed) // 2]:8.2f}"
            label = "raw" if base_name == rows[0].__name__ else base_name
            if name in scenario.targets:
                limit = scenario.targets[name]
                ratio = summaries[name].median / summaries[base_name].median
                verdict = "met" if ratio <= limit else "MISSED"
                label += f" (target <= {limit:g}x: {verdict})"
            print_row(
                loop_name,
                name,
                summaries[name],
                summaries[base_name].median,
                label,
                columns,
            )
        for name, early in EARLY_WAKES.items():
            if early:
                print(f"    {name}: {early} wake-ups found the task not yet parked")
        result[loop_name] = {
            "samples": samples,
            "ns": {name: s.median for name, s in summaries.items()},
            "min_ns": {name: s.minimum for name, s in summaries.items()},
            "spread": {name: s.spread for name, s in summaries.items()},
            "loop_calls": dict(LOOP_CALLS),
            "resumptions_per_burst": dict(RESUMPTIONS),
            "early_wakes": dict(EARLY_WAKES),
        }
    print("  rows:")
    described: set[str] = set()
    for rows in scenario.rows.values():
        for row in rows:
            if row.__name__ not in described:
                described.add(row.__name__)
                print(f"    {row.__name__:32} {(row.__doc__ or '').strip()}")
    return result
