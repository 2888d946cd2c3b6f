#!/usr/bin/env python3
"""Set up a virtual environment and run the demo or the whole test suite.

    python3 dev.py demo [ARGS...]  run examples/rpc_mux.py (ARGS go to the demo)
    python3 dev.py test [ARGS...]  lint, type-check, run the tests (ARGS go to pytest;
                                   without ARGS, 100% branch coverage is required)
    python3 dev.py bench [--quick] run every benchmark, keep the results in
                                   benchmarks/results/ and redraw the chart
                                   (--quick: a smoke run, results in a temp dir)
    python3 dev.py mutate [NAMES]  mutation testing of the package with mutmut
                                   (configured in pyproject.toml; half an hour
                                   or more), then list the mutants that survived

Each command creates ``.venv`` (or ``--venv PATH``) with the interpreter running
this script if it does not exist yet, and installs into it the package (editable)
with its trio extra and the command's dependency group of pyproject.toml; nothing
else is needed beforehand. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The dependency group that each command installs.
GROUPS = {"demo": "demo", "test": "dev", "bench": "bench", "mutate": "mutation"}
# Each benchmark script, and the arguments of a full run of it.
BENCHMARKS = (
    ("fanin", ["--rounds", "11"]),
    ("wakers", ["--rounds", "11"]),
    ("cancel_memory", ["--rounds", "15"]),
    ("scale", ["--rounds", "11", "--large-rounds", "3", "--max-keys", "1000000"]),
    ("rpc_tcp", ["--rounds", "5"]),
    ("hotpath", ["--repeat", "5"]),
    ("steps", ["--rounds", "11"]),
    ("breakdown", []),
)


def run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(part) for part in cmd), flush=True)
    result = subprocess.run(
        [str(part) for part in cmd],
        cwd=ROOT,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if result.returncode:
        sys.exit(result.returncode)


def ensure_venv(path: Path, group: str) -> Path:
    """Create the environment if needed and install the project with ``group``."""
    bindir = path / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    if not python.exists():
        print(f"Creating {path} with Python {sys.version.split()[0]}", flush=True)
        venv.create(path, with_pip=True, clear=True)
    # Reinstall only when the project metadata or the requested group changed.
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + group.encode()
    ).hexdigest()
    stamp = path / f".installed-{group}"
    if not stamp.exists() or stamp.read_text() != digest:
        # pip 25.1 is the first to install dependency groups (--group).
        pip = [python, "-m", "pip", "install", "--quiet"]
        run(*pip, "--upgrade", "pip>=25.1")
        run(*pip, "-e", ".[trio]", "--group", group)
        stamp.write_text(digest)
    return python


def demo(python: Path, args: list[str]) -> None:
    run(python, ROOT / "examples" / "rpc_mux.py", *args)


def test(python: Path, args: list[str]) -> None:
    bindir = python.parent
    run(bindir / "ruff", "check", ".")
    run(bindir / "ruff", "format", "--check", ".")
    run(python, "-m", "mypy")
    # Point pyright at this environment's packages, whichever directory it is in.
    run(bindir / "pyright", "--pythonpath", python)
    # --verifytypes does not follow the editable install's .pth file, so it is
    # told where the package and the environment's packages are.
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    run(
        bindir / "pyright",
        "--verifytypes",
        "anyio_waitmap",
        "--ignoreexternal",
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), site_packages])},
    )
    # The docs, with every warning an error, and their examples run as doctests.
    for builder in ("html", "doctest"):
        run(
            python, "-m", "sphinx", "-W", "--keep-going", "-n", "-q",
            "-b", builder, "docs", ROOT / "docs" / "_build" / builder,
        )  # fmt: skip
    # pytest exits with 5 when it collected no test: that fails here too.
    if args:
        run(python, "-m", "pytest", *args)
    else:
        # The whole suite, measured: every line and branch of the package must
        # run (the threshold and the few exclusions are in pyproject.toml).
        run(python, "-m", "coverage", "erase")
        run(python, "-m", "coverage", "run", "-m", "pytest")
        run(python, "-m", "coverage", "report")
    # The benchmarks, briefly: this checks that they still run, not how fast.
    bench(python, ["--quick"])


def bench(python: Path, args: list[str]) -> None:
    quick = args == ["--quick"]
    if args and not quick:
        sys.exit(f"dev.py bench: unknown arguments {args}; only --quick is known")
    results = Path(tempfile.mkdtemp()) if quick else ROOT / "benchmarks" / "results"
    for name, full_run in BENCHMARKS:
        command: list[str | Path] = [python, ROOT / "benchmarks" / f"{name}.py"]
        command += ["--quick"] if quick else full_run
        if name != "breakdown":  # it prints a table only
            command += ["--json", results / f"{name}.json"]
        print("+", " ".join(str(part) for part in command), flush=True)
        # Shown as it runs, and kept next to the JSON.
        with (
            subprocess.Popen(
                [str(part) for part in command],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            ) as process,
            (results / f"{name}.txt").open("w") as printout,
        ):
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                printout.write(line)
        if process.returncode:
            sys.exit(process.returncode)
    run(python, ROOT / "benchmarks" / "chart.py", *(["--quick"] if quick else []))


def mutate(python: Path, args: list[str]) -> None:
    # NAMES (mutmut's mutant names, globs allowed) re-run only those mutants.
    mutmut = python.parent / "mutmut"
    run(mutmut, "run", "--max-children", str(os.cpu_count() or 1), *args)
    run(mutmut, "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["demo", "test", "bench", "mutate"])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    python = ensure_venv(options.venv.resolve(), GROUPS[options.command])
    commands = {"demo": demo, "test": test, "bench": bench, "mutate": mutate}
    commands[options.command](python, options.args)


if __name__ == "__main__":
    main()
