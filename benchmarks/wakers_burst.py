"""Bursts: a thread notifies 1,000 times while the consumer waits for the burst.

Per notify (the sample's time over all its notifies, the consumer's resumptions
included), on asyncio, asyncio+uvloop and trio: ``WakeSource.notify`` (the
consumer in ``WakeSink.wait_until``) compared with the loop's own thread-safe
call per notify, setting the loop's ``Event`` (raw), and with
``aiologic.REvent.set``. Also reported: the consumer's resumptions per burst,
and the calls scheduled into its loop per burst (``call_soon_threadsafe`` /
``TrioToken.run_sync_soon``, counted by wrapping them during the untimed
warm-up).

Per burst, the consumer opens a gate and waits until the whole burst is
produced; the producer passes the gate (which opens only once the consumer has
parked: ``common/threads.py``), then bumps a counter and notifies, 1,000 times.

Like ``wakers_thread.py``, it runs twice unless ``--no-pinned``: in this process
and in a child process pinned to one CPU (``--pin CPU`` pins this one instead).

Rows are sampled as ``common/scenario.py`` says; ``wakers.py`` runs this scenario
with the others, into one report.

From the repository root (``python -m benchmarks.wakers_burst`` works too):

    python benchmarks/wakers_burst.py [--rounds 15] [--json FILE] [--quick]
                                      [--pin CPU | --no-pinned]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncio
from collections.abc import Callable
from typing import Any

import aiologic
import trio

from anyio_waitmap import WakeSink
from benchmarks.common import cli
from benchmarks.common.scenario import RESUMPTIONS, Scenario
from benchmarks.common.threads import gated, start_thread
from benchmarks.common.timing import Row

BURSTS = 20  # bursts per sample
BURST = 1_000  # notifies per burst


def quick() -> None:
    global BURSTS
    BURSTS = 2


def _record_resumptions(row: Callable[..., Any], resumptions: int) -> None:
    RESUMPTIONS.setdefault(row.__name__, []).append(resumptions / BURSTS)


async def asyncio_event_burst() -> None:
    """raw: call_soon_threadsafe(asyncio.Event.set) per notify"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        produced = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    loop.call_soon_threadsafe(event.set)

        thread = start_thread(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event.clear()
                if produced[0] >= target:
                    break
                await event.wait()
                resumptions += 1
        thread.join()
        _record_resumptions(asyncio_event_burst, resumptions)

    await gated(body)


async def trio_event_burst() -> None:
    """raw: TrioToken.run_sync_soon(trio.Event.set) per notify"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        token = trio.lowlevel.current_trio_token()
        current = [trio.Event()]
        produced = [0]

        def set_current() -> None:
            current[0].set()

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    token.run_sync_soon(set_current)

        thread = start_thread(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event = current[0] = trio.Event()
                if produced[0] >= target:
                    break
                await event.wait()
                resumptions += 1
        thread.join()
        _record_resumptions(trio_event_burst, resumptions)

    await gated(body)


async def aiologic_revent_burst() -> None:
    """aiologic.REvent.set from the thread per notify (clear + wait)"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        event = aiologic.REvent()
        produced = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    event.set()

        thread = start_thread(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            target = burst * BURST
            open_gate()
            while True:
                event.clear()
                if produced[0] >= target:
                    break
                await event
                resumptions += 1
        thread.join()
        _record_resumptions(aiologic_revent_burst, resumptions)

    await gated(body)


async def source_burst() -> None:
    """ours: WakeSource.notify per notify, WakeSink.wait_until"""

    async def body(
        open_gate: Callable[[], object], pass_gate: Callable[[], object]
    ) -> None:
        sink = WakeSink()
        source = sink.source()
        produced = [0]
        checks = [0]

        def producer() -> None:
            for _ in range(BURSTS):
                pass_gate()
                for _ in range(BURST):
                    produced[0] += 1
                    source.notify()

        def burst_done(target: int) -> bool | None:
            checks[0] += 1
            return True if produced[0] >= target else None

        thread = start_thread(producer)
        resumptions = 0
        for burst in range(1, BURSTS + 1):
            checks[0] = 0
            open_gate()
            await sink.wait_until(lambda target=burst * BURST: burst_done(target))
            # wait_until checks once, registers, checks again, then once after
            # every resumption: each check after the second follows one.
            resumptions += max(0, checks[0] - 2)
        thread.join()
        _record_resumptions(source_burst, resumptions)

    await gated(body)


BURST_COMMON: list[Row] = [aiologic_revent_burst, source_burst]

SCENARIO = Scenario(
    f"burst of {BURST:,} notifies from a thread (per notify)",
    "burst",
    "ns/notify",
    lambda: BURSTS * BURST,
    {
        "asyncio": [asyncio_event_burst, *BURST_COMMON],
        "uvloop": [asyncio_event_burst, *BURST_COMMON],
        "trio": [trio_event_burst, *BURST_COMMON],
    },
    quick,
    from_thread=True,
    bursts=lambda: BURSTS,
)


def main() -> None:
    cli.main(__file__, __doc__, [SCENARIO])


if __name__ == "__main__":
    main()
