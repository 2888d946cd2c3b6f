"""The command line of wakers.py and of each of its scenarios' scripts."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
from pathlib import Path
from typing import Any

from benchmarks.common.pinning import pin_process, run_pinned_child
from benchmarks.common.scenario import Scenario, run_scenario
from benchmarks.common.timing import print_legend, print_machine


def main(script: str, doc: str, scenarios: list[Scenario]) -> None:
    """Run ``scenarios`` as ``script`` (a file) with the options of the command
    line; ``doc``, the script's docstring, begins with its description."""
    groups = [scenario.group for scenario in scenarios]
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.set_defaults(scenarios=groups, no_pinned=False)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few iterations, to check that every row runs (timings meaningless)",
    )
    if len(scenarios) > 1:
        parser.add_argument("--scenarios", nargs="+", choices=groups, default=groups)
    parser.add_argument(
        "--pin", type=int, metavar="CPU", help="pin the whole process to this CPU"
    )
    if any(scenario.from_thread for scenario in scenarios):
        parser.add_argument(
            "--no-pinned",
            action="store_true",
            help="do not run the thread scenarios again in a process pinned to one CPU",
        )
    options = parser.parse_args()
    # A row that hangs (a thread that died) must not hang the test command.
    faulthandler.dump_traceback_later(120 if options.quick else 3_600, exit=True)
    if options.quick:
        for scenario in scenarios:
            scenario.quick()
        options.rounds = 1
    suffix = ""
    if options.pin is not None:
        pin_process(options.pin)
        suffix = f", pinned to CPU {options.pin}"
    name = Path(script).name
    print(f"{name}{suffix or ' (not pinned)'}: --rounds {options.rounds}")
    report: dict[str, Any] = {"machine": print_machine(), "pinned": options.pin}
    print_legend()
    selected = [s for s in scenarios if s.group in options.scenarios]
    for scenario in selected:
        report[scenario.key + suffix] = run_scenario(scenario, options.rounds, suffix)
    threads = [scenario.group for scenario in selected if scenario.from_thread]
    can_pin = hasattr(os, "sched_setaffinity")
    if options.pin is None and not options.no_pinned and threads and can_pin:
        print()
        arguments = ["--rounds", str(options.rounds)]
        if len(scenarios) > 1:
            arguments += ["--scenarios", *threads]
        if options.quick:
            arguments.append("--quick")
        report.update(run_pinned_child(script, arguments))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)
