"""What :meth:`WaitMap.wake <anyio_waitmap.WaitMap.wake>` returns, and statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, final

V = TypeVar("V")


@final
@dataclass(frozen=True, slots=True)
class Woke:
    """``count`` parked tasks received the value (``count >= 1``).

    Each of them returns the value from its ``wait``, ``take`` or ``wait_for``.
    True in a boolean context (the other outcomes are false), so that
    ``if wm.wake(key, value):`` tests whether anybody received it.
    """

    count: int

    def __bool__(self) -> Literal[True]:
        return True


@final
@dataclass(frozen=True, slots=True)
class NoMatch(Generic[V]):
    """No parked task received ``value``; it is handed back to the caller.

    False in a boolean context.
    """

    value: V

    def __bool__(self) -> Literal[False]:
        return False


# WaitMap.wake() on a key nobody waits on returns a fresh NoMatch, and that is
# its common case (a late reply). NoMatch(value) runs the generated __init__, a
# Python frame that stores the field with object.__setattr__; wake() makes the
# same object with these two C calls instead: new_outcome(NoMatch), then
# store_no_match_value(outcome, value).
new_outcome: Final[Callable[[type[NoMatch[Any]]], NoMatch[Any]]] = object.__new__
store_no_match_value: Final[Callable[[NoMatch[Any], object], None]] = vars(NoMatch)[
    "value"
].__set__


@final
@dataclass(frozen=True, slots=True)
class Closed(Generic[V]):
    """The map is closed; ``value`` is handed back to the caller.

    False in a boolean context.
    """

    value: V

    def __bool__(self) -> Literal[False]:
        return False


#: The result of :meth:`WaitMap.wake <anyio_waitmap.WaitMap.wake>`:
#: ``Woke | NoMatch[V] | Closed[V]``.
WakeOutcome: TypeAlias = Woke | NoMatch[V] | Closed[V]


@final
@dataclass(frozen=True, slots=True)
class WaitMapStatistics:
    """A snapshot of a :class:`~anyio_waitmap.WaitMap`, from
    :meth:`~anyio_waitmap.WaitMap.statistics`."""

    #: Tasks parked in ``wait``, ``take`` or ``wait_for``.
    tasks_waiting: int
    #: Distinct keys with at least one parked task.
    keys_waiting: int
    #: Values stored in the map (its ``len()``).
    values_stored: int
    #: Whether :meth:`~anyio_waitmap.WaitMap.close` was called.
    closed: bool
