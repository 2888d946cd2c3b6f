"""Stateful tests: one WaitMap driven against a plain Python model.

Waiting tasks run in a real event loop in a background thread (a blocking portal),
one per state-machine run, on asyncio, asyncio with uvloop and trio. The test
thread is the "any thread" that stores, wakes, cancels and closes. After every
step the machine waits (with a deadline) until every task whose fate the model
decided has finished, lets the loop settle, and then compares the tasks'
outcomes, ``wake()``'s results, the stored values and ``statistics()`` with the
model.

Rules: start wait/take/wait_for tasks; store (``[]=``, also from the loop thread,
``setdefault``, ``update``); ``wake`` (either thread); ``cancel``; ``cancel_all``;
``close``; remove stored values; unhashable keys; cancel a parked task (portal
future or ``Task.cancel()``); cancel right after a hand-over (no lost value, and the
cancellation comes at the next checkpoint); cancel right before a hand-over in the
same loop tick. Teardown ends every wait and checks nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias, cast

import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from anyio_waitmap import (
    Closed,
    DuplicateWaiter,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WaitMapStatistics,
    WakeOutcome,
    Woke,
)

pytestmark = [pytest.mark.model, pytest.mark.threads]


class Deadline:
    """How long to wait for something the model says must happen at once.

    Generous until a wait times out once; then short, so that shrinking a failure
    (which replays it many times) fits in the per-test timeout.
    """

    seconds: ClassVar[float] = 5.0

    @classmethod
    def expired(cls) -> None:
        cls.seconds = 0.5


KEY_DOMAIN = range(3)
keys = st.sampled_from(KEY_DOMAIN)
values = st.integers(min_value=0, max_value=3)


# -- wait_for() predicates ------------------------------------------------------------


def is_even(value: int) -> bool:
    return value % 2 == 0


def is_positive(value: int) -> bool:
    return value > 0


def even_refusing_three(value: int) -> bool:
    """Raises for 3: the waiter's wait_for() must raise it, nobody else."""
    if value == 3:
        raise ValueError("the predicate refuses 3")
    return value % 2 == 0


Predicate: TypeAlias = Callable[[int], bool]
predicates = st.sampled_from([is_even, is_positive, even_refusing_three])


# -- outcomes of a waiting task ------------------------------------------------------


@dataclass(frozen=True)
class Returned:
    value: int
    #: Whether the task's next checkpoint raised a cancellation (None: the model
    #: cannot tell, the cancellation raced with the task's resumption).
    then_cancelled: bool | None = False


@dataclass(frozen=True)
class Raised:
    exc_type: type[BaseException]
    #: The key of a KeyCancelled, the message of a predicate's ValueError.
    detail: object = None


@dataclass(frozen=True)
class WasCancelled:
    """The task was cancelled before anything was handed over to it."""


Outcome: TypeAlias = Returned | Raised | WasCancelled


@dataclass(frozen=True)
class OneOf:
    """Either outcome is right (the contract leaves the choice to the backend)."""

    options: tuple[Outcome, ...]


Expected: TypeAlias = Outcome | OneOf


def agrees(actual: Outcome | None, expected: Expected) -> bool:
    if isinstance(expected, OneOf):
        return any(agrees(actual, option) for option in expected.options)
    if (
        isinstance(expected, Returned)
        and expected.then_cancelled is None
        and isinstance(actual, Returned)
    ):
        return actual.value == expected.value
    return actual == expected


def describe(exc: Exception) -> Raised:
    if isinstance(exc, KeyCancelled):
        return Raised(KeyCancelled, exc.key)
    if isinstance(exc, ValueError):
        return Raised(ValueError, str(exc))
    return Raised(type(exc))


Kind: TypeAlias = Literal["wait", "take", "wait_for"]
StoreMethod: TypeAlias = Literal[
    "setitem", "setitem in loop thread", "setdefault", "update"
]
store_methods = st.sampled_from(
    ["setitem", "setitem in loop thread", "setdefault", "update"]
)
#: Synchronous calls with an unhashable ``key``: each must raise TypeError.
UnhashableKeyCall: TypeAlias = Callable[[WaitMap[object, int], object, int], object]
UNHASHABLE_KEY_CALLS: dict[str, UnhashableKeyCall] = {
    "wm[key] = value": lambda wm, key, value: wm.__setitem__(key, value),
    "wm.setdefault(key, value)": lambda wm, key, value: wm.setdefault(key, value),
    "wm.update([(key, value)])": lambda wm, key, value: wm.update([(key, value)]),
    "wm.wake(key, value)": lambda wm, key, value: wm.wake(key, value),
    "wm.cancel(key)": lambda wm, key, value: wm.cancel(key),
    "wm.pop(key, None)": lambda wm, key, value: wm.pop(key, None),
    "del wm[key]": lambda wm, key, value: wm.__delitem__(key),
    "wm.get(key)": lambda wm, key, value: wm.get(key),
    "key in wm": lambda wm, key, value: key in wm,
}


@dataclass(eq=False)
class Waiter:
    """One task started in the portal, with what the model expects of it."""

    ident: int
    kind: Kind
    key: int
    predicate: Predicate | None
    #: Set by the task (in the loop thread) when it leaves, after ``outcome``.
    finished: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    #: What the model says the task returns or raises; None while it is parked.
    expected: Expected | None = None
    verified: bool = False
    #: Cancels the task through the portal (from the test thread).
    future: Future[None] | None = None
    #: Cancels the task from the loop thread: ``Task.cancel`` on asyncio, a cancel
    #: scope around the wait on trio. Set by the task when it starts.
    cancel_in_loop: Callable[[], object] | None = None

    def __repr__(self) -> str:
        what = f"{self.kind}({self.key}"
        if self.predicate is not None:
            what += f", {self.predicate.__name__}"
        return f"<waiter #{self.ident} {what})>"


async def settle() -> None:
    """Let every task that can run, run (used after the expected ones finished)."""
    await anyio.wait_all_tasks_blocked()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + Deadline.seconds
    while not condition():
        if time.monotonic() > deadline:
            Deadline.expired()
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.00005)


# -- the machine ---------------------------------------------------------------------


class WaitMapMachine(RuleBasedStateMachine):
    backend: ClassVar[str] = "asyncio"
    backend_options: ClassVar[Mapping[str, object]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(
            start_blocking_portal(self.backend, dict(self.backend_options))
        )
        self.wm: WaitMap[int, int] = WaitMap()
        self.exclusive = False
        # The model.
        self.data: dict[int, int] = {}
        self.parked: dict[int, list[Waiter]] = {}
        self.closed = False
        self.waiters: list[Waiter] = []
        # False from the start of a step until the checks after it passed: then the
        # model may be out of step with the map, and teardown only cleans up.
        self.consistent = True

    # -- the model's helpers ---------------------------------------------------------

    def step(self) -> None:
        self.consistent = False

    def tasks_waiting(self) -> int:
        return sum(len(queue) for queue in self.parked.values())

    def parked_waiters(self) -> list[Waiter]:
        return [waiter for queue in self.parked.values() for waiter in queue]

    def resolve(self, waiter: Waiter, outcome: Outcome) -> None:
        assert waiter.expected is None
        waiter.expected = outcome

    def unpark(self, key: int) -> list[Waiter]:
        return self.parked.pop(key, [])

    def unlink(self, waiter: Waiter) -> None:
        queue = self.parked[waiter.key]
        queue.remove(waiter)
        if not queue:
            del self.parked[waiter.key]

    def dispatch(self, key: int, value: int) -> tuple[list[Waiter], bool]:
        """Model handing ``value`` to the parked waiters of ``key``.

        Returns the waiters that receive it, and whether a taker consumed it.
        """
        receivers: list[Waiter] = []
        remaining: list[Waiter] = []
        taken = False
        for waiter in self.parked.get(key, []):
            if waiter.kind == "take":
                if taken:
                    remaining.append(waiter)
                    continue
                taken = True
            elif waiter.kind == "wait_for":
                assert waiter.predicate is not None
                try:
                    matched = waiter.predicate(value)
                except ValueError as exc:
                    self.resolve(waiter, describe(exc))
                    continue
                if not matched:
                    remaining.append(waiter)
                    continue
            receivers.append(waiter)
            self.resolve(waiter, Returned(value))
        if remaining:
            self.parked[key] = remaining
        else:
            self.parked.pop(key, None)
        return receivers, taken

    def model_store(self, key: int, value: int) -> None:
        """Model ``wm[key] = value`` on an open map."""
        _, taken = self.dispatch(key, value)
        if not taken:
            self.data[key] = value

    # -- the tasks -------------------------------------------------------------------

    async def run_waiter(self, waiter: Waiter) -> None:
        cancelled = anyio.get_cancelled_exc_class()
        with anyio.CancelScope() as scope:
            if self.backend == "asyncio":
                task = asyncio.current_task()
                assert task is not None
                waiter.cancel_in_loop = task.cancel
            else:
                waiter.cancel_in_loop = scope.cancel
            try:
                if waiter.kind == "wait":
                    value = await self.wm.wait(waiter.key)
                elif waiter.kind == "take":
                    value = await self.wm.take(waiter.key)
                else:
                    assert waiter.predicate is not None
                    value = await self.wm.wait_for(waiter.key, waiter.predicate)
            except cancelled:
                waiter.outcome = WasCancelled()
                raise
            except Exception as exc:
                waiter.outcome = describe(exc)
                # A cancellation that arrived after the exception was handed
                # over is raised at the next checkpoint; swallowed as below.
                with contextlib.suppress(cancelled):
                    await anyio.lowlevel.checkpoint()
            else:
                waiter.outcome = Returned(value)
                # A cancellation that arrived after the hand-over must be raised
                # here, at the next checkpoint.
                try:
                    await anyio.lowlevel.checkpoint()
                except cancelled:
                    waiter.outcome = Returned(value, then_cancelled=True)
                    # Swallowed on purpose: a task that ends cancelled by
                    # Task.cancel() would make the portal's task group cancel
                    # every other task (and the portal itself).
            finally:
                waiter.finished.set()

    def start(self, kind: Kind, key: int, predicate: Predicate | None = None) -> None:
        self.step()
        waiter = Waiter(len(self.waiters), kind, key, predicate)
        self.waiters.append(waiter)
        if self.closed:
            self.resolve(waiter, Raised(WaitMapClosed))
        elif kind == "wait" and key in self.data:
            self.resolve(waiter, Returned(self.data[key]))
        elif kind == "take" and key in self.data:
            self.resolve(waiter, Returned(self.data.pop(key)))
        elif kind == "wait_for" and key in self.data:
            assert predicate is not None
            try:
                if predicate(self.data[key]):
                    self.resolve(waiter, Returned(self.data[key]))
            except ValueError as exc:
                self.resolve(waiter, describe(exc))
        if waiter.expected is None:
            if self.exclusive and self.parked.get(key):
                self.resolve(waiter, Raised(DuplicateWaiter))
            else:
                self.parked.setdefault(key, []).append(waiter)

        waiter.future = self.portal.start_task_soon(
            self.run_waiter, waiter, name=repr(waiter)
        )
        if waiter.expected is None:
            # Wait until it is parked, so that what follows happens after.
            expected = self.tasks_waiting()
            wait_until(
                lambda: (
                    waiter.finished.is_set()
                    or self.wm.statistics().tasks_waiting >= expected
                ),
                f"{waiter} is parked",
            )
        # Otherwise the checks after this step wait until it finished.

    # -- rules -----------------------------------------------------------------------

    @initialize(exclusive=st.sampled_from([False, False, True]))
    def create_map(self, exclusive: bool) -> None:
        self.step()
        self.exclusive = exclusive
        self.wm = WaitMap(exclusive=exclusive)
        assert self.wm.exclusive is exclusive

    @rule(key=keys)
    def start_wait(self, key: int) -> None:
        self.start("wait", key)

    @rule(key=keys)
    def start_take(self, key: int) -> None:
        self.start("take", key)

    @rule(key=keys, predicate=predicates)
    def start_wait_for(self, key: int, predicate: Predicate) -> None:
        self.start("wait_for", key, predicate)

    @rule(key=keys, value=values, how=store_methods)
    def store(self, key: int, value: int, how: StoreMethod) -> None:
        """Store through one of the ways of storing (all take the same path)."""
        self.step()
        if how == "setdefault" and key in self.data:
            # Returns the stored value, even on a closed map; stores nothing.
            assert self.wm.setdefault(key, value) == self.data[key]
            return
        if self.closed:
            with pytest.raises(WaitMapClosed):
                self.store_into_map(key, value, how)
            return
        self.model_store(key, value)
        self.store_into_map(key, value, how)

    def store_into_map(self, key: int, value: int, how: StoreMethod) -> None:
        if how == "setitem":
            self.wm[key] = value
        elif how == "setitem in loop thread":
            self.portal.call(self.wm.__setitem__, key, value)
        elif how == "setdefault":
            assert self.wm.setdefault(key, value) == value
        else:
            self.wm.update({key: value})

    @rule(key=keys, value=values, in_loop_thread=st.booleans())
    def wake(self, key: int, value: int, in_loop_thread: bool) -> None:
        self.step()
        expected: WakeOutcome[int]
        if self.closed:
            expected = Closed(value)
        else:
            receivers, _ = self.dispatch(key, value)
            expected = Woke(len(receivers)) if receivers else NoMatch(value)
        if in_loop_thread:
            outcome = self.portal.call(self.wm.wake, key, value)
        else:
            outcome = self.wm.wake(key, value)
        assert outcome == expected
        assert bool(outcome) is isinstance(expected, Woke)

    @rule(key=keys)
    def cancel_key(self, key: int) -> None:
        self.step()
        cancelled = self.unpark(key)
        for waiter in cancelled:
            self.resolve(waiter, Raised(KeyCancelled, key))
        assert self.wm.cancel(key) == len(cancelled)

    @rule()
    def cancel_all(self) -> None:
        self.step()
        count = 0
        for key in list(self.parked):
            for waiter in self.unpark(key):
                self.resolve(waiter, Raised(KeyCancelled, key))
                count += 1
        assert self.wm.cancel_all() == count

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.step()
        for key in list(self.parked):
            for waiter in self.unpark(key):
                self.resolve(waiter, Raised(WaitMapClosed))
        self.closed = True
        self.wm.close()
        assert self.wm.closed

    @rule(key=keys, how=st.sampled_from(["del", "pop", "clear"]))
    def remove(self, key: int, how: Literal["del", "pop", "clear"]) -> None:
        """Remove stored values (works on a closed map too)."""
        self.step()
        if how == "clear":
            self.data.clear()
            self.wm.clear()
        elif how == "pop":
            assert self.wm.pop(key, None) == self.data.pop(key, None)
        elif key in self.data:
            del self.data[key]
            del self.wm[key]
        else:
            with pytest.raises(KeyError):
                del self.wm[key]

    @rule(call=st.sampled_from(sorted(UNHASHABLE_KEY_CALLS)), value=values)
    def unhashable_key(self, call: str, value: int) -> None:
        """An unhashable key raises TypeError at the call and changes nothing."""
        self.step()
        function = UNHASHABLE_KEY_CALLS[call]
        with pytest.raises(TypeError):
            function(cast("WaitMap[object, int]", self.wm), [value], value)

    @precondition(lambda self: self.tasks_waiting() > 0)
    @rule(index=st.integers(min_value=0, max_value=15), in_loop_thread=st.booleans())
    def cancel_parked_task(self, index: int, in_loop_thread: bool) -> None:
        """Cancel one parked task: it leaves quietly, leaving nothing behind.

        From the test thread by cancelling its portal future (an anyio cancel
        scope), or from the loop thread (``Task.cancel()`` on asyncio).
        """
        self.step()
        parked = self.parked_waiters()
        waiter = parked[index % len(parked)]
        self.unlink(waiter)
        self.resolve(waiter, WasCancelled())
        if in_loop_thread:
            assert waiter.cancel_in_loop is not None
            self.portal.call(waiter.cancel_in_loop)
        else:
            assert waiter.future is not None
            assert waiter.future.cancel()

    @precondition(lambda self: self.tasks_waiting() > 0)
    @rule(
        index=st.integers(min_value=0, max_value=15),
        value=values,
        by_store=st.booleans(),
        in_loop_thread=st.booleans(),
    )
    def hand_over_then_cancel(
        self, index: int, value: int, by_store: bool, in_loop_thread: bool
    ) -> None:
        """Store or wake, then at once cancel every task that received the value.

        The value was handed over first, so each of them must still return it
        (guarantee 2, no lost value); the cancellation comes after. From the test
        thread (wake, then cancel the portal futures), or all in one go in the loop
        thread (wake, then ``Task.cancel()`` on asyncio / a cancel scope on trio,
        before the tasks had a chance to resume).
        """
        self.step()
        parked_keys = sorted(self.parked)
        key = parked_keys[index % len(parked_keys)]
        receivers, taken = self.dispatch(key, value)
        expected: WakeOutcome[int] | None = None
        if by_store:
            if not taken:
                self.data[key] = value
        else:
            expected = Woke(len(receivers)) if receivers else NoMatch(value)

        def hand_over() -> WakeOutcome[int] | None:
            if by_store:
                self.wm[key] = value
                return None
            return self.wm.wake(key, value)

        def hand_over_and_cancel() -> WakeOutcome[int] | None:
            outcome = hand_over()
            for waiter in receivers:
                assert waiter.cancel_in_loop is not None
                waiter.cancel_in_loop()
            return outcome

        if in_loop_thread:
            # Deterministic: the tasks are cancelled before they could resume.
            for waiter in receivers:
                waiter.expected = Returned(value, then_cancelled=True)
            outcome = self.portal.call(hand_over_and_cancel)
        else:
            # The loop may resume a task before its future is cancelled.
            for waiter in receivers:
                waiter.expected = Returned(value, then_cancelled=None)
            outcome = hand_over()
            for waiter in receivers:
                assert waiter.future is not None
                waiter.future.cancel()
        assert outcome == expected

    @precondition(lambda self: self.tasks_waiting() > 0)
    @rule(
        index=st.integers(min_value=0, max_value=15),
        value=values,
        by_store=st.booleans(),
    )
    def cancel_then_hand_over(self, index: int, value: int, by_store: bool) -> None:
        """In one go in the loop thread: cancel a parked task, then store or wake.

        The cancellation comes first, and the task leaves with it: on trio,
        cancelling the scope runs the task's abort at once; on asyncio,
        ``Task.cancel()`` cancels the future the task waits on, and the map
        hands nothing to a task whose future is cancelled (it stays registered
        until it runs, then unlinks itself). Either way, nothing is lost or
        left behind, and the value goes to the others.
        """
        self.step()
        parked = self.parked_waiters()
        victim = parked[index % len(parked)]
        key = victim.key
        self.unlink(victim)
        self.resolve(victim, WasCancelled())
        receivers, taken = self.dispatch(key, value)
        if by_store and not taken:
            self.data[key] = value
        expected: WakeOutcome[int] | None = None
        if not by_store:
            expected = Woke(len(receivers)) if receivers else NoMatch(value)

        def cancel_and_hand_over() -> WakeOutcome[int] | None:
            assert victim.cancel_in_loop is not None
            victim.cancel_in_loop()
            if by_store:
                self.wm[key] = value
                return None
            return self.wm.wake(key, value)

        assert self.portal.call(cancel_and_hand_over) == expected

    # -- checks ----------------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        # Every task whose fate is decided finishes, with exactly that outcome.
        for waiter in self.waiters:
            if waiter.expected is None or waiter.verified:
                continue
            if not waiter.finished.wait(Deadline.seconds):
                Deadline.expired()
                raise AssertionError(
                    f"{waiter} should have finished with {waiter.expected}"
                )
            assert agrees(waiter.outcome, waiter.expected), (
                f"{waiter} should have ended with {waiter.expected}, "
                f"not {waiter.outcome}"
            )
            waiter.verified = True
        # Give a task woken by mistake the chance to show it.
        self.portal.start_task_soon(settle).result(timeout=Deadline.seconds)
        for waiter in self.parked_waiters():
            assert not waiter.finished.is_set(), (
                f"{waiter} should still be parked, but it finished: {waiter.outcome}"
            )

        assert dict(self.wm) == self.data
        assert len(self.wm) == len(self.data)
        for key in KEY_DOMAIN:
            assert (key in self.wm) is (key in self.data)
            assert self.wm.get(key) == self.data.get(key)
        assert self.wm.closed is self.closed
        assert self.wm.statistics() == WaitMapStatistics(
            tasks_waiting=self.tasks_waiting(),
            keys_waiting=len(self.parked),
            values_stored=len(self.data),
            closed=self.closed,
        )
        # A key with a stored value has no parked wait() or take(): only wait_for()
        # tasks whose predicate rejects that value.
        for key, queue in self.parked.items():
            assert queue
            if key in self.data:
                for waiter in queue:
                    assert waiter.predicate is not None
                    assert not waiter.predicate(self.data[key])
        self.consistent = True

    def teardown(self) -> None:
        try:
            if self.consistent:
                self.finish()
        finally:
            # Clean up whatever happened: nothing may stay parked in the loop.
            self.wm.close()
            for waiter in self.waiters:
                if waiter.future is not None:
                    waiter.future.cancel()
            try:
                self.portal.call(self.portal.stop, True)
            finally:
                self.stack.close()

    def finish(self) -> None:
        """End every wait (cancel_all, then close) and check nothing is left."""
        self.cancel_all()
        self.matches_model()
        self.close()
        self.matches_model()
        assert all(waiter.finished.is_set() for waiter in self.waiters)
        assert self.wm.cancel_all() == 0
        assert self.wm.statistics() == WaitMapStatistics(
            tasks_waiting=0,
            keys_waiting=0,
            values_stored=len(self.data),
            closed=True,
        )
        # Stored values stay readable and removable after close().
        for key in list(self.data):
            assert self.wm.pop(key) == self.data.pop(key)
        assert len(self.wm) == 0


# -- one machine per backend ---------------------------------------------------------

SETTINGS = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class AsyncioWaitMapMachine(WaitMapMachine):
    backend = "asyncio"
    backend_options: ClassVar[Mapping[str, object]] = {"use_uvloop": False}


class UvloopWaitMapMachine(WaitMapMachine):
    backend = "asyncio"
    backend_options: ClassVar[Mapping[str, object]] = {"use_uvloop": True}


class TrioWaitMapMachine(WaitMapMachine):
    backend = "trio"
    backend_options: ClassVar[Mapping[str, object]] = {}


TestWaitMapStatefulAsyncio = AsyncioWaitMapMachine.TestCase
TestWaitMapStatefulAsyncio.settings = SETTINGS

TestWaitMapStatefulUvloop = pytest.mark.skipif(
    sys.platform == "win32" or importlib.util.find_spec("uvloop") is None,
    reason="uvloop is not available",
)(UvloopWaitMapMachine.TestCase)
TestWaitMapStatefulUvloop.settings = SETTINGS

TestWaitMapStatefulTrio = pytest.mark.skipif(
    importlib.util.find_spec("trio") is None, reason="trio is not installed"
)(TrioWaitMapMachine.TestCase)
TestWaitMapStatefulTrio.settings = SETTINGS
