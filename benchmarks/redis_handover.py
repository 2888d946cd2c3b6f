"""Across processes: RedisWaitMap against raw coredis, on Redis and Redis Cluster.

Every hand-over crosses OS processes: the script starts worker processes (this
file again, with ``--worker``), and sends each one task at a time; a worker
runs it in a fresh event loop of the task's backend (asyncio, asyncio+uvloop or
trio) and reports over its standard output. It starts its own ``redis-server``
and its own 3-primary Redis Cluster on free ports (tests/redis/redis_servers.py)
and stops them at the end. Reported, for each of the two:

1. Ping-pong: process A hands a value to process B, B hands one back; the time
   of each round trip, p50 and p99, against raw PUBLISH -> subscriber ->
   PUBLISH back (SPUBLISH and SSUBSCRIBE on the Cluster) and LPUSH -> BLPOP.
   Ours: A ``expect``\\ s its reply, then ``wake``\\ s B's key; B, which
   registered its next key (``expect``) before it replies, ``wake``\\ s A's.
   The "ahead" row registers the next key while the reply is on its way.
2. Throughput: 1, 2 or 4 waking processes, each waking 1,000 keys (all at
   once) that 1,000 tasks per waking process wait on (``expect`` + ``await``,
   a taker each), all in one process; values delivered per second, against
   raw pipelined PUBLISH (SPUBLISH) to one subscribing process.
3. Redis commands and client requests per hand-over in the ping-pong rows
   (``INFO commandstats`` after ``CONFIG RESETSTAT``), Redis memory per parked
   taker (``used_memory`` before and after parking them), and connections
   per process with 10,000 parked tasks (``CLIENT LIST``).

From the repository root (``python -m benchmarks.redis_handover`` works too):

    python benchmarks/redis_handover.py [--rounds 2] [--trips 400] [--warmup 50]
        [--throughput-rounds 1] [--per 1000] [--parked 10000] [--profile]
        [--json FILE] [--quick]

``python3 dev.py bench`` runs it with ``--rounds 2 --throughput-rounds 3
--profile``, in about four minutes on two cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import cProfile
import faulthandler
import itertools
import json
import logging
import math
import os
import pstats
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from typing import Any

import anyio
import anyio.to_thread

from benchmarks.common.timing import print_machine

ROOT = Path(__file__).resolve().parent.parent
LOOPS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}
#: The ping-pong rows; ratios are to the first.
PING_PONG_ROWS = ("raw_pubsub", "raw_list", "waitmap", "waitmap_ahead")
#: The throughput rows; ratios are to the first.
THROUGHPUT_ROWS = ("raw_pubsub_pipelined", "waitmap")
WAKERS = (1, 2, 4)
#: Targets of issue 21, as ratios to raw pub/sub.
TARGET_P50, TARGET_P99, TARGET_THROUGHPUT = 1.5, 2.0, 0.5
#: What the Lua scripts call inside Redis (``INFO commandstats`` counts those
#: calls too): the client's own requests are the others, and EVALSHA. The
#: lease's SET (once every lease / 3 per process) is counted with the scripts'.
SCRIPT_COMMANDS = frozenset({
    "del", "exists", "get", "hdel", "hget", "hincrby", "hkeys", "hset", "set",
    "zadd", "zpopmin", "zrange", "zrem", "zscore", "publish", "spublish",
})  # fmt: skip
PAYLOAD = b"x" * 16
#: The longest a worker's task may take: a worker whose peer died ends.
TASK_TIMEOUT = 300


# -- the worker side: one task at a time, each in a fresh event loop ---------------


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def hear() -> str:
    """The orchestrator's next line (``go``, ``end``), read off the loop."""
    return await anyio.to_thread.run_sync(sys.stdin.readline)


async def ready_then_go(**fields: Any) -> None:
    say("ready", **fields)
    await hear()


def coredis_client(url: str, cluster: bool) -> Any:
    import coredis

    if cluster:
        from coredis.connection import TCPLocation

        host, _, port = url.removeprefix("redis://").partition(":")
        return coredis.RedisCluster(
            startup_nodes=[TCPLocation(host, int(port))], decode_responses=False
        )
    return coredis.Redis.from_url(url, decode_responses=False)


def open_map(url: str, name: str, cluster: bool) -> Any:
    from anyio_waitmap.redis import RedisWaitMap

    return RedisWaitMap.connect(url, name=name, cluster=cluster)


async def settled(wm: Any) -> None:
    """Until the acknowledgements the tasks left are carried out in Redis."""
    # The map has no event for it: its statistics are polled.
    while wm.statistics().pending_operations:  # noqa: ASYNC110
        await anyio.sleep(0.001)


def subscription(client: Any, cluster: bool, channels: list[bytes]) -> Any:
    if cluster:
        return client.sharded_pubsub(channels=channels, ignore_subscribe_messages=True)
    return client.pubsub(channels=channels, ignore_subscribe_messages=True)


async def next_message(pubsub: Any) -> bytes:
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True)
        if message is not None and message["type"] in ("message", "smessage"):
            data: bytes = message["data"]
            return data


async def raw_pubsub_side(spec: dict[str, Any], first: bool) -> None:
    url, cluster, total = spec["url"], spec["cluster"], spec["total"]
    mine, theirs = (b"a", b"b") if first else (b"b", b"a")
    prefix = spec["prefix"].encode()
    client = coredis_client(url, cluster)
    publish = client.spublish if cluster else client.publish
    async with client, subscription(client, cluster, [prefix + mine]) as pubsub:
        await ready_then_go()
        samples = []
        cpu = time.process_time()
        for _ in range(total):
            if first:
                start = time.perf_counter()
                assert await publish(prefix + theirs, PAYLOAD) == 1
                await next_message(pubsub)
                samples.append(time.perf_counter() - start)
            else:
                data = await next_message(pubsub)
                await publish(prefix + theirs, data)
        say("result", samples=samples, cpu=time.process_time() - cpu)
        await hear()


async def raw_list_side(spec: dict[str, Any], first: bool) -> None:
    url, cluster, total = spec["url"], spec["cluster"], spec["total"]
    prefix = spec["prefix"]
    mine, theirs = (prefix + "a", prefix + "b")[:: 1 if first else -1]
    client = coredis_client(url, cluster)
    async with client:
        await ready_then_go()
        samples = []
        cpu = time.process_time()
        for _ in range(total):
            if first:
                start = time.perf_counter()
                await client.lpush(theirs, [PAYLOAD])
                await client.blpop([mine], timeout=0)
                samples.append(time.perf_counter() - start)
            else:
                _, data = await client.blpop([mine], timeout=0)
                await client.lpush(theirs, [data])
        say("result", samples=samples, cpu=time.process_time() - cpu)
        await hear()


async def waitmap_side(spec: dict[str, Any], first: bool) -> None:
    """A (``first``) wakes ``q{i}`` and takes ``r{i}``; B the other way round.

    Each registers the key it takes next before the hand-over that lets the
    other side wake it: just before its own wake, or (``ahead``) one round
    earlier, while the reply is on its way.
    """
    from anyio_waitmap import Woke

    total, ahead = spec["total"], spec["ahead"]
    mine, theirs = ("r", "q") if first else ("q", "r")
    async with open_map(spec["url"], spec["prefix"], spec["cluster"]) as wm:
        expected: dict[int, Any] = {}

        async def register(i: int) -> None:
            if i < total:
                expected[i] = wm.expect(f"{mine}{i}")
                await expected[i].__aenter__()

        async def receive(i: int) -> bytes:
            expectation = expected.pop(i)
            try:
                value: bytes = await expectation
                return value
            finally:
                await expectation.__aexit__(None, None, None)

        async def wake(i: int, value: bytes) -> None:
            outcome = await wm.wake(f"{theirs}{i}", value)
            assert outcome == Woke(1), outcome

        samples = []
        cpu = time.process_time()
        if not first:
            await register(0)
        await ready_then_go()
        if first and ahead:
            await register(0)
        for i in range(total):
            if first:
                start = time.perf_counter()
                if ahead:
                    await wake(i, PAYLOAD)
                    await register(i + 1)
                else:
                    await register(i)
                    await wake(i, PAYLOAD)
                await receive(i)
                samples.append(time.perf_counter() - start)
            else:
                if ahead:
                    await register(i + 1)
                    value = await receive(i)
                else:
                    value = await receive(i)
                    await register(i + 1)
                await wake(i, value)
        await settled(wm)
        say("result", samples=samples, cpu=time.process_time() - cpu)
        await hear()


PING_PONG_SIDES: dict[str, Callable[[dict[str, Any], bool], Awaitable[None]]] = {
    "raw_pubsub": raw_pubsub_side,
    "raw_list": raw_list_side,
    "waitmap": waitmap_side,
    "waitmap_ahead": waitmap_side,
}


async def raw_subscriber(spec: dict[str, Any]) -> None:
    """Subscribe to each publisher's channel; time until every message came."""
    url, cluster, total = spec["url"], spec["cluster"], spec["total"]
    channels = [f"{spec['prefix']}{w}".encode() for w in range(spec["wakers"])]
    client = coredis_client(url, cluster)
    async with client, subscription(client, cluster, channels) as pubsub:
        await ready_then_go()
        cpu = time.process_time()
        for _ in range(total):
            await next_message(pubsub)
        end = time.perf_counter()
        say("result", end=end, settled=end, cpu=time.process_time() - cpu)
        await hear()


async def raw_publisher(spec: dict[str, Any]) -> None:
    """Publish ``per`` messages to its channel, pipelined."""
    url, cluster, per = spec["url"], spec["cluster"], spec["per"]
    channel = f"{spec['prefix']}{spec['index']}".encode()
    client = coredis_client(url, cluster)
    async with client:
        await ready_then_go()
        start, cpu = time.perf_counter(), time.process_time()
        async with client.pipeline(transaction=False) as pipe:
            publish = pipe.spublish if cluster else pipe.publish
            for _ in range(per):
                publish(channel, PAYLOAD)
        say("result", start=start, cpu=time.process_time() - cpu)
        await hear()


async def waitmap_takers(spec: dict[str, Any]) -> None:
    """``per`` takers for each waking process, each registered (``expect``)
    and parked; time until each has its value, and until it is acknowledged."""
    keys = [f"{w}:{j}" for w in range(spec["wakers"]) for j in range(spec["per"])]

    async def receive(expectation: Any) -> None:
        await expectation

    async with open_map(spec["url"], spec["prefix"], spec["cluster"]) as wm:
        async with AsyncExitStack() as stack:
            expectations = [wm.expect(key) for key in keys]
            for start in range(0, len(keys), 500):
                batch = expectations[start : start + 500]
                async with anyio.create_task_group() as tg:
                    for expectation in batch:
                        tg.start_soon(stack.enter_async_context, expectation)
            await ready_then_go()
            cpu = time.process_time()
            async with anyio.create_task_group() as tg:
                for expectation in expectations:
                    tg.start_soon(receive, expectation)
            end = time.perf_counter()
        await settled(wm)
        cpu = time.process_time() - cpu
        say("result", end=end, settled=time.perf_counter(), cpu=cpu)
        await hear()


async def waitmap_waker(spec: dict[str, Any]) -> None:
    """Wake its ``per`` keys, all at once."""
    from anyio_waitmap import Woke

    index, per = spec["index"], spec["per"]
    async with open_map(spec["url"], spec["prefix"], spec["cluster"]) as wm:
        await ready_then_go()
        woken = 0

        async def wake(j: int) -> None:
            nonlocal woken
            if await wm.wake(f"{index}:{j}", PAYLOAD) == Woke(1):
                woken += 1

        start, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for j in range(per):
                tg.start_soon(wake, j)
        assert woken == per, woken
        say("result", start=start, cpu=time.process_time() - cpu)
        await hear()


async def parker(spec: dict[str, Any]) -> None:
    """Park ``count`` takers on distinct keys (ours), or subscribe to as many
    channels on one connection (raw pub/sub); hold them until told."""
    url, cluster, count = spec["url"], spec["cluster"], spec["count"]
    keys = [f"k{j}" for j in range(count)]
    async with AsyncExitStack() as stack:
        if spec["row"] == "waitmap":
            wm = await stack.enter_async_context(open_map(url, spec["prefix"], cluster))
            say("connected")
            await hear()
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            parked = anyio.Semaphore(0)

            async def take(key: str) -> None:
                async with wm.expect(key) as expectation:
                    parked.release()
                    await expectation

            # In waves, as the takers of the throughput rows: 10,000
            # registrations at once would wait for the client's connection for
            # longer than the map's timeout on a busy machine.
            for start in range(0, count, 500):
                wave = keys[start : start + 500]
                for key in wave:
                    tg.start_soon(take, key)
                for _ in wave:
                    await parked.acquire()
        else:
            client = coredis_client(url, cluster)
            await stack.enter_async_context(client)
            say("connected")
            await hear()
            channels = [f"{spec['prefix']}{key}".encode() for key in keys]
            await stack.enter_async_context(subscription(client, cluster, channels))
        await ready_then_go()
        say("result")
        await hear()


async def one_command(spec: dict[str, Any]) -> None:
    """Time ``total`` GETs one after another: one coredis round trip alone."""
    client = coredis_client(spec["url"], spec["cluster"])
    async with client:
        await ready_then_go()
        samples = []
        cpu = time.process_time()
        for _ in range(spec["total"]):
            start = time.perf_counter()
            await client.get(spec["prefix"])
            samples.append(time.perf_counter() - start)
        say("result", samples=samples, cpu=time.process_time() - cpu)
        await hear()


TASKS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
    "raw_subscriber": raw_subscriber,
    "raw_publisher": raw_publisher,
    "waitmap_takers": waitmap_takers,
    "waitmap_waker": waitmap_waker,
    "parker": parker,
    "one_command": one_command,
}


def _coredis_pool_release(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any]
) -> None:
    """The asyncio side of what worker() silences on trio: coredis's cluster
    pool, finalizing its ``acquire`` generator after a client closed, fails
    to release a connection in its statistics (a KeyError)."""
    exception = context.get("exception")
    if not (isinstance(exception, KeyError) and "ClusterConnection" in str(exception)):
        loop.default_exception_handler(context)


async def run_task(spec: dict[str, Any]) -> None:
    if LOOPS[spec["loop"]][0] == "asyncio":
        asyncio.get_running_loop().set_exception_handler(_coredis_pool_release)
    with anyio.fail_after(TASK_TIMEOUT):
        if spec["task"] == "ping_pong":
            await PING_PONG_SIDES[spec["row"]](spec, spec["first"])
        else:
            await TASKS[spec["task"]](spec)


def worker() -> None:
    """Run the tasks that come on standard input, one JSON line each."""
    # On trio, coredis's cluster connection pool fails to finalize an async
    # generator of its own (ClusterConnectionPool.acquire, a KeyError in its
    # statistics) when a client closes; trio logs each one. Harmless here.
    logging.getLogger("trio.async_generator_errors").setLevel(logging.CRITICAL)
    while line := sys.stdin.readline():
        spec = json.loads(line)
        backend, options = LOOPS[spec["loop"]]
        if not spec.get("profile"):
            anyio.run(run_task, spec, backend=backend, backend_options=options)
        else:
            profiler = cProfile.Profile()
            profiler.runcall(
                anyio.run, run_task, spec, backend=backend, backend_options=options
            )
            say("profile", seconds=profile_shares(profiler))
        say("done")


#: Where the profiled time goes, by the file of each function (its own time).
PROFILE_PARTS = (
    ("coredis", "/coredis/"),
    ("anyio_waitmap", "/anyio_waitmap/"),
    ("anyio", "/anyio/"),
    ("event loop", "/asyncio/"),
    ("event loop", "/trio/"),
    ("event loop", "/selectors.py"),
)


def profile_shares(profiler: cProfile.Profile) -> dict[str, float]:
    """Seconds of the profiled run by part: each function's own time (wall
    clock, so time spent descheduled counts too), and the time spent blocked
    in epoll (idle, waiting for the network)."""
    shares: dict[str, float] = {}
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        part = "other"
        if filename == "~" and "poll" in function:
            part = "idle (epoll)"
        elif filename == "~" and "of '_socket.socket'" in function:
            # On loopback a send runs the receiver's side of TCP and wakes it
            # (Redis), which may take the CPU from the sender meanwhile: on a
            # busy machine this is mostly time spent descheduled.
            part = "socket calls"
        elif filename == "~":
            part = "other builtins"
        else:
            for name, marker in PROFILE_PARTS:
                if marker in filename:
                    part = name
                    break
        shares[part] = shares.get(part, 0.0) + own
    return shares


# -- the orchestrator ---------------------------------------------------------------


class Worker:
    """A worker process: this script with ``--worker``."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def start(self, **spec: Any) -> None:
        self.send(json.dumps(spec))

    def send(self, line: str = "go") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self, *events: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited (status {self.process.wait()})")
        message: dict[str, Any] = json.loads(line)
        if message["event"] not in events:
            raise RuntimeError(f"expected {events} from a worker, got {message}")
        return message

    def finish(self) -> dict[str, Any]:
        """The task's result; then it ends, and the worker says so."""
        result = self.wait("result")
        return result

    def end(self) -> dict[str, float]:
        """Let the task end; what its profile found, if it was profiled."""
        self.send("end")
        message = self.wait("profile", "done")
        if message["event"] == "profile":
            self.wait("done")
            return message["seconds"]  # type: ignore[no-any-return]
        return {}

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class Deploy:
    """One Redis, or one Cluster, and what the rows read from its nodes."""

    def __init__(self, name: str, target: Any, cluster: bool) -> None:
        self.name = name
        self.cluster = cluster
        self.url: str = target.url()
        self.nodes = target.primaries() if cluster else [target]

    def info(self, section: str) -> list[dict[str, str]]:
        found = []
        for node in self.nodes:
            text = node.execute("INFO", section).decode()
            fields = {}
            for line in text.splitlines():
                key, separator, value = line.partition(":")
                if separator:
                    fields[key] = value
            found.append(fields)
        return found

    def reset_stats(self) -> None:
        for node in self.nodes:
            node.execute("CONFIG", "RESETSTAT")

    def commands(self) -> dict[str, list[int]]:
        """Calls and microseconds of each command since the last reset, on
        every node (INFO commandstats)."""
        found: dict[str, list[int]] = {}
        for fields in self.info("commandstats"):
            for key, value in fields.items():
                command = key.removeprefix("cmdstat_")
                if command.startswith(("config", "info")):
                    continue  # this script's own
                stats = dict(part.split("=") for part in value.split(","))
                entry = found.setdefault(command, [0, 0])
                entry[0] += int(stats["calls"])
                entry[1] += int(stats["usec"])
        return found

    def used_memory(self) -> int:
        return sum(int(fields["used_memory"]) for fields in self.info("memory"))

    def connections(self) -> int:
        """Clients of every node, but for this script's own connection."""
        total = 0
        for node in self.nodes:
            listing = node.execute("CLIENT", "LIST").decode()
            total += len(listing.splitlines()) - 1
        return total


_names = itertools.count()


def unique(prefix: str) -> str:
    return f"bench{os.getpid()}:{prefix}{next(_names)}"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def ping_pong(
    deploy: Deploy,
    workers: list[Worker],
    loop: str,
    row: str,
    trips: int,
    warmup: int,
    profile: bool = False,
) -> dict[str, Any]:
    """One sample: A and B in two workers; A's round trips, the processor
    time of both, and the Redis commands of the run (setup excluded)."""
    spec = {
        "task": "ping_pong", "loop": loop, "row": row, "url": deploy.url,
        "cluster": deploy.cluster, "total": trips + warmup,
        "prefix": unique(row), "ahead": row == "waitmap_ahead", "profile": profile,
    }  # fmt: skip
    a, b = workers[0], workers[1]
    b.start(**spec, first=False)
    b.wait("ready")
    a.start(**spec, first=True)
    a.wait("ready")
    deploy.reset_stats()
    b.send()
    a.send()
    first = a.finish()
    second = b.finish()
    commands = deploy.commands()
    profiles = [a.end(), b.end()]
    return {
        "samples": first["samples"][warmup:],
        "cpu": first["cpu"] + second["cpu"],
        "commands": commands,
        "hand_overs": 2 * (trips + warmup),
        "profiles": profiles,
    }


def throughput(
    deploy: Deploy, workers: list[Worker], loop: str, row: str, wakers: int, per: int
) -> dict[str, float]:
    """One sample: values per second from ``wakers`` processes to one."""
    prefix = unique(row)
    common = {"loop": loop, "url": deploy.url, "cluster": deploy.cluster}
    raw = row.startswith("raw")
    receiver, senders = workers[0], workers[1 : 1 + wakers]
    receiver.start(
        task="raw_subscriber" if raw else "waitmap_takers",
        prefix=prefix, wakers=wakers, per=per, total=wakers * per, **common,
    )  # fmt: skip
    receiver.wait("ready")
    for index, sender in enumerate(senders):
        sender.start(
            task="raw_publisher" if raw else "waitmap_waker",
            prefix=prefix, index=index, per=per, **common,
        )  # fmt: skip
        sender.wait("ready")
    receiver.send()
    for sender in senders:
        sender.send()
    sent = [sender.finish() for sender in senders]
    received = receiver.finish()
    for worker in [receiver, *senders]:
        worker.end()
    values = wakers * per
    start = min(result["start"] for result in sent)
    return {
        "delivered": values / (received["end"] - start),
        "settled": values / (received["settled"] - start),
        "cpu": (received["cpu"] + sum(result["cpu"] for result in sent)) / values,
    }


def parked(deploy: Deploy, worker: Worker, row: str, count: int) -> dict[str, float]:
    """Redis memory per parked taker (subscribed channel), and connections."""
    worker.start(
        task="parker", loop="asyncio", row=row, url=deploy.url,
        cluster=deploy.cluster, count=count, prefix=unique(row),
    )  # fmt: skip
    worker.wait("connected")
    before = deploy.used_memory()
    worker.send()
    worker.wait("ready")
    after = deploy.used_memory()
    connections = deploy.connections()
    worker.send()
    worker.finish()
    worker.end()
    return {"bytes_per_waiter": (after - before) / count, "connections": connections}


def one_command(deploy: Deploy, worker: Worker, loop: str, total: int) -> list[float]:
    worker.start(
        task="one_command", loop=loop, url=deploy.url, cluster=deploy.cluster,
        total=total, prefix=unique("get"),
    )  # fmt: skip
    worker.wait("ready")
    worker.send()
    samples: list[float] = worker.finish()["samples"][total // 10 :]
    worker.end()
    return samples


def requests_of(row: str, commands: dict[str, list[int]]) -> list[int]:
    """Calls and microseconds of the client's own requests among
    ``commands``: for our rows, the scripts' inner calls are left out (their
    time is in EVALSHA's)."""
    own = [
        stats
        for command, stats in commands.items()
        if row.startswith("raw") or command not in SCRIPT_COMMANDS
    ]
    return [sum(calls for calls, _ in own), sum(usec for _, usec in own)]


def print_profiles(
    deploy: Deploy, workers: list[Worker], options: argparse.Namespace
) -> dict[str, Any]:
    """Where the processor time of a ping-pong goes, under cProfile (which
    slows the Python parts down: read the shares, not the sums)."""
    trips = min(options.trips, 200)
    print()
    print(
        f"  Profiled ({trips} round trips under cProfile): own time per round "
        "trip of both processes, us, by part"
    )
    found: dict[str, Any] = {}
    for loop in ("asyncio", "trio"):
        found[loop] = {}
        for row in ("raw_pubsub", "waitmap_ahead"):
            result = ping_pong(deploy, workers, loop, row, trips, 0, profile=True)
            seconds: dict[str, float] = {}
            for profile in result["profiles"]:
                for part, own in profile.items():
                    seconds[part] = seconds.get(part, 0.0) + own / trips
            found[loop][row] = seconds
            busy = sum(v for k, v in seconds.items() if not k.startswith("idle"))
            parts = ", ".join(
                f"{part} {own * 1e6:,.0f}"
                for part, own in sorted(seconds.items(), key=lambda kv: -kv[1])
            )
            print(f"  {loop:8} {row:16} busy {busy * 1e6:,.0f}: {parts}")
    return found


def run_deploy(
    deploy: Deploy, workers: list[Worker], options: argparse.Namespace
) -> dict[str, Any]:
    report: dict[str, Any] = {"ping_pong": {}, "one_command": {}, "throughput": {}}
    rounds, trips, warmup = options.rounds, options.trips, options.warmup
    where = "a 3-primary Redis Cluster" if deploy.cluster else "one Redis"
    print()
    print(
        f"Ping-pong round trip between two processes, on {where} "
        f"({rounds} x {trips} round trips per row, after {warmup} untimed)"
    )
    print(
        "  (p50, p99: round trip; ratios to raw_pubsub; cpu: processor time of "
        "both processes per round trip;\n   per hand-over, two per round trip: "
        "redis = time Redis spent in the commands, commands = every command "
        "Redis ran,\n   requests = those the clients sent, the rest ran inside "
        "our Lua scripts)"
    )
    print(
        f"  {'loop':8} {'row':16} {'p50 us':>8} {'p99 us':>8} {'p50':>6} "
        f"{'p99':>6} {'cpu us':>7} {'redis us':>8} {'commands':>8} {'requests':>8}"
    )
    for loop in LOOPS:
        collected: dict[str, dict[str, Any]] = {
            row: {"samples": [], "cpu": 0.0, "commands": {}, "hand_overs": 0}
            for row in PING_PONG_ROWS
        }
        for _ in range(rounds):
            for row in PING_PONG_ROWS:
                result = ping_pong(deploy, workers, loop, row, trips, warmup)
                entry = collected[row]
                entry["samples"] += result["samples"]
                entry["cpu"] += result["cpu"]
                entry["hand_overs"] += result["hand_overs"]
                for command, (calls, usec) in result["commands"].items():
                    stats = entry["commands"].setdefault(command, [0, 0])
                    stats[0] += calls
                    stats[1] += usec
        base = collected[PING_PONG_ROWS[0]]
        base_p50 = statistics.median(base["samples"])
        base_p99 = percentile(base["samples"], 0.99)
        for row, entry in collected.items():
            hand_overs = entry["hand_overs"]
            p50 = statistics.median(entry["samples"])
            p99 = percentile(entry["samples"], 0.99)
            cpu = entry["cpu"] / (hand_overs / 2)
            commands = sum(calls for calls, _ in entry["commands"].values())
            requests, usec = requests_of(row, entry["commands"])
            marks = ""
            if not row.startswith("raw"):
                met_p50 = "met" if p50 / base_p50 <= TARGET_P50 else "MISSED"
                met_p99 = "met" if p99 / base_p99 <= TARGET_P99 else "MISSED"
                marks = f"  p50 {met_p50}, p99 {met_p99}"
            print(
                f"  {loop:8} {row:16} {p50 * 1e6:8,.0f} {p99 * 1e6:8,.0f} "
                f"{p50 / base_p50:5.2f}x {p99 / base_p99:5.2f}x {cpu * 1e6:7,.0f} "
                f"{usec / hand_overs:8.1f} {commands / hand_overs:8.2f} "
                f"{requests / hand_overs:8.2f}{marks}"
            )
            entry.update(
                p50=p50, p99=p99, p50_ratio=p50 / base_p50, p99_ratio=p99 / base_p99,
                cpu_per_round_trip=cpu, redis_usec_per_hand_over=usec / hand_overs,
                commands_per_hand_over=commands / hand_overs,
                requests_per_hand_over=requests / hand_overs,
            )  # fmt: skip
        report["ping_pong"][loop] = collected
        command = one_command(deploy, workers[0], loop, 10 * trips // 4 + 10)
        p50 = statistics.median(command)
        report["one_command"][loop] = {"samples": command, "p50": p50}
        print(
            f"  {loop:8} {'(one GET alone)':16} {p50 * 1e6:8,.0f} "
            f"{percentile(command, 0.99) * 1e6:8,.0f}"
        )
    if options.profile:
        report["profile"] = print_profiles(deploy, workers, options)

    per = options.per
    print()
    print(
        f"Throughput on {where}: 1, 2 and 4 waking processes, {per:,} values each, "
        f"to one process ({per:,} takers parked per waking process); "
        f"median of {options.throughput_rounds}"
    )
    print(
        f"  {'loop':8} {'wakers':>6} {'row':22} {'values/s':>10} {'ratio':>7} "
        f"{'settled/s':>10} {'cpu us':>7}"
    )
    print(
        "  (values/s: until the last taker has its value; settled/s: until "
        "its process also acknowledged it in Redis;\n   cpu: processor time "
        "of the waking and receiving processes per value)"
    )
    for loop in LOOPS:
        report["throughput"][loop] = {}
        for wakers in WAKERS:
            rates: dict[str, list[dict[str, float]]] = {r: [] for r in THROUGHPUT_ROWS}
            for _ in range(options.throughput_rounds):
                for row in THROUGHPUT_ROWS:
                    sample = throughput(deploy, workers, loop, row, wakers, per)
                    rates[row].append(sample)
            medians = {
                row: {
                    key: statistics.median(s[key] for s in samples)
                    for key in ("delivered", "settled", "cpu")
                }
                for row, samples in rates.items()
            }
            base = medians[THROUGHPUT_ROWS[0]]["delivered"]
            for row, median in medians.items():
                ratio = median["delivered"] / base
                mark = ""
                if not row.startswith("raw"):
                    met = ratio >= TARGET_THROUGHPUT
                    mark = f"  {'met' if met else 'MISSED'} >={TARGET_THROUGHPUT:.0%}"
                print(
                    f"  {loop:8} {wakers:6} {row:22} {median['delivered']:10,.0f} "
                    f"{ratio:6.2f}x {median['settled']:10,.0f} "
                    f"{median['cpu'] * 1e6:7,.0f}{mark}"
                )
            report["throughput"][loop][wakers] = {
                row: {"samples": rates[row], **medians[row]} for row in rates
            }

    count = options.parked
    print()
    print(
        f"Parked on {where}: {count:,} tasks in one process (asyncio), each "
        "waiting on its own key"
    )
    report["parked"] = {}
    for row in ("raw_pubsub", "waitmap"):
        result = parked(deploy, workers[0], row, count)
        report["parked"][row] = result
        what = {
            "raw_pubsub": "one subscribed channel each, one connection",
            "waitmap": "expect() + await, a taker each",
        }[row]
        print(
            f"  {row:16} {result['bytes_per_waiter']:8,.0f} bytes of Redis memory "
            f"per waiter, {result['connections']} connections ({what})"
        )
    return report


@contextmanager
def servers() -> Iterator[list[Deploy]]:
    sys.path.insert(0, str(ROOT / "tests" / "redis"))
    from redis_servers import RedisCluster, RedisServer

    with ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        cluster = stack.enter_context(RedisCluster(3))
        yield [Deploy("redis", server, False), Deploy("cluster", cluster, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trips", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--throughput-rounds",
        type=int,
        default=1,
        help="samples of each throughput row (their median is shown)",
    )
    parser.add_argument("--per", type=int, default=1_000)
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile a ping-pong of each side (asyncio and trio)",
    )
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    if options.worker:
        worker()
        return
    if options.quick:
        options.rounds, options.trips, options.warmup = 1, 10, 2
        options.throughput_rounds, options.per, options.parked = 1, 10, 50
    # Stopped with SIGTERM, stop the servers and the workers as on Ctrl+C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    # A worker that hangs must not hang the test command.
    faulthandler.dump_traceback_later(300 if options.quick else 3_600, exit=True)
    print(
        f"redis_handover.py: --rounds {options.rounds} --trips {options.trips} "
        f"--warmup {options.warmup} --throughput-rounds {options.throughput_rounds} "
        f"--per {options.per} --parked {options.parked}"
        + (" --profile" if options.profile else "")
    )
    report: dict[str, Any] = {"machine": print_machine(), "options": vars(options)}
    with servers() as deploys, ExitStack() as stack:
        version = deploys[0].info("server")[0]["redis_version"]
        from importlib.metadata import version as installed

        print(f"redis-server {version}, coredis {installed('coredis')}, loopback")
        report["redis_version"] = version
        report["coredis"] = installed("coredis")
        workers = [Worker() for _ in range(1 + max(WAKERS))]
        for each in workers:
            stack.callback(each.close)
        for deploy in deploys:
            report[deploy.name] = run_deploy(deploy, workers, options)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load}")
    report["load_average_end"] = os.getloadavg()
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
