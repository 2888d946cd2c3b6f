"""What every benchmark here shares: how one sample is timed, and how rows are shown."""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

Row = Callable[[], Awaitable[None]]
Runner = Callable[[Row], None]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the cyclic garbage collector, then keep it off until the block ends."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def sample(run: Runner, row: Row) -> float:
    """Seconds that ``run(row)`` takes in a fresh event loop.

    The cyclic garbage collector runs before the sample and is disabled during
    it, so that a collection triggered by an earlier row is not charged here.
    """
    with gc_paused():
        start = time.perf_counter()
        run(row)
        return time.perf_counter() - start


@dataclass(frozen=True)
class Summary:
    """One row's samples, scaled to a cost per operation."""

    median: float
    minimum: float
    #: Interquartile range over the median (0.1 = 10 %); 0 with one sample.
    spread: float


def summarize(values: Sequence[float], scale: float = 1.0) -> Summary:
    """Median, minimum and spread of ``values``, each multiplied by ``scale``."""
    scaled = sorted(value * scale for value in values)
    median = statistics.median(scaled)
    spread = 0.0
    if len(scaled) >= 2 and median:
        first, _, third = statistics.quantiles(scaled, n=4, method="inclusive")
        spread = (third - first) / abs(median)
    return Summary(median, scaled[0], spread)


def print_header(title: str, unit: str, extra: str = "") -> None:
    """Print a table's title and column names; rows follow with :func:`print_row`."""
    print(title)
    print(
        f"  {'loop':8} {'row':32} {unit + ' median':>16} {'min':>10} "
        f"{'spread':>7}{extra}  ratio"
    )


def print_row(
    loop: str,
    name: str,
    summary: Summary,
    base: float,
    base_name: str = "raw",
    extra: str = "",
) -> None:
    """One line of a table: the medians' ratio to ``base`` (the raw row)."""
    ratio = summary.median / base if base else float("nan")
    print(
        f"  {loop:8} {name:32} {summary.median:16,.0f} {summary.minimum:10,.0f} "
        f"{summary.spread:7.0%}{extra}  {ratio:5.2f}x {base_name}"
    )


def print_legend() -> None:
    """Say what the columns mean, once per script."""
    print(
        "(median and min over the rounds; spread = interquartile range / median; "
        "ratio = median / median of the raw row of the same loop)"
    )


def machine() -> dict[str, object]:
    """What a reader needs to judge the numbers: versions, CPUs, load."""
    versions: dict[str, str | None] = {}
    for name in ("anyio", "trio", "uvloop", "aiologic"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover
            versions[name] = None
    return {
        "python": platform.python_version(),
        "versions": versions,
        "package": package_state(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def package_state() -> dict[str, object]:
    """Which code was measured: the commit, and a digest of the package's source
    as it was on disk (it may hold changes not committed yet)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted((root / "anyio_waitmap").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    commit: str | None = None
    dirty: bool | None = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--", "anyio_waitmap"],
                cwd=root,
                timeout=10,
                check=False,
            ).returncode
            != 0
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "commit": commit,
        "uncommitted_changes": dirty,
        "sha256": digest.hexdigest()[:12],
    }


def print_machine() -> dict[str, object]:
    """Print :func:`machine` on one line, and return it for the JSON report."""
    info = machine()
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())  # type: ignore[attr-defined]
    load = info["load_average"]
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "n/a"  # type: ignore[attr-defined]
    package: dict[str, object] = info["package"]  # type: ignore[assignment]
    changes = " + uncommitted changes" if package["uncommitted_changes"] else ""
    print(
        f"Python {info['python']}, {versions}; {info['cpus']} CPUs, "
        f"load average {load_text} (other processes share the machine); "
        f"anyio_waitmap at {package['commit']}{changes} (source {package['sha256']})"
    )
    return info
