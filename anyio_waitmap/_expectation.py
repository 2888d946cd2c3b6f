"""Expectation: a registration for a key's value, made before the task waits."""

# A friend of ParkedTask (_parking.py) and of the registry (_registry.py): it
# registers and resolves its waiter itself, under the map's lock.
# pyright: reportPrivateUsage=false

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final

from ._backends import current_binding, ki_protected
from ._parking import PENDING, VALUE
from ._registry import ExpectedWaiter, KeyWaiter, unlinked_unresumed

if TYPE_CHECKING:
    from types import TracebackType

    from ._waitmap import WaitMap

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_MISSING: Final[Any] = object()


def _iterate(awaitable: Awaitable[T]) -> Generator[Any, Any, T]:
    """What a generator yields from to await ``awaitable``: its ``__await__()``,
    or the awaitable itself for a generator-based coroutine, which has none."""
    await_ = getattr(awaitable, "__await__", None)
    return awaitable if await_ is None else await_()  # type: ignore[return-value]


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
        self._waiter: KeyWaiter[V] | None = None
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
                thread (a :exc:`RuntimeError`; a plain :exc:`RuntimeError`
                with anyio 4.9 and 4.10, which do not have it).
            WaitMapClosed: the map is closed.
            DuplicateWaiter: the map is ``exclusive`` and ``key`` has a waiter.
            RuntimeError: the block was entered before.
        """
        if self._waiter is not None or self._left:
            raise RuntimeError("an expectation can be entered only once")
        binding = current_binding("WaitMap.expect()")
        wm = self._map
        key = self.key
        lock = wm._lock
        lock.acquire()
        try:
            if wm._closed:
                wm._refuse_closed("expect a value from")
            value = wm._data.get(key, _MISSING)
            if value is _MISSING:
                self._waiter = wm._link(binding, key, None, self._taker, True)
            else:
                # A value is there: received at once, and not linked.
                waiter = self._waiter = ExpectedWaiter(
                    wm, binding, key, None, self._taker
                )
                if self._taker:
                    del wm._data[key]
                waiter._result = value
                waiter._state = VALUE
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
        lock = wm._lock
        lock.acquire()
        try:
            state = waiter._state
            if state == PENDING:
                # Linked, and never handed anything.
                wm._remove(self.key, waiter)
                if waiter._handle is not None and waiter.throw_locked(
                    RuntimeError("the block of the expectation awaited was left")
                ):
                    # Another task is parked on it: it must not wait forever.
                    return
                unlinked_unresumed(waiter)
                return
            value = waiter._result
            waiter._result = None
            if state == VALUE and self._received is False and self._taker:
                wm._give_back(self.key, value)
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
        binding = waiter._binding
        if waiter._prepare_park(binding):
            # Handed over while the block ran. A pending cancellation comes
            # first (and __exit__ passes the value on); then the value is the
            # task's, and a cancellation while it yields is kept for later.
            try:
                yield from _iterate(binding.checkpoint_if_cancelled())
                yield from _iterate(binding.cancel_shielded_checkpoint())
            except BaseException:
                self._received = False  # not received: __exit__ passes it on
                raise
            self._received = True
            return waiter._outcome()
        try:
            yield from binding.park(waiter).__await__()
        except BaseException as exc:
            # Nothing is left to pass on: the task left before anything was
            # handed over, or it returns the value, or gave it back.
            self._received = True
            if waiter._abort():
                raise
            return waiter._outcome_after(exc)
        self._received = True
        if waiter._state == VALUE:
            return waiter._result  # type: ignore[no-any-return]
        return waiter._outcome()

    def __repr__(self) -> str:
        waiter = self._waiter
        if self._left:
            state = "left"
        elif waiter is None:
            state = "not entered"
        elif waiter._state == PENDING:
            state = "waiting"
        else:
            state = "received" if self._received else "handed over"
        kind = "take" if self._taker else "wait"
        return f"<anyio_waitmap.Expectation {kind} {self.key!r} {state}>"
