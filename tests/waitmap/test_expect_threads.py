"""WaitMap.expect() under load, from threads (the rest is in test_expect.py).

Callers in two event loops of their own threads, repliers in plain threads:
every value is accounted for exactly once.
"""

from __future__ import annotations

import queue
import random
import threading
import time

import anyio
import anyio.lowlevel
import pytest
from support.expect import assert_nothing_left
from support.workers import JOIN_TIMEOUT, Worker

from anyio_waitmap import NoMatch, WaitMap, Woke

pytestmark = [pytest.mark.anyio, pytest.mark.threads]


# -- under load: callers in two event loops, repliers in plain threads --------------


@pytest.mark.stress
@pytest.mark.timeout(60)
def test_calls_and_replies_across_threads_account_for_every_value() -> None:
    """Callers in an asyncio and a trio loop register, publish their request id
    and await the reply under a random short timeout; two plain threads reply,
    each with a value of its own. Every value is returned to its caller exactly
    once, or comes back to its replier (``NoMatch``), or was handed to an
    expectation whose caller gave up before receiving it and went back into the
    store; nothing else, and nothing is left registered."""
    calls_per_loop = 400
    wm: WaitMap[int, int] = WaitMap(exclusive=True)
    requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    returned: list[tuple[int, int]] = []
    outcomes: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def replier(seed: int) -> None:
        rng = random.Random(seed)
        while (request_id := requests.get()) is not None:
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.001)
            value = request_id * 10 + seed  # unique per request and replier
            match wm.wake(request_id, value):
                case Woke(count):
                    assert count == 1
                    kind = "woke"
                case NoMatch():
                    kind = "nomatch"
                case _:
                    raise AssertionError("the map was closed")
            with lock:
                outcomes.append((request_id, value, kind))

    async def caller(first_id: int, seed: int) -> None:
        rng = random.Random(seed)
        for request_id in range(first_id, first_id + calls_per_loop):
            with anyio.move_on_after(rng.random() * 0.002):
                with wm.expect(request_id) as reply:
                    requests.put(request_id)
                    for _ in range(rng.randrange(3)):
                        await anyio.lowlevel.checkpoint()  # the send
                    if rng.random() < 0.3:  # a slow send: the reply may come first
                        await anyio.sleep(rng.random() * 0.002)
                    value = await reply
                    with lock:
                        returned.append((request_id, value))

    repliers = [Worker(lambda s=seed: replier(s), f"replier {seed}") for seed in (1, 2)]
    for worker in repliers:
        worker.start()
    loops = [
        Worker(lambda: anyio.run(caller, 0, 7), "asyncio callers"),
        Worker(lambda: anyio.run(caller, 100_000, 8, backend="trio"), "trio callers"),
    ]
    for worker in loops:
        worker.start()
    for worker in loops:
        worker.finish(JOIN_TIMEOUT * 3)
    for _ in repliers:
        requests.put(None)
    for worker in repliers:
        worker.finish()

    assert_nothing_left(wm)
    woke = {(rid, value) for rid, value, kind in outcomes if kind == "woke"}
    assert len(woke) == sum(kind == "woke" for _, _, kind in outcomes)
    assert len(set(returned)) == len(returned), "a value was returned twice"
    given_back = {(key, value) for key, value in wm.items()}
    assert set(returned) | given_back == woke, "a woken value went missing"
    assert not set(returned) & given_back, "a value was returned and given back"
    assert len(outcomes) == 2 * calls_per_loop  # every request was answered once
    # The run went through each way a value can end (with these seeds).
    assert returned
    assert given_back
    assert any(kind == "nomatch" for _, _, kind in outcomes)
