"""The benchmark scripts compare the rows they say they compare.

The test command runs every script with ``--quick``, which shows that each row
still runs but not which rows a table or a column is made of: a row list edited
in one script can silently change what another script measures. These tests pin
the rows down.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """The benchmark scripts, imported the way they import one another."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import chart, fanin, scale, wakers

        yield {"chart": chart, "fanin": fanin, "scale": scale, "wakers": wakers}
    finally:
        sys.path.remove(str(ROOT))


def test_fanin_rows_start_with_spawn_only_then_raw(
    bench: dict[str, ModuleType],
) -> None:
    # fanin.py subtracts the first row and divides by the second.
    for loop, (_, rows) in bench["fanin"].LOOPS.items():
        names = [row.__name__ for row in rows]
        assert names[0].endswith("_spawn_only"), (loop, names)
        assert "_raw_" in names[1], (loop, names)
        assert len(set(names)) == len(names), (loop, names)


def test_fanin_names_the_waitmap_row_of_each_loop(
    bench: dict[str, ModuleType],
) -> None:
    fanin = bench["fanin"]
    assert set(fanin.WAITMAP_ROWS) == set(fanin.LOOPS)
    for loop, row in fanin.WAITMAP_ROWS.items():
        assert row in fanin.LOOPS[loop][1], loop
        assert row.__name__.endswith("_waitmap"), (loop, row.__name__)


def test_scale_measures_the_waitmap_row(
    bench: dict[str, ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["scale.py", "--quick"])
    bench["scale"].main()
    printed = capsys.readouterr().out
    for loop, raw, ours in [
        ("asyncio", "asyncio_raw_futures", "asyncio_waitmap"),
        ("uvloop", "asyncio_raw_futures", "asyncio_waitmap"),
        ("trio", "trio_raw_reschedule", "trio_waitmap"),
    ]:
        assert f"{loop:8} rows: {raw} and {ours}, net of" in printed, printed


def test_the_chart_labels_every_row_it_draws(bench: dict[str, ModuleType]) -> None:
    chart, fanin, wakers = bench["chart"], bench["fanin"], bench["wakers"]
    drawn = {row.__name__ for _, rows in fanin.LOOPS.values() for row in rows[1:]}
    for scenario in wakers.scenarios():
        if scenario.group != "idle":  # a printed table only
            drawn |= {row.__name__ for rows in scenario.rows.values() for row in rows}
    unlabelled = drawn - set(chart.LABELS) - chart.ABLATIONS
    assert not unlabelled, f"add these rows to LABELS in chart.py: {unlabelled}"


def test_redis_handover_compares_with_raw_pubsub_first() -> None:
    # Imported without coredis (the lowest-versions runs have none): the
    # workers import it when they run a row.
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import redis_handover
    finally:
        sys.path.remove(str(ROOT))
    # The ratios and the targets are to the first row of each table.
    assert redis_handover.PING_PONG_ROWS[0] == "raw_pubsub"
    assert redis_handover.THROUGHPUT_ROWS[0] == "raw_pubsub_pipelined"
    assert set(redis_handover.PING_PONG_ROWS) == set(redis_handover.PING_PONG_SIDES)
    assert redis_handover.WAKERS == (1, 2, 4)


def test_the_chart_labels_the_redis_rows(bench: dict[str, ModuleType]) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import redis_handover
    finally:
        sys.path.remove(str(ROOT))
    rows = {*redis_handover.PING_PONG_ROWS, *redis_handover.THROUGHPUT_ROWS}
    unlabelled = rows - set(bench["chart"].LABELS)
    assert not unlabelled, f"add these rows to LABELS in chart.py: {unlabelled}"
