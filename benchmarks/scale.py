"""Cost per key as the number of waiting keys grows (flat is the goal).

Runs the keyed fan-in of ``fanin.py`` (raw mechanism and WaitMap) at 1e3, 1e4
and 1e5 keys, and 1e6 with ``--max-keys 1000000`` (several GB of memory and
minutes of time), and reports the net cost per key relative to the smallest
size.

    python benchmarks/scale.py [--rounds 5] [--max-keys 100000] [--quick]
"""

from __future__ import annotations

import argparse
import statistics

import fanin
from _timing import sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-keys", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    all_sizes = (1_000, 10_000, 100_000, 1_000_000)
    sizes = [size for size in all_sizes if size <= options.max_keys]
    rounds = options.rounds
    if options.quick:
        sizes, rounds = [20, 40], 1
    for loop_name, (run, rows) in fanin.LOOPS.items():
        spawn, raw, ours = rows[0], rows[1], rows[2]
        first: dict[str, float] = {}
        for size in sizes:
            fanin.N = size
            for row in (spawn, raw, ours):  # warm-up
                sample(run, row)
            times: dict[str, list[float]] = {spawn.__name__: [], raw.__name__: []}
            times[ours.__name__] = []
            for _ in range(rounds):
                for row in (spawn, raw, ours):
                    times[row.__name__].append(sample(run, row))
            per_key = {
                name: statistics.median(values) / size * 1e9
                for name, values in times.items()
            }
            base = per_key.pop(spawn.__name__)
            line = []
            for name, ns in per_key.items():
                net = ns - base
                first.setdefault(name, net)
                line.append(f"{name} {net:7,.0f} ns ({net / first[name]:4.2f}x)")
            print(f"{loop_name:8} {size:>9,} keys: " + "   ".join(line))


if __name__ == "__main__":
    main()
