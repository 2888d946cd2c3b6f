"""Every ordering of a few WaitMap and WakeSink events, checked against a model.

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

The WakeSink tests do the same with consumers in ``wait_until(pop)`` (``pop``
takes the oldest queued item), items queued with or without a notification,
``close()`` and scope cancellations: every item is returned once or stays
queued, and a parked consumer never missed a notification that came after an
item was queued, nor registered while one was there.

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
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.lowlevel import in_trio_task

from anyio_waitmap import (
    Closed,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeOutcome,
    WakeSink,
    Woke,
)

pytestmark = pytest.mark.anyio

#: A bound on one run; a run takes a few milliseconds.
RUN_TIMEOUT: Final = 10.0
#: How many consecutive quiet rounds make an asyncio settle (see settle()).
QUIET_ROUNDS: Final = 3
SETTLE_ROUNDS: Final = 1000
#: Examples per hypothesis test and backend (derandomized: the same every time).
MAX_EXAMPLES: Final = 200

T = TypeVar("T")


def is_even(value: int) -> bool:
    return value % 2 == 0


# -- events ----------------------------------------------------------------------

Kind: TypeAlias = Literal["wait", "take", "wait_for"]


@dataclass(frozen=True)
class Start:
    """Start a task that waits on ``key`` (``wait_for`` with :func:`is_even`)."""

    task: str
    kind: Kind
    key: str = "k"

    def __str__(self) -> str:
        extra = ", is_even" if self.kind == "wait_for" else ""
        return f"{self.task} = {self.kind}({self.key!r}{extra})"


@dataclass(frozen=True)
class Wake:
    key: str
    value: int

    def __str__(self) -> str:
        return f"wake({self.key!r}, {self.value})"


@dataclass(frozen=True)
class Store:
    key: str
    value: int

    def __str__(self) -> str:
        return f"wm[{self.key!r}] = {self.value}"


@dataclass(frozen=True)
class CancelKey:
    key: str

    def __str__(self) -> str:
        return f"cancel({self.key!r})"


@dataclass(frozen=True)
class CancelAll:
    def __str__(self) -> str:
        return "cancel_all()"


@dataclass(frozen=True)
class Close:
    def __str__(self) -> str:
        return "close()"


@dataclass(frozen=True)
class ScopeCancel:
    """``scope.cancel()`` for the scope of one task (started or not yet)."""

    task: str

    def __str__(self) -> str:
        return f"cancel {self.task}'s scope"


@dataclass(frozen=True)
class Timeout:
    """Move the deadline of one task's scope into the past."""

    task: str

    def __str__(self) -> str:
        return f"{self.task}'s deadline passes"


@dataclass(frozen=True)
class Settle:
    def __str__(self) -> str:
        return "settle"


@dataclass(frozen=True)
class Consume:
    """Start a task in ``sink.wait_until(pop)``: it takes the oldest queued item."""

    task: str

    def __str__(self) -> str:
        return f"{self.task} = wait_until(pop)"


@dataclass(frozen=True)
class Produce:
    """Queue an item without notifying: the state changes, nobody is told."""

    value: int

    def __str__(self) -> str:
        return f"queue {self.value}"


@dataclass(frozen=True)
class Notify:
    def __str__(self) -> str:
        return "notify()"


@dataclass(frozen=True)
class Send:
    """Queue an item, then notify: what a producer does."""

    value: int

    def __str__(self) -> str:
        return f"queue {self.value}; notify()"


@dataclass(frozen=True)
class CloseSink:
    def __str__(self) -> str:
        return "close()"


MapEvent: TypeAlias = (
    Start
    | Wake
    | Store
    | CancelKey
    | CancelAll
    | Close
    | ScopeCancel
    | Timeout
    | Settle
)
SinkEvent: TypeAlias = (
    Consume | Produce | Notify | Send | CloseSink | ScopeCancel | Settle
)
#: What each task logs: ("start", task) when it first runs, ("end", task) when its
#: call returned or raised. One list per settle.
Log: TypeAlias = list[tuple[str, str]]


def describe(steps: Sequence[object]) -> str:
    return "; ".join(str(step) for step in steps)


def with_ending(steps: Sequence[T], *tail: T) -> tuple[T, ...]:
    """The steps of a run: the events, then a settle, the cleanup, a settle."""
    return (*steps, *tail)


def orderings(events: Sequence[T], settle: T) -> Iterator[tuple[T, ...]]:
    """Every permutation of ``events``, with or without a settle in each gap."""
    for permutation in itertools.permutations(events):
        for gaps in itertools.product((False, True), repeat=len(permutation) - 1):
            steps = [permutation[0]]
            for event, gap in zip(permutation[1:], gaps, strict=True):
                if gap:
                    steps.append(settle)
                steps.append(event)
            yield tuple(steps)


# -- what tasks return -----------------------------------------------------------


@dataclass(frozen=True)
class Returned:
    value: int
    #: Whether the checkpoint right after the call raised a cancellation.
    then_cancelled: bool = False


@dataclass(frozen=True)
class Raised:
    error: str
    then_cancelled: bool = False


@dataclass(frozen=True)
class Cancelled:
    """The call itself raised the cancellation: nothing was handed over."""


Outcome: TypeAlias = Returned | Raised | Cancelled
CANCELLED: Final = Cancelled()


@dataclass(frozen=True)
class Ending:
    outcome: Outcome
    #: The settle during which the call ended (1 for the first settle of the run).
    settle: int


def error_name(exc: BaseException) -> str:
    if isinstance(exc, KeyCancelled):
        return f"KeyCancelled({exc.key!r})"
    return type(exc).__name__


def finish(outcome: Outcome, cancelled: bool) -> Outcome:
    """The outcome of a call that ended, given whether the scope is cancelled."""
    if isinstance(outcome, Cancelled):
        return outcome
    return replace(outcome, then_cancelled=cancelled)


def is_cancelled(outcome: Outcome) -> bool:
    """Whether the task saw its cancellation (in the call or right after)."""
    return isinstance(outcome, Cancelled) or outcome.then_cancelled


def label(result: object) -> str:
    """A coarse name for what happened, to check what the exploration reached."""
    if isinstance(result, Ending):
        outcome = result.outcome
        if isinstance(outcome, Cancelled):
            return "cancelled"
        then = ", then cancelled" if outcome.then_cancelled else ""
        if isinstance(outcome, Returned):
            return f"returned{then}"
        return f"raised {outcome.error.partition('(')[0]}{then}"
    return type(result).__name__


# -- running tasks ---------------------------------------------------------------


async def settle() -> None:
    """Let every task run until each one is blocked.

    On trio, :func:`anyio.wait_all_tasks_blocked`. On asyncio that function
    sleeps for 0.1 s whenever a task is still runnable, far too slow for
    thousands of runs, so the same check is made after every loop iteration. A
    few quiet iterations in a row are required, so that a callback already queued
    (anyio delivers a cancellation through ``call_soon``) has run too.
    """
    if in_trio_task():
        await anyio.wait_all_tasks_blocked()
        return
    this_task = asyncio.current_task()
    quiet = 0
    for _ in range(SETTLE_ROUNDS):
        await anyio.lowlevel.checkpoint()
        blocked = True
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this_task and (waiter is None or waiter.done()):
                blocked = False
                break
        quiet = quiet + 1 if blocked else 0
        if quiet == QUIET_ROUNDS:
            return
    raise AssertionError("the tasks did not settle")


@dataclass
class TaskRecord:
    ending: Ending | None = None
    cancelled_caught: bool = False


@dataclass
class Runner:
    """Runs the tasks of one run, each in its own cancel scope, and logs them."""

    scopes: dict[str, anyio.CancelScope]
    records: dict[str, TaskRecord] = field(default_factory=dict)
    log: Log = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)
    settles: int = 0

    @classmethod
    def for_tasks(cls, tasks: Sequence[str]) -> Runner:
        runner = cls({task: anyio.CancelScope() for task in tasks})
        runner.records = {task: TaskRecord() for task in tasks}
        return runner

    async def run(self, task: str, call: Callable[[], Awaitable[int]]) -> None:
        """Record exactly what ``call()`` returns or raises, and whether the
        checkpoint after it raises the cancellation."""
        record = self.records[task]
        cancelled = anyio.get_cancelled_exc_class()
        outcome: Outcome
        with self.scopes[task] as scope:
            self.log.append(("start", task))
            try:
                value = await call()
            except cancelled:
                self.log.append(("end", task))
                record.ending = Ending(CANCELLED, self.settles)
                raise
            except Exception as exc:
                outcome = Raised(error_name(exc))
            else:
                outcome = Returned(value)
            self.log.append(("end", task))
            record.ending = Ending(finish(outcome, True), self.settles)
            await anyio.lowlevel.checkpoint()
            record.ending = Ending(outcome, self.settles)
        record.cancelled_caught = scope.cancelled_caught

    def cancel(self, task: str) -> None:
        self.scopes[task].cancel()

    def stop(self) -> None:
        """Cancel every task, so that one left waiting by a bug cannot hang the
        run; it then ends cancelled, and the comparison with the model fails."""
        for scope in self.scopes.values():
            scope.cancel()

    def expire(self, task: str) -> None:
        self.scopes[task].deadline = anyio.current_time() - 1

    async def settle(self) -> None:
        self.settles += 1
        start = len(self.log)
        await settle()
        self.logs.append(self.log[start:])

    def endings(self) -> dict[str, Ending]:
        endings: dict[str, Ending] = {}
        for task, record in self.records.items():
            assert record.ending is not None, f"{task} never ended"
            endings[task] = record.ending
            assert record.cancelled_caught == is_cancelled(record.ending.outcome), (
                f"{task}: the scope caught a cancellation: {record.cancelled_caught}, "
                f"but the task ended with {record.ending.outcome}"
            )
        return endings


def check_log(steps: Sequence[object], logs: Sequence[Log]) -> None:
    """On asyncio, new tasks first run in the order they were started."""
    if in_trio_task():
        return
    started = [
        task for what, task in itertools.chain.from_iterable(logs) if what == "start"
    ]
    in_order = [step.task for step in steps if isinstance(step, Start | Consume)]
    assert started == in_order, f"tasks first ran in the order {started}"


def compare(
    steps: Sequence[object],
    actual: Sequence[object],
    expected: Sequence[object],
    actual_endings: dict[str, Ending],
    expected_endings: dict[str, Ending],
    logs: Sequence[Log],
) -> None:
    if list(actual) == list(expected) and actual_endings == expected_endings:
        return
    lines = [f"the run differs from the model: {describe(steps)}"]
    for step, got, want in zip(steps, actual, expected, strict=True):
        if got == want:
            lines.append(f"  {step}: {got!r}")
        else:
            lines.append(f"! {step}: {got!r}, the model says {want!r}")
    for task in sorted(set(actual_endings) | set(expected_endings)):
        got_ending = actual_endings.get(task)
        want_ending = expected_endings.get(task)
        mark = "  " if got_ending == want_ending else "! "
        lines.append(f"{mark}{task} ended: {got_ending} (model: {want_ending})")
    lines.append(f"task log per settle: {list(logs)}")
    raise AssertionError("\n".join(lines))


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


@dataclass(frozen=True)
class EventSet:
    events: tuple[object, ...]
    #: What the exploration of every ordering must have reached at least once.
    reaches: frozenset[str]
    exclusive: bool = False


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
