"""Every ordering of a few WakeSink events, checked against a model.

As the same tests of WaitMap (tests/waitmap/test_map_interleavings.py), with
consumers in ``wait_until(pop)`` (``pop`` takes the oldest queued item), items
queued with or without a notification, ``close()`` and scope cancellations:
every item is returned once or stays queued, and a parked consumer never missed
a notification that came after an item was queued, nor registered while one was
there. The events, the runner and the comparison are in support/explorer.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.explorer import (
    CANCELLED,
    MAX_EXAMPLES,
    RUN_TIMEOUT,
    CloseSink,
    Consume,
    Ending,
    EventSet,
    Log,
    Notify,
    Outcome,
    Produce,
    Raised,
    Returned,
    Runner,
    ScopeCancel,
    Send,
    Settle,
    SinkEvent,
    check_log,
    compare,
    describe,
    finish,
    is_cancelled,
    label,
    orderings,
    with_ending,
)
from trio.lowlevel import in_trio_task

from anyio_waitmap import WakeSink

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings, pytest.mark.model]


# -- WakeSink: the model ---------------------------------------------------------


@dataclass(frozen=True)
class SinkSnapshot:
    consumer_waiting: bool
    registered: bool
    queued: tuple[int, ...]
    closed: bool


@dataclass(eq=False)
class ModelConsumer:
    #: unstarted -> new -> parked <-> woken -> handed -> done; or new -> handed.
    phase: str = "unstarted"
    cancelled: bool = False
    abort_pending: bool = False
    holds_lock: bool = False
    handed: Outcome | None = None


class SinkModel:
    """What a WakeSink, its queue and its consumers do, in plain Python."""

    def __init__(self, *, trio: bool) -> None:
        self.trio = trio
        self.queue: deque[int] = deque()
        self.closed = False
        self.consumers: dict[str, ModelConsumer] = {}
        self.endings: dict[str, Ending] = {}
        self.settles = 0

    def replay(self, steps: Sequence[SinkEvent], logs: Sequence[Log]) -> list[object]:
        for step in steps:
            if isinstance(step, Consume):
                self.consumers[step.task] = ModelConsumer()
        remaining = iter(logs)
        return [self.step(step, remaining) for step in steps]

    def step(self, step: SinkEvent, logs: Iterator[Log]) -> object:
        if isinstance(step, Consume):
            self.consumers[step.task].phase = "new"
        elif isinstance(step, Produce):
            self.queue.append(step.value)
        elif isinstance(step, Notify):
            self.notify()
        elif isinstance(step, Send):
            self.queue.append(step.value)
            self.notify()
        elif isinstance(step, CloseSink):
            self.closed = True
            self.notify()
        elif isinstance(step, ScopeCancel):
            consumer = self.consumers[step.task]
            consumer.cancelled = True
            if consumer.phase == "parked":
                if self.trio:
                    self.hand(consumer, CANCELLED)
                else:
                    consumer.abort_pending = True
        else:
            return self.settle(next(logs))
        return None

    def notify(self) -> None:
        for consumer in self.consumers.values():
            if consumer.phase == "parked" and not consumer.abort_pending:
                consumer.phase = "woken"

    def hand(self, consumer: ModelConsumer, outcome: Outcome) -> None:
        consumer.phase = "handed"
        consumer.handed = outcome

    def check(self, consumer: ModelConsumer) -> None:
        """The consumer checks its predicate after a wake-up (or to register)."""
        if self.closed:
            self.hand(consumer, Raised("ClosedResourceError"))
        elif self.queue:
            self.hand(consumer, Returned(self.queue.popleft()))
        elif consumer.cancelled:
            self.hand(consumer, CANCELLED)  # it parks again, and is cancelled
        else:
            consumer.phase = "parked"

    def first_run(self, consumer: ModelConsumer) -> None:
        # A pending cancellation comes before every error, and before the
        # predicate: nothing is taken from the queue.
        if any(other.holds_lock for other in self.consumers.values()):
            busy = Raised("BusyResourceError")
            self.hand(consumer, CANCELLED if consumer.cancelled else busy)
            return
        consumer.holds_lock = True
        if consumer.cancelled:
            self.hand(consumer, CANCELLED)
        elif self.closed:
            self.hand(consumer, Raised("ClosedResourceError"))
        else:
            self.check(consumer)

    def settle(self, log: Log) -> SinkSnapshot:
        self.settles += 1
        # Only the consumer that holds the sink can be woken or parked, and a new
        # consumer gets it only once that one has left: its resumption comes first.
        for consumer in self.consumers.values():
            if consumer.phase == "woken":
                self.check(consumer)
            elif consumer.phase == "parked" and consumer.abort_pending:
                self.hand(consumer, CANCELLED)
        ended: set[str] = set()
        for what, name in log:
            consumer = self.consumers[name]
            if what == "start":
                assert consumer.phase == "new", f"{name} first ran as {consumer.phase}"
                self.first_run(consumer)
            else:
                assert consumer.phase == "handed", f"{name} ended as {consumer.phase}"
                consumer.holds_lock = False
                ended.add(name)
        for name, consumer in self.consumers.items():
            assert consumer.phase != "new", f"{name} did not run in this settle"
            if consumer.phase != "handed":
                continue
            assert name in ended, f"{name} should have ended in this settle"
            assert consumer.handed is not None
            self.endings[name] = Ending(
                finish(consumer.handed, consumer.cancelled), self.settles
            )
            consumer.phase = "done"
        parked = any(c.phase == "parked" for c in self.consumers.values())
        return SinkSnapshot(
            consumer_waiting=parked,
            registered=parked,
            queued=tuple(self.queue),
            closed=self.closed,
        )


# -- WakeSink: a run -------------------------------------------------------------


@dataclass
class SinkRun:
    results: list[object]
    endings: dict[str, Ending]
    logs: list[Log]


async def run_sink(steps: Sequence[SinkEvent]) -> SinkRun:
    sink = WakeSink()
    source = sink.source()
    queue: deque[int] = deque()
    runner = Runner.for_tasks(
        [step.task for step in steps if isinstance(step, Consume)]
    )

    def pop() -> int | None:
        return queue.popleft() if queue else None

    def snapshot() -> SinkSnapshot:
        return SinkSnapshot(
            consumer_waiting=sink.statistics().consumer_waiting,
            registered=sink._waker is not None,
            queued=tuple(queue),
            closed=sink.closed,
        )

    results: list[object] = []
    with anyio.fail_after(RUN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for step in steps:
                result: object = None
                if isinstance(step, Consume):
                    tg.start_soon(runner.run, step.task, lambda: sink.wait_until(pop))
                elif isinstance(step, Produce):
                    queue.append(step.value)
                elif isinstance(step, Notify):
                    source.notify()
                elif isinstance(step, Send):
                    queue.append(step.value)
                    sink.notify()
                elif isinstance(step, CloseSink):
                    sink.close()
                elif isinstance(step, ScopeCancel):
                    runner.cancel(step.task)
                else:
                    await runner.settle()
                    result = snapshot()
                results.append(result)
            runner.stop()
    return SinkRun(results, runner.endings(), runner.logs)


def check_sink_invariants(steps: Sequence[SinkEvent], run: SinkRun) -> None:
    produced = [step.value for step in steps if isinstance(step, Produce | Send)]
    final = run.results[-1]
    assert isinstance(final, SinkSnapshot)
    returned = [
        ending.outcome.value
        for ending in run.endings.values()
        if isinstance(ending.outcome, Returned)
    ]
    # Every item is returned once or still queued, never both, never lost.
    assert sorted(returned + list(final.queued)) == sorted(produced)
    # A parked consumer never misses a notification that came after an item it
    # could take, and never registered while an item was there.
    settle_at = [i for i, step in enumerate(steps) if isinstance(step, Settle)]
    first_ran: dict[str, int] = {}
    for number, (position, log) in enumerate(
        zip(settle_at, run.logs, strict=True), start=1
    ):
        for what, name in log:
            if what == "start":
                first_ran[name] = position
        snapshot = run.results[position]
        assert isinstance(snapshot, SinkSnapshot)
        assert snapshot.registered == snapshot.consumer_waiting
        if not (snapshot.consumer_waiting and snapshot.queued):
            continue
        parked = [
            name
            for name, ending in run.endings.items()
            if name in first_ran and ending.settle > number
        ]
        assert len(parked) == 1, f"parked consumers: {parked}"
        oldest = next(
            i
            for i, step in enumerate(steps)
            if isinstance(step, Produce | Send) and step.value == snapshot.queued[0]
        )
        assert oldest > first_ran[parked[0]], (
            f"{parked[0]} registered while {snapshot.queued[0]} was queued"
        )
        assert not any(
            isinstance(step, Notify | Send | CloseSink)
            for step in steps[oldest:position]
        ), f"{parked[0]} missed a notification for {snapshot.queued[0]}"
    for name, ending in run.endings.items():
        outcome = ending.outcome
        end = settle_at[ending.settle - 1]
        cancels = [
            i
            for i, step in enumerate(steps)
            if isinstance(step, ScopeCancel) and step.task == name
        ]
        assert is_cancelled(outcome) == any(i < end for i in cancels), (
            f"{name} ended {outcome}"
        )
        if isinstance(outcome, Raised) and outcome.error == "ClosedResourceError":
            assert any(isinstance(step, CloseSink) for step in steps[:end])
    assert not final.consumer_waiting
    assert not final.registered


async def explore_sink(
    events: Sequence[SinkEvent], seen: set[str] | None = None
) -> None:
    steps = with_ending(events, Settle(), CloseSink(), Settle())
    run = await run_sink(steps)
    check_log(steps, run.logs)
    model = SinkModel(trio=in_trio_task())
    try:
        expected = model.replay(steps, run.logs)
    except AssertionError as exc:
        raise AssertionError(
            f"the run cannot be replayed by the model: {exc}\n{describe(steps)}\n"
            f"results: {run.results}\nendings: {run.endings}\nlog: {run.logs}"
        ) from None
    compare(steps, run.results, expected, run.endings, model.endings, run.logs)
    try:
        check_sink_invariants(steps, run)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nin the run: {describe(steps)}") from None
    if seen is not None:
        seen.update(label(ending) for ending in run.endings.values())


SINK_EVENT_SETS: Final[dict[str, EventSet]] = {
    "an item, a notify, the consumer's scope cancelled": EventSet(
        (Consume("C"), Produce(1), Notify(), ScopeCancel("C")),
        frozenset({"returned", "returned, then cancelled", "cancelled"}),
    ),
    "an item, a notify, close": EventSet(
        (Consume("C"), Produce(1), Notify(), CloseSink()),
        frozenset({"returned", "raised ClosedResourceError"}),
    ),
    "two items, one notify": EventSet(
        (Consume("C"), Produce(1), Produce(2), Notify()),
        frozenset({"returned", "raised ClosedResourceError"}),
    ),
    "a notify with nothing new, a send, close": EventSet(
        (Consume("C"), Notify(), Send(1), CloseSink()),
        frozenset({"returned", "raised ClosedResourceError"}),
    ),
    "a consumer cancelled, then another one, a send": EventSet(
        (Consume("C1"), ScopeCancel("C1"), Consume("C2"), Send(1)),
        frozenset({"returned", "cancelled", "raised BusyResourceError"}),
    ),
    "two consumers at once, a send, the first one's scope cancelled": EventSet(
        (Consume("C1"), Consume("C2"), Send(1), ScopeCancel("C1")),
        frozenset(
            {
                "returned",
                "returned, then cancelled",
                "cancelled",
                "raised BusyResourceError",
            }
        ),
    ),
}


@pytest.mark.parametrize("name", list(SINK_EVENT_SETS))
async def test_every_ordering_of_sink_events(name: str) -> None:
    event_set = SINK_EVENT_SETS[name]
    seen: set[str] = set()
    for steps in orderings(event_set.events, Settle()):
        await explore_sink(steps, seen)  # type: ignore[arg-type]
    missing = event_set.reaches - seen
    assert not missing, f"no ordering reached {sorted(missing)}; seen: {sorted(seen)}"


@st.composite
def sink_sequences(draw: st.DrawFn) -> tuple[SinkEvent, ...]:
    """5 to 10 sink events with up to 3 consumers; items are unique."""
    events: list[SinkEvent] = []
    consumers: list[str] = []
    size = draw(st.integers(min_value=5, max_value=10))
    choices = st.sampled_from(
        ["consume"] * 3
        + ["produce", "notify", "send", "send", "scope", "close"]
        + ["settle"] * 3
    )
    references: list[tuple[int, int]] = []
    while len(events) < size:
        choice = draw(choices)
        value = len(events) + 1
        if choice == "consume" and len(consumers) < 3:
            consumers.append(f"C{len(consumers)}")
            events.append(Consume(consumers[-1]))
        elif choice == "produce":
            events.append(Produce(value))
        elif choice == "notify":
            events.append(Notify())
        elif choice == "send":
            events.append(Send(value))
        elif choice == "close":
            events.append(CloseSink())
        elif choice == "scope":
            index = draw(st.integers(min_value=0, max_value=2))
            references.append((len(events), index))
            events.append(Settle())
        else:
            events.append(Settle())
    for position, index in references:
        if consumers:
            events[position] = ScopeCancel(consumers[index % len(consumers)])
    return tuple(events)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=sink_sequences())
async def test_random_sink_sequences(events: tuple[SinkEvent, ...]) -> None:
    await explore_sink(events)
