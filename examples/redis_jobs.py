"""Job results across processes, with a ``RedisWaitMap``; one worker dies mid-run.

API processes hand out jobs and await each job's result by its id; worker
processes run the jobs and hand each result to whoever awaits it with
``results.wake(job_id, result)``. The API side registers for a result before it
publishes the job (``async with results.expect(job_id) as result``), so a result
that comes back at once is not missed; no reply channel per request, no polling
of a result key.

What the run does (every process is this script, on the same ``--backend``):

* the parent starts ``--api`` API processes and ``--workers`` worker processes,
  and waits until each has opened the map (name ``redis-jobs-<random>``);
* each API process runs its share of the ``--jobs`` jobs, ``--concurrency`` at a
  time: it registers for the result, pushes the job onto a Redis list (the
  queue), and awaits the result;
* each worker takes up to ``--slots`` jobs at a time from the queue with
  ``BLMOVE``, into a list of its own (the jobs it holds), works on each for a
  random 5-25 ms, ``wake``\\s the result, then removes the job from its list;
  the first run of a few jobs (``--stuck``, 3) gets stuck instead, for 1.5
  times the deadline below, as a call to a slow service sometimes does;
* once 40 % of the results are in, the parent SIGKILLs a worker while it holds
  jobs (it stops the worker, looks at its list, and kills it if the list is not
  empty; else it lets it go on and tries again).

How the dead worker's jobs are answered. A worker that dies takes with it the
jobs it was running; nobody can tell at once whether it is dead or slow (the
parent knows here, but a worker on another machine would just fall silent). So
the API side does what an RPC client does: if no result has come within
``--resubmit-after`` seconds (2 s), it pushes the same job again, and keeps
doing so until a result comes. The registration stays in place all along (the
re-submission happens inside the same ``expect`` block), so the first result of
any run of the job is the one delivered, and none is missed between two
attempts. Jobs are therefore run at least once, not exactly once: a job that
was only slow (a stuck one, or any on a machine overloaded for seconds) runs
twice. The killed worker's list of held jobs is read by the parent, only to
report how many jobs were in flight, and then deleted.

What counts as a duplicate, and what the map guarantees (the docs' "Across
processes" page): a result handed to a taker is returned by exactly one task
while the taker's process lives (it can be returned twice only if that process
dies between returning it and acknowledging it to Redis; the API processes do
not die here). So no job is answered twice and no result reaches two callers
("delivered twice" must be 0; what each live worker's ``wake`` calls counted as
woken must equal the results received from that worker). A job that ran twice
(it was re-submitted while its first run was still going, as each stuck job is)
produces a second result after the first was delivered, which ``wake`` returns
as ``NoMatch``: nobody awaits it any more, and the worker knows that its result
was not needed. These are "late results", allowed, and each needs a
re-submission, so there cannot be more of them than re-submissions. The dead
worker's own count of late results died with it.

The dead worker's instance of the map held nothing (a worker only wakes), but
it is listed among the map's instances until the others reclaim it, at most 1.5
leases after its last refresh (``--lease``: 2 s here, 10 s by default in the
library). The workers keep running for 3 leases after the kill, then each takes
a stop message from the queue (behind every job) and leaves. Finally the parent
scans Redis with a client of its own: the map's keys (``wm:{<name>|...}`` and
``wm:{<name>}:...``) and the queue's (``jobs:{<name>}:...``) must all be gone.

The exit status is 1 if a job was lost or answered wrongly, if a result was
delivered twice, if there are more late results than re-submissions, if a
process failed, or if a key was left in Redis; else 0. Run it with::

    python examples/redis_jobs.py --url redis://127.0.0.1:6379/0 [--cluster]
        [--backend asyncio|asyncio+uvloop|trio] [--jobs N] [--api N]
        [--workers N] [--seed S]

``python3 dev.py demo --redis [--cluster]`` starts a ``redis-server`` (or a
3-primary Cluster) of its own and runs this against it. POSIX only (the kill).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import coredis
from anyio.abc import ByteReceiveStream, Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from coredis.connection import TCPLocation

from anyio_waitmap import Closed, NoMatch, Woke
from anyio_waitmap.redis import JsonCodec, RedisWaitMap

BACKENDS = ("asyncio", "asyncio+uvloop", "trio")
SCRIPT = os.path.abspath(__file__)  # every process runs this script

WORK_TIME = (0.005, 0.025)  # seconds a job takes to run
STUCK_FOR = 1.5  # a stuck job takes this many times --resubmit-after
KILL_AFTER = 0.4  # share of the results that are in when a worker is killed
REPORT_INTERVAL = 0.2  # children report their counts this often
PROGRESS_INTERVAL = 0.1
READY_TIMEOUT = 60.0  # for the children to start and open the map
STOP = "stop"  # the message that tells a worker to leave
MAX_LINE = 1 << 24


@dataclass
class Config:
    url: str
    cluster: bool
    backend: str
    jobs: int
    api: int
    workers: int
    concurrency: int
    slots: int
    resubmit_after: float
    stuck: int
    lease: float
    seed: int
    time_limit: float
    # Set for the children only.
    name: str = ""
    role: str = ""
    index: int = 0

    def child_args(self, role: str, index: int, name: str) -> list[str]:
        args = [
            f"--url={self.url}",
            f"--backend={self.backend}",
            f"--jobs={self.jobs}",
            f"--api={self.api}",
            f"--workers={self.workers}",
            f"--concurrency={self.concurrency}",
            f"--slots={self.slots}",
            f"--resubmit-after={self.resubmit_after}",
            f"--stuck={self.stuck}",
            f"--lease={self.lease}",
            f"--seed={self.seed}",
            f"--role={role}",
            f"--index={index}",
            f"--name={name}",
        ]
        return args + (["--cluster"] if self.cluster else [])


def answer(payload: str) -> str:
    """What a job computes."""
    return hashlib.sha256(payload.encode()).hexdigest()


def stuck_jobs(config: Config) -> set[int]:
    """The jobs that take longer than the re-submission deadline: the same in
    every API process, chosen with the seed."""
    rng = random.Random(f"{config.seed}/stuck")
    return set(rng.sample(range(config.jobs), min(config.stuck, config.jobs)))


def stuck_time(config: Config) -> float:
    return STUCK_FOR * config.resubmit_after


def queue_key(name: str) -> str:
    # One hash tag for the queue and the workers' lists: BLMOVE moves between
    # them, which on a Cluster must stay in one slot.
    return f"jobs:{{{name}}}:queue"


def held_key(name: str, worker: int) -> str:
    return f"jobs:{{{name}}}:held:{worker}"


@contextlib.asynccontextmanager
async def redis_client(config: Config) -> AsyncIterator[Any]:
    """A coredis client of our own, for the queue and the final scan."""
    client: Any
    if config.cluster:
        parts = urlsplit(config.url)
        node = TCPLocation(parts.hostname or "localhost", parts.port or 6379)
        client = coredis.RedisCluster.from_url(config.url, startup_nodes=[node])
    else:
        client = coredis.Redis.from_url(config.url)
    async with client:
        yield client


def open_results(config: Config) -> RedisWaitMap[Any]:
    """The map the results go through: job id -> {"answer", "worker"}."""
    return RedisWaitMap.connect(
        config.url,
        name=config.name,
        codec=JsonCodec(),
        cluster=config.cluster,
        lease=config.lease,
    )


def emit(**event: Any) -> None:
    """Tell the parent something: one JSON object a line on standard output."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


@dataclass
class Parent:
    """What the parent says on this process's standard input."""

    go: anyio.Event = field(default_factory=anyio.Event)
    gone: bool = False

    async def listen(self, scope: anyio.CancelScope) -> None:
        """Set ``go`` when the parent says so; cancel ``scope`` if the parent
        goes away (its end of the pipe closes, even if it was killed)."""
        fd = sys.stdin.fileno()
        while True:
            await anyio.wait_readable(fd)
            data = os.read(fd, 4096)
            if not data:
                break
            if b"go\n" in data:  # the only thing it says
                self.go.set()
        self.gone = True
        scope.cancel()


# -- API processes -----------------------------------------------------------------


@dataclass
class Api:
    """Runs its share of the jobs, awaiting each one's result by id."""

    config: Config
    client: Any
    results: RedisWaitMap[Any]
    rng: random.Random
    answered: int = 0
    wrong: int = 0
    delivered_twice: int = 0
    resubmitted: int = 0
    latencies: list[float] = field(default_factory=list[float])
    by_worker: dict[int, int] = field(default_factory=dict[int, int])
    #: Job id -> the worker that answered it, for the jobs re-submitted.
    resubmitted_answered_by: dict[str, int] = field(default_factory=dict[str, int])
    _seen: set[str] = field(default_factory=set[str])

    async def run(self) -> None:
        config = self.config
        stuck = stuck_jobs(config)
        slots = anyio.Semaphore(config.concurrency)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report)
            async with anyio.create_task_group() as calls:
                # This process's share of the jobs: every api-th one.
                for number in range(config.index, config.jobs, config.api):
                    await slots.acquire()
                    work = self.rng.uniform(*WORK_TIME)
                    job = {
                        "id": str(number),
                        "payload": self.rng.randbytes(16).hex(),
                        # Seconds the worker takes: on the first attempt (the
                        # stuck ones longer), and on later ones.
                        "first": stuck_time(config) if number in stuck else work,
                        "work": work,
                        "attempt": 0,
                    }
                    calls.start_soon(self._call, slots, job)
            tg.cancel_scope.cancel()

    async def _call(self, slot: anyio.Semaphore, job: dict[str, Any]) -> None:
        try:
            await self._await_result(job)
        finally:
            slot.release()

    async def _await_result(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        started = time.perf_counter()
        # Register for the result, then publish the job: a result that comes
        # back at once finds its registration. The registration stays while
        # the job is re-submitted, so whichever run answers first is delivered.
        async with (
            self.results.expect(job_id) as result,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._submit, job)
            reply = await result
            tg.cancel_scope.cancel()
        self.latencies.append(time.perf_counter() - started)
        if job_id in self._seen:
            self.delivered_twice += 1
        self._seen.add(job_id)
        self.answered += 1
        if reply["answer"] != answer(job["payload"]):
            self.wrong += 1
        worker = reply["worker"]
        self.by_worker[worker] = self.by_worker.get(worker, 0) + 1
        if job_id in self.resubmitted_answered_by:
            self.resubmitted_answered_by[job_id] = worker

    async def _submit(self, job: dict[str, Any]) -> None:
        """Push the job, and push it again every ``resubmit_after`` seconds
        until the result comes (the caller cancels this then)."""
        while True:
            job["attempt"] += 1
            await self.client.lpush(queue_key(self.config.name), [json.dumps(job)])
            await anyio.sleep(self.config.resubmit_after)
            self.resubmitted += 1
            self.resubmitted_answered_by[job["id"]] = -1

    async def _report(self) -> None:
        while True:
            emit(event="progress", **self._counts())
            await anyio.sleep(REPORT_INTERVAL)

    def _counts(self) -> dict[str, Any]:
        return {"answered": self.answered, "resubmitted": self.resubmitted}

    def final(self) -> dict[str, Any]:
        return {
            **self._counts(),
            "wrong": self.wrong,
            "delivered_twice": self.delivered_twice,
            "latencies": self.latencies,
            "by_worker": self.by_worker,
            "resubmitted_answered_by": self.resubmitted_answered_by,
        }


async def run_api(config: Config) -> int:
    parent = Parent()
    async with (
        redis_client(config) as client,
        open_results(config) as results,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(parent.listen, tg.cancel_scope)
        emit(event="ready", pid=os.getpid())
        await parent.go.wait()
        rng = random.Random(f"{config.seed}/api {config.index}")
        api = Api(config, client, results, rng)
        await api.run()
        emit(event="done", **api.final())
        tg.cancel_scope.cancel()
    return 1 if parent.gone else 0


# -- worker processes --------------------------------------------------------------


@dataclass
class Worker:
    """Takes jobs from the queue, ``slots`` at a time, and wakes their results."""

    config: Config
    client: Any
    results: RedisWaitMap[Any]
    executed: int = 0
    woke: int = 0
    late: int = 0
    busy: int = 0

    async def run(self) -> None:
        config = self.config
        queue, held = queue_key(config.name), held_key(config.name, config.index)
        slots = anyio.Semaphore(config.slots)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report)
            async with anyio.create_task_group() as jobs:
                while True:
                    await slots.acquire()
                    # Into this worker's own list, in one step: a job is in
                    # the queue or in the list of the worker that holds it.
                    raw = await self.client.blmove(
                        queue, held, coredis.PureToken.RIGHT, coredis.PureToken.LEFT, 1
                    )
                    if raw is None:
                        slots.release()
                        continue
                    if raw == STOP.encode():
                        await self.client.lrem(held, 1, raw)
                        break
                    self.busy += 1
                    jobs.start_soon(self._run_job, slots, held, raw)
            # Every job taken is finished.
            tg.cancel_scope.cancel()

    async def _run_job(self, slot: anyio.Semaphore, held: str, raw: bytes) -> None:
        job = json.loads(raw)
        await anyio.sleep(job["first"] if job["attempt"] == 1 else job["work"])
        result = {"answer": answer(job["payload"]), "worker": self.config.index}
        outcome = await self.results.wake(job["id"], result)
        self.executed += 1
        match outcome:
            case Woke(count):
                self.woke += count
            case NoMatch():
                # Nobody awaits this job's result any more: it was re-submitted
                # while this run was going, and another run answered first.
                self.late += 1
            case Closed():
                raise RuntimeError("the map was closed while jobs were running")
        await self.client.lrem(held, 1, raw)
        self.busy -= 1
        slot.release()

    async def _report(self) -> None:
        while True:
            emit(event="progress", **self.counts())
            await anyio.sleep(REPORT_INTERVAL)

    def counts(self) -> dict[str, Any]:
        return {
            "executed": self.executed,
            "woke": self.woke,
            "late": self.late,
            "busy": self.busy,
        }


async def run_worker(config: Config) -> int:
    parent = Parent()
    async with (
        redis_client(config) as client,
        open_results(config) as results,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(parent.listen, tg.cancel_scope)
        emit(event="ready", pid=os.getpid())
        worker = Worker(config, client, results)
        await worker.run()
        emit(event="done", **worker.counts())
        tg.cancel_scope.cancel()
    return 1 if parent.gone else 0


# -- the parent --------------------------------------------------------------------


@dataclass
class Child:
    """One API or worker process, as the parent sees it."""

    role: str
    index: int
    process: Process
    ready: anyio.Event = field(default_factory=anyio.Event)
    exited: anyio.Event = field(default_factory=anyio.Event)
    last: dict[str, Any] = field(default_factory=dict[str, Any])
    done: dict[str, Any] | None = None
    returncode: int | None = None
    killed: bool = False

    @property
    def label(self) -> str:
        return f"{self.role} {self.index}"

    async def read(self) -> None:
        assert self.process.stdout is not None
        await self._read(self.process.stdout)
        self.returncode = await self.process.wait()
        self.exited.set()

    async def _read(self, stdout: ByteReceiveStream) -> None:
        buffered = BufferedByteReceiveStream(stdout)
        while True:
            try:
                line = await buffered.receive_until(b"\n", MAX_LINE)
            except (
                anyio.IncompleteRead,
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
            ):
                return
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "ready":
                self.ready.set()
            elif kind == "progress":
                self.last = event
            elif kind == "done":
                self.last = self.done = event

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")


@dataclass
class Kill:
    worker: int
    pid: int
    at: float  # seconds after the start
    answered: int  # results in when it happened
    in_flight: list[str]  # ids of the jobs it held


@dataclass
class Run:
    config: Config
    name: str
    apis: list[Child] = field(default_factory=list[Child])
    workers: list[Child] = field(default_factory=list[Child])
    started: float = 0.0
    finished: float = 0.0
    kill: Kill | None = None
    #: The keys found in Redis at the end (None: the run did not get there).
    left: list[bytes] | None = None
    timed_out: bool = False
    error: str = ""
    #: What the parent waits for once the results are in (shown by the bar).
    phase: str = ""

    @property
    def answered(self) -> int:
        return sum(child.last.get("answered", 0) for child in self.apis)

    def total(self, children: list[Child], what: str) -> int:
        return sum(child.last.get(what, 0) for child in children)


async def supervise(config: Config, name: str, run: Run) -> None:
    async with anyio.create_task_group() as tg:
        try:
            for role, count, children in (
                ("worker", config.workers, run.workers),
                ("api", config.api, run.apis),
            ):
                for index in range(count):
                    process = await anyio.open_process(
                        [sys.executable, SCRIPT, *config.child_args(role, index, name)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=None,
                        # Not in the terminal's process group: a Ctrl+C reaches
                        # this process only, which then stops the others.
                        start_new_session=True,
                    )
                    child = Child(role, index, process)
                    children.append(child)
                    tg.start_soon(child.read)
            await drive(config, run, tg)
        finally:
            # Whatever happened, no child is left running.
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                for child in run.apis + run.workers:
                    if child.process.returncode is None:
                        child.process.kill()
                    await child.process.aclose()


async def drive(config: Config, run: Run, tg: TaskGroup) -> None:
    everyone = run.apis + run.workers
    with anyio.fail_after(READY_TIMEOUT):
        for child in everyone:
            await wait_either(child.ready, child.exited)
            if not child.ready.is_set():
                raise RuntimeError(f"{child.label} exited before it was ready")
    run.started = time.perf_counter()
    if sys.stderr.isatty():
        tg.start_soon(show_progress, run)
    for child in run.apis:
        await child.send("go")
    async with redis_client(config) as client:
        await kill_a_worker(config, run, client)
        for child in run.apis:
            await child.exited.wait()
        run.finished = time.perf_counter()
        if run.kill is not None:
            # The dead worker's instance of the map is reclaimed by the others
            # once its lease has run out (each looks every lease / 2): keep
            # them running until then.
            reclaimed = run.started + run.kill.at + 3 * config.lease
            run.phase = "waiting for the killed worker's lease to run out"
            await anyio.sleep(max(0.0, reclaimed - time.perf_counter()))
        live = [child for child in run.workers if not child.killed]
        # One stop message for each live worker, behind every job in the queue.
        await client.lpush(queue_key(run.name), [STOP] * len(live))
        run.phase = "waiting for the workers to finish"
        for child in live:
            await child.exited.wait()
        run.phase = "scanning Redis"
        await forget_the_killed_worker(run, client)
        run.left = await keys_left(client, run.name)


async def wait_either(first: anyio.Event, second: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        for event in (first, second):

            async def wait(event: anyio.Event = event) -> None:
                await event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(wait)


async def kill_a_worker(config: Config, run: Run, client: Any) -> None:
    """SIGKILL a worker once KILL_AFTER of the results are in, while it holds
    jobs: stopped first (SIGSTOP), it is killed if its list of held jobs is not
    empty, else let go on for a moment."""
    victim = run.workers[random.Random(config.seed).randrange(len(run.workers))]
    held = held_key(run.name, victim.index)
    while True:
        if all(child.exited.is_set() for child in run.apis) or victim.exited.is_set():
            return  # too late: the summary says that no worker was killed
        if run.answered < KILL_AFTER * config.jobs:
            await anyio.sleep(0.02)
            continue
        victim.process.send_signal(signal.SIGSTOP)
        jobs = await client.lrange(held, 0, -1)
        if jobs:
            break
        victim.process.send_signal(signal.SIGCONT)
        await anyio.sleep(0.01)
    victim.process.kill()  # SIGKILL
    victim.killed = True
    await victim.exited.wait()
    run.kill = Kill(
        worker=victim.index,
        pid=victim.process.pid,
        at=time.perf_counter() - run.started,
        answered=run.answered,
        in_flight=[json.loads(job)["id"] for job in jobs],
    )


async def forget_the_killed_worker(run: Run, client: Any) -> None:
    """Delete the killed worker's list, which is of no further use: what it
    held is answered through the API side's re-submissions.

    Not at once: Redis may hand it one more job between the kill and the moment
    it notices the closed connection (a BLMOVE that was waiting), which then
    goes to the list. Such a job was in flight too."""
    if run.kill is None:
        return
    held = held_key(run.name, run.kill.worker)
    for job in await client.lrange(held, 0, -1):
        job_id = json.loads(job)["id"]
        if job_id not in run.kill.in_flight:
            run.kill.in_flight.append(job_id)
    await client.delete([held])


async def keys_left(client: Any, name: str) -> list[bytes]:
    """Every key of the map and of the queue still in Redis (on a Cluster, the
    client scans every primary)."""
    left: list[bytes] = []
    # The map's keys are wm:{<name>|<partition>}:... and wm:{<name>}:... (the
    # name is escaped there; this one needs no escaping).
    for pattern in (f"wm:{{{name}|*", f"wm:{{{name}}}:*", f"jobs:{{{name}}}:*"):
        left += [key async for key in client.scan_iter(match=pattern)]
    return sorted(left)


async def show_progress(run: Run) -> None:
    # A progress bar on stderr while the jobs run (rich comes with the demo's
    # set-up); it disappears when the run ends, leaving the summary.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("jobs", total=run.config.jobs, detail="")
        while True:
            live = [child for child in run.workers if not child.killed]
            detail = (
                f"workers {len(live)}/{len(run.workers)}  "
                f"running {run.total(live, 'busy')}  "
                f"re-submitted {run.total(run.apis, 'resubmitted')}  "
                f"late {run.total(live, 'late')}"
            )
            if run.kill:
                detail += f"  (the killed one held {len(run.kill.in_flight)})"
            if run.phase:
                detail = f"{detail}  - {run.phase}"
            bar.update(task, completed=run.answered, detail=detail)
            await anyio.sleep(PROGRESS_INTERVAL)


# -- the summary -------------------------------------------------------------------


@dataclass
class Report:
    run: Run

    def problems(self) -> list[str]:
        run, config = self.run, self.run.config
        problems: list[str] = []
        if run.timed_out:
            problems.append(f"the run took longer than {config.time_limit:g} s")
        for child in run.apis + run.workers:
            if child.killed:
                continue
            if child.returncode != 0 or child.done is None:
                problems.append(
                    f"{child.label} failed (exit status {child.returncode})"
                )
        if run.kill is None:
            problems.append("no worker was killed")
        apis = [child.done for child in run.apis if child.done is not None]
        answered = sum(done["answered"] for done in apis)
        if answered != config.jobs and len(apis) == config.api:
            problems.append(f"lost: {config.jobs - answered} jobs without a result")
        wrong = sum(done["wrong"] for done in apis)
        if wrong:
            problems.append(f"wrong results: {wrong}")
        twice = sum(done["delivered_twice"] for done in apis)
        if twice:
            problems.append(f"results delivered twice: {twice}")
        for child in run.workers:
            if child.killed or child.done is None:
                continue
            received = sum(done["by_worker"].get(str(child.index), 0) for done in apis)
            if child.done["woke"] != received:
                problems.append(
                    f"worker {child.index}'s wake() woke {child.done['woke']} "
                    f"callers, who received {received} of its results"
                )
        late = self.late()
        resubmitted = run.total(run.apis, "resubmitted")
        if late > resubmitted:
            problems.append(
                f"{late} late results for {resubmitted} re-submissions: "
                f"a job ran more often than it was submitted"
            )
        if run.error:
            problems.append(f"the run failed: {run.error}")
        if run.left is None:
            problems.append("Redis was not scanned")
        elif run.left:
            problems.append(f"keys left in Redis: {len(run.left)}")
        return problems

    def late(self) -> int:
        return sum(
            child.done["late"]
            for child in self.run.workers
            if not child.killed and child.done is not None
        )

    def render(self) -> str:
        run, config = self.run, self.run.config
        apis = [child.done for child in run.apis if child.done is not None]
        latencies = [value for done in apis for value in done["latencies"]]
        answered = sum(done["answered"] for done in apis)
        # From the first job to the last result (0: the jobs did not start).
        wall_time = (run.finished or time.perf_counter()) - run.started
        if not run.started:
            wall_time = 0.0
        if latencies:
            latency = (
                f"p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                f"p99 {percentile(latencies, 99) * 1000:.1f} ms, "
                f"max {max(latencies) * 1000:.0f} ms (push to result)"
            )
        else:
            latency = "n/a (no result)"
        kill = run.kill
        if kill is not None:
            resubmitted_by = {
                job: worker
                for done in apis
                for job, worker in done["resubmitted_answered_by"].items()
            }
            # A job it held was answered by another worker after a
            # re-submission, or by itself just before it died (its result was
            # out, but not yet crossed off its list).
            recovered = sum(
                resubmitted_by.get(job, kill.worker) != kill.worker
                for job in kill.in_flight
            )
            killed = (
                f"worker {kill.worker} (pid {kill.pid}) at {kill.at:.1f} s, after "
                f"{kill.answered} results"
            )
            in_flight = (
                f"{len(kill.in_flight)} jobs held by the killed worker "
                f"({recovered} answered by another after a re-submission, "
                f"{len(kill.in_flight) - recovered} by it before it died)"
            )
        else:
            killed = in_flight = "none"
        problems = self.problems()
        rows = [
            ("backend", config.backend),
            (
                "redis",
                f"{shown_url(config.url)}{' (Cluster)' if config.cluster else ''}, "
                f"map {run.name!r}",
            ),
            (
                "processes",
                f"{config.api} API ({config.concurrency} jobs in flight each), "
                f"{config.workers} workers ({config.slots} jobs at a time each)",
            ),
            (
                "jobs",
                f"{config.jobs} ({WORK_TIME[0] * 1000:g}-{WORK_TIME[1] * 1000:g} ms "
                f"each; the first run of {min(config.stuck, config.jobs)} stuck for "
                f"{stuck_time(config):g} s; seed {config.seed})",
            ),
            ("wall time", f"{wall_time:.1f} s (first job to last result)"),
            (
                "throughput",
                f"{answered / wall_time:,.0f} jobs/s" if wall_time > 0 else "n/a",
            ),
            ("latency", latency),
            ("killed", killed),
            ("in flight", in_flight),
            (
                "re-submitted",
                f"{run.total(run.apis, 'resubmitted')} (no result within "
                f"{config.resubmit_after:g} s)",
            ),
            ("answered", f"{answered}"),
            ("lost", f"{config.jobs - answered}"),
            ("wrong", f"{sum(done['wrong'] for done in apis)}"),
            ("delivered twice", f"{sum(done['delivered_twice'] for done in apis)}"),
            (
                "late results",
                f"{self.late()} (a job's second result, after the first was "
                f"delivered: wake() returned NoMatch)",
            ),
            (
                "left in redis",
                "not scanned"
                if run.left is None
                else f"{len(run.left)} keys"
                + (f": {run.left[:5]}" if run.left else ""),
            ),
            ("result", "FAILED: " + "; ".join(problems) if problems else "OK"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = ["redis_jobs summary"]
        lines += [f"  {name:<{width}} : {value}" for name, value in rows]
        return "\n".join(lines)


def shown_url(url: str) -> str:
    """``url`` without its password, if it has one."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(parts.password, "***")).geturl()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def run_parent(config: Config) -> Report:
    name = f"redis-jobs-{secrets.token_hex(4)}"
    run = Run(config, name)
    try:
        with anyio.move_on_after(config.time_limit) as scope:
            await supervise(config, name, run)
    except Exception as exc:  # the summary says what failed, and fails
        traceback.print_exc()
        while len(inner := getattr(exc, "exceptions", ())) == 1:
            exc = inner[0]  # the one error in the task groups' groups
        run.error = f"{type(exc).__name__}: {exc}"
    else:
        run.timed_out = scope.cancelled_caught
    return Report(run)


# -- running it --------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="Job results across processes with a RedisWaitMap; one "
        "worker is killed mid-run."
    )
    parser.add_argument("--url", required=True, help="redis:// or rediss:// URL")
    parser.add_argument(
        "--cluster", action="store_true", help="the URL names a Redis Cluster node"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--jobs", type=int, default=4000, metavar="N")
    parser.add_argument("--api", type=int, default=3, metavar="N", help="API processes")
    parser.add_argument(
        "--workers", type=int, default=4, metavar="N", help="worker processes (>= 2)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=10, metavar="C",
        help="jobs each API process awaits at a time",
    )  # fmt: skip
    parser.add_argument(
        "--slots", type=int, default=8, metavar="S",
        help="jobs each worker runs at a time",
    )  # fmt: skip
    parser.add_argument(
        "--resubmit-after", type=float, default=2.0, metavar="SECONDS",
        help="push a job again when its result has not come for this long",
    )  # fmt: skip
    parser.add_argument(
        "--stuck", type=int, default=3, metavar="N",
        help="jobs that take 1.5 times --resubmit-after (default: 3)",
    )  # fmt: skip
    parser.add_argument(
        "--lease", type=float, default=2.0, metavar="SECONDS",
        help="the map's lease: a dead process is reclaimed after it",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None, metavar="S", help="default: random"
    )
    parser.add_argument(
        "--time-limit", type=float, default=300.0, metavar="SECONDS",
        help="give up (and fail) after this long",
    )  # fmt: skip
    # How the parent starts its children: not for users.
    parser.add_argument("--role", choices=["api", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--name", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in ("redis", "rediss"):
        parser.error("--url must be a redis:// or rediss:// URL")
    for option, least in (
        ("stuck", 0),
        ("jobs", 1),
        ("api", 1),
        ("workers", 2),
        ("concurrency", 1),
        ("slots", 1),
    ):
        if getattr(args, option) < least:
            parser.error(f"--{option} must be at least {least}")
    if args.resubmit_after <= 0 or args.lease <= 0:
        parser.error("--resubmit-after and --lease must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    return Config(
        url=args.url,
        cluster=args.cluster,
        backend=args.backend,
        jobs=args.jobs,
        api=args.api,
        workers=args.workers,
        concurrency=args.concurrency,
        slots=args.slots,
        resubmit_after=args.resubmit_after,
        stuck=args.stuck,
        lease=args.lease,
        seed=seed,
        time_limit=args.time_limit,
        name=args.name,
        role=args.role or "",
        index=args.index,
    )


def run_on_backend(config: Config, function: Any) -> Any:
    if config.backend == "trio":
        return anyio.run(function, config, backend="trio")
    return anyio.run(
        function,
        config,
        backend="asyncio",
        backend_options={"use_uvloop": config.backend == "asyncio+uvloop"},
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.role:
        return int(
            run_on_backend(config, {"api": run_api, "worker": run_worker}[config.role])
        )
    report = run_on_backend(config, run_parent)
    print(report.render())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
