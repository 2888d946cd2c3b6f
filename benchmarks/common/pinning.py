"""A process pinned to one CPU, and a script run again in a child so pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import Any


def pin_process(cpu: int) -> None:
    """Pin every thread of this process, and the threads it starts later, to ``cpu``."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    os.sched_setaffinity(0, {cpu})
    seen: list[set[int]] = []
    checker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    checker.start()
    checker.join()
    if seen != [{cpu}]:  # pragma: no cover - would be a kernel surprise
        raise RuntimeError(f"a new thread runs on CPUs {seen}, not only {cpu}")


def run_pinned_child(script: str, arguments: list[str]) -> dict[str, Any]:
    """Run ``script`` with ``arguments`` again in a child process pinned to one
    CPU; return the scenarios that it ran, and its machine."""
    cpu = max(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "pinned.json")
        command = [
            sys.executable,
            script,
            "--pin",
            str(cpu),
            *arguments,
            "--json",
            path,
        ]
        sys.stdout.flush()
        subprocess.run(command, check=True, timeout=1_800)
        with open(path) as file:
            child: dict[str, Any] = json.load(file)
    pinned = {key: value for key, value in child.items() if ", pinned to CPU" in key}
    pinned["machine (pinned child)"] = child["machine"]
    return pinned
