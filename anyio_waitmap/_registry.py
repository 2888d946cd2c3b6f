"""Who waits on which key: the bookkeeping under a WaitMap, and its rules.

:class:`WaiterRegistry` is the base of :class:`~anyio_waitmap.WaitMap` (a base
class rather than an object of its own, so that the map's hot paths look its
attributes up on ``self``). Its invariants, which every method keeps and relies
on, all of them with the owner's lock held:

* ``_waiting`` maps each key that has waiters to its only waiter, or to a dict
  of its waiters in the order they registered (never empty);
* every linked waiter is ``PENDING``; whoever resolves one (a hand-over, an
  exception thrown in, its task's cancellation) unlinks it under the same
  hold of the lock;
* ``_tasks_waiting`` is the number of linked waiters;
* ``_dispatching`` is true while a ``wait_for`` predicate runs, during which
  nothing may change the registry but a trio abort function unlinking its own
  waiter.
"""

# A friend of ParkedTask (_parking.py): the registry resolves and unlinks
# waiters itself, under its lock, and reads and writes their state directly on
# the map's hot paths.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, final

from ._backends import ki_protected
from ._exceptions import DuplicateWaiter
from ._parking import ABORTED, PENDING, Lock, ParkedTask

if TYPE_CHECKING:
    from ._backends._base import Binding

K = TypeVar("K")
V = TypeVar("V")


@ki_protected
class KeyWaiter(ParkedTask[V]):
    """A task waiting on a key of a WaitMap: parked in one of its async
    methods, or registered by an expectation."""

    __slots__ = ("key", "map", "predicate", "taker")

    def __init__(
        self,
        waitmap: WaiterRegistry[Any, V],
        binding: Binding,
        key: object,
        predicate: Callable[[V], object] | None,
        taker: bool,
    ) -> None:
        # ParkedTask.__init__, written out, and the handle made at once (the
        # task parks right away): this runs once per wait, and calling it
        # costs 3.0 % more per wait, wake and resumption (callgrind).
        self._lock = waitmap._lock
        self._binding = binding
        self._handle = binding.new_handle()
        self._state = PENDING
        self._result = None
        self.map = waitmap
        self.key = key
        self.predicate = predicate
        self.taker = taker

    def _on_abort(self) -> None:
        self.map._remove(self.key, self)

    def _on_abandon(self, value: V) -> None:
        if self.taker:
            self.map._give_back(self.key, value)


@final
@ki_protected
class ExpectedWaiter(KeyWaiter[V]):
    """The waiter of an :class:`Expectation`: linked when its block is entered,
    before its task parks (if it ever does), and so without a handle until then,
    as :class:`ParkedTask` makes them."""

    __slots__ = ()

    def __init__(
        self,
        waitmap: WaiterRegistry[Any, V],
        binding: Binding,
        key: object,
        predicate: Callable[[V], object] | None,
        taker: bool,
    ) -> None:
        self._lock = waitmap._lock
        self._binding = binding
        self._handle = None  # made by the task that awaits, under the lock
        self._state = PENDING
        self._result = None
        self.map = waitmap
        self.key = key
        self.predicate = predicate
        self.taker = taker


def unlinked_unresumed(waiter: KeyWaiter[Any]) -> None:
    """For a waiter that a hand-over unlinked and did not resume: its event loop
    has finished (DEAD), or its task is on its way out of its park with a
    cancellation that came first (still PENDING). Then it is marked as left,
    so that it does not unlink itself again."""
    if waiter._state == PENDING:
        waiter._state = ABORTED


@ki_protected
class WaiterRegistry(Generic[K, V]):
    """The waiters of each key; see the module's documentation."""

    __slots__ = ("_dispatching", "_exclusive", "_lock", "_tasks_waiting", "_waiting")

    def __init__(self, lock: Lock, exclusive: bool) -> None:
        self._waiting: dict[K, KeyWaiter[V] | dict[KeyWaiter[V], None]] = {}
        self._tasks_waiting: int = 0
        self._lock = lock
        self._exclusive = exclusive
        self._dispatching = False

    def _give_back(self, key: Any, value: V) -> None:
        """A taker left with an exception after receiving ``value``: the owner
        passes it on."""
        raise NotImplementedError  # pragma: no cover - WaitMap implements it

    def _refuse_while_dispatching(self, operation: str) -> NoReturn:
        raise RuntimeError(
            f"{operation} was called from a wait_for() predicate; predicates "
            f"must not change the WaitMap that evaluates them"
        )

    def _link(
        self,
        binding: Binding,
        key: K,
        predicate: Callable[[V], object] | None,
        taker: bool,
        expected: bool = False,
    ) -> KeyWaiter[V]:
        waiting = self._waiting
        entry = waiting.get(key)
        if entry is not None and self._exclusive:
            raise DuplicateWaiter(
                f"another task is already waiting on key {key!r} of this exclusive "
                f"WaitMap"
            )
        waiter = (ExpectedWaiter if expected else KeyWaiter)(
            self, binding, key, predicate, taker
        )
        if entry is None:
            waiting[key] = waiter
        elif isinstance(entry, dict):
            entry[waiter] = None
        else:
            waiting[key] = {entry: None, waiter: None}
        self._tasks_waiting += 1
        return waiter

    def _remove(self, key: Any, waiter: KeyWaiter[Any]) -> None:
        waiting = self._waiting
        linked = True
        try:
            entry = waiting.get(key)
            if entry is waiter:
                del waiting[key]
            elif isinstance(entry, dict) and waiter in entry:
                # Only the first branch hashes the key, which may raise: then
                # nothing has changed yet.
                if len(entry) == 1:
                    del waiting[key]
                else:
                    del entry[waiter]
            else:  # pragma: no cover - would be a bookkeeping bug
                linked = False
        except Exception:
            if waiter._state != ABORTED:
                raise
            # The task leaves (this is its _on_abort()), and its key no longer
            # hashes or compares as it did when it was linked (its __hash__
            # reads state that changed, say). The waiter must go all the same:
            # on trio this runs in the abort function, which must not fail.
            self._remove_by_identity(waiter)
        if not linked:  # pragma: no cover - would be a bookkeeping bug
            raise AssertionError(f"waiter for {key!r} is not linked")
        self._tasks_waiting -= 1

    def _remove_by_identity(self, waiter: KeyWaiter[Any]) -> None:
        """Unlink ``waiter`` without hashing its key: O(keys waited on). A dict
        finds a key by its hash, so dropping that key takes copying the other
        entries into a new dict (which hashes their keys)."""
        waiting = self._waiting
        for entry in waiting.values():
            if isinstance(entry, dict) and waiter in entry and len(entry) > 1:
                del entry[waiter]  # hashes the waiter, by identity
                return
        self._waiting = {
            key: entry
            for key, entry in waiting.items()
            if entry is not waiter and not (isinstance(entry, dict) and waiter in entry)
        }

    def _matches(self, key: Any, waiter: KeyWaiter[V], value: V) -> bool:
        """Run a wait_for() predicate for ``value``.

        A predicate that raises ends that waiter's wait with the exception.
        """
        self._dispatching = True
        try:
            if waiter.predicate(value):  # type: ignore[misc]
                return True
        except Exception as exc:
            self._remove(key, waiter)
            if not waiter.throw_locked(exc):
                unlinked_unresumed(waiter)
            return False
        finally:
            self._dispatching = False
        return False

    def _dispatch(
        self, key: K, value: V, entry: KeyWaiter[V] | dict[KeyWaiter[V], None]
    ) -> tuple[int, bool, BaseException | None]:
        """Hand ``value`` to the waiters of ``key``.

        Returns the number of tasks woken, whether a taker took the value, and
        the first exception that the hand-over could not keep from the caller,
        to be raised once the map is consistent: one that is not an
        :exc:`Exception` (KeyboardInterrupt, say) raised by a predicate, whose
        waiter stays registered, or one raised by the call into a waiter's
        event loop (MemoryError), whose waiter is then left out as one whose
        loop is gone. The hand-over to the other waiters is finished first.
        """
        if not isinstance(entry, dict):
            # One waiter, the common case.
            waiter = entry
            if waiter.predicate is not None:
                try:
                    if not self._matches(key, waiter, value):
                        return 0, False, None
                except BaseException as exc:
                    return 0, False, exc
                if waiter._state != PENDING:
                    # Its scope was cancelled from the predicate (trio): it has
                    # unlinked itself.
                    return 0, False, None
            del self._waiting[key]
            self._tasks_waiting -= 1
            try:
                if waiter.wake_locked(value):
                    return 1, waiter.taker, None
            except BaseException as exc:
                return 0, False, exc
            unlinked_unresumed(waiter)
            return 0, False, None

        woken = 0
        taken = False
        interrupt: BaseException | None = None
        # A snapshot: a trio abort function may unlink a waiter while we run a
        # predicate (if that predicate cancels a scope), changing the dict.
        for waiter in tuple(entry):
            if waiter._state != PENDING:
                continue
            if waiter.taker:
                if taken:
                    continue
            elif waiter.predicate is not None:
                try:
                    if not self._matches(key, waiter, value):
                        continue
                except BaseException as exc:
                    if interrupt is None:
                        interrupt = exc
                    continue
                if waiter._state != PENDING:
                    continue
            self._remove(key, waiter)
            try:
                resumed = waiter.wake_locked(value)
            except BaseException as exc:
                interrupt = interrupt or exc
                continue
            if resumed:
                woken += 1
                taken = taken or waiter.taker
            else:
                unlinked_unresumed(waiter)
        return woken, taken, interrupt

    def _throw_all(self, make_error: Callable[[Any], BaseException]) -> int:
        waiting = self._waiting
        self._waiting = {}
        self._tasks_waiting = 0
        return self._throw(waiting.items(), make_error)

    @staticmethod
    def _throw(
        unlinked: Iterable[tuple[K, KeyWaiter[V] | dict[KeyWaiter[V], None]]],
        make_error: Callable[[Any], BaseException],
    ) -> int:
        """Throw a new ``make_error(key)`` into each waiter of the ``unlinked``
        entries; returns how many will raise it. A waiter whose event loop
        cannot be reached (MemoryError) is left out, and the first such error
        is raised once the others are done."""
        count = 0
        failure: BaseException | None = None
        for key, entry in unlinked:
            for waiter in tuple(entry) if isinstance(entry, dict) else (entry,):
                try:
                    if waiter.throw_locked(make_error(key)):
                        count += 1
                    else:
                        unlinked_unresumed(waiter)
                except BaseException as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure
        return count
