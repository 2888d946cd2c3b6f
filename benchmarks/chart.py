"""Draw docs/_static/benchmarks.png from the JSON that fanin.py and wakers.py wrote.

    python benchmarks/fanin.py --json benchmarks/results/fanin.json
    python benchmarks/wakers.py --json benchmarks/results/wakers.json
    python benchmarks/chart.py     # needs matplotlib

Each panel shows, per event loop, the cost of each row as a ratio to the raw
mechanism of that loop (1.0 = as fast as hand-written code on the bare loop).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "_static" / "benchmarks.png"

# Rows that play the same part on different loops share a label (and a bar).
LABELS = {
    "asyncio_raw_futures": "raw: futures / trio reschedule",
    "trio_raw_reschedule": "raw: futures / trio reschedule",
    "asyncio_waitmap": "WaitMap wait + wake",
    "trio_waitmap": "WaitMap wait + wake",
    "asyncio_anyio_event": "anyio.Event + slot",
    "trio_anyio_event": "anyio.Event + slot",
    "asyncio_aiologic_event": "aiologic.Event + slot",
    "trio_aiologic_event": "aiologic.Event + slot",
    "trio_parking_lot": "trio ParkingLot per key",
    "asyncio_raw_plus_cancel_check": "raw + cancellation check",
    "trio_raw_plus_cancel_check": "raw + cancellation check",
    "sink_ping_pong": "WakeSink",
    "asyncio_event": "asyncio.Event / trio.Event",
    "trio_event": "asyncio.Event / trio.Event",
    "asyncio_raw_threadsafe": "raw: the loop's thread-safe call",
    "trio_raw_threadsafe": "raw: the loop's thread-safe call",
    "sink_threadsafe": "WakeSink.notify",
}


def panel(axis: plt.Axes, title: str, per_loop: dict[str, dict[str, float]]) -> None:
    loops = list(per_loop)
    rows = list(dict.fromkeys(LABELS.get(r, r) for v in per_loop.values() for r in v))
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        ratios = []
        for loop in loops:
            values = {LABELS.get(k, k): v for k, v in per_loop[loop].items()}
            raw = next(iter(per_loop[loop].values()))
            ratios.append(values[row] / raw if row in values else 0.0)
        positions = [n + index * width for n in range(len(loops))]
        axis.bar(positions, ratios, width, label=row)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks([n + width * (len(rows) - 1) / 2 for n in range(len(loops))])
    axis.set_xticklabels(loops)
    axis.set_ylabel("time / raw mechanism")
    axis.set_title(title)
    axis.legend(fontsize=7)


def main() -> None:
    fanin = json.loads((RESULTS / "fanin.json").read_text())
    wakers = json.loads((RESULTS / "wakers.json").read_text())
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panel(
        axes[0],
        "keyed fan-in, per key (net of task spawn)",
        {loop: data["net_ns_per_key"] for loop, data in fanin["loops"].items()},
    )
    panel(
        axes[1],
        "ping-pong between two tasks, per round trip",
        {
            loop: data["ns"]
            for loop, data in wakers["ping-pong (per round trip)"].items()
        },
    )
    panel(
        axes[2],
        "wake-up from another thread",
        {
            loop: data["ns"]
            for loop, data in wakers["wake from another thread (per wake-up)"].items()
        },
    )
    figure.suptitle(f"anyio-waitmap benchmarks (Python {fanin['python']})")
    figure.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
