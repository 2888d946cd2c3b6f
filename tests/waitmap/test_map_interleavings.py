"""Every ordering of a few WaitMap events, checked against a model.

One driver task performs a short sequence of events in one event loop: it starts
tasks that ``wait``, ``take`` or ``wait_for`` a key (each in a cancel scope of its
own), wakes, stores, cancels keys, closes, cancels one task's scope or moves its
deadline into the past, and *settles* (lets every task run until all are blocked
again). Between two events with no settle between them, no other task runs: that
is where the races are, e.g. a value handed over and then the task cancelled
before it could resume.

The exhaustive tests run every permutation of a few small event sets, each with
and without a settle between any two events; hypothesis draws longer sequences.
Every run ends with a settle, ``close()`` and a settle again. The trace of a run
(what every call returned, the statistics and stored values at every settle, how
every task ended and in which settle) must equal the one that a small model in
plain Python predicts, and invariants that do not rely on the model must hold: no
value is lost or delivered twice, ``Woke(n)`` counts exactly the tasks that
returned the value, nothing is left behind, every ending is explained by an event.

Where the contract leaves the backends a choice, the model follows each one:

* Cancelling the scope of a parked task ends its wait at once on trio (the abort
  function runs inside ``cancel()``). On asyncio, anyio cancels the task's
  future at once as well, and from then on the map hands the task nothing (no
  value, no ``KeyCancelled``, no ``WaitMapClosed``: the cancellation came
  first), but the task stays registered (``statistics()`` counts it, and an
  exclusive key stays taken) until it runs and unlinks itself, or until a
  hand-over that reaches it (one it would have received) unlinks it instead.
* A deadline moved into the past does the same on asyncio (anyio cancels the
  scope at once). On trio it takes effect when the tasks next run, so what is
  handed over meanwhile is what the call ends with, and the cancellation is
  raised at the task's next checkpoint.
* Which of several newly started tasks runs first is the scheduler's choice
  (trio's is random). Each task logs when it first runs and when its call ends,
  and the model replays the log.

The events, the runner and the comparison are in support/explorer.py, shared
with the same tests of WakeSink (tests/sink/test_sink_interleavings.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
    CancelAll,
    CancelKey,
    Close,
    Ending,
    EventSet,
    Kind,
    Log,
    MapEvent,
    Outcome,
    Raised,
    Returned,
    Runner,
    ScopeCancel,
    Settle,
    Start,
    Store,
    Timeout,
    Wake,
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

from anyio_waitmap import (
    Closed,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeOutcome,
    Woke,
)

pytestmark = [pytest.mark.anyio, pytest.mark.interleavings, pytest.mark.model]


def is_even(value: int) -> bool:
    return value % 2 == 0


# -- WaitMap: the model ----------------------------------------------------------


@dataclass(frozen=True)
class MapSnapshot:
    tasks_waiting: int
    keys_waiting: int
    stored: tuple[tuple[str, int], ...]
    closed: bool


def snapshot(wm: WaitMap[str, int]) -> MapSnapshot:
    statistics = wm.statistics()
    assert statistics.values_stored == len(wm)
    return MapSnapshot(
        tasks_waiting=statistics.tasks_waiting,
        keys_waiting=statistics.keys_waiting,
        stored=tuple(sorted(wm.items())),
        closed=statistics.closed,
    )


@dataclass(eq=False)
class ModelTask:
    start: Start
    #: unstarted -> new (started, has not run) -> parked -> handed -> done; or
    #: new -> handed (it ended without parking).
    phase: str = "unstarted"
    #: Its scope was cancelled (or its deadline passed).
    cancelled: bool = False
    #: Cancelled while parked, but its wait has not been aborted yet.
    abort_pending: bool = False
    #: asyncio: its future was cancelled while it was parked, so it is handed
    #: nothing more, but it stays registered until it runs.
    leaving: bool = False
    handed: Outcome | None = None


class MapModel:
    """What a WaitMap and its tasks do, step by step, in plain Python."""

    def __init__(self, *, exclusive: bool, trio: bool) -> None:
        self.exclusive = exclusive
        self.trio = trio
        self.data: dict[str, int] = {}
        self.closed = False
        self.queues: dict[str, list[ModelTask]] = {}
        self.tasks: dict[str, ModelTask] = {}
        self.endings: dict[str, Ending] = {}
        self.settles = 0

    def replay(self, steps: Sequence[MapEvent], logs: Sequence[Log]) -> list[object]:
        for step in steps:
            if isinstance(step, Start):
                self.tasks[step.task] = ModelTask(step)
        remaining = iter(logs)
        return [self.step(step, remaining) for step in steps]

    def step(self, step: MapEvent, logs: Iterator[Log]) -> object:
        if isinstance(step, Start):
            self.tasks[step.task].phase = "new"
        elif isinstance(step, Wake):
            return self.wake(step.key, step.value)
        elif isinstance(step, Store):
            if self.closed:
                return "refused"
            _, taken = self.dispatch(step.key, step.value)
            if not taken:
                self.data[step.key] = step.value
            return "stored"
        elif isinstance(step, CancelKey):
            return self.throw(step.key, f"KeyCancelled({step.key!r})")
        elif isinstance(step, CancelAll):
            keys = list(self.queues)
            return sum([self.throw(key, f"KeyCancelled({key!r})") for key in keys])
        elif isinstance(step, Close):
            if not self.closed:
                self.closed = True
                for key in list(self.queues):
                    self.throw(key, "WaitMapClosed")
        elif isinstance(step, ScopeCancel | Timeout):
            task = self.tasks[step.task]
            task.cancelled = True
            if task.phase == "parked":
                if self.trio and isinstance(step, ScopeCancel):
                    self.abort(task)
                else:
                    task.abort_pending = True
                    task.leaving = not self.trio
        else:
            return self.settle(next(logs))
        return None

    def wake(self, key: str, value: int) -> WakeOutcome[int]:
        if self.closed:
            return Closed(value)
        woken, _ = self.dispatch(key, value)
        return Woke(woken) if woken else NoMatch(value)

    def hand(self, task: ModelTask, outcome: Outcome) -> None:
        task.phase = "handed"
        task.handed = outcome

    def unlink(self, task: ModelTask) -> None:
        queue = self.queues[task.start.key]
        queue.remove(task)
        if not queue:
            del self.queues[task.start.key]

    def dispatch(self, key: str, value: int) -> tuple[int, bool]:
        """Hand ``value`` to the parked tasks of ``key``: (how many, taken)."""
        woken = 0
        taken = False
        remaining: list[ModelTask] = []
        for task in self.queues.pop(key, []):
            if task.start.kind == "take":
                if taken:
                    remaining.append(task)
                    continue
                taken = not task.leaving
            elif task.start.kind == "wait_for" and not is_even(value):
                remaining.append(task)
                continue
            if task.leaving:
                continue  # reached, and unlinked, but handed nothing
            self.hand(task, Returned(value))
            woken += 1
        if remaining:
            self.queues[key] = remaining
        return woken, taken

    def throw(self, key: str, error: str) -> int:
        queue = self.queues.pop(key, [])
        reached = [task for task in queue if not task.leaving]
        for task in reached:
            self.hand(task, Raised(error))
        return len(reached)

    def first_run(self, task: ModelTask) -> None:
        """The task runs for the first time and calls the map."""
        start = task.start
        if self.closed:
            # An error, but a pending cancellation comes first.
            self.hand(task, CANCELLED if task.cancelled else Raised("WaitMapClosed"))
            return
        value = self.data.get(start.key)
        if start.kind == "wait_for" and value is not None and not is_even(value):
            value = None
        if value is not None:
            # Ready at once: a checkpoint first, so a cancelled task takes nothing.
            if task.cancelled:
                self.hand(task, CANCELLED)
                return
            if start.kind == "take":
                del self.data[start.key]
            self.hand(task, Returned(value))
            return
        if self.exclusive and start.key in self.queues:
            self.hand(task, CANCELLED if task.cancelled else Raised("DuplicateWaiter"))
            return
        if task.cancelled and self.trio:
            self.hand(task, CANCELLED)  # it registers, and leaves as it parks
            return
        self.queues.setdefault(start.key, []).append(task)
        task.phase = "parked"
        # asyncio: it registers and parks; anyio cancels it a little later.
        task.abort_pending = task.cancelled

    def abort(self, task: ModelTask) -> None:
        if task in self.queues.get(task.start.key, ()):
            self.unlink(task)  # else a hand-over that reached it unlinked it
        self.hand(task, CANCELLED)
        task.leaving = False

    def settle(self, log: Log) -> MapSnapshot:
        self.settles += 1
        parked = [task for task in self.tasks.values() if task.phase == "parked"]
        if self.trio:
            # Deadlines expire, and the abort functions run, before any task.
            for task in parked:
                if task.abort_pending:
                    self.abort(task)
        ended: set[str] = set()
        for what, name in log:
            task = self.tasks[name]
            if what == "start":
                assert task.phase == "new", f"{name} first ran in phase {task.phase}"
                self.first_run(task)
            else:
                if task.phase == "parked" and task.abort_pending:
                    self.abort(task)  # asyncio: it aborts when it runs
                assert task.phase == "handed", f"{name} ended in phase {task.phase}"
                ended.add(name)
        for name, task in self.tasks.items():
            assert task.phase != "new", f"{name} did not run in this settle"
            assert not task.abort_pending or task.phase != "parked", (
                f"{name} should have left in this settle"
            )
            if task.phase != "handed":
                continue
            assert name in ended, f"{name} should have ended in this settle"
            assert task.handed is not None
            # Whatever was handed over first is what the call ends with, an
            # exception as much as a value: cancel() counted this task as one that
            # raises KeyCancelled. A cancellation that came later is raised at the
            # next checkpoint.
            self.endings[name] = Ending(
                finish(task.handed, task.cancelled), self.settles
            )
            task.phase = "done"
        assert ended <= set(self.endings), f"tasks ended unexpectedly: {ended}"
        return MapSnapshot(
            tasks_waiting=sum(len(queue) for queue in self.queues.values()),
            keys_waiting=len(self.queues),
            stored=tuple(sorted(self.data.items())),
            closed=self.closed,
        )


# -- WaitMap: a run --------------------------------------------------------------


@dataclass
class MapRun:
    results: list[object]
    endings: dict[str, Ending]
    logs: list[Log]
    waiting_left: object


async def run_map(steps: Sequence[MapEvent], *, exclusive: bool) -> MapRun:
    wm: WaitMap[str, int] = WaitMap(exclusive=exclusive)
    runner = Runner.for_tasks([step.task for step in steps if isinstance(step, Start)])
    calls: dict[Kind, Callable[[str], Awaitable[int]]] = {
        "wait": wm.wait,
        "take": wm.take,
        "wait_for": lambda key: wm.wait_for(key, is_even),
    }
    results: list[object] = []
    with anyio.fail_after(RUN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for step in steps:
                result: object = None
                if isinstance(step, Start):
                    call = calls[step.kind]
                    tg.start_soon(
                        runner.run, step.task, lambda c=call, k=step.key: c(k)
                    )
                elif isinstance(step, Wake):
                    result = wm.wake(step.key, step.value)
                elif isinstance(step, Store):
                    try:
                        wm[step.key] = step.value
                    except WaitMapClosed:
                        result = "refused"
                    else:
                        result = "stored"
                elif isinstance(step, CancelKey):
                    result = wm.cancel(step.key)
                elif isinstance(step, CancelAll):
                    result = wm.cancel_all()
                elif isinstance(step, Close):
                    wm.close()
                elif isinstance(step, ScopeCancel):
                    runner.cancel(step.task)
                elif isinstance(step, Timeout):
                    runner.expire(step.task)
                else:
                    await runner.settle()
                    result = snapshot(wm)
                results.append(result)
            runner.stop()
    return MapRun(results, runner.endings(), runner.logs, wm._waiting)


def map_steps(events: Sequence[MapEvent]) -> tuple[MapEvent, ...]:
    return with_ending(events, Settle(), Close(), Settle())


def check_map_invariants(steps: Sequence[MapEvent], run: MapRun) -> None:
    """What must hold whatever the model says."""
    starts = {step.task: step for step in steps if isinstance(step, Start)}
    kinds = {task: start.kind for task, start in starts.items()}
    # Values are unique: where each one was handed over or stored.
    given = {
        step.value: (i, step.key)
        for i, step in enumerate(steps)
        if isinstance(step, Wake | Store)
    }
    returned: dict[int, list[str]] = defaultdict(list)
    for task, ending in run.endings.items():
        if isinstance(ending.outcome, Returned):
            returned[ending.outcome.value].append(task)
    final = run.results[-1]
    assert isinstance(final, MapSnapshot)
    stored = dict(final.stored)
    stored_values = set(stored.values())
    for value, tasks in returned.items():
        takers = [task for task in tasks if kinds[task] == "take"]
        assert len(takers) <= 1, f"{value} was taken by {takers}"
        if takers:
            assert value not in stored_values, f"{value} was taken and is stored"
    for index, (step, result) in enumerate(zip(steps, run.results, strict=True)):
        if isinstance(step, Wake):
            got = returned.get(step.value, [])
            if isinstance(result, Woke):
                assert len(got) == result.count, f"{step}: {result}, returned by {got}"
            else:
                assert isinstance(result, NoMatch | Closed)
                assert result.value == step.value
                assert not got, f"{step}: {result}, yet {got} returned it"
            assert step.value not in stored_values
        elif isinstance(step, Store):
            got = returned.get(step.value, [])
            if result == "refused":
                assert not got, f"{step} was refused, yet {got} returned it"
                assert step.value not in stored_values
                continue
            assert result == "stored"
            taken = any(kinds[task] == "take" for task in got)
            replaced = any(
                isinstance(later, Store)
                and later.key == step.key
                and run.results[index + 1 + offset] == "stored"
                for offset, later in enumerate(steps[index + 1 :])
            )
            if not taken and not replaced:
                assert stored.get(step.key) == step.value, f"{step} was lost"
    settle_at = [i for i, step in enumerate(steps) if isinstance(step, Settle)]
    for task, ending in run.endings.items():
        start = next(
            i
            for i, step in enumerate(steps)
            if isinstance(step, Start) and step.task == task
        )
        end = settle_at[ending.settle - 1]
        cancels = [
            i
            for i, step in enumerate(steps)
            if isinstance(step, ScopeCancel | Timeout) and step.task == task
        ]
        outcome = ending.outcome
        if isinstance(outcome, Returned):
            origin = given.get(outcome.value)
            assert origin is not None, f"{task} returned {outcome.value} from nowhere"
            assert origin[0] < end, f"{task} returned {outcome.value} too early"
            assert origin[1] == starts[task].key, f"{task} got another key's value"
        if is_cancelled(outcome):
            assert any(i < end for i in cancels), f"{task} ended {outcome} uncancelled"
        elif any(i < end for i in cancels):
            raise AssertionError(f"{task}'s cancellation was lost: {outcome}")
        if isinstance(outcome, Raised):
            error = outcome.error
            if error.startswith("KeyCancelled"):
                assert any(
                    start < i < end
                    and (
                        isinstance(step, CancelAll)
                        or (
                            isinstance(step, CancelKey)
                            and error == f"KeyCancelled({step.key!r})"
                        )
                    )
                    for i, step in enumerate(steps)
                ), f"{task} raised {error}"
            elif error == "WaitMapClosed":
                assert any(isinstance(step, Close) for step in steps[:end])
            else:
                assert error == "DuplicateWaiter", f"{task} raised {error}"
    assert final.tasks_waiting == 0
    assert final.keys_waiting == 0
    assert run.waiting_left == {}, f"left behind: {run.waiting_left!r}"


async def explore_map(
    events: Sequence[MapEvent], *, exclusive: bool, seen: set[str] | None = None
) -> None:
    steps = map_steps(events)
    run = await run_map(steps, exclusive=exclusive)
    check_log(steps, run.logs)
    model = MapModel(exclusive=exclusive, trio=in_trio_task())
    try:
        expected = model.replay(steps, run.logs)
    except AssertionError as exc:
        raise AssertionError(
            f"the run cannot be replayed by the model: {exc}\n{describe(steps)}\n"
            f"results: {run.results}\nendings: {run.endings}\nlog: {run.logs}"
        ) from None
    compare(steps, run.results, expected, run.endings, model.endings, run.logs)
    try:
        check_map_invariants(steps, run)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nin the run: {describe(steps)}") from None
    if seen is not None:
        seen.update(label(result) for result in run.results if result is not None)
        seen.update(label(ending) for ending in run.endings.values())


@pytest.mark.parametrize("how", ["scope", "deadline"])
async def test_an_exception_handed_over_before_a_cancellation_is_raised(
    how: str,
) -> None:
    """``cancel(key)`` right after the waiter's cancellation, before it could run.

    ``cancel()`` counts the waiter as one that raises ``KeyCancelled``, so it must,
    and the cancellation comes at its next checkpoint, as it does after a value.
    (On trio, cancelling the scope aborts the wait at once, and the count is 0.)
    """
    wm: WaitMap[str, int] = WaitMap()
    scope = anyio.CancelScope()
    raised: list[str] = []

    async def waiter() -> None:
        with scope:
            try:
                await wm.wait("k")
            except KeyCancelled:
                raised.append("KeyCancelled")
            await anyio.lowlevel.checkpoint()
            raised.append("not cancelled")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        if how == "scope":
            scope.cancel()
        else:
            scope.deadline = anyio.current_time() - 1
        count = wm.cancel("k")
    assert raised == ["KeyCancelled"] * count, f"cancel() returned {count}"
    assert scope.cancelled_caught


# -- WaitMap: the explorations ---------------------------------------------------


MAP_EVENT_SETS: Final[dict[str, EventSet]] = {
    "two takers, a store, the first one's scope cancelled": EventSet(
        (Start("A", "take"), Start("B", "take"), Store("k", 1), ScopeCancel("A")),
        frozenset({"returned", "returned, then cancelled", "cancelled"}),
    ),
    "a waiter, a wake, its deadline, close": EventSet(
        (Start("A", "wait"), Wake("k", 1), Timeout("A"), Close()),
        frozenset(
            {
                "returned, then cancelled",
                "cancelled",
                "raised WaitMapClosed",
                "raised WaitMapClosed, then cancelled",
                "Woke",
                "NoMatch",
                "Closed",
            }
        ),
    ),
    "wait_for: a rejected wake, a matching store, cancel(key)": EventSet(
        (Start("A", "wait_for"), Wake("k", 1), Store("k", 2), CancelKey("k")),
        frozenset({"returned", "raised KeyCancelled", "NoMatch"}),
    ),
    "a taker, a wake, cancel(key), its scope cancelled": EventSet(
        (Start("A", "take"), Wake("k", 1), CancelKey("k"), ScopeCancel("A")),
        frozenset(
            {
                "returned",
                "returned, then cancelled",
                "raised KeyCancelled",
                "raised KeyCancelled, then cancelled",
                "cancelled",
            }
        ),
    ),
    "a wake for one waiter and the first of two takers": EventSet(
        (Start("A", "wait"), Start("B", "take"), Start("C", "take"), Wake("k", 1)),
        frozenset({"returned", "raised WaitMapClosed", "Woke", "NoMatch"}),
    ),
    "a taker, two stores, its deadline": EventSet(
        (Start("A", "take"), Store("k", 1), Store("k", 2), Timeout("A")),
        frozenset({"returned", "returned, then cancelled", "cancelled"}),
    ),
    "wait_for, a matching wake, its scope cancelled, cancel_all": EventSet(
        (Start("A", "wait_for"), Wake("k", 2), ScopeCancel("A"), CancelAll()),
        frozenset(
            {"returned", "returned, then cancelled", "raised KeyCancelled", "cancelled"}
        ),
    ),
    "a taker, a store, close, its scope cancelled": EventSet(
        (Start("A", "take"), Store("k", 1), Close(), ScopeCancel("A")),
        frozenset(
            {
                "returned",
                "returned, then cancelled",
                "raised WaitMapClosed",
                "cancelled",
            }
        ),
    ),
    "two keys: a waiter, a taker, a store, cancel_all": EventSet(
        (Start("A", "wait"), Start("B", "take", "j"), Store("j", 1), CancelAll()),
        frozenset({"returned", "raised KeyCancelled"}),
    ),
    "a stored value and wait_for: store odd, wake even": EventSet(
        (Start("A", "wait"), Start("B", "wait_for"), Store("k", 1), Wake("k", 2)),
        frozenset({"returned", "raised WaitMapClosed", "Woke", "NoMatch"}),
    ),
    "a stored value, a waiter and a wait_for, the waiter's scope cancelled": EventSet(
        (Store("k", 2), Start("A", "wait"), Start("B", "wait_for"), ScopeCancel("A")),
        frozenset({"returned", "returned, then cancelled", "cancelled"}),
    ),
    "a waiter and a taker, cancel(key), the taker's scope cancelled": EventSet(
        (Start("A", "wait"), Start("B", "take"), CancelKey("k"), ScopeCancel("B")),
        frozenset(
            {
                "raised KeyCancelled",
                "raised KeyCancelled, then cancelled",
                "cancelled",
            }
        ),
    ),
    "exclusive: two waiters, a wake, the first one's scope cancelled": EventSet(
        (Start("A", "wait"), Start("B", "wait"), Wake("k", 1), ScopeCancel("A")),
        frozenset({"returned", "raised DuplicateWaiter", "cancelled"}),
        exclusive=True,
    ),
}


@pytest.mark.parametrize("name", list(MAP_EVENT_SETS))
async def test_every_ordering_of_waitmap_events(name: str) -> None:
    event_set = MAP_EVENT_SETS[name]
    seen: set[str] = set()
    count = 0
    for steps in orderings(event_set.events, Settle()):
        await explore_map(
            steps,  # type: ignore[arg-type]
            exclusive=event_set.exclusive,
            seen=seen,
        )
        count += 1
    assert count == 24 * 8
    missing = event_set.reaches - seen
    assert not missing, f"no ordering reached {sorted(missing)}; seen: {sorted(seen)}"


@st.composite
def map_sequences(draw: st.DrawFn) -> tuple[MapEvent, ...]:
    """5 to 10 events on two keys, with up to 4 tasks; values are unique."""
    events: list[MapEvent] = []
    tasks: list[str] = []
    size = draw(st.integers(min_value=5, max_value=10))
    keys = st.sampled_from(["k", "k", "j"])
    choices = st.sampled_from(
        ["start"] * 4
        + ["wake"] * 2
        + ["store"] * 2
        + ["cancel", "cancel_all", "close", "scope", "scope", "timeout"]
        + ["settle"] * 4
    )
    references: list[tuple[int, int, bool]] = []
    while len(events) < size:
        choice = draw(choices)
        position = len(events)
        value = 10 * (position + 1) + draw(st.integers(min_value=0, max_value=1))
        if choice == "start" and len(tasks) < 4:
            tasks.append(f"T{len(tasks)}")
            kind: Kind = draw(st.sampled_from(["wait", "take", "wait_for"]))
            events.append(Start(tasks[-1], kind, draw(keys)))
        elif choice == "wake":
            events.append(Wake(draw(keys), value))
        elif choice == "store":
            events.append(Store(draw(keys), value))
        elif choice == "cancel":
            events.append(CancelKey(draw(keys)))
        elif choice == "cancel_all":
            events.append(CancelAll())
        elif choice == "close":
            events.append(Close())
        elif choice in ("scope", "timeout"):
            # Which task is decided once all are known: it may start later.
            index = draw(st.integers(min_value=0, max_value=3))
            references.append((position, index, choice == "scope"))
            events.append(Settle())
        else:
            events.append(Settle())
    for position, index, by_scope in references:
        if tasks:
            task = tasks[index % len(tasks)]
            events[position] = ScopeCancel(task) if by_scope else Timeout(task)
    return tuple(events)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=map_sequences(), exclusive=st.booleans())
async def test_random_waitmap_sequences(
    events: tuple[MapEvent, ...], exclusive: bool
) -> None:
    await explore_map(events, exclusive=exclusive)
