"""The explorer of every ordering of a few events, checked against a model.

Shared by tests/waitmap/test_map_interleavings.py (WaitMap) and
tests/sink/test_sink_interleavings.py (WakeSink), which hold the models: the
events, what a task's call can end with, and the runner of a run's tasks.

One driver task performs a short sequence of events in one event loop: it
starts tasks (each in a cancel scope of its own), acts on the object, cancels
one task's scope or moves its deadline into the past, and *settles* (lets every
task run until all are blocked again). Between two events with no settle
between them, no other task runs: that is where the races are.

The exhaustive tests run every permutation of a few small event sets
(:class:`EventSet`), each with and without a settle between any two events
(:func:`orderings`); hypothesis draws longer sequences. The trace of a run (what
every call returned, the object's state at every settle, how every task ended
and in which settle) must equal the one that a small model in plain Python
predicts (:func:`compare`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeAlias, TypeVar

import anyio
import anyio.lowlevel
from trio.lowlevel import in_trio_task

from anyio_waitmap import KeyCancelled

#: A bound on one run; a run takes a few milliseconds.
RUN_TIMEOUT: Final = 10.0
#: How many consecutive quiet rounds make an asyncio settle (see settle()).
QUIET_ROUNDS: Final = 3
SETTLE_ROUNDS: Final = 1000
#: Examples per hypothesis test and backend (derandomized: the same every time).
MAX_EXAMPLES: Final = 200

T = TypeVar("T")


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


# -- the explorations ------------------------------------------------------------


@dataclass(frozen=True)
class EventSet:
    events: tuple[object, ...]
    #: What the exploration of every ordering must have reached at least once.
    reaches: frozenset[str]
    exclusive: bool = False
