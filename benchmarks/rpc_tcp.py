"""End to end: request/response multiplexing over one loopback TCP connection.

A client makes ``--calls`` calls, ``--concurrency`` at a time, over one
connection to an echo server in the same process; one reader task hands each
reply to its caller. The rows differ only in how a caller registers for and
waits for its reply: a ``WaitMap`` (``take`` after the send, and ``expect``
before it), a ``dict`` of futures (asyncio), or a ``dict`` of ``trio.Event``
plus a value slot (trio). Reported, on asyncio, asyncio+uvloop and trio: time per
call over interleaved rounds, each sample in a fresh event loop after an untimed
warm-up, with the cyclic GC collected before and disabled during the sample.

From the repository root (``python -m benchmarks.rpc_tcp`` works too):

    python benchmarks/rpc_tcp.py [--calls 5000] [--concurrency 100] [--rounds 5]
                                 [--json FILE] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import anyio
import trio
from anyio.abc import SocketAttribute, SocketStream

from anyio_waitmap import WaitMap
from benchmarks.common.timing import (
    gc_paused,
    print_header,
    print_legend,
    print_machine,
    print_row,
    summarize,
)

FRAME = struct.Struct("!QQ")  # request id, value
CALLS = 5_000
CONCURRENCY = 100


async def echo_server(stream: SocketStream) -> None:
    async with stream:
        buffer = b""
        try:
            while True:
                buffer += await stream.receive()
                whole = len(buffer) - len(buffer) % FRAME.size
                if whole:
                    await stream.send(buffer[:whole])
                    buffer = buffer[whole:]
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


class Mailbox:
    """How a caller registers for its reply, sends its request and waits."""

    async def call(self, request_id: int, send: Callable[[], None]) -> int:
        raise NotImplementedError

    def deliver(self, request_id: int, value: int) -> None:
        raise NotImplementedError


class WaitMapMailbox(Mailbox):
    """``send(); await take(request_id)``: right here only because the send
    does not yield, so the caller waits before any reply can come."""

    def __init__(self) -> None:
        self.replies: WaitMap[int, int] = WaitMap(exclusive=True)

    async def call(self, request_id: int, send: Callable[[], None]) -> int:
        send()
        return await self.replies.take(request_id)

    def deliver(self, request_id: int, value: int) -> None:
        self.replies.wake(request_id, value)


class WaitMapExpectMailbox(WaitMapMailbox):
    """``with expect(request_id) as reply: send(); await reply``: right however
    the send behaves."""

    async def call(self, request_id: int, send: Callable[[], None]) -> int:
        with self.replies.expect(request_id) as reply:
            send()
            return await reply


class FuturesMailbox(Mailbox):
    def __init__(self) -> None:
        self.futures: dict[int, asyncio.Future[int]] = {}

    async def call(self, request_id: int, send: Callable[[], None]) -> int:
        future = self.futures[request_id] = asyncio.get_running_loop().create_future()
        send()
        try:
            return await future
        finally:
            del self.futures[request_id]

    def deliver(self, request_id: int, value: int) -> None:
        future = self.futures.get(request_id)
        if future is not None and not future.done():
            future.set_result(value)


class TrioEventMailbox(Mailbox):
    def __init__(self) -> None:
        self.events: dict[int, trio.Event] = {}
        self.values: dict[int, int] = {}

    async def call(self, request_id: int, send: Callable[[], None]) -> int:
        event = self.events[request_id] = trio.Event()
        send()
        try:
            await event.wait()
            return self.values.pop(request_id)
        finally:
            del self.events[request_id]

    def deliver(self, request_id: int, value: int) -> None:
        event = self.events.get(request_id)
        if event is not None:
            self.values[request_id] = value
            event.set()


async def client(mailbox: Mailbox) -> float:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo_server)
        port = listener.extra(SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            outbox, queued = anyio.create_memory_object_stream[bytes](CALLS)
            slots = anyio.Semaphore(CONCURRENCY)

            async def writer() -> None:
                async for frame in queued:
                    await stream.send(frame)

            async def reader() -> None:
                buffer = b""
                received = 0
                while received < CALLS:
                    buffer += await stream.receive()
                    whole = len(buffer) - len(buffer) % FRAME.size
                    for offset in range(0, whole, FRAME.size):
                        request_id, value = FRAME.unpack_from(buffer, offset)
                        mailbox.deliver(request_id, value)
                        received += 1
                    buffer = buffer[whole:]

            async def call(request_id: int) -> None:
                frame = FRAME.pack(request_id, request_id * 2)
                reply = await mailbox.call(
                    request_id, lambda: outbox.send_nowait(frame)
                )
                assert reply == request_id * 2
                slots.release()

            start = time.perf_counter()
            async with anyio.create_task_group() as io:
                io.start_soon(writer)
                io.start_soon(reader)
                async with anyio.create_task_group() as calls:
                    for request_id in range(CALLS):
                        await slots.acquire()
                        calls.start_soon(call, request_id)
                outbox.close()
            elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return elapsed


OURS: list[Callable[[], Mailbox]] = [WaitMapMailbox, WaitMapExpectMailbox]
ROWS: dict[str, tuple[str, dict[str, Any], list[Callable[[], Mailbox]]]] = {
    "asyncio": ("asyncio", {}, [FuturesMailbox, *OURS]),
    "uvloop": ("asyncio", {"use_uvloop": True}, [FuturesMailbox, *OURS]),
    "trio": ("trio", {}, [TrioEventMailbox, *OURS]),
}


def sample(backend: str, options: dict[str, Any], make: Callable[[], Mailbox]) -> float:
    """Seconds for the calls of one client, in a fresh event loop (cyclic GC off)."""

    async def main() -> float:
        return await client(make())

    with gc_paused():
        return anyio.run(main, backend=backend, backend_options=options)


def main() -> None:
    global CALLS, CONCURRENCY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results (raw samples in seconds)")
    parser.add_argument("--quick", action="store_true", help="check that it runs")
    options = parser.parse_args()
    CALLS, CONCURRENCY, rounds = options.calls, options.concurrency, options.rounds
    if options.quick:
        CALLS, CONCURRENCY, rounds = 200, 20, 1
    print(
        f"rpc_tcp.py: --calls {CALLS:,} --concurrency {CONCURRENCY} --rounds {rounds}"
    )
    report: dict[str, Any] = {
        "machine": print_machine(),
        "calls": CALLS,
        "concurrency": CONCURRENCY,
        "loops": {},
    }
    print_legend()
    print_header(
        f"{CALLS:,} calls, {CONCURRENCY} at a time, over one loopback connection "
        f"(per call)",
        "ns/call",
    )
    for loop_name, (backend, backend_options, rows) in ROWS.items():
        for make in rows:  # warm-up
            sample(backend, backend_options, make)
        times: dict[str, list[float]] = {make.__name__: [] for make in rows}
        for _ in range(rounds):
            for make in rows:
                times[make.__name__].append(sample(backend, backend_options, make))
        summaries = {name: summarize(v, 1e9 / CALLS) for name, v in times.items()}
        base = summaries[rows[0].__name__].median
        for name, summary in summaries.items():
            print_row(loop_name, name, summary, base)
        report["loops"][loop_name] = {
            "samples": times,
            "ns": {name: s.median for name, s in summaries.items()},
        }
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
