"""Fault injection: a WaitMap stays consistent after faults.

Each test makes one thing fail at a chosen point, then checks that the failure
reaches the caller it belongs to, that the map's bookkeeping is consistent
(statistics, the per-key waiter table, the stored values, the tasks still
waiting), and that the map still works: a full round trip goes through, and
nothing is kept alive once the test lets go of it.

The faults, one section each:

1. keys whose ``__hash__`` or ``__eq__`` raise on their N-th call, for every N
   that the operation reaches (a dry run counts the calls first);
2. ``wait_for`` predicates that raise, at registration and during a hand-over by
   another task or another thread, with an ``Exception`` or a ``BaseException``;
3. a waiter whose event loop finished while it was parked;
4. a wake-up that finds the waiter's loop open, and then fails because the loop
   closed in between (``call_soon_threadsafe`` raising ``RuntimeError``, trio's
   ``RunFinishedError``), reproduced by closing the loop at exactly that point;
5. ``MemoryError`` at the allocation points of a registration;
6. an exception thrown into a task after it was handed, or consumed, a value;
7. ``MemoryError`` from the call into a waiter's event loop;
8. a key that stops hashing while a task waits on it.

The same faults for the sink and the wakers are in tests/sink/test_sink_faults.py
and tests/lowlevel/test_lowlevel_faults.py; the helpers are in support/faults.py.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, final

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel
import trio.testing
from anyio import create_task_group, wait_all_tasks_blocked
from support.faults import (
    GONE,
    UVLOOP,
    Host,
    Token,
    Unblocked,
    assert_all_dead,
    assert_consistent,
    assert_no_waiters,
    assert_refused,
    fail_once,
    hosting,
    leaves,
    linked_waiters,
    make_gone,
    run_on,
    waitmap_round_trip,
)
from support.workers import JOIN_TIMEOUT, run_in_thread_now

from anyio_waitmap import (
    Closed,
    KeyCancelled,
    NoMatch,
    WaitMap,
    WaitMapClosed,
    WakeSink,
    Woke,
)
from anyio_waitmap._backends._asyncio import AsyncioBinding
from anyio_waitmap._backends._trio import TrioBinding
from anyio_waitmap._parking import DEAD, ERROR, VALUE

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

T = TypeVar("T")


# == 1. keys whose __hash__ or __eq__ raise on their N-th call =====================


class KeyFault(Exception):
    """What a faulty key raises."""


class CallCounter:
    """Counts the calls of one special method of a key; raises at call ``fail_at``."""

    def __init__(self, method: str, fail_at: int | None) -> None:
        self.method = method
        self.fail_at = fail_at
        self.calls = 0
        self.fired = False
        self.armed = True

    def tick(self) -> None:
        if not self.armed:
            return
        self.calls += 1
        if self.calls == self.fail_at:
            self.fired = True
            raise KeyFault(f"{self.method} failed at its call {self.calls}")


@final
class Key:
    """A key that compares by name.

    Every Key has the same hash, so a dictionary compares a Key with ``__eq__``
    against each other Key it meets while probing: that is what makes a faulty
    ``__eq__`` reachable at all.
    """

    __slots__ = ("__weakref__", "counter", "name")

    def __init__(self, name: str, counter: CallCounter | None = None) -> None:
        self.name = name
        self.counter = counter

    def __hash__(self) -> int:
        counter = self.counter
        if counter is not None and counter.method == "__hash__":
            counter.tick()
        return 1234

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        # A dict calls the __eq__ of the key it holds: charge the faulty side.
        for side in (self, other):
            counter = side.counter
            if counter is not None and counter.method == "__eq__":
                counter.tick()
                break
        return self.name == other.name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


def accept_all(value: Token) -> bool:
    return True


def picky(value: Token) -> bool:
    """Rejects the values the faulty operations hand over, accepts the later ones."""
    return value.name not in ("new", "k-old")


OUTSTANDING = "still waiting"


@dataclass(eq=False)
class Parked:
    """A task waiting on a map, and how its call ended."""

    kind: str  # "wait", "take", "wait_for" (accepts anything) or "picky"
    key: Key
    ended: object = OUTSTANDING
    waiter: Any = None  # the waiter it linked into the map, if any

    async def run(self, wm: WaitMap[Key, Token]) -> None:
        try:
            if self.kind == "wait":
                value = await wm.wait(self.key)
            elif self.kind == "take":
                value = await wm.take(self.key)
            else:
                predicate = picky if self.kind == "picky" else accept_all
                value = await wm.wait_for(self.key, predicate)
        except Exception as exc:
            self.ended = ("raised", type(exc))
        else:
            self.ended = ("value", value.name)


async def start_parked(
    tg: anyio.abc.TaskGroup, wm: WaitMap[Key, Token], parked: Parked
) -> None:
    """Start ``parked`` and let it run until it waits; note the waiter it linked."""
    before = set(linked_waiters(wm))
    tg.start_soon(parked.run, wm)
    await wait_all_tasks_blocked()
    new = [waiter for waiter in linked_waiters(wm) if waiter not in before]
    assert len(new) <= 1
    parked.waiter = new[0] if new else None


def release(wm: WaitMap[Key, Token], parked: list[Parked]) -> None:
    """End every task still waiting, even one that the map lost track of."""
    wm.close()
    for task in parked:
        waiter = task.waiter
        if waiter is not None and task.ended == OUTSTANDING:
            with wm._lock:
                waiter.throw_locked(Unblocked())


@dataclass(frozen=True)
class Setup:
    """The map's state before the faulty operation runs.

    There is always a value stored under ``Key("c1")`` and a task waiting on
    ``Key("c2")``, so that every lookup has another key to compare with.
    """

    stored: bool  # a value is stored under Key("k")
    waiters: tuple[str, ...]  # the kinds of the tasks waiting on Key("k"), in order


NOTHING = Setup(stored=False, waiters=())
STORED = Setup(stored=True, waiters=())
ONE_WAIT = Setup(stored=False, waiters=("wait",))
ONE_WAIT_FOR = Setup(stored=False, waiters=("wait_for",))
PAIR = Setup(stored=False, waiters=("wait", "take"))
CROWD = Setup(stored=False, waiters=("wait", "take", "wait_for", "picky", "take"))
STORED_PICKY = Setup(stored=True, waiters=("picky",))

#: Operations run by a task of their own, which may register a waiter.
REGISTERING = {"wait", "take", "wait_for", "picky"}

SYNC_OPERATIONS: dict[str, Callable[[WaitMap[Key, Token], Key, Token], object]] = {
    "wake": lambda wm, key, value: wm.wake(key, value),
    "store": lambda wm, key, value: wm.__setitem__(key, value),
    "setdefault": lambda wm, key, value: wm.setdefault(key, value),
    "del": lambda wm, key, value: wm.__delitem__(key),
    "pop": lambda wm, key, value: wm.pop(key),
    "pop_default": lambda wm, key, value: wm.pop(key, value),
    "cancel": lambda wm, key, value: wm.cancel(key),
    "get": lambda wm, key, value: wm.get(key),
    "in": lambda wm, key, value: key in wm,
}

KEY_FAULT_CASES = [
    ("wait", NOTHING),
    ("wait", CROWD),
    ("wait", STORED),
    ("take", NOTHING),
    ("take", CROWD),
    ("take", STORED),
    ("wait_for", NOTHING),
    ("wait_for", CROWD),
    ("wait_for", STORED),
    ("picky", STORED_PICKY),
    ("wake", NOTHING),
    ("wake", ONE_WAIT),
    ("wake", ONE_WAIT_FOR),
    ("wake", PAIR),
    ("wake", CROWD),
    ("store", NOTHING),
    ("store", STORED),
    ("store", ONE_WAIT),
    ("store", ONE_WAIT_FOR),
    ("store", PAIR),
    ("store", CROWD),
    ("store", STORED_PICKY),
    ("setdefault", CROWD),
    ("setdefault", STORED),
    ("del", STORED),
    ("pop", STORED),
    ("pop_default", NOTHING),
    ("cancel", CROWD),
    ("cancel", NOTHING),
    ("get", STORED),
    ("get", NOTHING),
    ("in", STORED),
    ("in", NOTHING),
]

SETUP_NAMES = {
    NOTHING: "nothing",
    STORED: "stored",
    ONE_WAIT: "one_wait",
    ONE_WAIT_FOR: "one_wait_for",
    PAIR: "pair",
    CROWD: "crowd",
    STORED_PICKY: "stored_picky",
}


def stored_names(wm: WaitMap[Key, Token]) -> dict[str, str]:
    return {key.name: value.name for key, value in wm._data.items()}


async def reach_everyone(wm: WaitMap[Key, Token], parked: list[Parked]) -> None:
    """Hand a value to every task still waiting, through well-behaved keys only."""
    waiting = [task for task in parked if task.ended == OUTSTANDING]
    on_k = [task for task in waiting if task.key.name == "k"]
    takers = [task for task in on_k if task.kind == "take"]
    receivers = len(on_k) - len(takers) + (1 if takers else 0)
    outcome = wm.wake(Key("k"), Token("after"))
    assert outcome == (Woke(receivers) if receivers else NoMatch(Token("after")))
    for index in range(1, len(takers)):
        await wait_all_tasks_blocked()
        wm[Key("k")] = Token(f"after {index}")  # goes to the next taker
    assert wm.wake(Key("c2"), Token("after")) == Woke(1)
    await wait_all_tasks_blocked()
    expected = {id(task): task.ended for task in parked}
    expected.update({id(task): ("value", "after") for task in waiting})
    for index, taker in enumerate(takers[1:], 1):
        expected[id(taker)] = ("value", f"after {index}")
    assert [task.ended for task in parked] == [expected[id(task)] for task in parked]


async def play_key_fault(
    operation: str,
    setup: Setup,
    method: str,
    fail_at: int | None,
    keep: list[weakref.ref[Any]],
) -> int:
    """Run ``operation`` with a key whose ``method`` fails at call ``fail_at``.

    With ``fail_at=None``, a dry run: returns how many calls the operation made.
    Otherwise checks that the fault reached the caller, that the map is
    consistent, that every waiting task is still reachable through a well-behaved
    equal key, and that the map still works.
    """
    counter = CallCounter(method, fail_at)
    wm: WaitMap[Key, Token] = WaitMap()
    wm[Key("c1")] = Token("c1-old")
    if setup.stored:
        wm[Key("k")] = Token("k-old")
    parked = [Parked("wait", Key("c2"))]
    parked += [Parked(kind, Key("k")) for kind in setup.waiters]
    key = Key("k", counter)
    value = Token("new")
    mine = Parked(operation, key)
    keep += [weakref.ref(wm), weakref.ref(key), weakref.ref(value)]

    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            try:
                for task in parked:
                    await start_parked(tg, wm, task)
                before = stored_names(wm)
                if operation in REGISTERING:
                    await start_parked(tg, wm, mine)
                    raised = mine.ended == ("raised", KeyFault)
                else:
                    try:
                        SYNC_OPERATIONS[operation](wm, key, value)
                    except KeyFault:
                        raised = True
                    else:
                        raised = False
                counter.armed = False
                await wait_all_tasks_blocked()
                if fail_at is None:
                    assert not raised
                    return counter.calls  # a dry run: count, and check nothing

                assert counter.fired, "the fault was not injected"
                assert raised, "the key's exception did not reach the caller"
                # The map is consistent: its counts, its values (a call that
                # raised stored nothing) and its waiters. A hand-over that
                # failed part way may have reached some tasks (with nothing
                # but its value); every other task is still linked.
                assert_consistent(wm)
                assert stored_names(wm) == before, "the stored values changed"
                assert mine.waiter is None, "the failed registration left a waiter"
                linked = linked_waiters(wm)
                for task in parked:
                    if task.ended == OUTSTANDING:
                        assert task.waiter in linked, f"a {task.kind} is lost"
                    else:
                        assert task.ended == ("value", "new"), task.ended
                        assert operation in ("wake", "store", "setdefault")
                still = sum(task.ended == OUTSTANDING for task in parked)
                assert len(linked) == still, "a waiter no task waits on is linked"
                # Every task still waiting is reachable with a well-behaved key.
                await reach_everyone(wm, parked)
                assert stored_names(wm) == before
                await waitmap_round_trip(wm, Key("round trip"))
            finally:
                counter.armed = False
                release(wm, [*parked, mine])
    return counter.calls


@pytest.mark.parametrize("method", ["__hash__", "__eq__"])
@pytest.mark.parametrize(
    ("operation", "setup"),
    KEY_FAULT_CASES,
    ids=[f"{op}-{SETUP_NAMES[setup]}" for op, setup in KEY_FAULT_CASES],
)
async def test_key_failing_at_each_call(
    operation: str, setup: Setup, method: str
) -> None:
    """For every call of ``method`` that ``operation`` makes, a run in which that
    call raises: the exception reaches the caller, and the map is consistent,
    keeps its values, loses no waiting task and works on (see play_key_fault).
    The maps, keys and values of all the runs are freed afterwards."""
    keep: list[weakref.ref[Any]] = []
    calls = await play_key_fault(operation, setup, method, None, keep)
    assert calls >= 1, f"{operation} never called {method}: the fault is unreachable"
    problems: list[str] = []
    for fail_at in range(1, calls + 1):
        try:
            await play_key_fault(operation, setup, method, fail_at, keep)
        except Exception as exc:  # gather every failing call, then report them all
            problems.append(
                f"{method} failing at call {fail_at} of {calls}: {leaves(exc)}"
            )
    assert not problems, "\n".join(problems)
    assert_all_dead(keep)


@final
class Prickly:
    """A key equal to ``Key(name)`` that raises when compared with ``Key(touchy)``.

    Unlike a key that fails on its N-th call, this one fails every time, but
    only in the dictionary that holds ``Key(touchy)``: here the stored values,
    which a store reaches only after it has found the waiters.
    """

    __slots__ = ("name", "touchy")

    def __init__(self, name: str, touchy: str) -> None:
        self.name = name
        self.touchy = touchy

    def __hash__(self) -> int:
        return 1234  # as every Key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        if other.name == self.touchy:
            raise KeyFault(f"cannot compare with {other!r}")
        return other.name == self.name


@pytest.mark.parametrize("operation", ["store", "setdefault"])
async def test_store_with_a_key_that_only_the_stored_values_reject(
    operation: str,
) -> None:
    """A store that raises has stored nothing and woken nobody: the caller
    cannot tell a task received the value. This key always fails the same way,
    so the store can find that out before it hands the value over."""
    wm: WaitMap[Any, Token] = WaitMap()
    wm[Key("touchy")] = Token("old")
    waiting = Parked("wait", Key("k"))
    async with create_task_group() as tg:
        try:
            await start_parked(tg, wm, waiting)
            key = Prickly("k", touchy="touchy")
            with pytest.raises(KeyFault):
                SYNC_OPERATIONS[operation](wm, key, Token("new"))  # type: ignore[arg-type]
            await wait_all_tasks_blocked()
            assert waiting.ended == OUTSTANDING, "the failed store woke a task"
            assert stored_names(wm) == {"touchy": "old"}
            assert_consistent(wm)
            assert linked_waiters(wm) == [waiting.waiter]
            assert wm.wake(Key("k"), Token("after")) == Woke(1)
        finally:
            release(wm, [waiting])
    assert waiting.ended == ("value", "after")
    assert_no_waiters(wm)


# == 2. predicates of wait_for that raise ==========================================


class PredicateFailed(Exception):
    """Raised by a predicate under test."""


class Interrupt(BaseException):
    """A BaseException raised by a predicate, standing in for KeyboardInterrupt."""


class FailingPredicate:
    """Raises ``error`` at its call number ``at``, rejects values before that and
    accepts them after it; records the thread of every call."""

    def __init__(self, error: type[BaseException], at: int = 1) -> None:
        self.error = error
        self.at = at
        self.calls = 0
        self.threads: list[int] = []

    def __call__(self, value: object) -> bool:
        self.calls += 1
        self.threads.append(threading.get_ident())
        if self.calls == self.at:
            raise self.error(f"predicate call {self.calls}")
        return self.calls > self.at


@dataclass
class Ended:
    """How a task's call ended: ``("value", v)``, ``("raised", type, message)``."""

    how: object = OUTSTANDING

    async def run(self, call: Callable[[], Awaitable[object]]) -> None:
        try:
            self.how = ("value", await call())
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # Interrupt included: record it, whatever it is
            self.how = ("raised", type(exc), str(exc))


async def start_ended(
    tg: anyio.abc.TaskGroup, call: Callable[[], Awaitable[object]]
) -> Ended:
    ended = Ended()
    tg.start_soon(ended.run, call)
    await wait_all_tasks_blocked()
    return ended


async def call_from(caller: str, call: Callable[[], object]) -> tuple[object, ...]:
    """Run ``call`` in another task or another thread.

    Returns ``("returned", result, thread)`` or ``("raised", exception, thread)``.
    """

    def capture() -> tuple[object, ...]:
        try:
            return ("returned", call(), threading.get_ident())
        except BaseException as exc:
            return ("raised", exc, threading.get_ident())

    if caller == "thread":
        return run_in_thread_now(capture)
    assert caller == "task"
    results: list[tuple[object, ...]] = []

    async def other_task() -> None:
        results.append(capture())

    async with create_task_group() as tg:
        tg.start_soon(other_task)
    return results[0]


@pytest.mark.parametrize("error", [PredicateFailed, Interrupt])
async def test_predicate_raising_at_registration(error: type[BaseException]) -> None:
    """Against a stored value, the predicate runs in the waiting task: whatever it
    raises propagates there, and nothing stays registered."""
    wm: WaitMap[str, Token] = WaitMap()
    wm["k"] = Token("stored")
    predicate = FailingPredicate(error)
    async with create_task_group() as tg:
        other = await start_ended(
            tg, lambda: wm.wait_for("k", lambda v: v != Token("stored"))
        )
        bystander = await start_ended(tg, lambda: wm.wait("j"))
        waiters = linked_waiters(wm)
        with pytest.raises(error, match="predicate call 1"):
            await wm.wait_for("k", predicate)
        assert predicate.calls == 1
        assert_consistent(wm)
        assert linked_waiters(wm) == waiters
        assert wm["k"] == Token("stored")
        wm["k"] = Token("next")  # refused if the map still thought it was dispatching
        assert wm.wake("j", Token("j")) == Woke(1)
    assert predicate.calls == 1, "the failed registration was still reachable"
    assert other.how == ("value", Token("next"))
    assert bystander.how == ("value", Token("j"))
    assert_no_waiters(wm)
    await waitmap_round_trip(wm, "fresh")


CROWD_KINDS = ("wait", "failing", "take", "wait_for", "take")


async def start_predicate_scene(
    tg: anyio.abc.TaskGroup,
    wm: WaitMap[str, Token],
    company: str,
    predicate: FailingPredicate,
) -> list[tuple[str, Ended]]:
    kinds = CROWD_KINDS if company == "crowd" else ("failing",)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "wait": lambda: wm.wait("k"),
        "take": lambda: wm.take("k"),
        "wait_for": lambda: wm.wait_for("k", accept_all),
        "failing": lambda: wm.wait_for("k", predicate),
    }
    return [(kind, await start_ended(tg, calls[kind])) for kind in kinds]


def hand_over(wm: WaitMap[str, Token], how: str) -> Callable[[], object]:
    if how == "wake":
        return lambda: wm.wake("k", Token("v"))
    return lambda: wm.__setitem__("k", Token("v"))


@pytest.mark.parametrize("company", ["alone", "crowd"])
@pytest.mark.parametrize("caller", ["task", "thread"])
@pytest.mark.parametrize("how", ["wake", "store"])
async def test_predicate_exception_during_hand_over(
    how: str, caller: str, company: str
) -> None:
    """As documented: the exception ends that waiter's wait_for; the storing or
    waking caller is not affected, the others receive the value, Woke counts
    exactly the tasks that return it, and the predicate ran in the caller's
    thread."""
    wm: WaitMap[str, Token] = WaitMap()
    predicate = FailingPredicate(PredicateFailed)
    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            scene = await start_predicate_scene(tg, wm, company, predicate)
            outcome, result, thread = await call_from(caller, hand_over(wm, how))
            await wait_all_tasks_blocked()

            assert outcome == "returned", result
            assert predicate.threads == [thread]
            v = ("value", Token("v"))
            failed = ("raised", PredicateFailed, "predicate call 1")
            if company == "alone":
                assert [ended.how for _, ended in scene] == [failed]
                assert result == (NoMatch(Token("v")) if how == "wake" else None)
                assert dict(wm) == ({} if how == "wake" else {"k": Token("v")})
                assert_no_waiters(wm)
            else:
                hows = [ended.how for _, ended in scene]
                assert hows == [v, failed, v, v, OUTSTANDING]
                assert result == (Woke(3) if how == "wake" else None)
                assert dict(wm) == {}  # a store was consumed by the first taker
                assert_consistent(wm)
                assert wm.statistics().tasks_waiting == 1
                wm["k"] = Token("later")  # the second taker
    if company == "crowd":
        assert scene[-1][1].how == ("value", Token("later"))
    assert predicate.calls == 1
    assert_no_waiters(wm)
    await waitmap_round_trip(wm, "fresh")


@pytest.mark.parametrize("company", ["alone", "crowd"])
@pytest.mark.parametrize("caller", ["task", "thread"])
@pytest.mark.parametrize("how", ["wake", "store"])
async def test_predicate_base_exception_during_hand_over(
    how: str, caller: str, company: str
) -> None:
    """A BaseException from a predicate (KeyboardInterrupt, SystemExit, ...) is
    not handed to the waiter: only Exception is. It belongs to the thread it
    happened in, the caller's, and propagates there. The map stays consistent:
    every task either returned the value or is still waiting and reachable,
    the waiter whose predicate raised among them."""
    wm: WaitMap[str, Token] = WaitMap()
    predicate = FailingPredicate(Interrupt)
    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            scene = await start_predicate_scene(tg, wm, company, predicate)
            outcome, result, thread = await call_from(caller, hand_over(wm, how))
            await wait_all_tasks_blocked()

            assert outcome == "raised"
            assert isinstance(result, Interrupt)
            assert str(result) == "predicate call 1"
            del result
            assert predicate.threads == [thread]
            assert_consistent(wm)
            failing = next(ended for kind, ended in scene if kind == "failing")
            assert failing.how == OUTSTANDING
            waiting = [(kind, e) for kind, e in scene if e.how == OUTSTANDING]
            got_it = [(kind, e) for kind, e in scene if e.how != OUTSTANDING]
            assert all(e.how == ("value", Token("v")) for _, e in got_it), got_it
            assert wm.statistics().tasks_waiting == len(waiting)
            if how == "wake":
                assert "k" not in wm
            # Everyone still waiting is reachable; the predicate now accepts.
            takers = sum(kind == "take" for kind, _ in waiting)
            receivers = len(waiting) - takers + (1 if takers else 0)
            assert wm.wake("k", Token("after")) == Woke(receivers)
            for _ in range(takers - 1):
                await wait_all_tasks_blocked()
                wm["k"] = Token("last")
    assert all(
        e.how in (("value", Token("after")), ("value", Token("last")))
        for _, e in waiting
    )
    assert_no_waiters(wm)
    await waitmap_round_trip(wm, "fresh")


# == 3 and 4. waiters whose event loop is gone, or goes during the wake-up =========


@pytest.mark.parametrize("action", ["wake", "store", "cancel", "close"])
@pytest.mark.parametrize(("kind", "ending"), GONE)
def test_waitmap_waiters_whose_loop_is_gone(
    kind: str, ending: str, action: str
) -> None:
    """Dead waiters do not count, receive nothing, raise nothing in the caller and
    leave nothing behind; a live waiter on the same key is served as usual."""
    wm: WaitMap[str, Token] = WaitMap()
    live_got: list[object] = []

    async def live_wait() -> None:
        try:
            live_got.append(await wm.wait("k"))
        except (KeyCancelled, WaitMapClosed) as exc:
            live_got.append(type(exc))

    with hosting(kind) as gone, hosting("trio") as live:
        gone.start(
            [
                lambda: wm.wait("k"),
                lambda: wm.take("k"),
                lambda: wm.wait_for("k", bool),
            ],
            lambda: wm.statistics().tasks_waiting == 3,
        )
        dead = linked_waiters(wm)
        dead_tasks = [weakref.ref(task) for task in gone.tasks]
        live.start([live_wait], lambda: wm.statistics().tasks_waiting == 4)
        make_gone(gone, ending)
        value = Token("v")
        value_ref = weakref.ref(value)

        if action == "wake":
            assert wm.wake("k", value) == Woke(1)
            expected: object = Token("v")
        elif action == "store":
            wm["k"] = value
            expected = Token("v")
        elif action == "cancel":
            assert wm.cancel("k") == 1
            expected = KeyCancelled
        else:
            wm.close()
            expected = WaitMapClosed
        del value

        assert_refused(gone, ending, expected_calls=3)
        assert_no_waiters(wm)
        assert [waiter._state for waiter in dead] == [DEAD] * 3
        assert [waiter._result for waiter in dead] == [None] * 3
        live.dispose()
        assert live_got == [expected]
        live_got.clear()
        # Stored, since no live taker consumed it; a dead taker does not.
        assert dict(wm) == ({"k": Token("v")} if action == "store" else {})
        del dead
    if action != "store":  # else the map holds it, as it should
        assert_all_dead([value_ref])
    assert_all_dead(dead_tasks)
    if action == "close":
        assert wm.wake("k", Token("x")) == Closed(Token("x"))
    else:
        wm.pop("k", None)
        run_on(kind, lambda: waitmap_round_trip(wm, "k"))


@pytest.mark.parametrize("kind", ["asyncio", pytest.param("uvloop", marks=UVLOOP)])
def test_stopped_loop_gets_its_values_when_it_runs_again(kind: str) -> None:
    """A loop that stopped without closing may run again: its waiters count as
    woken, and they do return the value once it runs."""
    wm: WaitMap[str, Token] = WaitMap()
    sink = WakeSink()
    box: list[str] = []
    with hosting(kind) as paused:
        paused.start(
            [
                lambda: wm.wait("k"),
                lambda: wm.take("k"),
                lambda: sink.wait_until(lambda: box[0] if box else None),
            ],
            lambda: wm.statistics().tasks_waiting == 2 and sink._waker is not None,
        )
        assert wm.wake("k", Token("v")) == Woke(2)
        box.append("item")
        sink.notify()
        assert paused.loop is not None
        everything = asyncio.gather(*paused.tasks)
        results = paused.loop.run_until_complete(bounded(everything))
        assert results == [Token("v"), Token("v"), "item"]
    assert_no_waiters(wm)
    assert sink._waker is None


# == 5. MemoryError while registering ================================================


async def register_despite_memory_error(
    monkeypatch: pytest.MonkeyPatch, point: str, method: str, exclusive: bool
) -> weakref.ref[WaitMap[str, Token]]:
    wm: WaitMap[str, Token] = WaitMap(exclusive=exclusive)
    wm["other"] = Token("kept")
    if method == "wait_for":
        wm["k"] = Token("rejected")  # a stored value the waiter looks at, then waits

    def register() -> Awaitable[Token]:
        if method == "wait":
            return wm.wait("k")
        if method == "take":
            return wm.take("k")
        return wm.wait_for("k", lambda v: v != Token("rejected"))

    before = dict(wm)
    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            # Others already waiting: on the same key unless the map is exclusive.
            others = [await start_ended(tg, lambda: wm.wait("j"))]
            if not exclusive:
                others.append(
                    await start_ended(
                        tg, lambda: wm.wait_for("k", lambda v: v != Token("rejected"))
                    )
                )
            linked = linked_waiters(wm)
            failures = fail_once(monkeypatch, point)
            with pytest.raises(MemoryError, match="no memory left"):
                await register()
            monkeypatch.undo()
            assert failures, "the allocation was not reached"

            assert_consistent(wm)
            assert linked_waiters(wm) == linked, "the failed registration is linked"
            assert dict(wm) == before, "a stored value was lost"
            # The key takes a new waiter (no DuplicateWaiter from a ghost), and
            # a wake-up reaches it and the others.
            mine = await start_ended(tg, register)
            assert wm.wake("k", Token("v")) == Woke(1 if exclusive else 2)
            assert wm.wake("j", Token("j")) == Woke(1)
    assert mine.how == ("value", Token("v"))
    assert [other.how for other in others] == [("value", Token("j"))] + (
        [] if exclusive else [("value", Token("v"))]
    )
    assert_no_waiters(wm)
    await waitmap_round_trip(wm, "fresh")
    return weakref.ref(wm)


@pytest.mark.parametrize("exclusive", [False, True], ids=["shared", "exclusive"])
@pytest.mark.parametrize("method", ["wait", "take", "wait_for"])
@pytest.mark.parametrize("point", ["new_handle", "park", "waiter_init"])
async def test_memory_error_registering_on_waitmap(
    monkeypatch: pytest.MonkeyPatch, point: str, method: str, exclusive: bool
) -> None:
    """The error reaches the caller; no waiter stays linked (no ghost that would
    make an exclusive map refuse the next one), no stored value is lost, and
    the map, the waiters already there included, works as before."""
    ref = await register_despite_memory_error(monkeypatch, point, method, exclusive)
    assert_all_dead([ref])


# == 6. an exception thrown into a task that was handed, or consumed, a value =======


async def failing_yield(self: object) -> None:
    raise MemoryError("no memory left while yielding")


async def test_failure_after_take_consumed_a_stored_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """take() with a stored value removes it, then yields without letting a
    cancellation take it away. Anything else that ends the task there must give
    the value back, as a taker that was handed a value while parked does."""
    wm: WaitMap[str, Token] = WaitMap()
    wm["k"] = Token("v")
    monkeypatch.setattr(AsyncioBinding, "cancel_shielded_checkpoint", failing_yield)
    monkeypatch.setattr(TrioBinding, "cancel_shielded_checkpoint", failing_yield)
    with pytest.raises(MemoryError):
        await wm.take("k")
    monkeypatch.undo()
    assert dict(wm) == {"k": Token("v")}, "the value taken was lost"
    assert_no_waiters(wm)
    assert await wm.take("k") == Token("v")
    await waitmap_round_trip(wm, "k")


ASYNCIO_RUNNERS = [
    pytest.param("asyncio", id="asyncio.run"),
    pytest.param("uvloop", id="uvloop.run", marks=UVLOOP),
]


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` under native asyncio, failing instead of hanging."""
    return await asyncio.wait_for(awaitable, JOIN_TIMEOUT)


def run_native(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())


@pytest.mark.parametrize("next_taker", [False, True], ids=["alone", "next_taker"])
@pytest.mark.parametrize("how", ["throw", "close"])
@pytest.mark.parametrize("kind", ASYNCIO_RUNNERS)
def test_exception_thrown_into_take_after_it_consumed_a_stored_value(
    kind: str, how: str, next_taker: bool
) -> None:
    """The same, with a real exception thrown into the coroutine where it yields
    (driven by hand, as in test_native.TestAbandonedValue for a parked taker)."""

    async def main() -> None:
        wm: WaitMap[str, Token] = WaitMap()
        wm["k"] = Token("v")
        coro = wm.take("k")
        coro.send(None)  # removes the value, then yields once
        assert "k" not in wm
        second = asyncio.create_task(wm.take("k")) if next_taker else None
        await asyncio.sleep(0)
        if how == "throw":
            with pytest.raises(RuntimeError, match="thrown in"):
                coro.throw(RuntimeError("thrown in"))
        else:
            coro.close()
        if second is not None:
            for _ in range(5):  # the hand-over resumes it within a few steps
                await asyncio.sleep(0)
            assert second.done(), "the value taken did not reach the next taker"
            assert second.result() == Token("v")
            assert "k" not in wm
        else:
            assert dict(wm) == {"k": Token("v")}, "the value taken was lost"
        assert_no_waiters(wm)

    run_native(kind, main)


@pytest.mark.parametrize("error", [PredicateFailed, Interrupt])
@pytest.mark.parametrize("kind", ASYNCIO_RUNNERS)
def test_value_given_back_meets_a_raising_predicate(
    kind: str, error: type[BaseException]
) -> None:
    """A taker that cannot return its value passes it on like a store; a
    wait_for predicate that raises on the way must not make it disappear."""

    async def main() -> None:
        wm: WaitMap[str, Token] = WaitMap()
        coro = wm.take("k")
        coro.send(None)  # parks first, so that it is the one handed the value
        predicate = FailingPredicate(error, at=2)  # rejects, then raises
        picky_task = asyncio.create_task(wm.wait_for("k", predicate))
        await asyncio.sleep(0)
        second = asyncio.create_task(wm.take("k"))
        await asyncio.sleep(0)
        assert wm.wake("k", Token("v")) == Woke(1)
        assert predicate.calls == 1

        expected = RuntimeError if error is PredicateFailed else Interrupt
        with pytest.raises(expected):
            coro.throw(RuntimeError("thrown in"))
        await asyncio.sleep(0)
        assert_consistent(wm)
        if error is PredicateFailed:
            # As documented: the exception goes to that waiter, the value goes on.
            with pytest.raises(PredicateFailed):
                await bounded(picky_task)
            assert await bounded(second) == Token("v")
            assert "k" not in wm
        else:
            # The interrupt propagated in the thread that gave the value back;
            # the value still went to the next taker or was stored.
            assert not picky_task.done()
            if second.done():
                assert second.result() == Token("v")
                assert "k" not in wm
            else:
                assert dict(wm) == {"k": Token("v")}, "the value given back was lost"
            wm.cancel("k")
            with pytest.raises(KeyCancelled):
                await bounded(picky_task)
            if not second.done():
                with pytest.raises(KeyCancelled):
                    await bounded(second)
        assert_no_waiters(wm)

    run_native(kind, main)


@pytest.mark.parametrize("kind", ASYNCIO_RUNNERS)
def test_value_given_back_skips_a_taker_whose_loop_is_gone(kind: str) -> None:
    """The next taker in line belongs to a closed loop: it cannot receive the
    value, so the value is stored rather than lost."""

    async def main() -> None:
        wm: WaitMap[str, Token] = WaitMap()
        coro = wm.take("k")
        coro.send(None)
        with hosting(kind) as gone:
            gone.start(
                [lambda: wm.take("k")], lambda: wm.statistics().tasks_waiting == 2
            )
            gone.finish()
            assert wm.wake("k", Token("v")) == Woke(1)  # to the first taker, ours
            coro.close()
            assert dict(wm) == {"k": Token("v")}
            assert_no_waiters(wm)

    run_native(kind, main)


# == 7. the call into a waiter's event loop fails: MemoryError =====================


class FailingOnceToken:
    """Stands in for a TrioToken whose next run_sync_soon() fails to allocate."""

    def __init__(self, token: trio.lowlevel.TrioToken, failed: list[str]) -> None:
        self.token = token
        self.failed = failed

    def run_sync_soon(self, *args: Any, **kwargs: Any) -> None:
        if not self.failed:
            self.failed.append("run_sync_soon")
            raise MemoryError("no memory left for run_sync_soon")
        self.token.run_sync_soon(*args, **kwargs)


def fail_next_resumption(host: Host) -> list[str]:
    """Make the next call into ``host``'s loop from another thread raise
    MemoryError, before it queued anything; returns what records it."""
    failed: list[str] = []
    if host.kind == "trio":
        assert host.binding is not None
        assert host.token is not None
        host.binding._token = FailingOnceToken(host.token, failed)  # type: ignore[assignment]
        return failed
    loop = host.loop
    assert loop is not None
    original = loop.call_soon_threadsafe

    def failing(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append("call_soon_threadsafe")
            raise MemoryError("no memory left for call_soon_threadsafe")
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = failing  # type: ignore[method-assign,assignment]
    return failed


def finish_host(host: Host, expected: int) -> list[object]:
    """Let ``host``'s tasks run: those resumed end; then cancel the rest (the
    one that could not be resumed) and return how each ended."""
    if host.kind == "trio":
        host.dispose()
        return []
    loop = host.loop
    assert loop is not None
    tasks = host.tasks

    async def settle() -> None:
        for _ in range(100):
            if sum(task.done() for task in tasks) >= expected:
                break
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    loop.run_until_complete(bounded(settle()))
    outcomes: list[object] = []
    for task in tasks:
        if task.cancelled():
            outcomes.append("cancelled")
        else:
            outcomes.append(task.result())
    loop.close()
    host.tasks.clear()
    return outcomes


KINDS = ["asyncio", pytest.param("uvloop", marks=UVLOOP), "trio"]


@pytest.mark.parametrize("action", ["wake", "store", "cancel", "close"])
@pytest.mark.parametrize("kind", KINDS)
def test_memory_error_resuming_the_first_of_two_takers(kind: str, action: str) -> None:
    """The first taker's loop cannot be called (MemoryError): the value goes on to
    the second taker, or the second is cancelled or closed all the same; the
    error reaches the caller once the hand-over is complete; the first taker is
    left out, holding nothing, and leaves when it is cancelled; nothing stays
    linked, and nothing is stored."""
    wm: WaitMap[str, Token] = WaitMap()

    async def take() -> object:
        try:
            return await wm.take("k")
        except (KeyCancelled, WaitMapClosed) as exc:
            return type(exc)

    with hosting(kind) as host:
        host.start([take, take], lambda: wm.statistics().tasks_waiting == 2)
        first, second = linked_waiters(wm)
        failed = fail_next_resumption(host)
        value = Token("v")
        act: Callable[[], object] = {
            "wake": lambda: wm.wake("k", value),
            "store": lambda: wm.__setitem__("k", value),
            "cancel": lambda: wm.cancel("k"),
            "close": wm.close,
        }[action]
        with pytest.raises(MemoryError, match="no memory left"):
            act()
        assert failed, "the failure was not injected"
        assert first._state == DEAD
        assert first._result is None
        assert second._state == (VALUE if action in ("wake", "store") else ERROR)
        assert_no_waiters(wm)
        assert dict(wm) == {}
        if kind != "trio":
            outcomes = finish_host(host, expected=1)
            second_ended = {
                "wake": value,
                "store": value,
                "cancel": KeyCancelled,
                "close": WaitMapClosed,
            }[action]
            assert outcomes == ["cancelled", second_ended]


@pytest.mark.parametrize("action", ["wake", "store"])
@pytest.mark.parametrize("kind", KINDS)
def test_memory_error_resuming_the_only_taker(kind: str, action: str) -> None:
    """The value comes back to the caller with the error (wake), or is stored
    as if nobody had been waiting (store)."""
    wm: WaitMap[str, Token] = WaitMap()
    with hosting(kind) as host:
        host.start([lambda: wm.take("k")], lambda: wm.statistics().tasks_waiting == 1)
        failed = fail_next_resumption(host)
        act: Callable[[], object] = {
            "wake": lambda: wm.wake("k", Token("v")),
            "store": lambda: wm.__setitem__("k", Token("v")),
        }[action]
        with pytest.raises(MemoryError, match="no memory left"):
            act()
        assert failed
        assert_no_waiters(wm)
        assert dict(wm) == ({"k": Token("v")} if action == "store" else {})
        if kind != "trio":
            assert finish_host(host, expected=0) == ["cancelled"]
    # The map works on: a new taker, in a live loop, gets what is stored.
    wm.pop("k", None)
    run_on("asyncio", lambda: waitmap_round_trip(wm, "k"))


class QueuedThenFailingToken:
    """Stands in for a TrioToken whose next run_sync_soon() queues the callback
    and then fails to wake the run (the OSError of trio's wake-up write)."""

    def __init__(self, token: trio.lowlevel.TrioToken, failed: list[str]) -> None:
        self.token = token
        self.failed = failed

    def run_sync_soon(self, *args: Any, **kwargs: Any) -> None:
        self.token.run_sync_soon(*args, **kwargs)
        if not self.failed:
            self.failed.append("run_sync_soon")
            raise OSError("the wake-up write failed")


def test_trio_wake_up_write_failing_after_the_callback_was_queued() -> None:
    """The callback is queued: the task counts as woken, returns the value, and
    the caller sees no error."""
    wm: WaitMap[str, Token] = WaitMap()
    got: list[object] = []

    async def take() -> None:
        got.append(await wm.take("k"))

    with hosting("trio") as host:
        host.start([take], lambda: wm.statistics().tasks_waiting == 1)
        assert host.binding is not None
        assert host.token is not None
        failed: list[str] = []
        host.binding._token = QueuedThenFailingToken(host.token, failed)  # type: ignore[assignment]
        assert wm.wake("k", Token("v")) == Woke(1)
        assert failed == ["run_sync_soon"]
        host.binding._token = host.token
    assert got == [Token("v")]
    assert_no_waiters(wm)


# == 8. a key that stops hashing while a task waits on it =========================


@final
class Fickle:
    """A key that hashes until it is told to fail, then raises on every hash."""

    __slots__ = ("failing", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = False

    def __hash__(self) -> int:
        if self.failing:
            raise KeyFault(f"{self.name} cannot be hashed any more")
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Fickle({self.name!r})"


@pytest.mark.parametrize("others_on_the_key", [0, 1])
async def test_cancelled_waiter_of_a_key_that_stopped_hashing(
    others_on_the_key: int,
) -> None:
    """The task is cancelled while its key cannot be hashed: it leaves with the
    cancellation (on trio, its abort function does not fail and the run goes
    on), nothing of it stays linked, and the other waiters are unaffected."""
    wm: WaitMap[Any, Token] = WaitMap()
    key = Fickle("k")
    scope = anyio.CancelScope()
    ended: list[object] = []

    async def victim() -> None:
        with scope:
            await wm.wait(key)
        ended.append("left" if scope.cancelled_caught else "returned")

    async def other(on: object) -> None:
        ended.append(await wm.wait(on))

    with anyio.fail_after(JOIN_TIMEOUT):
        async with create_task_group() as tg:
            tg.start_soon(victim)
            for _ in range(others_on_the_key):
                tg.start_soon(other, key)
            tg.start_soon(other, "elsewhere")
            await wait_all_tasks_blocked()
            key.failing = True
            scope.cancel()
            await wait_all_tasks_blocked()
            assert ended == ["left"]
            assert_consistent(wm)
            assert wm.statistics().tasks_waiting == 1 + others_on_the_key
            key.failing = False
            if others_on_the_key:
                assert wm.wake(key, Token("k")) == Woke(1)
            assert wm.wake("elsewhere", Token("e")) == Woke(1)
    assert ended[0] == "left"
    assert sorted(map(repr, ended[1:])) == sorted(
        [repr(Token("e"))] + [repr(Token("k"))] * others_on_the_key
    )
    assert_no_waiters(wm)
