"""Static checks of the public types, run by mypy and pyright (never executed).

Each ``assert_type`` states what a user's type checker infers for a call.
"""

from __future__ import annotations

import threading

from typing_extensions import assert_type

from anyio_waitmap import (
    Closed,
    Expectation,
    NoMatch,
    WaitMap,
    WaitMapStatistics,
    WakeOutcome,
    Woke,
)
from anyio_waitmap.lowlevel import Waiter


async def waitmap_types() -> None:
    wm: WaitMap[int, bytes] = WaitMap()
    assert_type(await wm.wait(1), bytes)
    assert_type(await wm.take(1), bytes)
    assert_type(await wm.wait_for(1, lambda value: value.startswith(b"x")), bytes)
    assert_type(wm.wake(1, b"x"), WakeOutcome[bytes])
    assert_type(wm.cancel(1), int)
    assert_type(wm.cancel_all(), int)
    assert_type(wm.statistics(), WaitMapStatistics)
    assert_type(wm.get(1), bytes | None)
    assert_type(wm.get(1, "default"), bytes | str)
    assert_type(wm.pop(1), bytes)
    assert_type(wm.pop(1, None), bytes | None)
    assert_type(wm.setdefault(1, b""), bytes)
    assert_type(wm.closed, bool)
    assert_type(wm.exclusive, bool)

    match wm.wake(1, b"x"):
        case Woke(count):
            assert_type(count, int)
        case NoMatch(value):
            assert_type(value, bytes)
        case Closed(value):
            assert_type(value, bytes)

    with wm.expect(1) as reply:
        assert_type(reply, Expectation[int, bytes])
        assert_type(await reply, bytes)
    async with wm.expect(1, take=False) as reply:
        assert_type(await reply, bytes)
    assert_type(wm.expect(1).key, int)
    wm.expect("not an int")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]

    wm[1] = b"ok"
    wm.update({2: b"two"})
    wm.wake(1, "not bytes")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    wm["not an int"] = b""  # type: ignore[index]  # pyright: ignore[reportArgumentType]


async def lowlevel_types() -> None:
    lock = threading.Lock()
    waiter: Waiter[str] = Waiter(lock)
    assert_type(waiter.wake("x"), bool)
    assert_type(waiter.throw(ValueError()), bool)
    assert_type(waiter.done, bool)
    assert_type(await waiter.park(), str)
