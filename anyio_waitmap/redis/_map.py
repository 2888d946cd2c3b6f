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

import functools
import itertools
import math
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypeAlias, TypeVar, cast, final, overload
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.lowlevel
import coredis
import coredis.exceptions
from coredis.commands import Script
from coredis.connection import TCPLocation
from coredis.patterns.pubsub import BasePubSub
from coredis.retry import NoRetryPolicy

from .._exceptions import KeyCancelled, WaitMapClosed
from .._expectation import Expectation
from .._outcomes import Closed, NoMatch, WakeOutcome, Woke
from .._sink import WakeSink
from .._waitmap import WaitMap
from ._codec import Codec, RedisKey, decode_value, encode_key, encode_value
from ._layout import PARTITIONS, Layout
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
#: The part of the lease during which, after setting it, this instance hands
#: outcomes over without asking Redis: the rest is a margin for the time the
#: command took and for clocks that run at different rates.
_LEASE_TRUSTED: Final = 2 / 3
#: Reconnection delays of the receiver and of the background work.
_FIRST_DELAY: Final = 0.05
_MAX_DELAY: Final = 1.0


class RedisUnavailable(ConnectionError):
    """Redis could not be reached or did not answer in the map's ``timeout``,
    or refused the command for now (out of memory, a read-only replica during
    a failover, a busy script).

    When the request went out and its reply was lost, the operation's outcome
    is unknown: a wake or a store may have taken place. A refused command did
    not run. Tasks already waiting are not affected: they keep waiting, and
    carry on once Redis is back.
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


#: A client of a standalone Redis or of a Redis Cluster.
_Client: TypeAlias = "coredis.Redis[bytes] | coredis.RedisCluster[bytes]"

_Errors = (coredis.exceptions.ConnectionError, TimeoutError)
#: Errors with which Redis refuses a command for a while (out of memory, a
#: replica during a failover, a busy script, a moved slot, a script cache
#: that a restart emptied): the command did not run, and may be sent again.
_REFUSALS = (
    coredis.exceptions.ReadOnlyError,
    coredis.exceptions.NoScriptError,
    coredis.exceptions.TryAgainError,
    coredis.exceptions.ClusterDownError,
    coredis.exceptions.ClusterError,
)
_REFUSAL_CODES = frozenset({"OOM", "MISCONF", "BUSY", "MASTERDOWN", "NOREPLICAS"})


def _unavailable(exc: BaseException, where: str) -> RedisUnavailable:
    return RedisUnavailable(f"Redis at {where} is unreachable or did not answer: {exc}")


def _refused_for_now(exc: coredis.exceptions.ResponseError) -> bool:
    return isinstance(exc, _REFUSALS) or str(exc).partition(" ")[0] in _REFUSAL_CODES


def _passing(exc: BaseException) -> bool:
    """Whether the subscription may just be made again after ``exc``: Redis
    was unreachable or refused for now, or (on a Cluster) a slot moved."""
    if isinstance(exc, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", exc)
        return all(_passing(inner) for inner in group.exceptions)
    if isinstance(exc, coredis.exceptions.ResponseError):
        return isinstance(exc, coredis.exceptions.AskError) or _refused_for_now(exc)
    return isinstance(exc, (*_Errors, RedisUnavailable, coredis.exceptions.PubSubError))


def _unwrapped(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception in ``group`` and the groups nested in it, or
    ``group`` if there are more."""
    inner: BaseExceptionGroup[BaseException] = group
    while len(inner.exceptions) == 1:
        leaf = inner.exceptions[0]
        if not isinstance(leaf, BaseExceptionGroup):
            return leaf
        inner = cast("BaseExceptionGroup[BaseException]", leaf)
    return group


def _unavailability_in(group: BaseExceptionGroup[Any]) -> RedisUnavailable | None:
    """The RedisUnavailable in ``group``, if that is all it holds."""
    unavailable, rest = group.split(RedisUnavailable)
    if rest is not None or unavailable is None:
        return None
    leaf: BaseException = unavailable
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, RedisUnavailable)
    return leaf


@final
class RedisWaitMap(Generic[V]):
    """A map of keys that tasks of any process can wait on and wake.

    Make one with :meth:`connect` and open it with ``async with``; see
    :doc:`/redis` for the guarantees. Keys are ``str``, ``bytes`` or ``int``;
    values are ``bytes`` or ``str`` (each comes back as itself) unless a
    ``codec`` says otherwise.
    """

    __slots__ = (
        "_background",
        "_client",
        "_closed",
        "_cluster",
        "_codec",
        "_connection",
        "_counter",
        "_delivered",
        "_in_flight",
        "_layout",
        "_lease",
        "_lease_check",
        "_lease_until",
        "_local",
        "_opened",
        "_options",
        "_owner",
        "_pending",
        "_running",
        "_scripts",
        "_shown_url",
        "_subscribed",
        "_tasks",
        "_timeout",
        "_unconfirmed",
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
        cluster: bool,
        options: dict[str, Any],
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(
                f"the URL must start with redis:// or rediss://, not {scheme}://"
                + (": for a Cluster, pass cluster=True" if "cluster" in scheme else "")
            )
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
        self._cluster = cluster
        self._shown_url = _without_password(url)
        self._layout = Layout(name)
        self._codec = codec
        self._lease = lease
        self._timeout = timeout
        self._options = options
        #: This instance's name in Redis: its registrations and doorbell.
        self._owner = secrets.token_hex(6)
        self._counter = itertools.count()
        #: Hands outcomes to this instance's tasks, keyed by registration.
        self._local: WaitMap[str, bytes] = WaitMap()
        # Every registration of this instance in Redis is in one of the four
        # dicts below (registration -> encoded key, and for the last two
        # whether it is an acknowledgement), or left to the lease at exit.
        #: Registered, no outcome received yet.
        self._waiting: dict[str, str] = {}
        #: Its outcome was handed to its task (or read at once by an
        #: expectation); the task will return it or give it back.
        self._delivered: dict[str, str] = {}
        #: Releases and acknowledgements to carry out, then being carried out.
        self._pending: dict[str, tuple[str, bool]] = {}
        self._in_flight: dict[str, tuple[str, bool]] = {}
        self._work = WakeSink()
        #: Until when the lease surely runs (this process's clock), and
        #: whether a hand-over waits for it to be confirmed.
        self._lease_until = -math.inf
        self._unconfirmed = False
        self._lease_check = WakeSink()
        self._opened = False
        self._closed = False
        #: Whether the background tasks run (from opening to the exit).
        self._running = False
        self._subscribed = False
        self._client: _Client | None = None
        self._scripts: dict[str, Script[bytes]] = {}
        #: The client, and the background tasks' group, exited in that order
        #: reversed: the tasks end before the last commands at exit.
        self._connection = AsyncExitStack()
        self._tasks = AsyncExitStack()
        #: The background tasks' cancel scopes, which the exit cancels: not
        #: their group's, which is also the scope of the block that opened
        #: the map.
        self._background: list[anyio.CancelScope] = []

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
        cluster: bool = False,
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
        cluster: bool = False,
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
        cluster: bool = False,
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
            cluster: ``url`` names one node of a Redis Cluster (its start-up
                node; the client finds the others). The map's keys are spread
                over the Cluster's shards, and its doorbells use sharded
                pub/sub.
            options: passed on to :meth:`coredis.Redis.from_url`, or to
                :meth:`coredis.RedisCluster.from_url` (TLS settings,
                ``max_connections``, ...).

        Raises:
            ValueError: ``lease`` or ``timeout`` is not a positive number, or
                ``url`` is not a ``redis://`` or ``rediss://`` URL.
            TypeError: ``name`` is not a non-empty ``str``, ``codec`` has no
                ``encode`` and ``decode``, or an option is the map's own.
        """
        return cls(url, name, codec, lease, timeout, cluster, options)

    # -- opening and closing ---------------------------------------------------------

    async def __aenter__(self) -> RedisWaitMap[V]:
        """Connect, take the lease, and start the background tasks (the
        doorbell's receiver, the lease, the reaper, the releases).

        Raises:
            RedisUnavailable: Redis could not be reached within ``timeout``.
            RuntimeError: the map was opened (or closed) before.
        """
        if self._opened or self._closed:
            raise RuntimeError("a RedisWaitMap can be opened only once")
        self._opened = True
        try:
            async with AsyncExitStack() as connection, AsyncExitStack() as tasks:
                client = self._client = self._new_client()
                await connection.enter_async_context(client)
                self._scripts = {
                    name: client.register_script(source(name)) for name in NAMES
                }
                await self._take_lease()
                await self._command(client.sadd(self._layout.owners(), [self._owner]))
                task_group = await tasks.enter_async_context(anyio.create_task_group())
                for work in (
                    self._receive,
                    self._keep_lease,
                    self._reap,
                    self._carry_out,
                ):
                    scope = anyio.CancelScope()
                    self._background.append(scope)
                    task_group.start_soon(self._in_background, scope, work)
                self._running = True
                self._tasks = tasks.pop_all()
                self._connection = connection.pop_all()
        except BaseExceptionGroup as group:
            self._closed = True  # it cannot be used any more
            # coredis's client wraps what fails inside it in a group: a single
            # error comes out as itself.
            raise _unwrapped(group) from None
        except BaseException:
            self._closed = True
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close (see :meth:`aclose`), carry out the releases left, and leave
        Redis; the lease is given back unless Redis is unreachable (for
        ``timeout``), in which case the other instances reclaim what is left
        once it runs out."""
        try:
            await self.aclose()
        finally:
            for scope in self._background:
                scope.cancel()
            try:
                await self._tasks.aclose()
            finally:
                try:
                    # Shielded, and bounded: leaving goes on in a cancelled
                    # scope, as a clean-up must, but never for longer than the
                    # timeout.
                    with anyio.CancelScope(shield=True) as scope:
                        scope.deadline = anyio.current_time() + self._timeout
                        await self._leave_redis()
                finally:
                    self._running = False
                    await self._connection.aclose()

    async def aclose(self) -> None:
        """Close: the waiting tasks of this instance raise
        :exc:`~anyio_waitmap.WaitMapClosed` and their registrations leave
        Redis; later calls raise it too (``wake`` returns ``Closed``). Stored
        values stay. Idempotent; a checkpoint.

        Leaving the ``async with`` block closes the map; this is for closing it
        earlier, from inside the block. Tasks that were handed their outcome
        before still return it."""
        if not self._closed:
            self._closed = True
            self._local.close()
            for registration in list(self._waiting):
                self._release_later(registration, ack=False)
        await anyio.lowlevel.checkpoint()

    async def _leave_redis(self) -> None:
        """Carry out the releases left, and give the lease back if nothing is
        left in Redis for this instance."""
        try:
            while self._pending:
                await self._carry_out_batch()
            if self._delivered:
                # Tasks outside the block still hold outcomes: what they did
                # not acknowledge is left to the lease.
                return
            # What a release could not find (it overtook its registration on
            # the way to Redis) goes now, as a reaper would remove it.
            await self._reclaim_everywhere(self._owner)
            client = self._live_client()
            await self._command(client.srem(self._layout.owners(), [self._owner]))
            await self._command(client.delete([self._layout.alive(self._owner)]))
        except RedisUnavailable:
            pass  # the lease runs out, and the others reclaim what is left

    def _new_client(self) -> _Client:
        timeout = self._timeout
        options: dict[str, Any] = {
            "connect_timeout": timeout,
            "stream_timeout": timeout,
            "pool_timeout": timeout,
            **self._options,
        }
        if self._cluster:
            # coredis follows MOVED and ASK redirections itself, and retries
            # TRYAGAIN, whatever the retry policy. The URL's node is given as
            # coredis would take it from the URL, without its deprecation
            # warning.
            parts = urlsplit(self._url)
            node = TCPLocation(parts.hostname or "localhost", parts.port or 6379)
            return coredis.RedisCluster.from_url(
                self._url,
                decode_responses=False,
                retry_policy=NoRetryPolicy(),
                startup_nodes=[node],
                **options,
            )
        return coredis.Redis.from_url(
            self._url, decode_responses=False, retry_policy=NoRetryPolicy(), **options
        )

    async def _usable(self, operation: str) -> _Client:
        """The client, if the map is open; a checkpoint if it is not."""
        client = self._client
        if client is None or self._closed:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if client is None:
                raise RuntimeError(
                    f"open the RedisWaitMap with `async with` before you {operation} it"
                )
            raise WaitMapClosed(f"cannot {operation} a closed RedisWaitMap")
        return client

    def _live_client(self) -> _Client:
        client = self._client
        assert client is not None
        return client

    # -- the public operations -------------------------------------------------------

    async def take(self, key: RedisKey) -> V:
        """Remove and return the value of ``key``, waiting until there is one.

        Takers of a key, in every process, are served in the order they
        registered with Redis. A value that reached this task's process for it
        is returned by the task, even if it is cancelled meanwhile (the
        cancellation comes at its next checkpoint); a cancellation that comes
        first passes the value on, to the next taker or into the store.

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

        Returns the stored value at once if there is one (without taking it);
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
            RuntimeError: the map was not opened.
        """
        encoded_key = encode_key(key)
        data = encode_value(value, self._codec)
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return Closed(value)
        await self._usable("wake a key of")
        woken, _ = await self._script("handover", encoded_key, "wake", data, 0)
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
        await self._usable("store a value in")
        await self._script("handover", encoded_key, "set", data, ttl_ms)

    async def get(self, key: RedisKey, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``; never waits for one.

        Raises:
            WaitMapClosed: this instance is closed.
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        names = self._layout.key(encode_key(key))
        client = await self._usable("read")
        data = await self._command(client.get(names.v))
        return default if data is None else decode_value(data, self._codec)

    async def pop(self, key: RedisKey, default: Any = _MISSING) -> Any:
        """Remove and return the value stored under ``key``; never waits.

        Raises:
            KeyError: nothing is stored under ``key`` and no default was given.
            WaitMapClosed: this instance is closed.
            RedisUnavailable: Redis could not be reached in ``timeout``.
            TypeError: ``key`` is not a ``str``, ``bytes`` or ``int``.
        """
        names = self._layout.key(encode_key(key))
        client = await self._usable("remove a value from")
        data = await self._command(client.getdel(names.v))
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
        await self._usable("cancel a key of")
        return cast("int", await self._script("cancel", encoded_key))

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
        return RedisWaitMapStatistics(
            tasks_waiting=self._local.statistics().tasks_waiting,
            keys_waiting=len(set(self._waiting.values())),
            pending_operations=len(self._pending) + len(self._in_flight),
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
        await self._usable("wait on")
        registration = self._new_registration(kind)
        self._waiting[registration] = encoded_key
        try:
            with self._local.expect(registration, take=False) as delivered:
                held = await self._register(registration, encoded_key)
                outcome = await delivered if held is None else held
        except BaseException:
            # Registered or not, handed something or not: released either way,
            # and what it was handed goes on.
            self._release_later(registration, ack=False)
            raise
        if held is not None and kind == "w":
            # A stored value read at once: nothing is held for it in Redis.
            del self._waiting[registration]
        else:
            self._release_later(registration, ack=True)
        return self._decode(outcome, key)

    async def _register(self, registration: str, encoded_key: str) -> bytes | None:
        """Register, or take (read) the stored value at once: its outcome then."""
        result = await self._script("register", encoded_key, registration, owned=True)
        return None if result == 0 else cast("bytes", result)

    def _decode(self, outcome: bytes, key: RedisKey) -> V:
        if outcome[:1] == b"v":
            return cast("V", decode_value(outcome[1:], self._codec))
        assert outcome == b"k", outcome
        raise KeyCancelled(key)

    def _new_registration(self, kind: str) -> str:
        return f"{kind}{self._owner}/{next(self._counter):x}"

    def _release_later(self, registration: str, *, ack: bool) -> None:
        """Queue the release (or the acknowledgement) of ``registration``: the
        background work carries it out, retrying while Redis is unreachable."""
        encoded_key = self._waiting.pop(registration, None)
        if encoded_key is None:
            encoded_key = self._delivered.pop(registration, None)
            if encoded_key is None:
                return  # released already (by aclose)
        if self._running:
            self._pending[registration] = (encoded_key, ack)
            self._work.notify()

    # -- Redis commands --------------------------------------------------------------

    async def _command(self, request: Awaitable[Any]) -> Any:
        try:
            return await request
        except _Errors as exc:
            client = self._client
            if isinstance(client, coredis.RedisCluster):
                # coredis refreshes its map of the Cluster's slots after the
                # errors that its retry policy reports; with no policy (the map
                # tries again itself), a node it cannot connect to goes
                # unreported, and a failover unnoticed.
                client.connection_pool.cluster_layout.report_errors(None, exc)
            raise _unavailable(exc, self._shown_url) from exc
        except coredis.exceptions.ResponseError as exc:
            if not _refused_for_now(exc):
                raise
            raise RedisUnavailable(
                f"Redis at {self._shown_url} refused the command for now: {exc}"
            ) from exc

    async def _script(
        self, name: str, encoded_key: str, *args: str | bytes | int, owned: bool = False
    ) -> Any:
        """Run the script ``name`` on the keys of ``encoded_key`` (and on this
        instance's count of what it holds in their partition if ``owned``)."""
        names = self._layout.key(encoded_key)
        keys = list(names[:4])
        if owned:
            keys.append(self._layout.owned_keys(names.partition, self._owner))
        return await self._run(
            name, keys, *self._bell(names.partition), encoded_key, *args
        )

    async def _run(self, name: str, keys: list[str], *args: str | bytes | int) -> Any:
        script = self._scripts[name]
        # coredis leaves the type of the default callback open.
        request = cast("Awaitable[Any]", script(keys=keys, args=list(args)))  # pyright: ignore[reportUnknownArgumentType]
        return await self._command(request)

    def _bell(self, partition: int) -> tuple[str, str]:
        """The doorbell channels' prefix in ``partition`` and the command that
        rings them, as the scripts take them: on a Cluster, one sharded channel
        per partition, in its slot; on a standalone Redis, one channel."""
        if self._cluster:
            return self._layout.partition_bell_prefix(partition), "SPUBLISH"
        return self._layout.bell_prefix(), "PUBLISH"

    def _bell_channels(self) -> list[str]:
        """The channels of this instance's doorbell."""
        if self._cluster:
            return [
                self._layout.partition_bell_prefix(partition) + self._owner
                for partition in range(PARTITIONS)
            ]
        return [self._layout.bell_prefix() + self._owner]

    # -- the background tasks --------------------------------------------------------

    async def _in_background(
        self, scope: anyio.CancelScope, work: Callable[[], Awaitable[None]]
    ) -> None:
        with scope:
            await work()

    async def _receive(self) -> None:
        """Keep the doorbell subscription up; hand outcomes to the tasks."""
        delay = _FIRST_DELAY
        channels = self._bell_channels()
        while True:
            try:
                # A client of its own, made anew after every disconnection (a
                # connection that dies while a subscription holds it is not
                # given back to its pool), and after a slot moved on a Cluster
                # (coredis then drops the sharded channel, and a new client
                # knows where the slot went).
                async with (
                    self._new_client() as client,
                    self._subscription(client, channels) as pubsub,
                ):
                    # Subscribed. The state is the truth: read what the
                    # registrations hold, for what rang while it was down.
                    await self._read_back()
                    self._subscribed = True
                    delay = _FIRST_DELAY
                    async for message in pubsub:
                        kind = message["type"]
                        if kind == "message":
                            self._on_bell(cast("bytes", message["data"]))
                        elif kind == "sunsubscribe":
                            # The slot of a channel moved: subscribe again at
                            # once (and back off if that fails).
                            delay = 0
                            break
            except (
                *_Errors,
                coredis.exceptions.RedisError,
                RedisUnavailable,
                BaseExceptionGroup,
            ) as exc:
                if self._closed:
                    # Closing: coredis may fail to unsubscribe from a connection
                    # it closed already, which is of no interest any more.
                    return
                if not _passing(exc):
                    raise
            self._subscribed = False
            await anyio.sleep(delay)
            delay = min(max(delay * 2, _FIRST_DELAY), _MAX_DELAY)

    def _subscription(
        self, client: _Client, channels: list[str]
    ) -> BasePubSub[bytes, Any]:
        if isinstance(client, coredis.RedisCluster):
            # (coredis's decorator hides the type from mypy.)
            sharded: BasePubSub[bytes, Any] = client.sharded_pubsub(
                channels=channels, retry_policy=None, subscription_timeout=self._timeout
            )
            return sharded
        return client.pubsub(
            channels=channels, retry_policy=None, subscription_timeout=self._timeout
        )

    def _on_bell(self, data: bytes) -> None:
        encoded_key, registration, outcome = data.split(b"\n", 2)
        self._hand_over(registration.decode("ascii"), outcome, encoded_key)

    def _hand_over(self, registration: str, outcome: bytes, encoded_key: bytes) -> None:
        if registration in self._waiting:
            if anyio.current_time() >= self._lease_until:
                # The lease may have run out (the process was paused, or cut
                # off), and a reaper passed the outcome on: it goes to the task
                # only once the lease is confirmed, from what Redis holds then.
                self._unconfirmed = True
                self._lease_check.notify()
                return
            # Refused if the task is leaving (a cancellation reached it first):
            # its release, queued as soon as it runs, passes the outcome on.
            if self._local.wake(registration, outcome):
                self._delivered[registration] = self._waiting.pop(registration)
        elif (
            registration not in self._delivered
            and registration not in self._pending
            and registration not in self._in_flight
            and self._running
        ):
            # A registration this instance let go of, which Redis still had (its
            # release overtook it on the way): what it was handed goes on.
            self._pending[registration] = (encoded_key.decode("ascii"), False)
            self._work.notify()
        # Otherwise, a copy of an outcome handed over already (rung and read
        # back), or one for a task that left: skipped.

    async def _read_back(self) -> None:
        """Hand over what Redis holds for the registrations waiting: what was
        rung while the subscription was down, or not trusted."""
        by_key: dict[str, list[str]] = {}
        for registration, encoded_key in self._waiting.items():
            by_key.setdefault(encoded_key, []).append(registration)
        keys = list(by_key.items())
        for start in range(0, len(keys), _BATCH):
            await self._concurrently(
                functools.partial(self._read_key, *key)
                for key in keys[start : start + _BATCH]
            )

    async def _read_key(self, encoded_key: str, registrations: list[str]) -> None:
        held = self._layout.key(encoded_key).d
        client = self._live_client()
        outcomes = await self._command(client.hmget(held, registrations))
        for registration, outcome in zip(registrations, outcomes, strict=True):
            if outcome is not None:
                self._hand_over(registration, outcome, encoded_key.encode())

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
        batch = dict(itertools.islice(self._pending.items(), _BATCH))
        for registration in batch:
            del self._pending[registration]
        self._in_flight.update(batch)
        try:
            # Sent together: coredis writes them on one connection back to back.
            await self._concurrently(
                functools.partial(self._release, registration, encoded_key, ack)
                for registration, (encoded_key, ack) in batch.items()
            )
        except BaseException:
            # Released twice does no harm: a release is idempotent.
            self._pending.update(batch)
            raise
        finally:
            for registration in batch:
                del self._in_flight[registration]

    async def _concurrently(
        self, calls: Iterable[Callable[[], Coroutine[Any, Any, object]]]
    ) -> None:
        """Run ``calls`` at once; one RedisUnavailable if Redis failed any."""
        try:
            async with anyio.create_task_group() as task_group:
                for call in calls:
                    task_group.start_soon(call)
        except BaseExceptionGroup as group:
            unavailable = _unavailability_in(group)
            if unavailable is None:
                raise
            raise unavailable from None

    async def _release(self, registration: str, encoded_key: str, ack: bool) -> None:
        await self._script(
            "release", encoded_key, registration, "ack" if ack else "", owned=True
        )

    async def _take_lease(self, *, only_if_held: bool = False) -> bool:
        """Set (or only refresh) the lease; whether it was set."""
        sent = anyio.current_time()
        done = await self._command(
            self._live_client().set(
                self._layout.alive(self._owner),
                b"1",
                px=math.ceil(self._lease * 1000),
                condition=coredis.PureToken.XX if only_if_held else None,
            )
        )
        if done:
            # Redis counts the lease from when it set it, later than this.
            self._lease_until = sent + self._lease * _LEASE_TRUSTED
        return bool(done)

    async def _keep_lease(self) -> None:
        """Refresh the lease; if it ran out meanwhile (cut off for longer than
        the lease, or Redis restarted without its data), take it again and
        register again what the others may have reclaimed. Sooner when a
        hand-over waits for the lease to be confirmed."""
        while True:
            with anyio.move_on_after(self._lease / 3):
                await self._lease_check.wait_until(
                    lambda: True if self._unconfirmed else None
                )
            try:
                if not await self._take_lease(only_if_held=True):
                    await self._recover_lease()
                elif self._unconfirmed:
                    # Held all along: what the registrations hold is theirs.
                    self._unconfirmed = False
                    await self._read_back()
            except RedisUnavailable:
                await anyio.sleep(_FIRST_DELAY)

    async def _recover_lease(self) -> None:
        # Reapers and this instance exclude each other with the reaping lock.
        if not await self._lock("renew", self._owner):
            return  # a reaper works on it: try again at the next refresh
        try:
            await self._take_lease()
            client = self._live_client()
            await self._command(client.sadd(self._layout.owners(), [self._owner]))
            # Registrations a reaper removed come back, last in their queues;
            # those still there return what they hold (the lock keeps the
            # reapers off meanwhile).
            self._unconfirmed = False
            waiting = list(self._waiting.items())
            for start in range(0, len(waiting), _BATCH):
                await self._concurrently(
                    functools.partial(self._register_again, *registered)
                    for registered in waiting[start : start + _BATCH]
                )
        finally:
            await self._lock("unlock", self._owner)

    async def _register_again(self, registration: str, encoded_key: str) -> None:
        held = await self._register(registration, encoded_key)
        if held is not None:
            self._hand_over(registration, held, encoded_key.encode())

    async def _lock(self, mode: str, owner: str) -> bool:
        """Take (``reap``, ``renew``) or give back (``unlock``) the reaping
        lock of ``owner``; whether it was done."""
        layout = self._layout
        done = await self._run(
            "lock",
            [layout.alive(owner), layout.reaping(owner)],
            "",
            "",
            "",
            mode,
            self._owner,
            math.ceil(self._lease * 1000),
        )
        return bool(done == 1)

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
        for owner_bytes in await self._command(client.smembers(layout.owners())):
            owner = owner_bytes.decode("ascii")
            # Only an owner whose lease ran out, and only one reaper at a time.
            if owner == self._owner or not await self._lock("reap", owner):
                continue
            try:
                await self._reclaim_everywhere(owner)
                await self._command(client.srem(layout.owners(), [owner]))
            finally:
                await self._lock("unlock", owner)

    async def _reclaim_everywhere(self, owner: str) -> None:
        """Reclaim what ``owner`` has in Redis, in every partition."""
        await self._concurrently(
            functools.partial(self._reclaim, owner, partition)
            for partition in range(PARTITIONS)
        )

    async def _reclaim(self, owner: str, partition: int) -> None:
        layout = self._layout
        await self._run(
            "reclaim",
            [layout.owned_keys(partition, owner)],
            *self._bell(partition),
            "",
            owner,
            layout.base(partition),
        )


@final
class RedisExpectation(Generic[V]):
    """A registration for the value of one key, made by :meth:`RedisWaitMap.expect`.

    Enter it with ``async with`` (that registers, a Redis round trip), and
    ``await`` it once inside the block.
    """

    __slots__ = (
        "_encoded_key",
        "_held",
        "_kind",
        "_local",
        "_map",
        "_received",
        "_registration",
        "key",
    )

    def __init__(
        self, waitmap: RedisWaitMap[V], encoded_key: str, key: RedisKey, take: bool
    ) -> None:
        self._map = waitmap
        self._encoded_key = encoded_key
        #: The key whose value is expected.
        self.key: RedisKey = key
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
        await wm._usable("expect a value from")
        registration = self._registration = wm._new_registration(self._kind)
        local = self._local = wm._local.expect(registration, take=False)
        local.__enter__()
        wm._waiting[registration] = self._encoded_key
        try:
            held = await wm._register(registration, self._encoded_key)
        except BaseException:
            self._leave()
            raise
        if held is not None:
            self._held = held
            del wm._waiting[registration]
            if self._kind == "t":
                # Held in Redis for this registration until acknowledged.
                wm._delivered[registration] = self._encoded_key
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
        assert local is not None
        assert registration is not None
        self._local = None
        local.__exit__(None, None, None)
        if not self._received:
            self._map._release_later(registration, ack=False)

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
            # Cancelled here, it did not receive the value, which goes on.
            await anyio.lowlevel.checkpoint()
        self._received = True
        self._map._release_later(registration, ack=True)
        return self._map._decode(outcome, self.key)

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
