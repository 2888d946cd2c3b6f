"""Native asyncio cancellation that arrives after a value was handed over.

The value is kept, and the cancellation is re-armed for the task's next
checkpoint: the task still ends cancelled, with the message it was cancelled
with, and ``Task.cancelling()`` counts it once. Run under ``asyncio.run`` (and
``uvloop.run``) without anything of anyio around the task.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from anyio_waitmap import KeyCancelled, WaitMap, WaitMapClosed, WakeSink, Woke

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test dependency group
    uvloop = None  # type: ignore[assignment]

RUNNERS: list[Any] = [pytest.param(asyncio.run, id="asyncio.run")]
if uvloop is not None:
    RUNNERS.append(pytest.param(uvloop.run, id="uvloop.run"))

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=RUNNERS)
def run_asyncio(request: pytest.FixtureRequest) -> Runner:
    return request.param  # type: ignore[no-any-return]


def cancelling() -> int | None:
    """``Task.cancelling()`` of the running task, where Python has it."""
    if sys.version_info < (3, 11):
        return None
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def run_and_cancel(
    call: Callable[[], Awaitable[object]], cancel_after: Callable[[], object]
) -> list[object]:
    """Start ``call()`` in a task, let it run to its first suspension, run
    ``cancel_after()`` and cancel the task with a message before it resumes.

    Returns what the task recorded: the value, ``Task.cancelling()`` right
    after, and the message of the cancellation that ended it.
    """
    events: list[object] = []

    async def task_body() -> None:
        events.append(await call())
        events.append(("cancelling", cancelling()))
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError as exc:
            events.append(("cancelled", exc.args))
            raise
        events.append("not cancelled")

    task = asyncio.create_task(task_body())
    await asyncio.sleep(0)
    cancel_after()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    if sys.version_info >= (3, 11):
        # Awaiting a cancelled task passes the message on from 3.11 (before,
        # the awaiter gets a CancelledError of its own, without it). Inside the
        # task the message is checked on every version (see expected()).
        assert info.value.args == ("stop",)
    assert task.cancelled()
    return events


def expected(value: object) -> list[object]:
    return [
        value,
        ("cancelling", None if sys.version_info < (3, 11) else 1),
        ("cancelled", ("stop",)),
    ]


@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
def test_hand_over_then_cancel_keeps_value_and_message(
    run_asyncio: Runner, method: str
) -> None:
    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        call = {
            "wait": lambda: wm.wait("k"),
            "take": lambda: wm.take("k"),
            "wait_for": lambda: wm.wait_for("k", lambda v: v > 0),
        }[method]

        def hand_over() -> None:
            assert wm.wake("k", 7) == Woke(1)

        assert await run_and_cancel(call, hand_over) == expected(7)
        assert wm.statistics().tasks_waiting == 0
        assert "k" not in wm

    run_asyncio(main())


def test_take_of_a_stored_value_cancelled_while_yielding(run_asyncio: Runner) -> None:
    """take() removed the stored value and yields; Task.cancel() arrives then:
    the value is returned (it is nowhere else now), the cancellation follows."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        wm["k"] = 5
        events = await run_and_cancel(lambda: wm.take("k"), lambda: None)
        assert events == expected(5)
        assert "k" not in wm

    run_asyncio(main())


def test_sink_value_from_the_first_check_survives_cancel(run_asyncio: Runner) -> None:
    """wait_until() got a value from its first check and yields; Task.cancel()
    arrives then: the value (consumed from the deque) is returned."""

    async def main() -> None:
        items = [3]
        sink = WakeSink()
        events = await run_and_cancel(
            lambda: sink.wait_until(lambda: items.pop() if items else None),
            lambda: None,
        )
        assert events == expected(3)
        assert items == []
        assert not sink.statistics().consumer_waiting

    run_asyncio(main())


@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
@pytest.mark.parametrize("end", ["cancel", "close"])
def test_error_handed_over_then_cancel_raises_both_in_order(
    run_asyncio: Runner, method: str, end: str
) -> None:
    """cancel() or close() hands the parked task an error, then Task.cancel()
    arrives before the task resumes: its call raises that error, and the
    cancellation follows at its next checkpoint, with its message."""

    async def main() -> None:
        wm: WaitMap[str, int] = WaitMap()
        call = {
            "wait": lambda: wm.wait("k"),
            "take": lambda: wm.take("k"),
            "wait_for": lambda: wm.wait_for("k", bool),
        }[method]
        events: list[object] = []

        async def task_body() -> None:
            try:
                await call()
            except (KeyCancelled, WaitMapClosed) as exc:
                events.append((type(exc).__name__, cancelling()))
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError as exc:
                events.append(("cancelled", exc.args))
                raise

        task = asyncio.create_task(task_body())
        await asyncio.sleep(0)
        if end == "cancel":
            assert wm.cancel("k") == 1
        else:
            wm.close()
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        if sys.version_info >= (3, 11):  # see run_and_cancel()
            assert info.value.args == ("stop",)
        error = "KeyCancelled" if end == "cancel" else "WaitMapClosed"
        count = None if sys.version_info < (3, 11) else 1
        assert events == [(error, count), ("cancelled", ("stop",))]
        assert wm.statistics().tasks_waiting == 0

    run_asyncio(main())
