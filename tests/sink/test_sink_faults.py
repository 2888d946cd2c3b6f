"""Fault injection: a WakeSink stays consistent after faults.

``MemoryError`` at the allocation points of a consumer's registration: the
error reaches the consumer, and the sink works on. As the map's fault tests
(tests/waitmap/test_map_faults.py), with the helpers of support/faults.py. A
sink notified while its consumer's loop is gone is in
tests/lowlevel/test_lowlevel_faults.py, with the wakers it is made of.
"""

from __future__ import annotations

import weakref

import anyio
import anyio.lowlevel
import pytest
from support.faults import assert_all_dead, fail_once, sink_round_trip, waker_state
from support.workers import JOIN_TIMEOUT, run_in_thread_now

from anyio_waitmap import WakeSink

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


# == MemoryError while registering =================================================


async def consume_despite_memory_error(
    monkeypatch: pytest.MonkeyPatch, point: str
) -> weakref.ref[WakeSink]:
    sink = WakeSink()
    failures = fail_once(monkeypatch, point)
    with pytest.raises(MemoryError, match="no memory left"):
        await sink.wait_until(lambda: None)
    monkeypatch.undo()
    assert failures, "the allocation was not reached"
    assert sink._waker is None
    assert not sink.statistics().consumer_waiting
    cached = sink._cached
    if cached is not None:
        assert waker_state(cached) == "idle"

    # The next consumer reuses the cached waker. A notification that arrives
    # between its registration and its park, from another thread, is not lost.
    box: list[str] = []
    calls = 0

    def predicate() -> str | None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the check right after registering
            box.append("item")
            run_in_thread_now(sink.notify)
            return None
        return box[0] if box else None

    with anyio.fail_after(JOIN_TIMEOUT):
        assert await sink.wait_until(predicate) == "item"
    assert calls == 3
    await sink_round_trip(sink)
    return weakref.ref(sink)


@pytest.mark.parametrize("point", ["waker_init", "new_handle", "park"])
async def test_memory_error_registering_on_sink(
    monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The error reaches the consumer, which leaves nothing registered and no
    waker in a state that would swallow the next consumer's notification."""
    ref = await consume_despite_memory_error(monkeypatch, point)
    assert_all_dead([ref])
