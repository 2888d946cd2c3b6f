"""Draw docs/_static/benchmarks.png from the JSON that fanin.py and wakers.py wrote.

    python benchmarks/fanin.py --json benchmarks/results/fanin.json
    python benchmarks/wakers.py --json benchmarks/results/wakers.json
    python benchmarks/chart.py     # needs matplotlib

Each panel shows, per event loop, the cost of each row as a ratio to the raw
mechanism of that loop (1.0 = as fast as hand-written code on the bare loop).
The thread panels appear twice when wakers.py also ran its pinned child
process: once free to use every CPU, once pinned to one CPU. ``--quick`` draws
into a temporary directory, to check that the chart still draws.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

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
    "asyncio_floor": "floor: the least thread-safe hand-over",
    "trio_floor": "floor: the least thread-safe hand-over",
    "asyncio_waitmap": "WaitMap wait + wake",
    "trio_waitmap": "WaitMap wait + wake",
    "asyncio_waitmap_store": "WaitMap wait + wm[key] = value",
    "trio_waitmap_store": "WaitMap wait + wm[key] = value",
    "asyncio_waitmap_take": "WaitMap take + wake",
    "trio_waitmap_take": "WaitMap take + wake",
    "asyncio_event_slot": "asyncio.Event / trio.Event + slot",
    "trio_event_slot": "asyncio.Event / trio.Event + slot",
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
    "anyio_event_ping_pong": "anyio.Event",
    "aiologic_event_ping_pong": "aiologic.Event",
    "aiologic_lowlevel_ping_pong": "aiologic low-level event",
    "asyncio_raw_threadsafe": "raw: the loop's thread-safe call",
    "trio_raw_threadsafe": "raw: the loop's thread-safe call",
    "asyncio_floor_threadsafe": "floor: the least thread-safe hand-over",
    "trio_floor_threadsafe": "floor: the least thread-safe hand-over",
    "anyio_from_thread": "anyio.from_thread.run_sync",
    "aiologic_event_threadsafe": "aiologic.Event.set",
    "waitmap_threadsafe": "WaitMap.wake",
    "source_threadsafe": "WakeSource.notify",
    "sink_threadsafe": "WakeSource.notify",
    "asyncio_event_burst": "raw: a thread-safe call per notify",
    "trio_event_burst": "raw: a thread-safe call per notify",
    "aiologic_revent_burst": "aiologic.REvent.set",
    "source_burst": "WakeSource.notify",
    # redis_handover.py: across processes, through Redis.
    "raw_pubsub": "raw: PUBLISH -> subscriber (SPUBLISH on a Cluster)",
    "raw_list": "raw: LPUSH -> BLPOP",
    "waitmap": "RedisWaitMap expect + wake",
    "waitmap_ahead": "RedisWaitMap, next key registered ahead",
    "raw_pubsub_pipelined": "raw: pipelined PUBLISH (SPUBLISH)",
    "waitmap_wake": "RedisWaitMap wake, all at once",
}


def panel(axis: Any, title: str, per_loop: dict[str, dict[str, float]]) -> None:
    loops = list(per_loop)
    rows = list(dict.fromkeys(LABELS.get(r, r) for v in per_loop.values() for r in v))
    width = 0.8 / len(rows)
    highest = 0.0
    for index, row in enumerate(rows):
        ratios = []
        for loop in loops:
            values = {LABELS.get(k, k): v for k, v in per_loop[loop].items()}
            raw = next(iter(per_loop[loop].values()))
            ratios.append(values[row] / raw if row in values else 0.0)
        positions = [n + index * width for n in range(len(loops))]
        axis.bar(positions, ratios, width, label=row)
        highest = max(highest, *ratios)
    # Headroom above the bars, so that the legend need not cover any of them.
    axis.set_ylim(0, highest * (1.15 + 0.04 * -(-len(rows) // 2)))
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks([n + width * (len(rows) - 1) / 2 for n in range(len(loops))])
    axis.set_xticklabels(loops)
    axis.set_ylabel("time / raw mechanism")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="upper left", ncols=2)


# Rows that measure a part of this package by taking it out; they are no
# alternative to choose, so the chart leaves them to the printed tables.
ABLATIONS = {"sink_ping_pong_loop_known"}


def by_loop(scenario: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The median ns of each row, per loop, from one scenario of wakers.json."""
    return {
        loop: {row: ns for row, ns in data["ns"].items() if row not in ABLATIONS}
        for loop, data in scenario.items()
        if isinstance(data, dict) and "ns" in data
    }


def redis_panels() -> list[tuple[str, dict[str, dict[str, float]]]]:
    """Panels of redis_handover.json, if it is there: p50 of the ping-pong,
    and time per value of the throughput with 4 waking processes."""
    path = RESULTS / "redis_handover.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    panels = []
    for deploy, where in (("redis", "Redis"), ("cluster", "3-primary Redis Cluster")):
        ping_pong = report[deploy]["ping_pong"]
        panels.append((
            f"across processes, ping-pong on {where}\n(p50 per round trip)",
            {
                loop: {row: data["p50"] for row, data in rows.items()}
                for loop, rows in ping_pong.items()
            },
        ))  # fmt: skip
    for deploy, where in (("redis", "Redis"), ("cluster", "Redis Cluster")):
        throughput = report[deploy]["throughput"]
        panels.append((
            f"across processes, 4 waking processes to one on {where}\n"
            "(time per value delivered)",
            {
                loop: {
                    # Keyed apart from the ping-pong's row of the same name.
                    ("waitmap_wake" if row == "waitmap" else row): 1 / data["delivered"]
                    for row, data in by_wakers["4"].items()
                }
                for loop, by_wakers in throughput.items()
            },
        ))  # fmt: skip
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="draw into a temp dir")
    options = parser.parse_args()
    fanin = json.loads((RESULTS / "fanin.json").read_text())
    wakers = json.loads((RESULTS / "wakers.json").read_text())
    panels: list[tuple[str, dict[str, dict[str, float]]]] = [
        (
            "keyed fan-in, per key (net of task spawn)",
            {loop: data["net_ns_per_key"] for loop, data in fanin["loops"].items()},
        ),
        (
            "ping-pong between two tasks, per round trip",
            by_loop(wakers["ping-pong (per round trip)"]),
        ),
    ]
    # The thread scenarios, each next to its pinned run.
    threads = [key for key in wakers if key.startswith("wake from another thread")]
    bursts = [key for key in wakers if key.startswith("burst of")]
    for key in threads + bursts:
        title = key.replace(" (per", "\n(per")
        panels.append((title, by_loop(wakers[key])))
    panels += redis_panels()
    columns = 3
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(17, 4.8 * lines))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for axis, (title, data) in zip(flat, panels, strict=False):
        panel(axis, title, data)
    for axis in flat[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(f"anyio-waitmap benchmarks (Python {fanin['python']})")
    figure.tight_layout()
    if options.quick:
        with tempfile.TemporaryDirectory() as directory:
            out = Path(directory) / "benchmarks.png"
            figure.savefig(out, dpi=60)
            print(f"drew {len(panels)} panels (--quick: not kept)")
        return
    options.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(options.out, dpi=100)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
