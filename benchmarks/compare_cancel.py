"""Across processes: what becomes of a reply whose waiter is cancelled.

Not a timing: a count, for the table of docs/_redis_comparison.rst. A waiter
parks on a key of a Redis it shares with a sender (a redis-server started
here), is cancelled, and the sender sends one value for that key; then the
value is looked for: returned by the waiter, still in Redis (the list, or the
map's store), or nowhere (lost). Two orders, ``--trials`` times each, on
asyncio and trio:

* ``cancel, then send``: the waiter is cancelled while parked, and the value
  is sent after the cancellation returned.
* ``send, then cancel``: the value is sent, and the waiter is cancelled as
  soon as the sender heard back (for RedisWaitMap, ``wake`` returned
  ``Woke(1)``: the value was handed to that waiter).

The rows: raw coredis ``BLPOP`` on a key of its own per trial, the value sent
with ``LPUSH`` from another client; and :class:`RedisWaitMap`'s ``take``, the
value sent with ``wake`` from another instance (``NoMatch`` when nobody waits:
then nothing was handed over, and the sender still holds the value). A taker
cancelled just before the wake still counts while its release is on its way
to Redis: ``Woke(1)``, and the value it was handed goes on into the store.

From the repository root:

    python benchmarks/compare_cancel.py [--trials 200] [--json FILE] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import collections
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import coredis

from anyio_waitmap import NoMatch, Woke
from anyio_waitmap.redis import RedisWaitMap
from benchmarks.common.timing import print_machine

#: The servers of the Redis tests (a module of the standard library only).
REDIS_SERVERS = Path(__file__).resolve().parent.parent / "tests" / "redis"
TRIALS = 200
#: How long the waiter is left parked before the cancellation or the send.
PARKED = 0.02
#: How long the value is given to arrive before it is looked for.
SETTLE = 0.02

Trial = Callable[[str, int, bool], Awaitable[collections.Counter[str]]]


async def blpop_trials(
    url: str, trials: int, send_first: bool
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    run = secrets.token_hex(8)  # keys of this run's own, in a Redis the runs share
    waiter = coredis.Redis.from_url(url, decode_responses=False)
    sender = coredis.Redis.from_url(url, decode_responses=False)
    async with waiter, sender:
        for trial in range(trials):
            key = f"blpop:{run}:{trial}"
            returned: list[object] = []
            async with anyio.create_task_group() as task_group:

                async def wait(
                    key: str = key, returned: list[object] = returned
                ) -> None:
                    returned.append(await waiter.blpop([key], timeout=0))

                task_group.start_soon(wait)
                await anyio.sleep(PARKED)
                if send_first:
                    await sender.lpush(key, [b"value"])
                task_group.cancel_scope.cancel()
            if not send_first:
                await sender.lpush(key, [b"value"])
            await anyio.sleep(SETTLE)
            if returned:
                outcomes["returned by the waiter"] += 1
            elif await sender.llen(key):
                outcomes["still in Redis"] += 1
            else:
                outcomes["lost"] += 1
    return outcomes


async def waitmap_trials(
    url: str, trials: int, send_first: bool
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    name = f"compare_cancel_{secrets.token_hex(8)}"
    async with (
        RedisWaitMap.connect(url, name=name) as waiter,
        RedisWaitMap.connect(url, name=name) as sender,
    ):
        for trial in range(trials):
            key = f"take:{trial}"
            returned: list[object] = []
            outcome: object = None
            async with anyio.create_task_group() as task_group:

                async def wait(
                    key: str = key, returned: list[object] = returned
                ) -> None:
                    returned.append(await waiter.take(key))

                task_group.start_soon(wait)
                await anyio.sleep(PARKED)
                if send_first:
                    outcome = await sender.wake(key, b"value")
                    assert outcome == Woke(1), outcome
                task_group.cancel_scope.cancel()
            if not send_first:
                outcome = await sender.wake(key, b"value")
            await anyio.sleep(SETTLE)
            if returned:
                outcomes["returned by the waiter"] += 1
            elif isinstance(outcome, NoMatch):
                outcomes["not sent: NoMatch, the sender keeps it"] += 1
            elif await sender.pop(key, None) is not None:
                # Handed over (counted by Woke(1)), not returned, passed on.
                outcomes[f"counted by {outcome}, then put in the store"] += 1
            else:
                outcomes["lost"] += 1
    return outcomes


ROWS: dict[str, Trial] = {
    "coredis BLPOP": blpop_trials,
    "RedisWaitMap.take": waitmap_trials,
}
LOOPS = {"asyncio": "asyncio", "trio": "trio"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--json", help="write the counts")
    parser.add_argument(
        "--quick", action="store_true", help="a few trials, to check that it runs"
    )
    options = parser.parse_args()
    trials = 5 if options.quick else options.trials
    if str(REDIS_SERVERS) not in sys.path:
        sys.path.insert(0, str(REDIS_SERVERS))
    from redis_servers import RedisServer

    print(f"compare_cancel.py: --trials {trials}")
    report: dict[str, Any] = {
        "machine": print_machine(),
        "coredis": coredis.__version__,
        "trials": trials,
        "counts": {},
    }
    with RedisServer() as server:
        print(f"redis-server {'.'.join(map(str, server.binaries.server_version))}")
        for loop, backend in LOOPS.items():
            for row, trial in ROWS.items():
                for send_first in (False, True):
                    order = "send, then cancel" if send_first else "cancel, then send"
                    counts = anyio.run(
                        trial, server.url(), trials, send_first, backend=backend
                    )
                    text = ", ".join(
                        f"{n} {what}" for what, n in sorted(counts.items())
                    )
                    print(f"  {loop:8} {row:18} {order:18} {text}")
                    report["counts"][f"{loop} | {row} | {order}"] = dict(counts)
    if options.json:
        with open(options.json, "w") as file:
            json.dump(report, file, indent=1)


if __name__ == "__main__":
    main()
