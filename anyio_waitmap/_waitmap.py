"""WaitMap: a mutable mapping whose lookups can be awaited."""

from __future__ import annotations

from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    MutableMapping,
)
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    NoReturn,
    TypeVar,
    cast,
    final,
    overload,
)

from ._backends import current_binding, ki_protected, load_trio_support
from ._exceptions import DuplicateWaiter, KeyCancelled, WaitMapClosed
from ._outcomes import (
    Closed,
    NoMatch,
    WaitMapStatistics,
    WakeOutcome,
    Woke,
    new_outcome,
    store_no_match_value,
)
from ._parking import ABORTED, DEAD, PENDING, VALUE, ParkedTask, new_lock

if TYPE_CHECKING:
    from types import TracebackType

    from ._backends._base import Binding

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")
T = TypeVar("T")

_MISSING: Final[Any] = object()
_WOKE_ONE: Final = Woke(1)


@ki_protected
class _Waiter(ParkedTask[V]):
    """A task parked in one of the WaitMap's async methods."""

    __slots__ = ("key", "map", "predicate", "taker")

    def __init__(
        self,
        waitmap: WaitMap[Any, V],
        binding: Binding,
        key: object,
        predicate: Callable[[V], object] | None,
        taker: bool,
    ) -> None:
        # ParkedTask.__init__, inlined: this runs once per wait.
        self._lock = waitmap._lock  # pyright: ignore[reportPrivateUsage]
        self._binding = binding
        self._handle = binding.new_handle()
        self._state = PENDING
        self._result = None
        self.map = waitmap
        self.key = key
        self.predicate = predicate
        self.taker = taker

    def _on_abort(self) -> None:
        self.map._remove(self.key, self)  # pyright: ignore[reportPrivateUsage]

    def _on_abandon(self, value: V) -> None:
        if self.taker:
            self.map._give_back(self.key, value)  # pyright: ignore[reportPrivateUsage]


@final
@ki_protected
class _Expected(_Waiter[V]):
    """The waiter of an :class:`Expectation`: linked when its block is entered,
    before its task parks (if it ever does), and so without a handle until then,
    as :class:`ParkedTask` makes them."""

    __slots__ = ()

    def __init__(
        self,
        waitmap: WaitMap[Any, V],
        binding: Binding,
        key: object,
        predicate: Callable[[V], object] | None,
        taker: bool,
    ) -> None:
        self._lock = waitmap._lock  # pyright: ignore[reportPrivateUsage]
        self._binding = binding
        self._handle = None  # made by the task that awaits, under the lock
        self._state = PENDING
        self._result = None
        self.map = waitmap
        self.key = key
        self.predicate = predicate
        self.taker = taker


def _iterate(awaitable: Awaitable[T]) -> Generator[Any, Any, T]:
    """What a generator yields from to await ``awaitable``: its ``__await__()``,
    or the awaitable itself for a generator-based coroutine, which has none."""
    await_ = getattr(awaitable, "__await__", None)
    return awaitable if await_ is None else await_()  # type: ignore[return-value]


def _unlinked_unresumed(waiter: _Waiter[Any]) -> None:
    """For a waiter that a hand-over unlinked and did not resume: its event loop
    has finished (DEAD), or its task is on its way out of its park with a
    cancellation that came first (still PENDING). Then it is marked as left,
    so that it does not unlink itself again."""
    if waiter._state == PENDING:  # pyright: ignore[reportPrivateUsage]
        waiter._state = ABORTED  # pyright: ignore[reportPrivateUsage]


@final
@ki_protected
class WaitMap(MutableMapping[K, V]):
    """A mapping whose lookups can be awaited, and a mailbox for parked tasks.

    As a :class:`~collections.abc.MutableMapping`, a ``WaitMap`` holds *stored*
    values, like a :class:`dict`. In addition, tasks can wait until a key has a
    value (:meth:`wait`, :meth:`take`, :meth:`wait_for`), and any thread can hand a
    value straight to the tasks waiting on a key (:meth:`wake`) without storing it.

    Every method is safe to call from any thread; waiting tasks may belong to
    different event loops (asyncio, uvloop or trio) in different threads.

    Args:
        exclusive: if true, at most one task may wait on a key at a time; a second
            one raises :exc:`~anyio_waitmap.DuplicateWaiter` instead of waiting.

    Two maps are equal only if they are the same object.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_data",
        "_dispatching",
        "_exclusive",
        "_lock",
        "_tasks_waiting",
        "_waiting",
    )

    def __init__(self, *, exclusive: bool = False) -> None:
        load_trio_support()
        self._data: dict[K, V] = {}
        # The waiters of each key with waiters: the only one, or a dict of them in
        # arrival order. A key has both a stored value and waiters only when every
        # one of those waiters is in wait_for() and rejected the stored value.
        self._waiting: dict[K, _Waiter[V] | dict[_Waiter[V], None]] = {}
        self._lock = new_lock()
        self._tasks_waiting = 0
        self._exclusive = exclusive
        self._closed = False
        self._dispatching = False

    # On the hot paths (wait, take, wait_for, wake, storing) the lock is taken
    # with acquire() and released in a finally clause: a with statement costs
    # twice as much. The one difference, an exception raised by a signal
    # handler just after acquire() returns, which would leave the lock held,
    # cannot happen on trio (these methods are protected from
    # KeyboardInterrupt) nor under asyncio.run on Python 3.11+ (Ctrl+C cancels
    # the main task instead). Elsewhere such an exception could as well
    # interrupt the update the lock guards, which no lock protects against.

    # After a wait, `if waiter._state == VALUE: return waiter._result` is
    # waiter._outcome()'s common case, inlined to save a call per hand-over.

    # -- waiting ---------------------------------------------------------------------

    async def wait(self, key: K) -> V:
        """Return the value of ``key``, waiting until there is one.

        If a value is stored under ``key``, it is returned (and stays stored).
        Otherwise the task waits until a value is stored under ``key`` or handed to
        it with :meth:`wake`, and returns that value.

        This is a checkpoint on every path. If the task is cancelled while waiting,
        it leaves nothing behind; if it had already been handed a value, it returns
        that value and the cancellation is raised at its next checkpoint.

        Raises:
            KeyCancelled: :meth:`cancel` or :meth:`cancel_all` was called for ``key``.
            WaitMapClosed: the map is or gets closed.
            TypeError: ``key`` is not hashable.
        """
        binding = current_binding("WaitMap.wait()")
        lock = self._lock
        try:
            lock.acquire()
            try:
                if self._closed:
                    self._refuse_closed("wait()")
                value = self._data.get(key, _MISSING)
                waiter = (
                    self._link(binding, key, None, False) if value is _MISSING else None
                )
            finally:
                lock.release()
        except (WaitMapClosed, DuplicateWaiter):
            await binding.checkpoint_if_cancelled()  # a cancellation comes first
            raise
        if waiter is not None:
            try:
                await binding.park(waiter)
            except BaseException as exc:
                if waiter._abort():  # pyright: ignore[reportPrivateUsage]
                    raise  # it left before anything was handed over
                return waiter._outcome_after(exc)  # pyright: ignore[reportPrivateUsage]
            if waiter._state == VALUE:  # pyright: ignore[reportPrivateUsage]
                return waiter._result  # type: ignore[no-any-return]  # pyright: ignore[reportPrivateUsage]
            return waiter._outcome()  # pyright: ignore[reportPrivateUsage]
        await binding.checkpoint()
        return cast("V", value)

    async def take(self, key: K) -> V:
        """Remove and return the value of ``key``, waiting until there is one.

        Like :meth:`wait`, but consuming: a stored value is removed, and each value
        goes to exactly one taker. Tasks taking the same key are served in the
        order they started waiting.

        This is a checkpoint on every path. A cancellation never loses a value:
        either the task leaves without one (nothing is removed, nothing is left
        behind), or it returns the value it took and the cancellation is raised at
        its next checkpoint.

        Raises:
            KeyCancelled: :meth:`cancel` or :meth:`cancel_all` was called for ``key``.
            WaitMapClosed: the map is or gets closed.
            TypeError: ``key`` is not hashable.
        """
        binding = current_binding("WaitMap.take()")
        lock = self._lock
        try:
            lock.acquire()
            try:
                if self._closed:
                    self._refuse_closed("take()")
                waiter = (
                    None if key in self._data else self._link(binding, key, None, True)
                )
            finally:
                lock.release()
        except (WaitMapClosed, DuplicateWaiter):
            await binding.checkpoint_if_cancelled()  # a cancellation comes first
            raise
        if waiter is None:
            # A value is stored. A pending cancellation is raised before
            # anything is consumed; then the value is taken, and the task yields
            # without letting a cancellation take it away again.
            await binding.checkpoint_if_cancelled()
            lock.acquire()
            try:
                if self._closed:
                    self._refuse_closed("take()")
                value = self._data.pop(key, _MISSING)
                if value is _MISSING:  # another thread took it meanwhile
                    waiter = self._link(binding, key, None, True)
            finally:
                lock.release()
            if waiter is None:
                try:
                    await binding.yield_keeping_value()
                except BaseException:
                    # Not a cancellation (that is kept for the next checkpoint):
                    # the task cannot return the value, so it is passed on.
                    self._give_back(key, value)
                    raise
                return value  # type: ignore[no-any-return]
        try:
            await binding.park(waiter)
        except BaseException as exc:
            if waiter._abort():  # pyright: ignore[reportPrivateUsage]
                raise  # it left before anything was handed over
            return waiter._outcome_after(exc)  # pyright: ignore[reportPrivateUsage]
        if waiter._state == VALUE:  # pyright: ignore[reportPrivateUsage]
            return waiter._result  # type: ignore[no-any-return]  # pyright: ignore[reportPrivateUsage]
        return waiter._outcome()  # pyright: ignore[reportPrivateUsage]

    async def wait_for(self, key: K, predicate: Callable[[V], object]) -> V:
        """Return the first value of ``key`` for which ``predicate`` is true.

        The stored value is tested first; then every value stored under ``key`` or
        handed to it with :meth:`wake`, until one matches. Values that do not match
        are ignored by this task (a matching stored value is not removed).

        ``predicate`` is called with the map's lock held, by whichever thread stores
        or hands over the value, so that :meth:`wake` can count exactly the tasks
        that will return the value. Keep it cheap and free of side effects; it must
        not store into, wake, cancel or close the map (that raises
        :exc:`RuntimeError` inside the predicate). If it raises an
        :exc:`Exception` while a value is handed over, this call raises it and the
        caller is not affected. Anything else it raises (:exc:`KeyboardInterrupt`,
        say) goes to the storing or waking caller instead, once the hand-over to
        the other tasks is complete and the value stored if it is a store; this
        task keeps waiting.

        This is a checkpoint on every path. If the task is cancelled while waiting,
        it leaves nothing behind; if it had already been handed a value, it returns
        that value and the cancellation is raised at its next checkpoint.

        Raises:
            Exception: whatever ``predicate`` raised; nothing stays registered.
            KeyCancelled: :meth:`cancel` or :meth:`cancel_all` was called for ``key``.
            WaitMapClosed: the map is or gets closed.
            TypeError: ``key`` is not hashable, or ``predicate`` is not callable.
        """
        if not callable(predicate):
            raise TypeError(
                f"wait_for() needs a callable predicate, got "
                f"{type(predicate).__name__!r} object"
            )
        binding = current_binding("WaitMap.wait_for()")
        # The predicate is the caller's code: it does not run for a task whose
        # cancellation is pending.
        await binding.checkpoint_if_cancelled()
        lock = self._lock
        try:
            lock.acquire()
            try:
                if self._closed:
                    self._refuse_closed("wait_for()")
                value = self._data.get(key, _MISSING)
                if value is not _MISSING:
                    self._dispatching = True
                    try:
                        matched = predicate(cast("V", value))
                    finally:
                        self._dispatching = False
                    if not matched:
                        value = _MISSING
                waiter = (
                    self._link(binding, key, predicate, False)
                    if value is _MISSING
                    else None
                )
            finally:
                lock.release()
        except (WaitMapClosed, DuplicateWaiter):
            await binding.checkpoint_if_cancelled()  # a cancellation comes first
            raise
        if waiter is not None:
            try:
                await binding.park(waiter)
            except BaseException as exc:
                if waiter._abort():  # pyright: ignore[reportPrivateUsage]
                    raise  # it left before anything was handed over
                return waiter._outcome_after(exc)  # pyright: ignore[reportPrivateUsage]
            if waiter._state == VALUE:  # pyright: ignore[reportPrivateUsage]
                return waiter._result  # type: ignore[no-any-return]  # pyright: ignore[reportPrivateUsage]
            return waiter._outcome()  # pyright: ignore[reportPrivateUsage]
        await binding.checkpoint()
        return cast("V", value)

    def expect(self, key: K, *, take: bool = True) -> Expectation[K, V]:
        """Register for the value of ``key`` now, to await it later.

        For a request whose reply may come back before the task that sent it
        gets to wait for it (sending is itself awaited)::

            with replies.expect(request_id) as reply:
                await send(request_id, payload)
                return await reply

        Entering the block registers a taker on ``key`` (a waiter, with
        ``take=False``) in the order of the key's waiters, at once and without
        yielding; a value stored under ``key`` at that moment is taken (read,
        with ``take=False``) at once. ``await reply`` then returns the value
        handed to it since, or waits for one exactly like :meth:`take` (or
        :meth:`wait`). Until then the expectation is one of the key's waiters:
        :meth:`wake` and :meth:`statistics` count it, and in an ``exclusive``
        map a second waiter on the key is refused. Leaving the block without
        having received the value unregisters; a value that was handed to it
        and not received is passed on, as if it had never been handed over: to
        the next taker waiting on ``key``, else into the store unless a value
        was stored there since (with ``take=False``, it is dropped).

        ``async with`` works as well, and checks for cancellation first: a task
        with a cancellation pending then gets it rather than
        :exc:`~anyio_waitmap.WaitMapClosed` or
        :exc:`~anyio_waitmap.DuplicateWaiter`. Leaving an ``async with`` block is
        not a checkpoint, so that a value received in it is never lost to a
        cancellation on the way out.

        Args:
            key: the key to expect a value for.
            take: whether to take the value (as :meth:`take`) or only read it
                (as :meth:`wait`).

        Raises:
            TypeError: ``key`` is not hashable.
        """
        hash(key)
        return Expectation(self, key, take)

    # -- handing over ----------------------------------------------------------------

    def wake(self, key: K, value: V) -> WakeOutcome[V]:
        """Hand ``value`` to the tasks waiting on ``key`` now, without storing it.

        Every task in :meth:`wait`, every task in :meth:`wait_for` whose predicate
        accepts ``value``, and the first task in :meth:`take` receive it. Never
        blocks; callable from any thread.

        Returns:
            :class:`~anyio_waitmap.Woke` with the number of tasks that will return
            ``value``; :class:`~anyio_waitmap.NoMatch` holding ``value`` if no task
            received it; :class:`~anyio_waitmap.Closed` holding ``value`` if the map
            is closed.

        Raises:
            TypeError: ``key`` is not hashable.
        """
        if (
            self._waiting.get(key) is None
            and not self._closed
            and not self._dispatching
        ):
            # Nobody waits on key (a common case: a late reply): no need for the
            # lock. A task that starts waiting at the same time comes after this
            # wake-up, as it would if it had taken the lock just after it.
            outcome = new_outcome(NoMatch)
            store_no_match_value(outcome, value)
            return outcome
        lock = self._lock
        lock.acquire()
        try:
            entry = self._waiting.get(key)
            if self._closed:
                return Closed(value)
            if self._dispatching:
                self._refuse_while_dispatching("wake()")
            if entry is None:
                return NoMatch(value)
            if (type(entry) is _Waiter and entry.predicate is None) or type(
                entry
            ) is _Expected:
                # One waiter that takes any value (an expectation takes any):
                # the common case, inlined.
                del self._waiting[key]
                self._tasks_waiting -= 1
                # ParkedTask.wake_locked(), inlined: a linked waiter is pending.
                entry._result = value  # pyright: ignore[reportPrivateUsage]
                entry._state = VALUE  # pyright: ignore[reportPrivateUsage]
                handle = entry._handle  # pyright: ignore[reportPrivateUsage]
                if handle is None:
                    # An expectation whose task has not parked: it finds the
                    # value when it does.
                    return _WOKE_ONE
                try:
                    resumed = entry._binding.unpark(handle)  # pyright: ignore[reportPrivateUsage]
                except BaseException:
                    entry._state = DEAD  # pyright: ignore[reportPrivateUsage]
                    entry._result = None  # pyright: ignore[reportPrivateUsage]
                    raise
                if resumed:
                    return _WOKE_ONE
                entry._state = DEAD if resumed is False else ABORTED  # pyright: ignore[reportPrivateUsage]
                entry._result = None  # pyright: ignore[reportPrivateUsage]
                return NoMatch(value)
            woken, _, interrupt = self._dispatch(key, value, entry)
        finally:
            lock.release()
        if interrupt is not None:
            raise interrupt
        if woken:
            # Outcomes are immutable, so the most common one is made once.
            return _WOKE_ONE if woken == 1 else Woke(woken)
        return NoMatch(value)

    def __setitem__(self, key: K, value: V) -> None:
        """Store ``value`` under ``key`` and wake the tasks waiting on it.

        Every task in :meth:`wait` and every task in :meth:`wait_for` whose
        predicate accepts ``value`` returns it. If a task is in :meth:`take`, the
        first one receives ``value`` and it is *not* stored.

        Raises:
            WaitMapClosed: the map is closed.
            TypeError: ``key`` is not hashable.
        """
        lock = self._lock
        lock.acquire()
        try:
            entry = self._waiting.get(key)
            if self._closed:
                self._refuse_closed("store a value in")
            if self._dispatching:
                self._refuse_while_dispatching("storing a value")
            if entry is not None:
                # Compare key with the stored keys first: a key that fails to
                # compare then fails here, before any task is handed the value.
                self._data.get(key)
                self._hand_over_or_store(key, value, entry)
                return
            self._data[key] = value
        finally:
            lock.release()

    # A default is required: None is not a value of every WaitMap.
    def setdefault(self, key: K, default: V) -> V:  # pyright: ignore[reportIncompatibleMethodOverride]
        """Return the value of ``key``; if there is none, store ``default``.

        Storing goes through the same path as ``wm[key] = default``: waiting tasks
        receive ``default``, and a task in :meth:`take` consumes it.

        Raises:
            WaitMapClosed: the map is closed and ``key`` has no stored value.
        """
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
            self[key] = default
        return default

    def cancel(self, key: K) -> int:
        """Make every task waiting on ``key`` raise :exc:`~anyio_waitmap.KeyCancelled`.

        Stored values are untouched. Callable from any thread.

        Returns:
            How many tasks will raise it.
        """
        hash(key)  # dict.pop() skips hashing when the dict is empty
        with self._lock:
            if self._dispatching:
                self._refuse_while_dispatching("cancel()")
            entry = self._waiting.pop(key, None)
            if entry is None:
                return 0
            self._tasks_waiting -= len(entry) if isinstance(entry, dict) else 1
            return self._throw([(key, entry)], KeyCancelled)

    def cancel_all(self) -> int:
        """:meth:`cancel` every key that has waiting tasks.

        Returns:
            How many tasks will raise :exc:`~anyio_waitmap.KeyCancelled`.
        """
        with self._lock:
            if self._dispatching:
                self._refuse_while_dispatching("cancel_all()")
            return self._throw_all(KeyCancelled)

    def close(self) -> None:
        """Close the map for good; idempotent.

        Every waiting task, and every later :meth:`wait`, :meth:`take` or
        :meth:`wait_for`, raises :exc:`~anyio_waitmap.WaitMapClosed`. Storing
        raises it too, and :meth:`wake` returns :class:`~anyio_waitmap.Closed`.
        Stored values stay readable and removable.
        """
        with self._lock:
            if self._closed:
                return
            if self._dispatching:
                self._refuse_while_dispatching("close()")
            self._closed = True
            self._throw_all(
                lambda key: WaitMapClosed(
                    f"the WaitMap was closed while this task was waiting on key {key!r}"
                )
            )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def exclusive(self) -> bool:
        """Whether at most one task may wait on a key at a time."""
        return self._exclusive

    def statistics(self) -> WaitMapStatistics:
        """Return a snapshot of the map's counts."""
        with self._lock:
            return WaitMapStatistics(
                tasks_waiting=self._tasks_waiting,
                keys_waiting=len(self._waiting),
                values_stored=len(self._data),
                closed=self._closed,
            )

    def __repr__(self) -> str:
        flags = "".join(
            [
                ", exclusive" if self._exclusive else "",
                ", closed" if self._closed else "",
            ]
        )
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} "
            f"{len(self._data)} stored, {self._tasks_waiting} waiting on "
            f"{len(self._waiting)} keys{flags}>"
        )

    # -- the mapping of stored values ----------------------------------------------

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        """Iterate over a snapshot of the stored keys."""
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...
    def get(self, key: K, default: object = None, /) -> object:
        """Return the value stored under ``key``, or ``default``; never waits."""
        return self._data.get(key, default)

    @overload
    def pop(self, key: K, /) -> V: ...
    @overload
    def pop(self, key: K, default: V | D, /) -> V | D: ...
    def pop(self, key: K, default: object = _MISSING, /) -> object:
        """Remove and return the value stored under ``key``; never waits.

        Raises:
            KeyError: no value is stored under ``key`` and no default was given.
        """
        hash(key)  # dict.pop() skips hashing when the dict is empty
        with self._lock:
            if default is _MISSING:
                return self._data.pop(key)
            return self._data.pop(key, default)

    def popitem(self) -> tuple[K, V]:
        """Remove and return the most recently stored ``(key, value)`` pair.

        Raises:
            KeyError: no value is stored.
        """
        with self._lock:
            return self._data.popitem()

    def clear(self) -> None:
        """Remove every stored value; waiting tasks are not affected."""
        with self._lock:
            self._data.clear()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__  # pyright: ignore[reportAssignmentType]

    # -- internals: everything below runs with self._lock held -----------------------

    # The checks are inlined at each call site (`if self._closed:`), since a call
    # costs more than the test on the hot paths; these only raise.

    def _refuse_closed(self, operation: str) -> NoReturn:
        raise WaitMapClosed(f"cannot {operation} a closed WaitMap")

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
    ) -> _Waiter[V]:
        waiting = self._waiting
        entry = waiting.get(key)
        if entry is not None and self._exclusive:
            raise DuplicateWaiter(
                f"another task is already waiting on key {key!r} of this exclusive "
                f"WaitMap"
            )
        waiter = (_Expected if expected else _Waiter)(
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

    def _remove(self, key: Any, waiter: _Waiter[Any]) -> None:
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
            if waiter._state != ABORTED:  # pyright: ignore[reportPrivateUsage]
                raise
            # The task leaves (this is its _on_abort()), and its key no longer
            # hashes or compares as it did when it was linked (its __hash__
            # reads state that changed, say). The waiter must go all the same:
            # on trio this runs in the abort function, which must not fail.
            self._remove_by_identity(waiter)
        if not linked:  # pragma: no cover - would be a bookkeeping bug
            raise AssertionError(f"waiter for {key!r} is not linked")
        self._tasks_waiting -= 1

    def _remove_by_identity(self, waiter: _Waiter[Any]) -> None:
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

    def _matches(self, key: Any, waiter: _Waiter[V], value: V) -> bool:
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
                _unlinked_unresumed(waiter)
            return False
        finally:
            self._dispatching = False
        return False

    def _dispatch(
        self, key: K, value: V, entry: _Waiter[V] | dict[_Waiter[V], None]
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
                if waiter._state != PENDING:  # pyright: ignore[reportPrivateUsage]
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
            _unlinked_unresumed(waiter)
            return 0, False, None

        woken = 0
        taken = False
        interrupt: BaseException | None = None
        # A snapshot: a trio abort function may unlink a waiter while we run a
        # predicate (if that predicate cancels a scope), changing the dict.
        for waiter in tuple(entry):
            if waiter._state != PENDING:  # pyright: ignore[reportPrivateUsage]
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
                if waiter._state != PENDING:  # pyright: ignore[reportPrivateUsage]
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
                _unlinked_unresumed(waiter)
        return woken, taken, interrupt

    def _hand_over_or_store(
        self, key: K, value: V, entry: _Waiter[V] | dict[_Waiter[V], None]
    ) -> None:
        """Hand ``value`` to the waiters of ``key``, and store it unless a taker
        took it; then raise what the hand-over could not keep from the caller."""
        _, taken, interrupt = self._dispatch(key, value, entry)
        if not taken:
            self._data[key] = value
        if interrupt is not None:
            raise interrupt

    def _throw_all(self, make_error: Callable[[Any], BaseException]) -> int:
        waiting = self._waiting
        self._waiting = {}
        self._tasks_waiting = 0
        return self._throw(waiting.items(), make_error)

    @staticmethod
    def _throw(
        unlinked: Iterable[tuple[K, _Waiter[V] | dict[_Waiter[V], None]]],
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
                        _unlinked_unresumed(waiter)
                except BaseException as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure
        return count

    def _give_back(self, key: Any, value: V) -> None:
        """A taker left with an exception after receiving ``value``: pass it on.

        The value is treated as if it had been stored when it was handed over and
        nobody had taken it: if a value was stored under ``key`` since, that later
        store replaced it, exactly as a second ``wm[key] = v`` replaces the first.
        Otherwise the next taker receives it, or it is stored (even in a closed
        map: stored values stay readable after :meth:`close`).
        """
        with self._lock:
            if key in self._data:
                return
            entry = self._waiting.get(key)
            if entry is not None and not self._closed:
                self._hand_over_or_store(key, value, entry)
                return
            self._data[key] = value


@final
@ki_protected
class Expectation(Generic[K, V]):
    """A registration for the value of one key, made by :meth:`WaitMap.expect`.

    Use it as a context manager (``with`` or ``async with``), and ``await`` it
    once inside the block, in the task that entered it.
    """

    __slots__ = ("_left", "_map", "_received", "_taker", "_waiter", "key")

    def __init__(self, waitmap: WaitMap[K, V], key: K, taker: bool) -> None:
        self._map = waitmap
        #: The key whose value is expected.
        self.key: K = key
        self._taker = taker
        self._waiter: _Waiter[V] | None = None
        # The await began (None), or returned or raised what was handed over
        # (True): then nothing is left to pass on when the block is left.
        self._received: bool | None = False
        self._left = False

    @property
    def take(self) -> bool:
        """Whether the value is taken (as by :meth:`WaitMap.take`) or read."""
        return self._taker

    def __enter__(self) -> Expectation[K, V]:
        """Register; see :meth:`WaitMap.expect`.

        Raises:
            anyio.NoEventLoopError: no asyncio or trio task is running in this
                thread.
            WaitMapClosed: the map is closed.
            DuplicateWaiter: the map is ``exclusive`` and ``key`` has a waiter.
            RuntimeError: the block was entered before.
        """
        if self._waiter is not None or self._left:
            raise RuntimeError("an expectation can be entered only once")
        binding = current_binding("WaitMap.expect()")
        wm = self._map
        key = self.key
        lock = wm._lock  # pyright: ignore[reportPrivateUsage]
        lock.acquire()
        try:
            if wm._closed:  # pyright: ignore[reportPrivateUsage]
                wm._refuse_closed("expect a value from")  # pyright: ignore[reportPrivateUsage]
            value = wm._data.get(key, _MISSING)  # pyright: ignore[reportPrivateUsage]
            if value is _MISSING:
                self._waiter = wm._link(binding, key, None, self._taker, True)  # pyright: ignore[reportPrivateUsage]
            else:
                # A value is there: received at once, and not linked.
                waiter = self._waiter = _Expected(wm, binding, key, None, self._taker)
                if self._taker:
                    del wm._data[key]  # pyright: ignore[reportPrivateUsage]
                waiter._result = value  # pyright: ignore[reportPrivateUsage]
                waiter._state = VALUE  # pyright: ignore[reportPrivateUsage]
        finally:
            lock.release()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Unregister, or pass on a value that was handed over and not received."""
        waiter = self._waiter
        if waiter is None or self._left:
            return
        self._left = True
        if self._received:
            return  # the common case: no lock needed
        wm = self._map
        lock = wm._lock  # pyright: ignore[reportPrivateUsage]
        lock.acquire()
        try:
            state = waiter._state  # pyright: ignore[reportPrivateUsage]
            if state == PENDING:
                # Linked, and never handed anything.
                wm._remove(self.key, waiter)  # pyright: ignore[reportPrivateUsage]
                if waiter._handle is not None and waiter.throw_locked(  # pyright: ignore[reportPrivateUsage]
                    RuntimeError("the block of the expectation awaited was left")
                ):
                    # Another task is parked on it: it must not wait forever.
                    return
                _unlinked_unresumed(waiter)
                return
            value = waiter._result  # pyright: ignore[reportPrivateUsage]
            waiter._result = None  # pyright: ignore[reportPrivateUsage]
            if state == VALUE and self._received is False and self._taker:
                wm._give_back(self.key, value)  # pyright: ignore[reportPrivateUsage]
        finally:
            lock.release()

    async def __aenter__(self) -> Expectation[K, V]:
        """Register, after a checkpoint: a pending cancellation comes first."""
        await current_binding("WaitMap.expect()").checkpoint()
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """As :meth:`__exit__`; not a checkpoint."""
        self.__exit__(exc_type, exc_value, traceback)

    # A generator rather than a coroutine method: awaiting it then costs no
    # coroutine object and no frame of its own on each resumption.
    def __await__(self) -> Generator[Any, Any, V]:
        waiter = self._waiter
        if waiter is None or self._left:
            raise RuntimeError(
                "await an expectation inside its with block, once it is entered"
            )
        if self._received is not False:
            raise RuntimeError("an expectation can be awaited only once")
        self._received = None
        # The binding of the task that entered the block, which awaits it too.
        # (Awaited in another asyncio loop, or outside of trio, the backend
        # refuses the park; only a task of another trio run would get as far
        # as parking, and the map looks nothing up on every await for that.)
        binding = waiter._binding  # pyright: ignore[reportPrivateUsage]
        if waiter._prepare_park(binding):  # pyright: ignore[reportPrivateUsage]
            # Handed over while the block ran. A pending cancellation comes
            # first (and __exit__ passes the value on); then the value is the
            # task's, and a cancellation while it yields is kept for later.
            try:
                yield from _iterate(binding.checkpoint_if_cancelled())
                yield from _iterate(binding.yield_keeping_value())
            except BaseException:
                self._received = False  # not received: __exit__ passes it on
                raise
            self._received = True
            return waiter._outcome()  # pyright: ignore[reportPrivateUsage]
        try:
            yield from binding.park(waiter).__await__()
        except BaseException as exc:
            # Nothing is left to pass on: the task left before anything was
            # handed over, or it returns the value, or gave it back.
            self._received = True
            if waiter._abort():  # pyright: ignore[reportPrivateUsage]
                raise
            return waiter._outcome_after(exc)  # pyright: ignore[reportPrivateUsage]
        self._received = True
        if waiter._state == VALUE:  # pyright: ignore[reportPrivateUsage]
            return waiter._result  # type: ignore[no-any-return]  # pyright: ignore[reportPrivateUsage]
        return waiter._outcome()  # pyright: ignore[reportPrivateUsage]

    def __repr__(self) -> str:
        waiter = self._waiter
        if self._left:
            state = "left"
        elif waiter is None:
            state = "not entered"
        elif waiter._state == PENDING:  # pyright: ignore[reportPrivateUsage]
            state = "waiting"
        else:
            state = "received" if self._received else "handed over"
        kind = "take" if self._taker else "wait"
        return f"<anyio_waitmap.Expectation {kind} {self.key!r} {state}>"
