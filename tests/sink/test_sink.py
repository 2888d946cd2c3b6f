"""WakeSink and WakeSource on every backend (single loop).

The multi-threaded stress and coalescing tests are in test_sink_threads.py; the
wakers that a sink is made of are tested in tests/lowlevel/.
"""

from __future__ import annotations

import collections

import anyio
import pytest
from anyio import CancelScope, create_task_group, wait_all_tasks_blocked
from support.checkpoints import assert_cancellable, assert_yields

from anyio_waitmap import WakeSink, WakeSinkStatistics, WakeSource

pytestmark = pytest.mark.anyio


class Counter:
    """A predicate that counts its calls and returns the value once it is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.value: object = None

    def __call__(self) -> object:
        self.calls += 1
        return self.value


class TestWakeSink:
    async def test_ready_predicate_returns_at_once(self) -> None:
        sink = WakeSink()
        assert await sink.wait_until(lambda: 5) == 5

    async def test_notify_makes_the_consumer_check_again(self) -> None:
        sink = WakeSink()
        predicate = Counter()
        results: list[object] = []

        async def consumer() -> None:
            results.append(await sink.wait_until(predicate))

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            assert predicate.calls == 2  # before and after registering
            sink.notify()  # nothing changed: a check, and back to waiting
            await wait_all_tasks_blocked()
            assert predicate.calls == 3
            assert results == []
            predicate.value = "ready"
            sink.source().notify()
        assert results == ["ready"]
        assert predicate.calls == 4

    async def test_notifications_are_not_stored(self) -> None:
        sink = WakeSink()
        sink.notify()
        sink.notify()
        predicate = Counter()
        with anyio.move_on_after(0.05) as scope:
            await sink.wait_until(predicate)
        assert scope.cancelled_caught
        assert predicate.calls == 2

    async def test_many_notifications_cost_one_check(self) -> None:
        sink = WakeSink()
        predicate = Counter()
        async with create_task_group() as tg:
            tg.start_soon(sink.wait_until, predicate)
            await wait_all_tasks_blocked()
            predicate.value = 1
            for _ in range(100):
                sink.notify()
        assert predicate.calls == 3

    async def test_second_consumer_is_refused(self) -> None:
        sink = WakeSink()
        async with create_task_group() as tg:
            tg.start_soon(sink.wait_until, lambda: None)
            await wait_all_tasks_blocked()
            with pytest.raises(
                anyio.BusyResourceError,
                match=r"^Another task is already waiting on this resource$",
            ):
                await sink.wait_until(lambda: 1)
            assert sink.statistics() == WakeSinkStatistics(True, False)
            tg.cancel_scope.cancel()
        assert sink.statistics() == WakeSinkStatistics(False, False)
        assert await sink.wait_until(lambda: 2) == 2

    async def test_close_wakes_the_consumer_and_refuses_later_waits(self) -> None:
        sink = WakeSink()
        errors: list[BaseException] = []

        async def consumer() -> None:
            try:
                await sink.wait_until(lambda: None)
            except anyio.ClosedResourceError as exc:
                errors.append(exc)

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            sink.close()
        assert len(errors) == 1
        assert "closed while a task was waiting" in str(errors[0])
        assert sink.closed
        assert sink.source().closed
        with pytest.raises(anyio.ClosedResourceError, match="is closed"):
            await sink.wait_until(lambda: 1)
        sink.close()  # idempotent
        sink.notify()  # harmless
        assert sink.statistics() == WakeSinkStatistics(False, True)

    async def test_predicate_error_propagates_and_unregisters(self) -> None:
        sink = WakeSink()
        calls = 0

        def predicate() -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise ValueError("bad state")

        async def consumer() -> None:
            with pytest.raises(ValueError, match="bad state"):
                await sink.wait_until(predicate)

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            sink.notify()
        assert sink._waker is None
        assert sink.statistics().consumer_waiting is False

        def fails_at_once() -> None:
            raise KeyError("first")

        with pytest.raises(KeyError):
            await sink.wait_until(fails_at_once)
        assert sink._waker is None

    async def test_predicate_not_callable(self) -> None:
        sink = WakeSink()
        with pytest.raises(TypeError, match="callable predicate"):
            await sink.wait_until(42)  # type: ignore[arg-type]

    async def test_cancelled_consumer_leaves_nothing_registered(self) -> None:
        sink = WakeSink()
        predicate = Counter()
        async with create_task_group() as tg:
            tg.start_soon(sink.wait_until, predicate)
            await wait_all_tasks_blocked()
            assert sink._waker is not None
            tg.cancel_scope.cancel()
        assert sink._waker is None
        calls = predicate.calls
        sink.notify()
        await wait_all_tasks_blocked()
        assert predicate.calls == calls, "a consumer that left was woken"

    async def test_is_a_checkpoint_on_every_path(self) -> None:
        sink = WakeSink()
        await assert_cancellable(lambda: sink.wait_until(lambda: 1))
        assert await assert_yields(lambda: sink.wait_until(lambda: 1)) == 1
        await assert_cancellable(lambda: sink.wait_until(lambda: None))

        async def ready_soon() -> object:
            items: collections.deque[int] = collections.deque()

            async def produce() -> None:
                items.append(3)
                sink.notify()

            async with create_task_group() as tg:
                tg.start_soon(produce)
                return await sink.wait_until(lambda: items.popleft() if items else None)

        assert await assert_yields(ready_soon) == 3

    async def test_consumed_value_survives_cancellation_on_the_fast_path(
        self,
    ) -> None:
        sink = WakeSink()
        items = collections.deque([1, 2])
        got: list[int] = []

        with CancelScope() as scope:

            def take_and_get_cancelled() -> int:
                scope.cancel()  # the cancellation arrives as the item is taken
                return items.popleft()

            got.append(await sink.wait_until(take_and_get_cancelled))
            await anyio.lowlevel.checkpoint()
            got.append(-1)
        assert scope.cancelled_caught
        assert got == [1], "the item taken by the predicate was lost"
        assert list(items) == [2]

    async def test_woken_then_cancelled_keeps_what_the_predicate_took(self) -> None:
        sink = WakeSink()
        items: collections.deque[int] = collections.deque()
        scope = CancelScope()
        got: list[object] = []

        async def consumer() -> None:
            with scope:
                got.append(
                    await sink.wait_until(lambda: items.popleft() if items else None)
                )
                await anyio.lowlevel.checkpoint()
                got.append("not cancelled")

        async with create_task_group() as tg:
            tg.start_soon(consumer)
            await wait_all_tasks_blocked()
            items.append(7)
            sink.notify()
            scope.cancel()  # before the consumer resumed
        # The item is either returned or still in the deque: never lost.
        assert (got, list(items)) in [([7], []), ([], [7])]
        assert scope.cancelled_caught

    def test_repr_and_source(self) -> None:
        sink = WakeSink()
        source = sink.source()
        assert isinstance(source, WakeSource)
        assert repr(sink) == "<anyio_waitmap.WakeSink open>"
        assert (
            repr(source)
            == "<anyio_waitmap.WakeSource of <anyio_waitmap.WakeSink open>>"
        )
        sink.close()
        assert repr(sink) == "<anyio_waitmap.WakeSink closed>"
        assert sink != WakeSink()
        assert sink == sink
