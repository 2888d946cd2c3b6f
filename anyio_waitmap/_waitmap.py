"""WaitMap: a mutable mapping whose lookups can be awaited.

The public API: the mapping of stored values, the waits, the hand-overs. Who
waits on which key, and how a value reaches them, is the registry's
(:mod:`._registry`), which this class extends.
"""

# A friend of ParkedTask (_parking.py) and of the registry (_registry.py): the
# hot paths below link, park and resolve waiters with their steps written out.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final, NoReturn, TypeVar, cast, final, overload

from ._backends import current_binding, ki_protected, load_trio_support
from ._exceptions import DuplicateWaiter, KeyCancelled, WaitMapClosed
from ._expectation import Expectation
from ._outcomes import (
    Closed,
    NoMatch,
    WaitMapStatistics,
    WakeOutcome,
    Woke,
    new_outcome,
    store_no_match_value,
)
from ._parking import ABORTED, DEAD, VALUE, new_lock
from ._registry import ExpectedWaiter, KeyWaiter, WaiterRegistry

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Final[Any] = object()
_WOKE_ONE: Final = Woke(1)


@final
@ki_protected
class WaitMap(WaiterRegistry[K, V], MutableMapping[K, V]):
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

    __slots__ = ("__weakref__", "_closed", "_data")

    def __init__(self, *, exclusive: bool = False) -> None:
        load_trio_support()
        super().__init__(new_lock(), exclusive)
        # The stored values. A key has both a stored value and waiters only when
        # every one of those waiters is in wait_for() and rejected that value.
        self._data: dict[K, V] = {}
        self._closed = False

    # On the hot paths (wait, take, wait_for, wake, storing) the lock is taken
    # with acquire() and released in a finally clause: a with statement costs
    # twice as much. The one difference, an exception raised by a signal
    # handler just after acquire() returns, which would leave the lock held,
    # cannot happen on trio (these methods are protected from
    # KeyboardInterrupt) nor under asyncio.run on Python 3.11+ (Ctrl+C cancels
    # the main task instead). Elsewhere such an exception could as well
    # interrupt the update the lock guards, which no lock protects against.

    # Copies kept for speed, each measured with callgrind against the call it
    # replaces (instructions per operation of benchmarks-like loops, driven by
    # hand; PYTHONHASHSEED=0, so the counts repeat exactly):
    # * wait(), take() and wait_for() each park and return with the steps of
    #   ParkedTask.park() written out, and `if waiter._state == VALUE: return
    #   waiter._result` for _outcome()'s common case: a shared coroutine costs
    #   7.8 % more per wait, wake and resumption (a coroutine frame more on the
    #   way in and on every resumption);
    # * wake() hands over to a lone waiter with the steps of wake_locked():
    #   calling it costs 3.9 % more per wait, wake and resumption.

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
                if waiter._abort():
                    raise  # it left before anything was handed over
                return waiter._outcome_after(exc)
            if waiter._state == VALUE:
                return waiter._result  # type: ignore[no-any-return]
            return waiter._outcome()
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
                    await binding.cancel_shielded_checkpoint()
                except BaseException:
                    # Not a cancellation (that is kept for the next checkpoint):
                    # the task cannot return the value, so it is passed on.
                    self._give_back(key, value)
                    raise
                return value  # type: ignore[no-any-return]
        try:
            await binding.park(waiter)
        except BaseException as exc:
            if waiter._abort():
                raise  # it left before anything was handed over
            return waiter._outcome_after(exc)
        if waiter._state == VALUE:
            return waiter._result  # type: ignore[no-any-return]
        return waiter._outcome()

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
                if waiter._abort():
                    raise  # it left before anything was handed over
                return waiter._outcome_after(exc)
            if waiter._state == VALUE:
                return waiter._result  # type: ignore[no-any-return]
            return waiter._outcome()
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
            if (type(entry) is KeyWaiter and entry.predicate is None) or type(
                entry
            ) is ExpectedWaiter:
                # One waiter that takes any value (an expectation takes any):
                # the common case, inlined.
                del self._waiting[key]
                self._tasks_waiting -= 1
                # ParkedTask.wake_locked(), written out (see the top of the
                # class): a linked waiter is pending.
                entry._result = value
                entry._state = VALUE
                handle = entry._handle
                if handle is None:
                    # An expectation whose task has not parked: it finds the
                    # value when it does.
                    return _WOKE_ONE
                try:
                    resumed = entry._binding.unpark(handle)
                except BaseException:
                    entry._state = DEAD
                    entry._result = None
                    raise
                if resumed:
                    return _WOKE_ONE
                entry._state = DEAD if resumed is False else ABORTED
                entry._result = None
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

    # The check is written out at each call site (`if self._closed:`), since a
    # call costs more than the test on the hot paths; this only raises.

    def _refuse_closed(self, operation: str) -> NoReturn:
        raise WaitMapClosed(f"cannot {operation} a closed WaitMap")

    def _hand_over_or_store(
        self, key: K, value: V, entry: KeyWaiter[V] | dict[KeyWaiter[V], None]
    ) -> None:
        """Hand ``value`` to the waiters of ``key``, and store it unless a taker
        took it; then raise what the hand-over could not keep from the caller."""
        _, taken, interrupt = self._dispatch(key, value, entry)
        if not taken:
            self._data[key] = value
        if interrupt is not None:
            raise interrupt

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
