"""RedisWaitMap: waiting and waking across processes, with Redis holding the state.

How a hand-over goes. A task that waits registers with a script (``register``):
its registration joins the key's takers or waiters in Redis, in order. A wake
or a store runs ``handover``, which moves the value to the registrations that
receive it (``D``, what each holds) and rings each one's doorbell: a pub/sub
message to the owning process, carrying a copy of the outcome. The process's
receiver hands the outcome to its task through an in-process
:class:`~anyio_waitmap.WaitMap` keyed by registration; the task returns it, and
the process acknowledges it (``release`` with ``ack``), which removes it from
Redis. Redis holds the truth throughout: a doorbell only saves a read, and
after the subscription was down the receiver reads what its registrations
hold. A task that leaves without its outcome releases its registration, which
passes on a value it was handed. An instance whose lease ran out (its process
died, or was cut off for longer than the lease) is reclaimed by the others
(``reclaim``): its registrations go, and values its takers held go on.
"""

# A friend of the in-process map (_waitmap.py): the local fan-out uses its
# expectations keyed by registration.
# pyright: reportPrivateUsage=false

from __future__ import annotations

import itertools
import math
import secrets
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, cast, final, overload
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import coredis
import coredis.exceptions
from anyio.abc import TaskGroup, TaskStatus
from coredis.commands import Script
from coredis.retry import NoRetryPolicy

from .._exceptions import KeyCancelled, WaitMapClosed
from .._expectation import Expectation
from .._outcomes import Closed, NoMatch, WakeOutcome, Woke
from .._sink import WakeSink
from .._waitmap import WaitMap
from ._codec import Codec, RedisKey, decode_value, encode_key, encode_value
from ._layout import Layout
from ._scripts import NAMES, source

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

V = TypeVar("V")

_MISSING: Final[Any] = object()
#: The lease of an instance: how long the others wait, after its last refresh,
#: before they reclaim what it held.
DEFAULT_LEASE: Final = 10.0
#: How long a command may take to connect or to be answered.
DEFAULT_TIMEOUT: Final = 5.0
#: The most background operations sent in one go.
_BATCH: Final = 64
#: Reconnection delays of the receiver and of the background work.
_FIRST_DELAY: Final = 0.05
_MAX_DELAY: Final = 1.0


class RedisUnavailable(ConnectionError):
    """Redis could not be reached, or did not answer, in the map's ``timeout``.

    The operation's outcome is unknown when the request went out and its reply
    was lost: a wake or a store may have taken place. Tasks already waiting are
    not affected: they keep waiting, and carry on once Redis is back.
    """


@final
@dataclass(frozen=True, slots=True)
class RedisWaitMapStatistics:
    """A snapshot of one :class:`RedisWaitMap` instance (this process's part)."""

    #: Tasks of this instance waiting in ``take``, ``wait`` or an expectation.
    tasks_waiting: int
    #: Distinct keys they wait on.
    keys_waiting: int
    #: Acknowledgements and releases not yet carried out in Redis.
    pending_operations: int
    #: Whether the doorbell subscription is up.
    subscribed: bool
    #: Whether the instance was closed.
    closed: bool


_Errors = (coredis.exceptions.ConnectionError, TimeoutError)


def _unavailable(exc: BaseException, where: str) -> RedisUnavailable:
    return RedisUnavailable(f"Redis at {where} is unreachable or did not answer: {exc}")


def _only_unavailability(group: BaseExceptionGroup[Any]) -> bool:
    _, rest = group.split(_Errors)
    return rest is None


@final
class RedisWaitMap(Generic[V]):
    """A map of keys that tasks of any process can wait on and wake.

    Make one with :meth:`connect` and open it with ``async with``; see
    :doc:`/redis` for the guarantees. Keys are ``str``, ``bytes`` or ``int``;
    values are ``bytes`` or ``str`` (each comes back as itself) unless a
    ``codec`` says otherwise.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_codec",
        "_counter",
        "_layout",
        "_lease",
        "_local",
        "_opened",
        "_options",
        "_owner",
        "_pending",
        "_scripts",
        "_shown_url",
        "_stack",
        "_subscribed",
        "_task_group",
        "_timeout",
        "_url",
        "_waiting",
        "_work",
    )

    def __init__(
        self,
        url: str,
        name: str,
        codec: Codec | None,
        lease: float,
        timeout: float,
        options: dict[str, Any],
    ) -> None:
        if not math.isfinite(lease) or lease <= 0:
            raise ValueError(
                f"lease must be a positive number of seconds, not {lease!r}"
            )
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(
                f"timeout must be a positive number of seconds, not {timeout!r}"
            )
        if not isinstance(cast("object", codec), Codec | None):
            raise TypeError(
                f"codec must have encode() and decode() methods, not {codec!r}"
            )
        for reserved in ("decode_responses", "retry_policy"):
            if reserved in options:
                raise TypeError(f"{reserved} is the map's own; it cannot be passed")
        self._url = url
        self._shown_url = _without_password(url)
        self._layout = Layout(name)
        self._codec = codec
        self._lease = lease
        self._timeout = timeout
        self._options = options
        #: This instance's name in Redis: its registrations and doorbell.
        self._owner = secrets.token_hex(6)
        self._counter = itertools.count()
        self._local: WaitMap[str, bytes] = WaitMap()
        #: Registrations waiting for their outcome: registration -> encoded key.
        self._waiting: dict[str, str] = {}
        #: Releases and acknowledgements to carry out: (registration, key, ack).
        self._pending: deque[tuple[str, str, bool]] = deque()
        self._work = WakeSink()
        self._opened = False
        self._closed = False
        self._subscribed = False
        self._client: coredis.Redis[bytes] | None = None
        self._scripts: dict[str, Script[bytes]] = {}
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None

    @overload
    @classmethod
    def connect(
        cls,
        url: str,
        *,
        name: str,
        codec: None = None,
        lease: float = DEFAULT_LEASE,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> RedisWaitMap[bytes | str]: ...
    @overload
    @classmethod
    def connect(
        cls,
        url: str,
        *,
        name: str,
        codec: Codec,
        lease: float = DEFAULT_LEASE,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> RedisWaitMap[Any]: ...
    @classmethod
    def connect(
        cls,
        url: str,
        *,
        name: str,
        codec: Codec | None = None,
        lease: float = DEFAULT_LEASE,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> RedisWaitMap[Any]:
        """A map named ``name`` in the Redis at ``url``, to open with ``async with``.

        Args:
            url: a ``redis://`` or ``rediss://`` URL (with a password and a
                database number if needed).
            name: separates maps that share a Redis.
            codec: turns values into bytes and back (:class:`JsonCodec`, or one
                of your own); without one, values are ``bytes`` or ``str``.
            lease: seconds after which, if this instance stops refreshing its
                lease (its process died), the other instances reclaim what it
                held: its registrations go, and values handed to it and not yet
                acknowledged go on to the next taker or back into the store.
            timeout: seconds to connect to Redis or to wait for an answer, after
                which a call raises :exc:`RedisUnavailable`.
            options: passed on to :meth:`coredis.Redis.from_url` (TLS settings,
                ``max_connections``, ...).

        Raises:
            ValueError: ``lease`` or ``timeout`` is not a positive number.
            TypeError: ``name`` is not a non-empty ``str``, ``codec`` has no
                ``encode`` and ``decode``, or an option is the map's own.
        """
        return cls(url, name, codec, lease, timeout, options)

    # -- opening and closing ---------------------------------------------------------

    async def __aenter__(self) -> RedisWaitMap[V]:
        """Connect, take the lease, subscribe to the doorbell, and start the
        background tasks (the receiver, the lease, the reaper, the work).

        Raises:
            RedisUnavailable: Redis could not be reached within ``timeout``.
            RuntimeError: the map was opened before.
        """
        if self._opened:
            raise RuntimeError("a RedisWaitMap can be opened only once")
        self._opened = True
        layout = self._layout
        async with AsyncExitStack() as stack:
            client = self._client = await stack.enter_async_context(self._new_client())
            self._scripts = {
                name: client.register_script(source(name)) for name in NAMES
            }
            await self._command(client.ping())
            await self._take_lease()
            await self._command(client.sadd(layout.owners(), [self._owner]))
            task_group = await stack.enter_async_context(anyio.create_task_group())
            await task_group.start(self._receive)
            task_group.start_soon(self._keep_lease)
            task_group.start_soon(self._reap)
            task_group.start_soon(self._carry_out)
            self._task_group = task_group
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close: the waiting tasks of this instance raise WaitMapClosed, its
        registrations leave Redis (values handed to them go on), and the
        background tasks stop. Stored values stay. If Redis cannot be reached
        within ``timeout``, the lease reclaims what is left."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close, as leaving ``async with`` does; idempotent."""
        if self._closed or self._stack is None:
            self._closed = True
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        self._local.close()
        # Shielded, and bounded: closing goes on in a cancelled scope, as a
        # clean-up must, but never for longer than the timeout.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self._timeout
            await self._release_everything()
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        stack, self._stack = self._stack, None
        await stack.aclose()

    async def _release_everything(self) -> None:
        for registration, key in self._waiting.items():
            self._pending.append((registration, key, False))
        self._waiting.clear()
        try:
            while self._pending:
                await self._carry_out_batch()
            client = self._live_client()
            layout = self._layout
            await self._command(client.srem(layout.owners(), [self._owner]))
            await self._command(
                client.delete(
                    [layout.alive(self._owner), layout.owned_keys(self._owner)]
                )
            )
        except RedisUnavailable:
            pass  # the lease will run out, and the others reclaim the rest

    def _new_client(self) -> coredis.Redis[bytes]:
        timeout = self._timeout
        options: dict[str, Any] = {
            "connect_timeout": timeout,
            "stream_timeout": timeout,
            "pool_timeout": timeout,
            **self._options,
        }
        return coredis.Redis.from_url(
            self._url, decode_responses=False, retry_policy=NoRetryPolicy(), **options
        )

    def _live_client(self) -> coredis.Redis[bytes]:
        client = self._client
        assert client is not None
        return client

    # -- the public operations -------------------------------------------------------

    async def take(self, key: RedisKey) -> V:
        """Remove and return the value of ``key``, waiting until there is one.

        Takers of a key, in every process, are served in the order they
        registered with Redis. A value handed to this task is returned by it;
        a cancellation that reaches the task before its process received the
        value passes the value on (to the next taker, or into the store).

        This is a checkpoint.

        Raises:
            KeyCancelled: :meth:`cancel` was called for ``key``.
            WaitMapClosed: the map is or gets closed.
            RedisUnavailable: Redis could not register the wait in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        return await self._wait(key, "t")

    async def wait(self, key: RedisKey) -> V:
        """Return the value of ``key``, waiting until there is one.

        A stored value is returned at once and stays stored; otherwise the task
        waits for a value stored or handed over with :meth:`wake`. This is a
        checkpoint.

        Raises:
            KeyCancelled: :meth:`cancel` was called for ``key``.
            WaitMapClosed: the map is or gets closed.
            RedisUnavailable: Redis could not register the wait in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        return await self._wait(key, "w")

    async def wake(self, key: RedisKey, value: V) -> WakeOutcome[V]:
        """Hand ``value`` to the tasks waiting on ``key`` now, in every process,
        without storing it: every waiter, and the first taker.

        Returns:
            :class:`~anyio_waitmap.Woke` with how many tasks received it (tasks
            of a process that died count until its lease runs out, and the value
            then goes on); :class:`~anyio_waitmap.NoMatch` if nobody waited;
            :class:`~anyio_waitmap.Closed` if this instance is closed.

        Raises:
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` or ``value`` cannot be encoded (nothing was sent).
        """
        encoded_key = encode_key(key)
        data = encode_value(value, self._codec)
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return Closed(value)
        woken, _ = await self._script(
            "handover",
            encoded_key,
            "wake",
            data,
            0,
            self._layout.bell_prefix(),
            encoded_key,
        )
        return Woke(woken) if woken else NoMatch(value)

    async def set(self, key: RedisKey, value: V, *, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, as ``wm[key] = value`` does in one process.

        Every waiter of the key, in every process, receives it; if a taker
        does, it is not stored. ``ttl``: seconds after which Redis forgets the
        stored value.

        Raises:
            WaitMapClosed: this instance is closed.
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` or ``value`` cannot be encoded (nothing was sent).
            ValueError: ``ttl`` is not a positive number.
        """
        encoded_key = encode_key(key)
        data = encode_value(value, self._codec)
        ttl_ms = 0
        if ttl is not None:
            if not math.isfinite(ttl) or ttl <= 0:
                raise ValueError(
                    f"ttl must be a positive number of seconds, not {ttl!r}"
                )
            ttl_ms = max(1, math.ceil(ttl * 1000))
        await self._refuse_if_closed("store a value in")
        await self._script(
            "handover",
            encoded_key,
            "set",
            data,
            ttl_ms,
            self._layout.bell_prefix(),
            encoded_key,
        )

    async def get(self, key: RedisKey, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``; never waits for one.

        Raises:
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        names = self._layout.key(encode_key(key))
        data = await self._command(self._live_client().get(names[0]))
        return default if data is None else decode_value(data, self._codec)

    async def pop(self, key: RedisKey, default: Any = _MISSING) -> Any:
        """Remove and return the value stored under ``key``; never waits.

        Raises:
            KeyError: nothing is stored under ``key`` and no default was given.
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        names = self._layout.key(encode_key(key))
        data = await self._command(self._live_client().getdel(names[0]))
        if data is not None:
            return decode_value(data, self._codec)
        if default is _MISSING:
            raise KeyError(key)
        return default

    async def cancel(self, key: RedisKey) -> int:
        """Make every task waiting on ``key``, in every process, raise
        :exc:`~anyio_waitmap.KeyCancelled`; stored values are untouched.

        Returns:
            How many tasks will raise it.

        Raises:
            WaitMapClosed: this instance is closed.
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        encoded_key = encode_key(key)
        await self._refuse_if_closed("cancel a key of")
        result = await self._script(
            "cancel", encoded_key, self._layout.bell_prefix(), encoded_key
        )
        return cast("int", result)

    def expect(self, key: RedisKey, *, take: bool = True) -> RedisExpectation[V]:
        """Register for the value of ``key`` before sending the request whose
        reply it is; as :meth:`WaitMap.expect <anyio_waitmap.WaitMap.expect>`,
        entered with ``async with`` (registering is a Redis round trip)::

            async with replies.expect(request_id) as reply:
                await send(request_id, payload)
                return await reply

        Raises:
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        return RedisExpectation(self, encode_key(key), key, take)

    def statistics(self) -> RedisWaitMapStatistics:
        """A snapshot of this instance (its own waiting tasks)."""
        local = self._local.statistics()
        return RedisWaitMapStatistics(
            tasks_waiting=local.tasks_waiting,
            keys_waiting=len(set(self._waiting.values())),
            pending_operations=len(self._pending),
            subscribed=self._subscribed,
            closed=self._closed,
        )

    @property
    def closed(self) -> bool:
        """Whether this instance was closed."""
        return self._closed

    @property
    def name(self) -> str:
        """The map's name."""
        return self._layout.name

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._opened else "not opened"
        return (
            f"<anyio_waitmap.redis.RedisWaitMap {self._layout.name!r} at "
            f"{self._shown_url}, {state}, {self._local.statistics().tasks_waiting} "
            f"waiting>"
        )

    # -- waiting ---------------------------------------------------------------------

    async def _wait(self, key: RedisKey, kind: str) -> V:
        encoded_key = encode_key(key)
        await self._refuse_if_closed("wait on")
        registration = self._new_registration(kind)
        try:
            with self._local.expect(registration, take=False) as delivered:
                self._waiting[registration] = encoded_key
                held = await self._register(registration, encoded_key)
                if held is None:
                    outcome = await delivered
                else:
                    self._waiting.pop(registration, None)
                    outcome = held
        except BaseException:
            # Registered or not, handed something or not: released either way,
            # and what it was handed goes on.
            self._release_later(registration, encoded_key, ack=False)
            raise
        if kind == "t" or held is None:
            # A value read at once by a wait is not held for it in Redis.
            self._release_later(registration, encoded_key, ack=True)
        return self._decode(outcome, key)

    async def _register(self, registration: str, encoded_key: str) -> bytes | None:
        """Register, or take (read) the stored value at once: its outcome then."""
        result = await self._script(
            "register",
            encoded_key,
            registration,
            encoded_key,
            extra_key=self._layout.owned_keys(self._owner),
        )
        return None if result == 0 else cast("bytes", result)

    def _decode(self, outcome: bytes, key: RedisKey) -> V:
        if outcome[:1] == b"v":
            return cast("V", decode_value(outcome[1:], self._codec))
        assert outcome == b"k", outcome
        raise KeyCancelled(key)

    def _new_registration(self, kind: str) -> str:
        return f"{kind}{self._owner}/{next(self._counter):x}"

    def _release_later(self, registration: str, encoded_key: str, *, ack: bool) -> None:
        """Queue the release (or the acknowledgement) of ``registration``: the
        background work carries it out, retrying while Redis is unreachable."""
        self._waiting.pop(registration, None)
        if self._closed and self._stack is None:
            return  # closed: released already, or left to the lease
        self._pending.append((registration, encoded_key, ack))
        self._work.notify()

    async def _refuse_if_closed(self, operation: str) -> None:
        if self._closed or not self._opened:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if not self._opened:
                raise RuntimeError(
                    f"open the RedisWaitMap with `async with` before you {operation} it"
                )
            raise WaitMapClosed(f"cannot {operation} a closed RedisWaitMap")

    # -- Redis commands --------------------------------------------------------------

    async def _command(self, request: Awaitable[Any]) -> Any:
        try:
            return await request
        except _Errors as exc:
            raise _unavailable(exc, self._shown_url) from exc
        except BaseExceptionGroup as group:
            if _only_unavailability(group):
                raise _unavailable(group, self._shown_url) from group
            raise

    async def _script(
        self,
        name: str,
        encoded_key: str,
        *args: str | bytes | int,
        extra_key: str | None = None,
    ) -> Any:
        names = self._layout.key(encoded_key)
        if extra_key is not None:
            names.append(extra_key)
        script = self._scripts[name]
        # coredis leaves the type of the default callback open.
        request = cast("Awaitable[Any]", script(keys=names, args=list(args)))  # pyright: ignore[reportUnknownArgumentType]
        return await self._command(request)

    # -- the background tasks --------------------------------------------------------

    async def _receive(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the doorbell subscription up; hand outcomes to the tasks."""
        started = False
        delay = _FIRST_DELAY
        channel = self._layout.bell_prefix() + self._owner
        while True:
            try:
                # A client of its own, made anew after every disconnection: a
                # connection that dies while a subscription holds it is not
                # given back to its pool.
                async with (
                    self._new_client() as client,
                    client.pubsub(channels=[channel], retry_policy=None) as pubsub,
                ):
                    async for message in pubsub:
                        if message["type"] == "subscribe":
                            # The state is the truth: read what the
                            # registrations hold, for what rang while the
                            # subscription was down.
                            await self._read_back()
                            self._subscribed = True
                            delay = _FIRST_DELAY
                            if not started:
                                started = True
                                task_status.started()
                        elif message["type"] == "message":
                            self._on_bell(cast("bytes", message["data"]))
            except (*_Errors, RedisUnavailable, BaseExceptionGroup) as exc:
                if self._closed:
                    # Closing: coredis may fail to unsubscribe from a connection
                    # it closed already, which is of no interest any more.
                    return
                if isinstance(exc, BaseExceptionGroup) and not _only_unavailability(
                    exc
                ):
                    raise
                self._subscribed = False
                if not started:
                    raise _unavailable(exc, self._shown_url) from exc
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    def _on_bell(self, data: bytes) -> None:
        _, registration, outcome = data.split(b"\n", 2)
        self._hand_over(registration.decode("ascii"), outcome)

    def _hand_over(self, registration: str, outcome: bytes) -> None:
        # A copy of an outcome this instance handed over already (rung and read
        # back), or one for a task that left (its release is queued), is skipped.
        if registration in self._waiting and self._local.wake(registration, outcome):
            del self._waiting[registration]

    async def _read_back(self) -> None:
        by_key: dict[str, list[str]] = {}
        for registration, encoded_key in self._waiting.items():
            by_key.setdefault(encoded_key, []).append(registration)
        client = self._live_client()
        for encoded_key, registrations in by_key.items():
            held = self._layout.key(encoded_key)[3]
            outcomes = await self._command(client.hmget(held, registrations))
            for registration, outcome in zip(registrations, outcomes, strict=True):
                if outcome is not None:
                    self._hand_over(registration, outcome)

    async def _carry_out(self) -> None:
        """Release and acknowledge in Redis what the tasks left, in batches."""
        delay = _FIRST_DELAY
        while True:
            await self._work.wait_until(lambda: True if self._pending else None)
            try:
                await self._carry_out_batch()
                delay = _FIRST_DELAY
            except RedisUnavailable:
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)

    async def _carry_out_batch(self) -> None:
        count = min(_BATCH, len(self._pending))
        batch = [self._pending.popleft() for _ in range(count)]
        try:
            # Sent together: coredis writes them on one connection back to back.
            await self._concurrently(self._release, batch)
        except BaseException:
            # Released twice does no harm: release() is idempotent.
            self._pending.extendleft(reversed(batch))
            raise

    async def _concurrently(
        self,
        function: Callable[[str, str, bool], Coroutine[Any, Any, object]],
        calls: Iterable[tuple[str, str, bool]],
    ) -> None:
        """Call ``function`` with each of ``calls`` at once; one
        RedisUnavailable if Redis failed any of them."""
        try:
            async with anyio.create_task_group() as task_group:
                for args in calls:
                    task_group.start_soon(function, *args)
        except BaseExceptionGroup as group:
            unavailable, rest = group.split(RedisUnavailable)
            if rest is not None or unavailable is None:
                raise
            raise unavailable.exceptions[0] from group

    async def _release(self, registration: str, encoded_key: str, ack: bool) -> None:
        await self._script(
            "release",
            encoded_key,
            registration,
            encoded_key,
            self._layout.bell_prefix(),
            "ack" if ack else "",
            extra_key=self._layout.owned_keys(self._owner),
        )

    async def _take_lease(self) -> None:
        ms = math.ceil(self._lease * 1000)
        await self._command(
            self._live_client().set(self._layout.alive(self._owner), b"1", px=ms)
        )

    async def _keep_lease(self) -> None:
        """Refresh the lease; if it ran out meanwhile (cut off for longer than
        the lease), register again what the others may have reclaimed."""
        client = self._live_client()
        layout = self._layout
        ms = math.ceil(self._lease * 1000)
        while True:
            await anyio.sleep(self._lease / 3)
            try:
                refreshed = await self._command(
                    client.set(
                        layout.alive(self._owner),
                        b"1",
                        px=ms,
                        condition=coredis.PureToken.XX,
                    )
                )
                if not refreshed:
                    await self._recover_lease()
            except RedisUnavailable:
                continue

    async def _recover_lease(self) -> None:
        client = self._live_client()
        layout = self._layout
        lock = layout.reaping(self._owner)
        ms = math.ceil(self._lease * 1000)
        # Reapers and this instance exclude each other with the reaping lock.
        if not await self._command(
            client.set(
                lock, self._owner.encode(), px=ms, condition=coredis.PureToken.NX
            )
        ):
            return  # a reaper works on it: try again at the next refresh
        try:
            await self._take_lease()
            await self._command(client.sadd(layout.owners(), [self._owner]))
            # Registrations a reaper removed come back, last in their queues.
            for registration, encoded_key in list(self._waiting.items()):
                held = await self._register(registration, encoded_key)
                if held is not None:
                    self._hand_over(registration, held)
        finally:
            await self._command(client.delete([lock]))

    async def _reap(self) -> None:
        """Reclaim what instances whose lease ran out held."""
        while True:
            await anyio.sleep(self._lease / 2)
            try:
                await self._reap_once()
            except RedisUnavailable:
                continue

    async def _reap_once(self) -> None:
        client = self._live_client()
        layout = self._layout
        ms = math.ceil(self._lease * 1000)
        for owner_bytes in await self._command(client.smembers(layout.owners())):
            owner = owner_bytes.decode("ascii")
            if owner == self._owner or await self._command(
                client.exists([layout.alive(owner)])
            ):
                continue
            lock = layout.reaping(owner)
            if not await self._command(
                client.set(
                    lock, self._owner.encode(), px=ms, condition=coredis.PureToken.NX
                )
            ):
                continue
            try:
                if await self._command(client.exists([layout.alive(owner)])):
                    continue  # it came back between the two reads
                owned = layout.owned_keys(owner)
                for encoded_key_bytes in await self._command(client.hkeys(owned)):
                    encoded_key = encoded_key_bytes.decode("ascii")
                    await self._script(
                        "reclaim", encoded_key, owner, layout.bell_prefix(), encoded_key
                    )
                await self._command(client.delete([owned]))
                await self._command(client.srem(layout.owners(), [owner]))
            finally:
                await self._command(client.delete([lock]))


@final
class RedisExpectation(Generic[V]):
    """A registration for the value of one key, made by :meth:`RedisWaitMap.expect`.

    Enter it with ``async with`` (that registers, a Redis round trip), and
    ``await`` it once inside the block.
    """

    __slots__ = (
        "_held",
        "_kind",
        "_local",
        "_map",
        "_received",
        "_registration",
        "encoded_key",
        "key",
    )

    def __init__(
        self, waitmap: RedisWaitMap[V], encoded_key: str, key: RedisKey, take: bool
    ) -> None:
        self._map = waitmap
        self.encoded_key = encoded_key
        #: The key whose value is expected.
        self.key = key
        self._kind = "t" if take else "w"
        self._registration: str | None = None
        self._local: Expectation[str, bytes] | None = None
        self._held: bytes | None = None
        self._received = False

    async def __aenter__(self) -> RedisExpectation[V]:
        """Register with Redis (a checkpoint).

        Raises:
            WaitMapClosed: the map is closed.
            RedisUnavailable: Redis could not register it in the map's timeout.
            RuntimeError: the block was entered before.
        """
        if self._registration is not None:
            raise RuntimeError("an expectation can be entered only once")
        wm = self._map
        await wm._refuse_if_closed("expect a value from")
        registration = self._registration = wm._new_registration(self._kind)
        local = self._local = wm._local.expect(registration, take=False)
        local.__enter__()
        wm._waiting[registration] = self.encoded_key
        try:
            held = await wm._register(registration, self.encoded_key)
        except BaseException:
            self._leave()
            raise
        if held is not None:
            wm._waiting.pop(registration, None)
            self._held = held
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Unregister, and pass on a value handed over and not received; not a
        checkpoint."""
        self._leave()

    def _leave(self) -> None:
        local, registration = self._local, self._registration
        if local is None or registration is None:
            return
        self._local = None
        local.__exit__(None, None, None)
        if not self._received:
            self._map._release_later(registration, self.encoded_key, ack=False)

    def __await__(self) -> Generator[Any, Any, V]:
        return self._receive().__await__()

    async def _receive(self) -> V:
        local, registration = self._local, self._registration
        if local is None or registration is None:
            raise RuntimeError(
                "await an expectation inside its async with block, once it is entered"
            )
        outcome = self._held
        if outcome is None:
            outcome = await local
        else:
            await anyio.lowlevel.checkpoint()
        self._received = True
        wm = self._map
        if self._kind == "t" or self._held is None:
            wm._release_later(registration, self.encoded_key, ack=True)
        return wm._decode(outcome, self.key)

    def __repr__(self) -> str:
        kind = "take" if self._kind == "t" else "wait"
        return f"<anyio_waitmap.redis.RedisExpectation {kind} {self.key!r}>"


def _without_password(url: str) -> str:
    """``url`` as it may be shown in messages and logs: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


__all__ = [
    "RedisExpectation",
    "RedisUnavailable",
    "RedisWaitMap",
    "RedisWaitMapStatistics",
]
