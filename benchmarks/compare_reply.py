"""Across processes: the round trip of a reply awaited by id, per mechanism.

Two OS processes on loopback play ping-pong: the caller (this process) sends
request ``i`` and awaits the reply for ``i``; the replier (a child process)
awaits request ``i`` and sends its reply. Each round trip is timed on its own,
from the send to the reply's arrival. The rows:

* ``redis_pubsub``: raw coredis PUBLISH -> subscriber -> PUBLISH back, on two
  fixed channels that each side subscribed to once, the id in the payload:
  the floor of a hand-over through Redis, and the row the others are compared
  with.
* ``redis_blpop``: raw coredis LPUSH onto a request list, BLPOP by the
  replier, LPUSH onto a reply list of the request's own, BLPOP by the caller.
* ``redis_waitmap``: :class:`~anyio_waitmap.redis.RedisWaitMap`: the caller
  registers with ``expect(pong:i)`` and sends with ``set(ping:i)``; the
  replier ``take(ping:i)`` and ``wake(pong:i)``, which must return ``Woke(1)``.
* ``nats_request``: nats-py ``request()`` to a core NATS subscriber that
  ``respond()``\\ s (no JetStream).
* ``pg_notify``: asyncpg, ``pg_notify('ping', id)`` to a session that LISTENs,
  which answers with ``pg_notify('pong', id)`` (autocommit, so each is
  delivered when its statement commits).

Rows run on asyncio, asyncio+uvloop and trio, where the client library can:
nats-py and asyncpg are asyncio-only, so they have no trio row. Each row runs
``--rounds`` times, interleaved with the other rows, each time in a fresh event
loop and a fresh replier process, after ``--warmup`` untimed round trips; the
cyclic GC is collected before and disabled during the caller's timed part.
Reported: p50 and p99 over the round trips of all rounds, the smallest, the
spread of the rounds' own p50s, and p50 as a ratio to ``redis_pubsub`` on the
same loop. The JSON keeps, per row, each round's percentiles and the pooled
percentiles 0..100 (not the raw samples).

The servers are started here, on free ports of 127.0.0.1 in temporary
directories, and stopped at the end: ``redis-server`` (tests/redis/
redis_servers.py: on PATH, or ``REDIS_SERVER_BIN``), ``nats-server`` (on PATH,
in /usr/sbin, or ``NATS_SERVER_BIN``) and PostgreSQL's ``initdb`` + ``postgres``
(on PATH, in /usr/lib/postgresql/*/bin, or ``POSTGRES_BIN``, with ``initdb``
beside it; run as the ``postgres`` user through ``runuser`` when this runs as
root, which PostgreSQL refuses). A row whose server or client library is
missing is skipped, with the reason printed; only a missing ``redis-server``
leaves nothing to measure.

From the repository root (``python -m benchmarks.compare_reply`` works too):

    python benchmarks/compare_reply.py [--iterations 2000] [--warmup 200]
                                       [--rounds 3] [--json FILE] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import faulthandler
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import anyio

from benchmarks.common.timing import gc_paused, print_machine

#: The servers of the Redis tests (a module of the standard library only).
REDIS_SERVERS = Path(__file__).resolve().parent.parent / "tests" / "redis"
HOST = "127.0.0.1"
ITERATIONS = 2_000
WARMUP = 200
ROUNDS = 3
#: How long a replier may take to start, and a row to finish, before the run
#: gives up on it.
START_TIMEOUT = 60.0
ROW_TIMEOUT = 600.0

LOOPS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


def payload(i: int) -> bytes:
    return b"%d" % i


def ready() -> None:
    """The replier is subscribed or registered: the caller may begin."""
    print("ready", flush=True)


# -- raw Redis pub/sub ---------------------------------------------------------------


def redis_client(url: str) -> Any:
    import coredis

    return coredis.Redis.from_url(url, decode_responses=False)


async def subscribed(client: Any, channel: bytes) -> None:
    """Wait until Redis counts a subscriber of ``channel`` (polled: Redis has
    no way to tell)."""
    while (await client.pubsub_numsub(channel)).get(channel, 0) < 1:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def redis_pubsub_caller(url: str, total: int, timed: list[int]) -> None:
    client = redis_client(url)
    async with (
        client,
        client.pubsub(channels=[b"pong"], ignore_subscribe_messages=True) as pubsub,
    ):
        await subscribed(client, b"pong")
        replies = pubsub.__aiter__()
        for i in range(total):
            start = time.perf_counter_ns()
            await client.publish(b"ping", payload(i))
            message = await replies.__anext__()
            timed.append(time.perf_counter_ns() - start)
            assert message["data"] == payload(i), message


async def redis_pubsub_replier(url: str, total: int) -> None:
    client = redis_client(url)
    async with (
        client,
        client.pubsub(channels=[b"ping"], ignore_subscribe_messages=True) as pubsub,
    ):
        await subscribed(client, b"ping")
        ready()
        served = 0
        async for message in pubsub:
            await client.publish(b"pong", message["data"])
            served += 1
            if served == total:
                break


# -- raw Redis lists -----------------------------------------------------------------


async def redis_blpop_caller(url: str, total: int, timed: list[int]) -> None:
    client = redis_client(url)
    async with client:
        for i in range(total):
            start = time.perf_counter_ns()
            await client.lpush(b"ping", [payload(i)])
            reply = await client.blpop([b"pong:" + payload(i)], timeout=0)
            timed.append(time.perf_counter_ns() - start)
            assert reply is not None
            assert reply[1] == payload(i), reply


async def redis_blpop_replier(url: str, total: int) -> None:
    client = redis_client(url)
    async with client:
        ready()
        for _ in range(total):
            request = await client.blpop([b"ping"], timeout=0)
            assert request is not None
            await client.lpush(b"pong:" + request[1], [request[1]])


# -- RedisWaitMap --------------------------------------------------------------------


async def redis_waitmap_caller(url: str, total: int, timed: list[int]) -> None:
    from anyio_waitmap.redis import RedisWaitMap

    async with RedisWaitMap.connect(url, name="compare_reply") as replies:
        for i in range(total):
            start = time.perf_counter_ns()
            async with replies.expect(f"pong:{i}") as reply:
                await replies.set(f"ping:{i}", payload(i))
                value = await reply
            timed.append(time.perf_counter_ns() - start)
            assert value == payload(i), value


async def redis_waitmap_replier(url: str, total: int) -> None:
    from anyio_waitmap import Woke
    from anyio_waitmap.redis import RedisWaitMap

    async with RedisWaitMap.connect(url, name="compare_reply") as replies:
        ready()
        for i in range(total):
            value = await replies.take(f"ping:{i}")
            outcome = await replies.wake(f"pong:{i}", value)
            assert outcome == Woke(1), outcome


# -- NATS request/reply --------------------------------------------------------------


async def nats_request_caller(url: str, total: int, timed: list[int]) -> None:
    import nats

    connection = await nats.connect(url)
    try:
        for i in range(total):
            start = time.perf_counter_ns()
            reply = await connection.request("ping", payload(i), timeout=30)
            timed.append(time.perf_counter_ns() - start)
            assert reply.data == payload(i), reply
    finally:
        await connection.close()


async def nats_request_replier(url: str, total: int) -> None:
    import asyncio

    import nats

    connection = await nats.connect(url)
    done = asyncio.Event()
    served = 0

    async def respond(message: Any) -> None:
        nonlocal served
        await message.respond(message.data)
        served += 1
        if served == total:
            done.set()

    try:
        await connection.subscribe("ping", cb=respond)
        await connection.flush()
        ready()
        await done.wait()
        await connection.flush()
    finally:
        await connection.close()


# -- PostgreSQL LISTEN/NOTIFY --------------------------------------------------------


async def pg_notify_caller(url: str, total: int, timed: list[int]) -> None:
    import asyncio

    import asyncpg

    listener = await asyncpg.connect(url)
    sender = await asyncpg.connect(url)
    pending: dict[str, asyncio.Future[str]] = {}

    def on_reply(_: object, __: int, ___: str, data: str) -> None:
        future = pending.pop(data, None)
        if future is not None:
            future.set_result(data)

    try:
        await listener.add_listener("pong", on_reply)
        loop = asyncio.get_running_loop()
        for i in range(total):
            key = str(i)
            start = time.perf_counter_ns()
            future = pending[key] = loop.create_future()
            await sender.execute("SELECT pg_notify('ping', $1)", key)
            data = await future
            timed.append(time.perf_counter_ns() - start)
            assert data == key, data
    finally:
        await listener.close()
        await sender.close()


async def pg_notify_replier(url: str, total: int) -> None:
    import asyncio

    import asyncpg

    listener = await asyncpg.connect(url)
    sender = await asyncpg.connect(url)
    requests: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(
            "ping", lambda _, __, ___, data: requests.put_nowait(data)
        )
        ready()
        for _ in range(total):
            data = await requests.get()
            await sender.execute("SELECT pg_notify('pong', $1)", data)
    finally:
        await listener.close()
        await sender.close()


# -- the rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mechanism:
    name: str
    server: str  # the key of its server in SERVERS
    module: str | None  # the client library it needs, besides coredis
    loops: tuple[str, ...]
    caller: Callable[[str, int, list[int]], Awaitable[None]]
    replier: Callable[[str, int], Awaitable[None]]


ALL_LOOPS = tuple(LOOPS)
ASYNCIO_LOOPS = ("asyncio", "uvloop")
#: The first row is the one the others are compared with.
MECHANISMS = [
    Mechanism(
        "redis_pubsub",
        "redis",
        None,
        ALL_LOOPS,
        redis_pubsub_caller,
        redis_pubsub_replier,
    ),
    Mechanism(
        "redis_blpop", "redis", None, ALL_LOOPS, redis_blpop_caller, redis_blpop_replier
    ),
    Mechanism(
        "redis_waitmap",
        "redis",
        None,
        ALL_LOOPS,
        redis_waitmap_caller,
        redis_waitmap_replier,
    ),
    Mechanism(
        "nats_request",
        "nats",
        "nats",
        ASYNCIO_LOOPS,
        nats_request_caller,
        nats_request_replier,
    ),
    Mechanism(
        "pg_notify",
        "postgres",
        "asyncpg",
        ASYNCIO_LOOPS,
        pg_notify_caller,
        pg_notify_replier,
    ),
]
BY_NAME = {mechanism.name: mechanism for mechanism in MECHANISMS}


def run_in_loop(
    loop: str, function: Callable[..., Awaitable[None]], *args: Any
) -> None:
    backend, options = LOOPS[loop]
    anyio.run(function, *args, backend=backend, backend_options=options)


def replier_main(name: str, loop: str, url: str, total: int) -> None:
    """The child process: serve ``total`` requests, then exit."""
    run_in_loop(loop, BY_NAME[name].replier, url, total)


def sample(
    mechanism: Mechanism, loop: str, url: str, iterations: int, warmup: int
) -> list[int]:
    """Nanoseconds of each timed round trip, against a fresh replier process."""
    total = warmup + iterations
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--replier",
        mechanism.name,
        "--loop",
        loop,
        "--url",
        url,
        "--count",
        str(total),
    ]
    replier = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert replier.stdout is not None
        line = replier.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the {mechanism.name} replier did not start: {line!r}")
        # One connection for the warm-up and the timed round trips, which
        # follow it: the first ``warmup`` round trips are left out.
        trips: list[int] = []
        with gc_paused():
            run_in_loop(loop, mechanism.caller, url, total, trips)
        timed = trips[warmup:]
        replier.wait(timeout=START_TIMEOUT)
        if replier.returncode != 0:
            raise RuntimeError(
                f"the {mechanism.name} replier on {loop} exited with "
                f"{replier.returncode}"
            )
        return timed
    finally:
        if replier.poll() is None:
            replier.kill()
            replier.wait()
        if replier.stdout is not None:
            replier.stdout.close()


# -- the servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_program(variable: str, name: str, elsewhere: list[str]) -> str:
    """The program that ``variable`` names, else ``name`` on PATH, else the
    first of ``elsewhere`` that exists; LookupError if none."""
    path = os.environ.get(variable)
    if path:
        if not os.access(path, os.X_OK):
            raise LookupError(f"{variable}={path} is not a program")
        return path
    path = shutil.which(name) or next(
        (p for p in elsewhere if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise LookupError(f"{name} was not found on PATH (nor {variable} set)")
    return path


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def version_of(command: list[str]) -> str:
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"\d+\.\d+(\.\d+)?", output)
    return match.group(0) if match else output.strip()


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    if str(REDIS_SERVERS) not in sys.path:
        sys.path.insert(0, str(REDIS_SERVERS))
    from redis_servers import RedisServer

    with RedisServer() as server:
        yield server.url(), ".".join(map(str, server.binaries.server_version))


@contextlib.contextmanager
def nats_server() -> Iterator[tuple[str, str]]:
    binary = find_program("NATS_SERVER_BIN", "nats-server", ["/usr/sbin/nats-server"])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nats-server-") as directory:
        process = subprocess.Popen(
            [binary, "-a", HOST, "-p", str(port), "-l", f"{directory}/nats.log"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, process, "nats-server")
            yield f"nats://{HOST}:{port}", version_of([binary, "--version"])
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def postgres_binaries() -> tuple[str, str]:
    # Debian and Ubuntu keep them off PATH, in a folder per major version.
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(re.sub(r"\D", "", Path(path).parts[-3]) or 0),
        reverse=True,
    )
    postgres = find_program("POSTGRES_BIN", "postgres", versions)
    return str(Path(postgres).with_name("initdb")), postgres


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    initdb, postgres = postgres_binaries()
    as_user: list[str] = []
    directory = tempfile.mkdtemp(prefix="postgres-")
    try:
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the postgres user.
            runuser = shutil.which("runuser")
            if runuser is None:
                raise LookupError("running as root, and runuser was not found")
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise LookupError("running as root, and no postgres user") from None
            os.chown(directory, user.pw_uid, user.pw_gid)
            as_user = [runuser, "-u", "postgres", "--"]
        data = f"{directory}/data"
        subprocess.run(
            [*as_user, initdb, "-D", data, "-A", "trust", "-U", "bench", "--no-sync"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=120,
        )
        port = free_port()
        process = subprocess.Popen(
            [
                *as_user,
                postgres,
                "-D",
                data,
                "-p",
                str(port),
                "-k",
                directory,
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, process, "postgres")
            yield (
                f"postgresql://bench@{HOST}:{port}/postgres",
                version_of([postgres, "--version"]),
            )
        finally:
            stop_postgres(process, Path(data))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def stop_postgres(process: subprocess.Popen[bytes], data: Path) -> None:
    """Fast shutdown of the postmaster (SIGINT), whose pid runuser does not show."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[tuple[str, str]]]] = {
    "redis": redis_server,
    "nats": nats_server,
    "postgres": postgres_server,
}


# -- the report ----------------------------------------------------------------------


def percentiles(samples: list[int]) -> list[float]:
    """Percentiles 0, 1, ..., 100 of ``samples`` (nanoseconds), in microseconds."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return [ordered[0] / 1e3] * 101
    inner = statistics.quantiles(ordered, n=100, method="inclusive")
    return [value / 1e3 for value in (ordered[0], *inner, ordered[-1])]


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("coredis", "nats-py", "asyncpg"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", help="write the results (percentiles in us)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few round trips per row, to check that every row runs "
        "(timings meaningless)",
    )
    # The replier's side, run in a child process.
    parser.add_argument("--replier", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.replier:
        replier_main(options.replier, options.loop, options.url, options.count)
        return
    # A row that hangs (a lost message) must not hang the test command.
    faulthandler.dump_traceback_later(120 if options.quick else 3_600, exit=True)
    iterations, warmup, rounds = options.iterations, options.warmup, options.rounds
    if options.quick:
        iterations, warmup, rounds = 20, 5, 1
    print(
        f"compare_reply.py: --iterations {iterations:,} --warmup {warmup} "
        f"--rounds {rounds}"
    )
    report: dict[str, Any] = {
        "machine": print_machine(),
        "clients": versions(),
        "iterations": iterations,
        "warmup": warmup,
        "rounds": rounds,
        "servers": {},
        "skipped": {},
        "loops": {},
    }
    print("clients: " + ", ".join(f"{k} {v}" for k, v in report["clients"].items()))
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for name, start in SERVERS.items():
            try:
                url, version = stack.enter_context(start())
            except (
                LookupError,
                OSError,
                RuntimeError,
                subprocess.SubprocessError,
            ) as exc:
                report["skipped"][name] = f"{name} server: {exc}"
                continue
            urls[name] = url
            report["servers"][name] = version
        print(
            "servers (started here, on loopback): "
            + ", ".join(f"{k} {v}" for k, v in report["servers"].items())
        )
        rows: dict[str, list[Mechanism]] = {loop: [] for loop in LOOPS}
        for mechanism in MECHANISMS:
            reason: str | None = None
            if mechanism.server not in urls:
                reason = report["skipped"].get(mechanism.server, "no server")
            elif (
                mechanism.module and importlib.util.find_spec(mechanism.module) is None
            ):
                reason = f"the Python package {mechanism.module!r} is not installed"
            if reason is not None:
                print(f"  skipped {mechanism.name}: {reason}")
                report["skipped"][mechanism.name] = reason
                continue
            for loop in mechanism.loops:
                rows[loop].append(mechanism)
            for loop in set(LOOPS) - set(mechanism.loops):
                print(
                    f"  no {loop} row for {mechanism.name}: its client is asyncio-only"
                )
        if not any(rows.values()):
            sys.exit("compare_reply.py: no row can run (is redis-server installed?)")
        samples: dict[tuple[str, str], list[int]] = {}
        by_round: dict[tuple[str, str], list[list[float]]] = {}
        for _ in range(rounds):
            for loop, mechanisms in rows.items():
                for mechanism in mechanisms:
                    url = urls[mechanism.server]
                    trips = sample(mechanism, loop, url, iterations, warmup)
                    samples.setdefault((loop, mechanism.name), []).extend(trips)
                    ranks = percentiles(trips)
                    by_round.setdefault((loop, mechanism.name), []).append(
                        [ranks[50], ranks[99]]
                    )
    print(
        "\n(round trip of one reply by id between two processes on loopback, in us: "
        "p50 and p99 over every round trip of every round; spread = range of the "
        "rounds' p50s / p50; ratio = p50 / p50 of redis_pubsub on the same loop)"
    )
    print(
        f"  {'loop':8} {'row':16} {'p50 us':>9} {'p99 us':>9} {'min us':>9} "
        f"{'spread':>7}  ratio"
    )
    for loop, mechanisms in rows.items():
        report["loops"][loop] = {}
        base: float | None = None
        for mechanism in mechanisms:
            ranks = percentiles(samples[(loop, mechanism.name)])
            p50s = [p50 for p50, _ in by_round[(loop, mechanism.name)]]
            spread = (max(p50s) - min(p50s)) / ranks[50] if ranks[50] else 0.0
            if base is None and mechanism.name == MECHANISMS[0].name:
                base = ranks[50]
            ratio = f"{ranks[50] / base:5.2f}x pubsub" if base else "  n/a"
            print(
                f"  {loop:8} {mechanism.name:16} {ranks[50]:9,.0f} {ranks[99]:9,.0f} "
                f"{ranks[0]:9,.0f} {spread:7.0%}  {ratio}"
            )
            report["loops"][loop][mechanism.name] = {
                "p50_us": ranks[50],
                "p99_us": ranks[99],
                "rounds_p50_p99_us": by_round[(loop, mechanism.name)],
                "percentiles_us": ranks,
                "round_trips": len(samples[(loop, mechanism.name)]),
            }
    # The machine is shared: the load at the end says whether other work
    # came and went during the run (the start's is in "machine").
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["load_average_end"] = load
    if load is not None:
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in load)}")
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
