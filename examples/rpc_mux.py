"""Request/response multiplexing over one TCP connection, with a ``WaitMap``.

This is the job ``anyio_waitmap`` was written for. A client sends many concurrent
requests over a single connection; the server answers them out of order; one
reader task on the client reads every reply and hands it to the call that waits
for it with ``replies.wake(request_id, reply)``. Each call registers with
``replies.expect(request_id)`` before it sends, and awaits its reply: no dict of
futures to create, clean up and guard against races.

What the run shows:

* the server (same process, 127.0.0.1, random free port) handles each request in
  its own task after a random 0-5 ms delay, so replies come back out of order;
  10 % of the replies are computed in a worker thread;
* the client runs ``--calls`` calls, at most ``--concurrency`` at a time; each one
  registers for its reply with ``replies.expect(request_id)``, sends its request
  (which yields: the reply may come back before the call waits for it) and
  awaits the reply, all under ``anyio.fail_after()``;
* a share of the calls (``--timeout-share``) use a tiny timeout (0.1-1 ms) and
  give up. The server answers them anyway: ``wake()`` then returns
  ``NoMatch(reply)``, so each late reply comes back to the reader and is counted
  instead of being lost in silence, and the waiter that timed out left nothing
  behind in the map;
* every fifth reply is handed over from a worker thread (``wake()`` is
  thread-safe), the others from the reader task;
* every reply a call receives is checked against its request
  (``reply == sha256(payload)``).

The summary accounts for every reply the server sent: each one either reached
its caller (``ok``, or ``wrong`` if the content did not match) or came back from
``wake()`` as a late reply. ``lost`` is whatever is left over (it must be 0), and
since every call that timed out after its request was sent gets its reply late,
``late replies`` must equal those timeouts (a call that timed out before its
request left gets no reply). The run waits (for a bounded time) until the server
has answered every request before it checks this. The exit status is 1 if a
reply was lost or wrong, if a waiter was left in the map, or if the counts do
not add up; else 0.

Run it with::

    python examples/rpc_mux.py [--backend asyncio|asyncio+uvloop|trio]
        [--calls N] [--concurrency C] [--timeout-share F] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from anyio.abc import ByteReceiveStream, ByteStream, SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from anyio_waitmap import Closed, NoMatch, WaitMap, WakeOutcome, Woke

BACKENDS = ("asyncio", "asyncio+uvloop", "trio")

#: A frame is a header (request id, payload length) followed by the payload.
HEADER = struct.Struct("!QI")
MAX_PAYLOAD = 1 << 20

SERVER_MAX_DELAY = 0.005  # each request waits 0-5 ms before it is answered
SERVER_THREAD_SHARE = 0.10  # share of the replies computed in a worker thread
THREAD_WAKE_EVERY = 5  # every 5th reply is handed over from a worker thread
NORMAL_TIMEOUT = 5.0  # seconds; generous, these calls are meant to succeed
TINY_TIMEOUT = (0.0001, 0.001)  # seconds; these calls are meant to time out
DRAIN_TIMEOUT = 10.0  # how long to wait for the replies still in flight at the end
PROGRESS_INTERVAL = 0.1


def answer(payload: bytes) -> bytes:
    """What the server computes for a request: the reply is ``f(payload)``."""
    return hashlib.sha256(payload).digest()


def encode_frame(request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(request_id, len(payload)) + payload


class FrameReader:
    """Reads ``(request id, payload)`` frames from a byte stream."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._buffered = BufferedByteReceiveStream(stream)

    async def receive(self) -> tuple[int, bytes] | None:
        """Return the next frame, or None when the peer has finished sending."""
        try:
            header = await self._buffered.receive_exactly(HEADER.size)
        except anyio.IncompleteRead:
            if self._buffered.buffer:
                raise  # the stream ended in the middle of a header
            return None
        except anyio.BrokenResourceError:
            return None  # the connection was reset
        request_id, size = HEADER.unpack(header)
        if size > MAX_PAYLOAD:
            raise ValueError(f"frame of {size} bytes for request {request_id}")
        return request_id, await self._buffered.receive_exactly(size)


async def write_frames(
    stream: ByteStream,
    outbox: MemoryObjectReceiveStream[bytes],
    on_sent: Callable[[int], object] = lambda count: None,
) -> None:
    """Send the frames queued in ``outbox`` until it is closed, then send EOF.

    Frames queued meanwhile are sent together; ``on_sent`` is told how many.
    """
    async with outbox:
        async for frame in outbox:
            frames = [frame]
            while True:
                try:
                    frames.append(outbox.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            await stream.send(b"".join(frames))
            on_sent(len(frames))
    await stream.send_eof()


# -- server ------------------------------------------------------------------------


@dataclass
class Server:
    """Answers each request in its own task, after a random delay: out of order."""

    rng: random.Random
    requests: int = 0
    replies_sent: int = 0
    computed_in_thread: int = 0
    done: anyio.Event = field(default_factory=anyio.Event)

    async def handle(self, stream: ByteStream) -> None:
        try:
            async with stream:
                await self._serve(stream)
        finally:
            self.done.set()

    async def _serve(self, stream: ByteStream) -> None:
        reader = FrameReader(stream)
        outbox, queued = anyio.create_memory_object_stream[bytes](math.inf)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, stream, queued)
            async with outbox, anyio.create_task_group() as handlers:
                while (frame := await reader.receive()) is not None:
                    self.requests += 1
                    delay = self.rng.uniform(0.0, SERVER_MAX_DELAY)
                    in_thread = self.rng.random() < SERVER_THREAD_SHARE
                    handlers.start_soon(self._answer, outbox, *frame, delay, in_thread)
            # The client sent EOF and every request has been answered: closing
            # ``outbox`` lets the writer send what is queued, then EOF.

    async def _answer(
        self,
        outbox: MemoryObjectSendStream[bytes],
        request_id: int,
        payload: bytes,
        delay: float,
        in_thread: bool,
    ) -> None:
        await anyio.sleep(delay)
        if in_thread:
            self.computed_in_thread += 1
            reply = await anyio.to_thread.run_sync(answer, payload)
        else:
            reply = answer(payload)
        # If the writer stopped (the client went away), the reply is dropped.
        with contextlib.suppress(anyio.BrokenResourceError):
            outbox.send_nowait(encode_frame(request_id, reply))

    async def _write(
        self, stream: ByteStream, queued: MemoryObjectReceiveStream[bytes]
    ) -> None:
        # If the client goes away, the summary reports the replies it missed.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await write_frames(stream, queued, self._sent)

    def _sent(self, count: int) -> None:
        self.replies_sent += count


# -- client ------------------------------------------------------------------------


@dataclass
class Client:
    """Many concurrent calls over one connection; one reader hands out replies."""

    calls: int
    concurrency: int
    timeout_share: float
    rng: random.Random
    show_progress: bool
    replies: WaitMap[int, bytes] = field(
        default_factory=lambda: WaitMap[int, bytes](exclusive=True)
    )
    calls_done: int = 0
    ok: int = 0
    wrong: int = 0
    timeouts: int = 0
    unsent: int = 0  # timed out before the request was sent: no reply will come
    late: int = 0
    delivered: int = 0  # wake() returned Woke
    woken_from_thread: int = 0
    replies_received: int = 0
    drained: bool = False
    latencies: list[float] = field(default_factory=list[float])

    async def run(self, stream: ByteStream) -> None:
        # Decide every call up front, so that a seed gives the same requests.
        plans = [
            (
                self.rng.randbytes(24),
                pick_timeout(self.rng, self.timeout_share),
            )
            for _ in range(self.calls)
        ]
        slots = anyio.Semaphore(self.concurrency)
        outbox, queued = anyio.create_memory_object_stream[bytes](math.inf)
        reader_done = anyio.Event()
        async with anyio.create_task_group() as io:
            io.start_soon(write_frames, stream, queued)
            io.start_soon(self._read, stream, reader_done)
            if self.show_progress:
                io.start_soon(self._progress)
            async with outbox, anyio.create_task_group() as calls:
                for request_id, (payload, deadline) in enumerate(plans):
                    # At most ``concurrency`` calls at a time; each call gives its
                    # slot back when it ends.
                    await slots.acquire()
                    calls.start_soon(
                        self._call, slots, outbox, request_id, payload, deadline
                    )
            # Every call is over and every request is queued; closing ``outbox``
            # makes the writer send EOF. The server then answers what is left and
            # closes the connection, which ends the reader.
            with anyio.move_on_after(DRAIN_TIMEOUT):
                await reader_done.wait()
            self.drained = reader_done.is_set()
            io.cancel_scope.cancel()

    async def _call(
        self,
        slot: anyio.Semaphore,
        outbox: MemoryObjectSendStream[bytes],
        request_id: int,
        payload: bytes,
        deadline: float,
    ) -> None:
        started = time.perf_counter()
        sent = False
        # Register for the reply, then send the request, then wait: sending
        # yields, and the reply may come back before this task gets to wait for
        # it. The expectation keeps it; the exclusive map refuses a request id
        # that is in flight already, before anything is sent.
        try:
            with (
                anyio.fail_after(deadline),
                self.replies.expect(request_id) as reply_for_us,
            ):
                await outbox.send(encode_frame(request_id, payload))
                sent = True
                reply = await reply_for_us
        except TimeoutError:
            if sent:
                self.timeouts += 1  # its reply will come back to the reader: late
            else:
                self.unsent += 1  # it gave up before its request left
        else:
            if reply == answer(payload):
                self.ok += 1
                self.latencies.append(time.perf_counter() - started)
            else:
                self.wrong += 1
        finally:
            self.calls_done += 1
            slot.release()

    async def _read(self, stream: ByteStream, done: anyio.Event) -> None:
        reader = FrameReader(stream)
        async with anyio.create_task_group() as thread_wakes:
            while (frame := await reader.receive()) is not None:
                self.replies_received += 1
                if self.replies_received % THREAD_WAKE_EVERY == 0:
                    thread_wakes.start_soon(self._wake_from_thread, *frame)
                else:
                    self._count(frame[0], self.replies.wake(*frame))
        done.set()

    async def _wake_from_thread(self, request_id: int, reply: bytes) -> None:
        outcome = await anyio.to_thread.run_sync(self.replies.wake, request_id, reply)
        self.woken_from_thread += 1
        self._count(request_id, outcome)

    def _count(self, request_id: int, outcome: WakeOutcome[bytes]) -> None:
        match outcome:
            case Woke():
                self.delivered += 1
            case NoMatch():
                # Its caller gave up (timed out) before the reply came back: the
                # reply is handed back to us, not dropped.
                self.late += 1
            case Closed():
                raise RuntimeError(
                    f"the reply to request {request_id} came after the map was closed"
                )

    async def _progress(self) -> None:
        # A progress bar on stderr while the calls run (rich comes with the demo's
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
            TextColumn("calls"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
        )
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("calls", total=self.calls, detail="")
            while True:
                waiting = self.replies.statistics().tasks_waiting
                bar.update(
                    task,
                    completed=self.calls_done,
                    detail=f"ok {self.ok}  timeouts {self.timeouts}  "
                    f"late {self.late}  waiting {waiting}",
                )
                await anyio.sleep(PROGRESS_INTERVAL)


def pick_timeout(rng: random.Random, tiny_share: float) -> float:
    """The timeout of one call: tiny for a share of them, generous for the rest."""
    if rng.random() < tiny_share:
        return rng.uniform(*TINY_TIMEOUT)
    return NORMAL_TIMEOUT


# -- running it --------------------------------------------------------------------


@dataclass
class Config:
    backend: str
    calls: int
    concurrency: int
    timeout_share: float
    seed: int


@dataclass
class Report:
    config: Config
    wall_time: float
    client: Client
    server: Server
    waiters_left: int
    values_stored: int

    @property
    def lost(self) -> int:
        """Replies the server sent that neither reached a caller nor came back."""
        return self.server.replies_sent - (
            self.client.ok + self.client.wrong + self.client.late
        )

    def problems(self) -> list[str]:
        client, server = self.client, self.server
        problems: list[str] = []
        if self.lost:
            problems.append(f"lost replies: {self.lost}")
        if client.wrong:
            problems.append(f"wrong replies: {client.wrong}")
        if self.waiters_left:
            problems.append(f"waiters left in the map: {self.waiters_left}")
        if self.values_stored:
            problems.append(f"values stored in the map: {self.values_stored}")
        if client.delivered != client.ok + client.wrong:
            problems.append(
                f"wake() handed {client.delivered} replies to callers, but they "
                f"received {client.ok + client.wrong}"
            )
        requests_sent = self.config.calls - client.unsent
        if not client.drained or not (
            server.requests == server.replies_sent == requests_sent
        ):
            problems.append(
                f"the server answered {server.replies_sent} of {requests_sent} requests"
            )
        if client.late != client.timeouts:
            problems.append(
                f"{client.late} late replies for {client.timeouts} timeouts "
                f"after sending"
            )
        if client.calls_done != self.config.calls:
            problems.append(
                f"{client.calls_done} of {self.config.calls} calls finished"
            )
        return problems

    def render(self) -> str:
        config, client, server = self.config, self.client, self.server
        if client.latencies:
            latency = (
                f"p50 {percentile(client.latencies, 50) * 1000:.2f} ms, "
                f"p99 {percentile(client.latencies, 99) * 1000:.2f} ms "
                f"(successful calls)"
            )
        else:
            latency = "n/a (no successful call)"
        problems = self.problems()
        rows = [
            ("backend", config.backend),
            (
                "calls",
                f"{config.calls} (concurrency {config.concurrency}, "
                f"timeout share {config.timeout_share:g}, seed {config.seed})",
            ),
            ("wall time", f"{self.wall_time:.3f} s"),
            ("throughput", f"{config.calls / self.wall_time:,.0f} calls/s"),
            ("latency", latency),
            ("ok", f"{client.ok}"),
            (
                "timeouts",
                f"{client.timeouts + client.unsent} ({client.unsent} before the "
                f"request was sent)",
            ),
            ("late replies", f"{client.late} (wake() returned NoMatch)"),
            ("wrong", f"{client.wrong}"),
            ("lost", f"{self.lost}"),
            ("waiters left", f"{self.waiters_left}"),
            (
                "replies",
                f"{server.replies_sent} sent, {server.computed_in_thread} computed "
                f"in a thread, {client.woken_from_thread} handed over from a thread",
            ),
            ("result", "FAILED: " + "; ".join(problems) if problems else "OK"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = ["rpc_mux summary"]
        lines += [f"  {name:<{width}} : {value}" for name, value in rows]
        return "\n".join(lines)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def run_demo(config: Config) -> Report:
    client = Client(
        calls=config.calls,
        concurrency=config.concurrency,
        timeout_share=config.timeout_share,
        rng=random.Random(config.seed),
        show_progress=sys.stderr.isatty(),
    )
    server = Server(rng=random.Random(config.seed + 1))
    started = time.perf_counter()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        port = listener.extra(SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await client.run(stream)
        with anyio.move_on_after(DRAIN_TIMEOUT):
            await server.done.wait()
        tg.cancel_scope.cancel()  # stop accepting connections
    wall_time = time.perf_counter() - started
    stats = client.replies.statistics()
    client.replies.close()
    return Report(
        config, wall_time, client, server, stats.tasks_waiting, stats.values_stored
    )


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="RPC multiplexing over one TCP connection with a WaitMap."
    )
    parser.add_argument("--backend", choices=BACKENDS, default="asyncio")
    parser.add_argument("--calls", type=int, default=20_000, metavar="N")
    parser.add_argument("--concurrency", type=int, default=200, metavar="C")
    parser.add_argument(
        "--timeout-share",
        type=float,
        default=0.05,
        metavar="F",
        help="share of the calls that use a tiny timeout (default: 0.05)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, metavar="S", help="default: random"
    )
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if not 0.0 <= args.timeout_share <= 1.0:
        parser.error("--timeout-share must be between 0 and 1")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    return Config(args.backend, args.calls, args.concurrency, args.timeout_share, seed)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.backend == "trio":
        report = anyio.run(run_demo, config, backend="trio")
    else:
        report = anyio.run(
            run_demo,
            config,
            backend="asyncio",
            backend_options={"use_uvloop": config.backend == "asyncio+uvloop"},
        )
    print(report.render())
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
