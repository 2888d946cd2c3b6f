#!/usr/bin/env python3
"""Set up virtual environments and run the demo, the tests or the benchmarks.

    python3 dev.py demo [ARGS...]  run examples/rpc_mux.py (ARGS go to the demo)
    python3 dev.py demo --redis [--cluster] [ARGS...]
                                   run examples/redis_jobs.py, the multi-process
                                   demo, against a redis-server (a 3-primary
                                   Redis Cluster with --cluster) started for it,
                                   and stopped after it; redis-server and
                                   redis-cli must be installed
    python3 dev.py test [ARGS...]  what CI runs (ARGS go to every pytest run;
                                   without ARGS, 100% branch coverage is required):
      1. in .venv, with this Python: ruff, mypy, pyright, the docs (html, doctest)
      2. build the sdist and the wheel from it, and check their metadata and files
      3. the test suite against that wheel, installed in .venv-3.X for each
         Python in PYTHONS, and in .venv-3.X-lowest with the lowest
         dependencies allowed (.ci/lowest.txt) for each in LOWEST_ON; two runs
         at a time (--jobs), each one's output shown when it ends; the run on
         this Python measures coverage
      4. the benchmarks, briefly (bench --quick)
    python3 dev.py test --python 3.12 [ARGS...]
                                   steps 2 and 3 only, on Python 3.12 (repeat the
                                   option for more; 3.10-lowest names a lowest run)
    python3 dev.py bench [--quick] run every benchmark, keep the results in
                                   benchmarks/results/ and redraw the chart
                                   (--quick: a smoke run, results in a temp dir,
                                   each scenario of wakers.py alone too)
    python3 dev.py mutate [NAMES]  mutation testing of the package with mutmut
                                   (configured in pyproject.toml; half an hour
                                   or more), then list the mutants that survived

Each command creates the environments it needs if they do not exist yet, and
installs the package with its extras and a dependency group of pyproject.toml
into them; nothing but Python 3.10 or newer is needed beforehand. The Pythons
are found as this one, python3.X on PATH, or pyenv's 3.X.N. The tests of
anyio_waitmap.redis (tests/redis) start Redis servers of their own, and need
redis-server and redis-cli 7.0 or newer (on PATH, or named by REDIS_SERVER_BIN
and REDIS_CLI_BIN). With CI set (CI=true), a missing Python or Redis is an
error; otherwise it is reported at the end, and what needs it is left out.

Only the standard library is used here, on purpose. nox or hatch would have to
be installed by this script first (the README's two commands must work on a
machine with Python only), and what it does beyond their sessions would still
be ours to write: finding pyenv's interpreters, failing in CI when one is
missing, running two Pythons at once (nox runs sessions one after another),
checking the wheel against the source tree.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO

ROOT = Path(__file__).resolve().parent
# The Pythons the package supports: the wheel's classifiers must list exactly
# these (the test command checks it), and CI runs the test suite on each.
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# The suite also runs on these with the lowest versions of the dependencies that
# pyproject.toml allows, pinned in this file (also checked against the wheel).
LOWEST_ON = ("3.10", "3.13")
LOWEST = ROOT / ".ci" / "lowest.txt"
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
THIS_PYTHON = "{}.{}".format(*sys.version_info)
BIN, EXE = ("Scripts", ".exe") if os.name == "nt" else ("bin", "")
# The dependency group that each command installs into .venv.
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
    ("redis_handover", ["--rounds", "2", "--throughput-rounds", "3", "--profile"]),
)
# The benchmarks that start Redis servers (see redis_missing()).
REDIS_BENCHMARKS = frozenset({"redis_handover"})
# wakers.py runs the scenarios of these scripts into one report (wakers.json);
# the smoke run also runs each of them alone.
WAKERS_SCENARIOS = ("wakers_idle", "wakers_ping_pong", "wakers_thread", "wakers_burst")
# Wall times of the test command's steps, printed at its end.
TIMES: list[tuple[str, float]] = []
# What the tests of anyio_waitmap.redis start; see redis_missing().
REDIS_VERSION = (7, 0, 0)


def run(
    *cmd: str | Path, env: dict[str, str] | None = None, log: TextIO | None = None
) -> None:
    """Run ``cmd`` in the repository; exit with its status if it fails. Its
    output goes to ``log`` if given (the parallel test runs), else shows."""
    print("+", " ".join(str(part) for part in cmd), file=log or sys.stdout, flush=True)
    result = subprocess.run(
        [str(part) for part in cmd],
        cwd=ROOT,
        check=False,
        env=None if env is None else {**os.environ, **env},
        stdout=log,
        stderr=None if log is None else subprocess.STDOUT,
    )
    if result.returncode:
        sys.exit(result.returncode)


def ensure_venv(
    path: Path,
    interpreter: str,
    name: str,
    *install: str,
    constraints: Path | None = None,
    log: TextIO | None = None,
) -> Path:
    """Create the environment with ``interpreter`` if needed, and run ``pip
    install *install`` in it when that, the project's metadata or the
    constraints changed."""
    python = path / BIN / f"python{EXE}"
    if not python.exists():
        run(interpreter, "-m", "venv", "--clear", path, log=log)
    if constraints:
        install += ("--constraint", str(constraints))
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes()
        + (constraints.read_bytes() if constraints else b"")
        + "\0".join(install).encode()
    ).hexdigest()
    stamp = path / f".installed-{name}"
    if not stamp.exists() or stamp.read_text() != digest:
        # pip 25.1 is the first to install dependency groups (--group).
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run(*pip, "--upgrade", "pip>=25.1", log=log)
        run(*pip, *install, log=log)
        stamp.write_text(digest)
    return python


def dev_venv(path: Path, command: str) -> Path:
    """.venv: the package editable, with its extras and the command's group."""
    group = GROUPS[command]
    return ensure_venv(
        path, sys.executable, group, "-e", ".[trio,redis]", "--group", group
    )


def demo(python: Path, args: list[str]) -> None:
    if "--redis" not in args:
        run(python, ROOT / "examples" / "rpc_mux.py", *args)
        return
    args = [arg for arg in args if arg != "--redis"]
    cluster = "--cluster" in args
    # The tests' module that starts Redis servers: standard library only. Its
    # servers are stopped when the `with` block ends, however it ends (an
    # atexit handler of its own catches the rest).
    servers = load_module(ROOT / "tests" / "redis" / "redis_servers.py")
    missing = redis_missing()
    if missing:
        sys.exit(f"dev.py demo --redis: {missing}")
    what = "a 3-primary Redis Cluster" if cluster else "a redis-server"
    print(f"Starting {what} for the demo...", flush=True)
    with servers.RedisCluster() if cluster else servers.RedisServer() as server:
        run(python, ROOT / "examples" / "redis_jobs.py", f"--url={server.url()}", *args)


def load_module(path: Path) -> ModuleType:
    """The module in the file at ``path``, imported under its file's name
    (once)."""
    if path.stem in sys.modules:
        return sys.modules[path.stem]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # for its dataclasses
    spec.loader.exec_module(module)
    return module


@dataclass
class Suite:
    """One run of the test suite against the installed wheel."""

    name: str  # "3.12", or "3.10-lowest" for the lowest dependencies
    version: str
    lowest: bool = False
    coverage: bool = False

    def __str__(self) -> str:
        extra = ", lowest dependencies" if self.lowest else ""
        return f"Python {self.version}{extra}{', coverage' if self.coverage else ''}"


SUITES = [Suite(v, v) for v in PYTHONS] + [
    Suite(f"{v}-lowest", v, True) for v in LOWEST_ON
]


def redis_missing() -> str | None:
    """Why tests/redis cannot run here (no Redis 7.0 or newer), or None."""
    # The tests' own finder, standard library only.
    redis_servers = load_module(ROOT / "tests" / "redis" / "redis_servers.py")
    try:
        binaries = redis_servers.redis_binaries()
    except redis_servers.RedisNotInstalledError as exc:
        return str(exc)
    if binaries.server_version < REDIS_VERSION:
        found = ".".join(map(str, binaries.server_version))
        return (
            f"{binaries.server} is Redis {found}; 7.0 or newer is needed "
            f"(sharded pub/sub). {redis_servers.INSTALL_HINT}"
        )
    return None


def test(venv: Path, args: list[str], only: list[str], jobs: int) -> None:
    suites = [suite for suite in SUITES if not only or suite.name in only]
    pythons = find_pythons(
        [suite.version for suite in suites], required=CI or bool(only)
    )
    no_redis = redis_missing()
    if no_redis and CI:
        sys.exit(f"dev.py test: tests/redis cannot run. {no_redis}")
    suites = [suite for suite in suites if suite.version in pythons]
    if not args and not only:
        # Coverage once: in the run on this Python (or on the newest one
        # found), which starts first since it takes longest.
        newest = [suite for suite in suites if not suite.lowest][-1:]
        ours = [suite for suite in suites if suite.name == THIS_PYTHON] or newest
        ours[0].coverage = True
        suites.sort(key=lambda suite: not suite.coverage)
    with timed("set up .venv"):
        dev = dev_venv(venv, "test")
    if not only:
        with timed("lint, types, docs"):
            check(dev)
    with timed("build, check sdist and wheel"):
        wheel = build(dev)
    run_suites(suites, pythons, wheel, args, jobs, redis=not no_redis)
    if not only:
        with timed("benchmarks --quick"):
            bench(dev, ["--quick"])
    print("Times:", "; ".join(f"{step} {seconds:.0f} s" for step, seconds in TIMES))
    missing = [version for version in PYTHONS if version not in pythons]
    if missing and not only:
        print(f"Not tested, not found: Python {', '.join(missing)}.")
    if no_redis:
        print(f"Not tested: anyio_waitmap.redis (tests/redis). {no_redis}")


def check(python: Path) -> None:
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


def build(python: Path) -> Path:
    """Build the sdist and, from it, the wheel; check both; return the wheel."""
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run(python, "-m", "build", "--outdir", dist)
    run(python, "-m", "twine", "check", "--strict", *sorted(dist.iterdir()))
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        [metadata] = [name for name in in_wheel if name.endswith(".dist-info/METADATA")]
        check_metadata(archive.read(metadata).decode())
    # Exactly the package's files, py.typed among them: a module or py.typed
    # left out of the build fails here, before the tests.
    in_wheel = {name for name in in_wheel if ".dist-info/" not in name}
    source = files("anyio_waitmap")
    if in_wheel != source or "anyio_waitmap/py.typed" not in in_wheel:
        sys.exit(
            f"{wheel.name} does not hold the package's files: missing "
            f"{sorted(source - in_wheel)}, extra {sorted(in_wheel - source)}"
        )
    # The sdist must hold what the tests need as well, to run them from it.
    with tarfile.open(sdist) as archive:
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    missing = (
        files("anyio_waitmap", "tests", "examples", "benchmarks", "docs") - in_sdist
    )
    if missing:
        sys.exit(f"{sdist.name} lacks {sorted(missing)}")
    print(f"{sdist.name} and {wheel.name}: metadata and files checked")
    return wheel


def files(*directories: str) -> set[str]:
    """The files under ``directories`` of the source tree, without caches and
    built docs, as paths relative to it."""
    found = set()
    for directory in directories:
        for path in (ROOT / directory).rglob("*"):
            relative = path.relative_to(ROOT)
            ignored = {"__pycache__", "_build"} & set(relative.parts)
            if path.is_file() and not ignored and path.suffix != ".pyc":
                found.add(relative.as_posix())
    return found


def check_metadata(text: str) -> None:
    """The classifiers name PYTHONS, and .ci/lowest.txt pins the floors."""
    metadata = email.parser.Parser().parsestr(text)
    classifiers = metadata.get_all("Classifier", [])
    versions = [
        c.rpartition(" :: ")[2]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    if versions != list(PYTHONS) or metadata["Requires-Python"] != f">={PYTHONS[0]}":
        sys.exit(
            f"pyproject.toml claims Python {versions} ({metadata['Requires-Python']}),"
            f" dev.py tests {list(PYTHONS)}: make them agree"
        )
    floors = {}
    for requirement in metadata.get_all("Requires-Dist", []):
        # "name[extras] <7,>=6.9; marker": the floor is the >= of the specifiers.
        name = re.findall(r"^[\w.-]+", requirement)[0]
        floor = re.search(r">=\s*([\w.]+)", requirement.partition(";")[0])
        if floor:
            floors[normalize(name)] = release(floor[1])
    pins = {}
    for line in LOWEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalize(name)] = release(version)
    if floors != pins:
        sys.exit(
            f"The floors of pyproject.toml, {floors}, differ from {LOWEST}: {pins}"
        )


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def release(version: str) -> str:
    """Without the trailing zeros, which PEP 440 ignores: 4.9.0 is 4.9."""
    return re.sub(r"(\.0)+$", "", version.strip())


def find_pythons(versions: list[str], required: bool) -> dict[str, str]:
    """An interpreter for each of ``versions``; exit if one is missing and
    ``required``, else say which are."""
    found = {version: find_python(version) for version in versions}
    pythons = {version: python for version, python in found.items() if python}
    missing = [version for version in found if version not in pythons]
    if missing:
        it = "it" if len(missing) == 1 else "them"
        message = (
            f"Python {', '.join(missing)} not found (looked for python3.X on PATH"
            f" and in {pyenv_root() / 'versions'})"
        )
        if required:
            sys.exit(
                f"{message}. Install {it}, e.g. with `pyenv install {missing[0]}`,"
                f" or put python{missing[0]} on PATH."
            )
        print(f"{message}: the test suite does not run on {it}.", flush=True)
    if not pythons:
        sys.exit("No Python to run the test suite on.")
    return pythons


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.12"): this one, python3.12 on PATH, or
    the newest 3.12.N of pyenv's, whichever runs first."""
    candidates = [sys.executable] if version == THIS_PYTHON else []
    candidates.append(shutil.which(f"python{version}") or "")
    found = [
        path
        for path in (pyenv_root() / "versions").glob(f"{version}.*/{BIN}/python{EXE}")
        if re.fullmatch(rf"{re.escape(version)}\.\d+", path.parent.parent.name)
    ]
    found.sort(key=lambda path: int(path.parent.parent.name.rpartition(".")[2]))
    candidates += map(str, reversed(found))
    for candidate in filter(None, candidates):
        # A pyenv shim on PATH fails when pyenv selects another version.
        probe = subprocess.run(
            [
                candidate,
                "-c",
                "import sys, venv; print('%d.%d' % sys.version_info[:2])",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def pyenv_root() -> Path:
    root = os.environ.get("PYENV_ROOT")
    pyenv = shutil.which("pyenv")
    if not root and pyenv:
        command = [pyenv, "root"]
        root = subprocess.run(command, capture_output=True, text=True).stdout.strip()
    return Path(root or "~/.pyenv").expanduser()


def run_suites(
    suites: list[Suite],
    pythons: dict[str, str],
    wheel: Path,
    args: list[str],
    jobs: int,
    redis: bool,
) -> None:
    """Run the suites, ``jobs`` at a time; one at a time, each one's output
    shows as it runs (as pytest's --pdb needs). ``redis``: whether
    tests/redis can run."""
    if jobs == 1 or len(suites) == 1:
        for suite in suites:
            start = time.monotonic()
            run_suite(suite, pythons[suite.version], wheel, args, redis, log=None)
            TIMES.append((str(suite), time.monotonic() - start))
        return
    logs = ROOT / "build" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)

    def logged(suite: Suite) -> tuple[int, float]:
        start = time.monotonic()
        with (logs / f"{suite.name}.log").open("w") as log:
            try:
                run_suite(suite, pythons[suite.version], wheel, args, redis, log)
                status = 0
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
        return status, time.monotonic() - start

    names = "; ".join(map(str, suites))
    print(f"The test suite on {names}: {jobs} at a time, each one's output shown")
    print(f"when it ends (and kept in {logs.relative_to(ROOT)}/).", flush=True)
    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(logged, suite): suite for suite in suites}
        for future in as_completed(futures):
            suite = futures[future]
            status, seconds = future.result()
            sys.stdout.write((logs / f"{suite.name}.log").read_text())
            outcome = "FAILED" if status else "passed"
            print(f"===== {suite}: {outcome} in {seconds:.0f} s =====", flush=True)
            TIMES.append((str(suite), seconds))
            if status:
                failed.append(str(suite))
    if failed:
        sys.exit(f"The test suite failed on: {'; '.join(failed)}")


def run_suite(
    suite: Suite,
    interpreter: str,
    wheel: Path,
    args: list[str],
    redis: bool,
    log: TextIO | None,
) -> None:
    """The test suite against ``wheel``, installed in .venv-<suite name>."""
    # The redis extra's coredis needs a newer anyio than the package's floor:
    # the runs with the lowest versions leave it out, and its tests with it
    # (the other runs test it).
    extras = "trio" if suite.lowest else "trio,redis"
    python = ensure_venv(
        ROOT / f".venv-{suite.name}", interpreter, "test",
        f"{wheel}[{extras}]", "--group", "test",
        constraints=LOWEST if suite.lowest else None, log=log,
    )  # fmt: skip
    # This build's wheel, in place of the last one (it has the same version).
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(*pip, "--force-reinstall", "--no-deps", wheel, log=log)
    # The pytest script, not `python -m pytest`, which would put the repository
    # first on sys.path and test the source tree; tests/package/test_installed.py
    # checks that the package comes from the environment.
    pytest = [python.parent / f"pytest{EXE}", *args]
    if suite.lowest:
        print("Without tests/redis: the redis extra needs anyio 4.11.", file=log)
        pytest.append("--ignore=tests/redis")
    elif not redis:
        print("Without tests/redis: no Redis 7.0 or newer found.", file=log)
        pytest.append("--ignore=tests/redis")
    env = {"ANYIO_WAITMAP_TEST_INSTALLED": "1"}
    if not suite.coverage:
        run(*pytest, env=env, log=log)
        return
    # The whole suite, measured: every line and branch of the package must run
    # (the threshold and the few exclusions are in pyproject.toml).
    coverage = [python, "-m", "coverage"]
    run(*coverage, "erase", log=log)
    run(*coverage, "run", "--parallel-mode", *pytest, env=env, log=log)
    run(*coverage, "combine", "--quiet", log=log)  # site-packages -> source tree
    # Without tests/redis, anyio_waitmap.redis is not measured (and said so).
    omit = [] if redis else ["--omit=*/anyio_waitmap/redis/*"]
    run(*coverage, "report", *omit, log=log)


@contextmanager
def timed(step: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    TIMES.append((step, time.monotonic() - start))


def bench(python: Path, args: list[str]) -> None:
    quick = args == ["--quick"]
    if args and not quick:
        sys.exit(f"dev.py bench: unknown arguments {args}; only --quick is known")
    results = Path(tempfile.mkdtemp()) if quick else ROOT / "benchmarks" / "results"
    benchmarks = list(BENCHMARKS)
    if quick:
        benchmarks += [(name, []) for name in WAKERS_SCENARIOS]
    no_redis = redis_missing()
    if no_redis:
        benchmarks = [(n, a) for n, a in benchmarks if n not in REDIS_BENCHMARKS]
    for name, full_run in benchmarks:
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
    if no_redis:
        print(f"Not run: {', '.join(sorted(REDIS_BENCHMARKS))}. {no_redis}")


def mutate(python: Path, args: list[str]) -> None:
    # NAMES (mutmut's mutant names, globs allowed) re-run only those mutants.
    mutmut = python.parent / "mutmut"
    run(mutmut, "run", "--max-children", str(os.cpu_count() or 1), *args)
    run(mutmut, "results")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("command", choices=["demo", "test", "bench", "mutate"])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument(
        "--python", action="append", default=[], metavar="VERSION",
        choices=[suite.name for suite in SUITES], help="test: run only this suite",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="test: how many suites run at a time (default: 2)",
    )  # fmt: skip
    # Everything else goes to the demo, pytest, bench or mutmut.
    options, args = parser.parse_known_args()
    if options.python and options.command != "test":
        parser.error("--python goes with the test command only")
    if options.jobs is not None and options.command == "demo":
        # The Redis demo's own --jobs (how many jobs it runs).
        args.append(f"--jobs={options.jobs}")
    elif options.jobs is not None and options.command != "test":
        parser.error("--jobs goes with the test command (or the demo) only")
    venv = options.venv.resolve()
    if options.command == "test":
        jobs = min(2, os.cpu_count() or 1) if options.jobs is None else options.jobs
        test(venv, args, options.python, max(1, jobs))
    else:
        run_command = {"demo": demo, "bench": bench, "mutate": mutate}[options.command]
        run_command(dev_venv(venv, options.command), args)


if __name__ == "__main__":
    main()
