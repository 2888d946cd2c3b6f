"""Cost per key as the number of waiting keys grows (flat is the goal).

Runs the keyed fan-in of ``fanin.py`` (raw mechanism and WaitMap, net of the
spawn-only row of the same round) on asyncio, asyncio+uvloop and trio at 1e3,
1e4 and 1e5 keys, and 1e6 with ``--max-keys 1000000``, and reports the net cost
per key relative to the smallest size. Each sample runs in a fresh event loop
after an untimed warm-up at that size, with the cyclic GC collected before and
disabled during the sample.

At 1e6 keys a sample takes 10 to 30 s on a slow 2-core machine and the process
peaks near 2.5 GB, so sizes above 1e5 get ``--large-rounds`` rounds (default 1)
instead of ``--rounds``; the whole run then takes about 10 minutes.

From the repository root (``python -m benchmarks.scale`` works too):

    python benchmarks/scale.py [--rounds 5] [--max-keys 100000] [--json FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import resource
import time
from typing import Any

from benchmarks import fanin
from benchmarks.common.timing import Summary, print_machine, sample, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-rounds", type=int, default=1)
    parser.add_argument("--max-keys", type=int, default=100_000)
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    all_sizes = (1_000, 10_000, 100_000, 1_000_000)
    sizes = [size for size in all_sizes if size <= options.max_keys]
    rounds = options.rounds
    if options.quick:
        sizes, rounds = [20, 40], 1
    print(
        f"scale.py: sizes {', '.join(f'{s:,}' for s in sizes)}; --rounds {rounds}, "
        f"--large-rounds {options.large_rounds} (above 100,000 keys)"
    )
    report: dict[str, Any] = {"machine": print_machine(), "loops": {}}
    print(
        "net cost per key (ns, median over the rounds; spread in brackets; "
        "(x) relative to the first size)"
    )
    print(
        f"  {'loop':8} {'keys':>9}  {'raw':>24}  {'ours (WaitMap)':>24}  "
        f"{'ours/raw':>8} {'rounds':>6} {'wall':>7} {'peak RSS':>9}"
    )
    for loop_name, (run, rows) in fanin.LOOPS.items():
        spawn, raw, ours = rows[0], rows[1], fanin.WAITMAP_ROWS[loop_name]
        print(
            f"  {loop_name:8} rows: {raw.__name__} and {ours.__name__}, net of "
            f"{spawn.__name__}"
        )
        first: dict[str, float] = {}
        report["loops"][loop_name] = {}
        for size in sizes:
            fanin.N = size
            size_rounds = options.large_rounds if size > 100_000 else rounds
            started = time.perf_counter()
            for row in (spawn, raw, ours):  # warm-up
                sample(run, row)
            times: dict[str, list[float]] = {
                row.__name__: [] for row in (spawn, raw, ours)
            }
            for _ in range(size_rounds):
                for row in (spawn, raw, ours):
                    times[row.__name__].append(sample(run, row))
            base = times[spawn.__name__]
            net: dict[str, Summary] = {
                row.__name__: summarize(
                    [t - s for t, s in zip(times[row.__name__], base, strict=True)],
                    1e9 / size,
                )
                for row in (raw, ours)
            }
            wall = time.perf_counter() - started
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cells = []
            for name, summary in net.items():
                first.setdefault(name, summary.median)
                relative = summary.median / first[name]
                cells.append(
                    f"{summary.median:8,.0f} ({relative:4.2f}x) [{summary.spread:4.0%}]"
                )
            ratio = net[ours.__name__].median / net[raw.__name__].median
            print(
                f"  {loop_name:8} {size:>9,}  {cells[0]:>24}  {cells[1]:>24}  "
                f"{ratio:7.2f}x {size_rounds:6} {wall:6.0f}s {peak_mb:7,.0f}MB",
                flush=True,
            )
            report["loops"][loop_name][str(size)] = {
                "samples": times,
                "net_ns_per_key": {name: s.median for name, s in net.items()},
                "relative_to_first_size": {
                    name: s.median / first[name] for name, s in net.items()
                },
                "rounds": size_rounds,
                "wall_seconds": wall,
                "peak_rss_mb": peak_mb,
            }
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
