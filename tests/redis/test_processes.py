"""RedisWaitMap across OS processes, against real Redis servers.

Every test starts its own redis-server (redis_servers.py) and several worker
processes (worker.py, driven through worker_processes.py), which mix the three
loops: asyncio, asyncio with uvloop, and trio. The tests look into Redis through
the server's own connection, with the map's layout (_layout.py): who is
registered on a key (its T and W sorted sets) and what was handed to a
registration and not yet acknowledged by its process (its D hash).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import pytest
from redis_servers import RedisCluster, RedisServer, scan_all
from worker_processes import LOOPS, WorkerProcess, Workers, wait_until

from anyio_waitmap.redis._codec import encode_key
from anyio_waitmap.redis._layout import PARTITIONS, Layout

pytestmark = pytest.mark.redis

NAME = "procs"
LAYOUT = Layout(NAME)
#: A short lease, so that dead instances are reclaimed quickly.
LEASE = 1.0
TIMEOUT = 2.0
#: How long reclaiming a dead instance may take: its lease runs out at most
#: LEASE after its last refresh, and each live instance looks every LEASE / 2.
RECLAIM_WITHIN = 2 * LEASE + 0.5


#: A standalone server, or a Cluster (looked into node by node).
Target: TypeAlias = "RedisServer | RedisCluster"


def node_of(server: Target, name: str) -> RedisServer:
    """The server that holds the Redis key ``name``."""
    if isinstance(server, RedisCluster):
        return server.node_for_key(name)
    return server


def names(key: str) -> tuple[str, str, str, str]:
    """The Redis keys of a map key: stored value, takers, waiters, handed."""
    keys = LAYOUT.key(encode_key(key))
    return keys.v, keys.t, keys.w, keys.d


def takers(server: Target, key: str) -> list[str]:
    """The registrations waiting to take ``key``, first first."""
    reply = node_of(server, names(key)[1]).execute("ZRANGE", names(key)[1], 0, -1)
    assert isinstance(reply, list)
    return [item.decode() for item in reply if isinstance(item, bytes)]


def count_waiters(server: Target, key: str) -> int:
    reply = node_of(server, names(key)[2]).execute("ZCARD", names(key)[2])
    assert isinstance(reply, int)
    return reply


def stored(server: Target, key: str) -> bytes | None:
    """The raw stored value of ``key`` (a str value is stored as b"s" + it)."""
    reply = node_of(server, names(key)[0]).execute("GET", names(key)[0])
    assert reply is None or isinstance(reply, bytes)
    return reply


def map_keys(server: Target) -> list[bytes]:
    """The map's data keys: stored values, queues, deliveries (not its owners,
    leases, and the counts of what each owner holds)."""
    return [key for key in scan_all(server, LAYOUT.pattern()) if b":owner:" not in key]


def dump(server: Target, key: bytes) -> object:
    """What ``key`` holds, for a failure's message."""
    node = node_of(server, key)
    kind = node.execute("TYPE", key)
    command = {b"zset": ("ZRANGE", key, 0, -1), b"hash": ("HGETALL", key)}
    return node.execute(*command.get(kind, ("GET", key)))  # type: ignore[arg-type]


def all_keys(server: Target) -> list[bytes]:
    """Every key of the map, its own included."""
    return scan_all(server, LAYOUT.pattern()) + scan_all(
        server, LAYOUT.control_pattern()
    )


def start_mixed(
    workers: Workers, server: Target, count: int = 3, **options: Any
) -> list[WorkerProcess]:
    """``count`` workers, cycling through asyncio, uvloop and trio."""
    options = {"lease": LEASE, "timeout": TIMEOUT, **options}
    if isinstance(server, RedisCluster):
        options["cluster"] = True
    return [
        workers.start(server.url(), NAME, loop, label=f"{loop}-{n}", **options)
        for n, loop in zip(range(count), itertools.cycle(LOOPS))
    ]


def take(worker: WorkerProcess, server: RedisServer, key: str, tag: str) -> str:
    """Start a take in ``worker`` and wait until Redis has its registration,
    last among the takers of ``key``; return the registration."""
    before = len(takers(server, key))
    worker.send(op="take", key=key, tag=tag)
    wait_until(lambda: len(takers(server, key)) == before + 1, what=f"{tag} taking")
    registration = takers(server, key)[-1]
    assert worker.owner in registration
    return registration


def wait(worker: WorkerProcess, server: RedisServer, key: str, tag: str) -> None:
    """Start a wait in ``worker`` and wait until Redis has its registration."""
    before = count_waiters(server, key)
    worker.send(op="wait", key=key, tag=tag)
    wait_until(lambda: count_waiters(server, key) == before + 1, what=f"{tag} waits")


def stop_all(server: Target, workers: list[WorkerProcess]) -> None:
    """Stop the workers once every task of theirs has ended and Redis has their
    acknowledgements (they are sent in the background): then Redis holds the
    stored values, and nothing else of the map's keys."""
    try:
        wait_until(
            lambda: all(key.endswith(b":v") for key in map_keys(server)),
            what="every registration and delivery released",
        )
    except AssertionError as exc:
        left = {key: dump(server, key) for key in map_keys(server)}
        raise AssertionError(f"{exc}; left in Redis: {left}") from None
    for worker in workers:
        worker.stop()


def values_of(worker: WorkerProcess) -> list[tuple[str, Any]]:
    """(tag, value) of every value the worker's tasks returned so far."""
    return [(e["tag"], e["value"]) for e in worker.drain() if e["event"] == "value"]


# -- counts -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wake_counts_exactly_the_tasks_of_every_process_that_return_the_value(
    redis_server: RedisServer, workers: Workers
) -> None:
    procs = start_mixed(workers, redis_server)
    for n, proc in enumerate(procs):
        take(proc, redis_server, "k", f"take{n}")
        for m in range(2):
            wait(proc, redis_server, "k", f"wait{n}.{m}")

    # Every waiter of every process, and the first taker.
    assert procs[2].wake("k", "v1") == 7
    for n, proc in enumerate(procs):
        for m in range(2):
            assert proc.expect_tag(f"wait{n}.{m}")["value"] == "v1"
    assert procs[0].expect_tag("take0")["value"] == "v1"
    # The next taker, only.
    assert procs[0].wake("k", "v2") == 1
    assert procs[1].expect_tag("take1")["value"] == "v2"
    # Nobody waits on another key: NoMatch, and nothing is stored.
    assert procs[1].wake("other", "lost") == 0
    assert stored(redis_server, "other") is None

    # cancel() counts the tasks of every process, which raise KeyCancelled.
    wait(procs[0], redis_server, "k", "wait-late0")
    wait(procs[1], redis_server, "k", "wait-late1")
    assert procs[1].call("cancel", "k") == 3
    for proc, tag in [(procs[2], "take2"), (procs[0], "wait-late0")]:
        assert proc.expect_tag(tag)["event"] == "key_cancelled"
    assert procs[1].expect_tag("wait-late1")["event"] == "key_cancelled"
    assert procs[2].call("cancel", "k") == 0
    assert procs[0].wake("k", "v3") == 0

    stop_all(redis_server, procs)
    # No task returned anything else.
    returned = sorted(value for proc in procs for _, value in values_of(proc))
    assert returned == ["v1"] * 7 + ["v2"]
    assert all_keys(redis_server) == []


@pytest.mark.timeout(60)
def test_takers_of_every_process_are_served_in_the_order_they_registered(
    redis_server: RedisServer, workers: Workers
) -> None:
    procs = start_mixed(workers, redis_server)
    waker = workers.start(redis_server.url(), NAME, "trio", label="waker")
    order = [procs[n % 3] for n in range(9)]
    registrations = [
        take(proc, redis_server, "q", f"take{n}") for n, proc in enumerate(order)
    ]
    assert takers(redis_server, "q") == registrations

    # Sent back to back, without waiting: wakes, and stores that a taker takes.
    for n in range(9):
        op = "set" if n % 3 == 2 else "wake"
        waker.send(op=op, key="q", value=f"v{n}", tag=f"hand{n}")
    for n in range(9):
        event = waker.expect_tag(f"hand{n}")
        assert event.get("count", 1) == 1, event
    for n, proc in enumerate(order):
        assert proc.expect_tag(f"take{n}")["value"] == f"v{n}"
    assert stored(redis_server, "q") is None  # every store was taken

    # With nobody waiting, a store stays, and the next taker takes it at once.
    waker.call("set", "q", value="kept")
    assert procs[1].request(op="take", key="q", tag="late")["value"] == "kept"
    stop_all(redis_server, [*procs, waker])
    assert all_keys(redis_server) == []


# -- a process that dies ----------------------------------------------------------


def hand_to_a_stopped_taker(
    server: RedisServer, taker: WorkerProcess, waker: WorkerProcess, key: str
) -> str:
    """Make ``taker`` take ``key``, SIGSTOP it, and hand it a value: Redis then
    holds the value for its registration, which its process cannot take."""
    registration = take(taker, server, key, "held")
    taker.pause()
    assert waker.wake(key, "precious") == 1
    handed = server.execute("HGETALL", names(key)[3])
    assert handed == [registration.encode(), b"vsprecious"]
    return registration


@pytest.mark.timeout(60)
def test_value_held_by_a_killed_taker_goes_to_the_next_taker_within_the_lease(
    redis_server: RedisServer, workers: Workers
) -> None:
    victim, heir, waker = start_mixed(workers, redis_server)
    registration = take(victim, redis_server, "k", "first")
    take(heir, redis_server, "k", "next")
    victim.pause()
    # Handed to the first taker, whose process cannot receive it.
    assert waker.wake("k", "precious") == 1
    assert redis_server.execute("HGETALL", names("k")[3]) == [
        registration.encode(),
        b"vsprecious",
    ]
    killed = time.monotonic()
    victim.kill()
    event = heir.expect_tag("next", timeout=RECLAIM_WITHIN + 5)
    assert event["value"] == "precious"
    assert event["_time"] - killed < RECLAIM_WITHIN
    # Nothing is left of the dead process: not its lease, not its index.
    wait_until(lambda: map_keys(redis_server) == [], what="acknowledged")
    everything = scan_all(redis_server, LAYOUT.control_pattern()) + map_keys(
        redis_server
    )
    assert not [key for key in everything if victim.owner.encode() in key]
    assert victim.owner.encode() not in redis_server.execute(
        "SMEMBERS", LAYOUT.owners()
    )  # type: ignore[operator]
    stop_all(redis_server, [heir, waker])


@pytest.mark.timeout(60)
def test_value_held_by_a_killed_taker_goes_back_into_the_store_within_the_lease(
    redis_server: RedisServer, workers: Workers
) -> None:
    victim, other, waker = start_mixed(workers, redis_server)
    hand_to_a_stopped_taker(redis_server, victim, waker, "k")
    victim.kill()
    took = wait_until(
        lambda: stored(redis_server, "k") == b"sprecious",
        timeout=RECLAIM_WITHIN + 5,
        what="the value is stored",
    )
    assert took < RECLAIM_WITHIN
    assert map_keys(redis_server) == [names("k")[0].encode()]
    assert other.request(op="take", key="k", tag="late")["value"] == "precious"
    stop_all(redis_server, [other, waker])
    assert all_keys(redis_server) == []


@pytest.mark.timeout(60)
def test_registrations_of_a_killed_process_are_reclaimed_within_the_lease(
    redis_server: RedisServer, workers: Workers
) -> None:
    victim, survivor, third = start_mixed(workers, redis_server, count=3)
    victim.call("set", "kept", value="stays")
    for n in range(4):
        take(victim, redis_server, f"key{n}", f"take{n}")
        wait(victim, redis_server, f"key{n}", f"wait{n}")
    take(survivor, redis_server, "key0", "survivor")
    assert len(map_keys(redis_server)) == 9
    killed = time.monotonic()
    victim.kill()
    kept = [names("kept")[0].encode(), names("key0")[1].encode()]
    took = wait_until(
        lambda: map_keys(redis_server) == sorted(kept),
        timeout=RECLAIM_WITHIN + 5,
        what="the registrations are reclaimed",
    )
    assert took < RECLAIM_WITHIN
    assert takers(redis_server, "key0") == [takers(redis_server, "key0")[0]]
    assert survivor.owner in takers(redis_server, "key0")[0]
    everything = scan_all(redis_server, LAYOUT.control_pattern()) + map_keys(
        redis_server
    )
    assert not [key for key in everything if victim.owner.encode() in key]
    # Nobody of the dead process is counted any more.
    assert survivor.wake("key1", "late") == 0
    assert survivor.wake("key0", "late") == 1
    assert survivor.expect_tag("survivor")["value"] == "late"
    assert time.monotonic() - killed < 30
    stop_all(redis_server, [survivor, third])


@pytest.mark.timeout(60)
def test_taker_paused_past_its_lease_does_not_return_a_value_passed_on(
    redis_server: RedisServer, workers: Workers
) -> None:
    victim, heir, waker = start_mixed(workers, redis_server)
    take(victim, redis_server, "k", "first")
    take(heir, redis_server, "k", "next")
    victim.pause()
    assert waker.wake("k", "precious") == 1
    assert heir.expect_tag("next", timeout=RECLAIM_WITHIN + 5)["value"] == "precious"
    victim.resume()

    def registered_again_or_returned() -> bool:
        again = any(victim.owner in r for r in takers(redis_server, "k"))
        return again or any(e.get("tag") == "first" for e in victim.drain())

    # It registers again (its lease ran out), and waits for a value of its own.
    wait_until(registered_again_or_returned, what="back")
    assert waker.wake("k", "second") == 1
    assert victim.expect_tag("first")["value"] == "second"


# -- Redis connections, restarts and stops ----------------------------------------


@pytest.mark.timeout(60)
def test_no_wake_up_is_lost_when_the_subscriptions_are_killed(
    redis_server: RedisServer, workers: Workers
) -> None:
    procs = start_mixed(workers, redis_server)
    waker = workers.start(redis_server.url(), NAME, "asyncio", label="waker")
    count = 600
    for n in range(count):
        procs[n % 3].send(op="take", key=f"p{n}", tag=f"take{n}")
    wait_until(lambda: len(map_keys(redis_server)) == count, what="all registered")

    for n in range(count):
        waker.send(op="wake", key=f"p{n}", value=f"v{n}", tag=f"wake{n}")
    kills: list[tuple[float, int]] = []
    for _ in range(6):
        killed = int(redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub"))
        kills.append((time.monotonic(), killed))
        time.sleep(0.02)
    for n in range(count):
        assert waker.expect_tag(f"wake{n}")["count"] == 1
    last_wake = waker.events[-1]["_time"]
    # The subscriptions went down while the doorbells rang.
    assert any(when < last_wake and killed > 0 for when, killed in kills), kills
    for n in range(count):
        assert procs[n % 3].expect_tag(f"take{n}")["value"] == f"v{n}"
    stop_all(redis_server, [*procs, waker])
    assert all_keys(redis_server) == []


def park_for_restart(server: RedisServer, procs: list[WorkerProcess]) -> list[str]:
    """Each process takes "k" (in order) and waits on a key of its own; the
    first stores two values. Returns the registrations of the takers."""
    registrations = []
    for n, proc in enumerate(procs):
        registrations.append(take(proc, server, "k", f"take{n}"))
        wait(proc, server, f"w{n}", f"wait{n}")
    procs[0].call("set", "s0", value="stored0")
    procs[0].call("set", "s1", value="stored1")
    return registrations


def wait_subscribed(procs: list[WorkerProcess]) -> None:
    wait_until(
        lambda: all(proc.status()["subscribed"] for proc in procs),
        what="subscribed again",
    )


@pytest.mark.timeout(60)
def test_redis_restarted_with_persistence_waiters_carry_on_and_values_survive(
    persistent_redis_server: RedisServer, workers: Workers
) -> None:
    server = persistent_redis_server
    # Back within the lease, however loaded the machine: nobody is reclaimed.
    procs = start_mixed(workers, server, lease=10.0)
    registrations = park_for_restart(server, procs)
    before = map_keys(server)
    server.restart()
    assert map_keys(server) == before
    assert takers(server, "k") == registrations
    wait_subscribed(procs)

    for n, proc in enumerate(procs):
        assert procs[2 - n].wake(f"w{n}", f"after{n}") == 1
        assert proc.expect_tag(f"wait{n}")["value"] == f"after{n}"
    for n, proc in enumerate(procs):
        # In the order they registered before the restart.
        assert procs[1].wake("k", f"taken{n}") == 1
        assert proc.expect_tag(f"take{n}")["value"] == f"taken{n}"
    assert procs[1].call("get", "s0") == "stored0"
    assert procs[2].request(op="take", key="s1", tag="s1")["value"] == "stored1"
    stop_all(server, procs)
    assert map_keys(server) == [names("s0")[0].encode()]


@pytest.mark.timeout(60)
def test_redis_restarted_without_persistence_waiters_register_again(
    redis_server: RedisServer, workers: Workers
) -> None:
    """Redis forgets everything: stored values are lost, and so are the
    registrations, until each instance finds its lease gone (it looks every
    lease / 3) and registers its waiting tasks again, last in their queues.
    Until then a wake finds nobody (NoMatch), as if nobody waited."""
    procs = start_mixed(workers, redis_server)
    park_for_restart(redis_server, procs)
    restarted = time.monotonic()
    redis_server.restart()
    assert procs[1].call("get", "s0") is None
    took = wait_until(
        lambda: (
            len(takers(redis_server, "k")) == 3
            and all(count_waiters(redis_server, f"w{n}") == 1 for n in range(3))
        ),
        timeout=2 * LEASE + 5,
        what="registered again",
    )
    assert took < 2 * LEASE
    assert time.monotonic() - restarted < 30
    wait_subscribed(procs)
    for n, proc in enumerate(procs):
        assert procs[2 - n].wake(f"w{n}", f"after{n}") == 1
        assert proc.expect_tag(f"wait{n}")["value"] == f"after{n}"
    owners = {registration[1:13] for registration in takers(redis_server, "k")}
    assert owners == {proc.owner for proc in procs}
    for n in range(3):
        assert procs[0].wake("k", f"taken{n}") == 1
    returned = {proc.expect_tag(f"take{n}")["value"] for n, proc in enumerate(procs)}
    assert returned == {"taken0", "taken1", "taken2"}
    stop_all(redis_server, procs)
    assert all_keys(redis_server) == []


@pytest.mark.timeout(60)
def test_redis_stopped_waiters_carry_on_and_a_task_cancelled_meanwhile_leaves(
    persistent_redis_server: RedisServer, workers: Workers
) -> None:
    server = persistent_redis_server
    # Redis is away for less than the lease (stopping, starting and reconnecting
    # take seconds on a loaded machine): the registrations keep their places.
    # (Away for longer, they register again, last in their queues: see
    # test_redis_restarted_without_persistence_waiters_register_again.)
    procs = start_mixed(workers, server, lease=10.0)
    registrations = [
        take(proc, server, "k", f"take{n}") for n, proc in enumerate(procs)
    ]
    for n, proc in enumerate(procs):
        wait(proc, server, "w", f"wait{n}")
    server.stop()
    # Cancelled while Redis is down: their releases wait for Redis.
    procs[1].send(op="abort", tag="take1")
    procs[1].send(op="abort", tag="wait1")
    assert procs[1].expect_tag("take1")["event"] == "timeout"
    assert procs[1].expect_tag("wait1")["event"] == "timeout"
    time.sleep(LEASE / 2)
    server.start()
    wait_until(
        lambda: (
            takers(server, "k") == [registrations[0], registrations[2]]
            and count_waiters(server, "w") == 2
        ),
        what="the cancelled tasks' registrations removed",
    )
    wait_subscribed(procs)
    assert procs[1].wake("w", "after") == 2
    assert procs[1].wake("k", "first") == 1
    assert procs[1].wake("k", "second") == 1
    assert procs[0].expect_tag("take0")["value"] == "first"
    assert procs[2].expect_tag("take2")["value"] == "second"
    for n in (0, 2):
        assert procs[n].expect_tag(f"wait{n}")["value"] == "after"
    stop_all(server, procs)
    assert all_keys(server) == []


# -- a bounded random load --------------------------------------------------------


@pytest.mark.timeout(150)
def test_random_load_accounts_for_every_value(
    redis_server: RedisServer, workers: Workers
) -> None:
    """Four processes run a random mix of takes, waits (some with timeouts),
    wakes, stores, pops and cancels; every value is accounted for (see
    run_random_load)."""
    run_random_load(redis_server, workers)


@pytest.mark.timeout(240)
def test_random_load_on_a_cluster_through_a_reshard(
    redis_cluster_factory: Any, workers: Workers
) -> None:
    """The same load on a 3-primary Cluster, with a reshard in its middle that
    moves slots of the map's partitions (their keys, their sharded doorbells)
    to another primary: every value is still accounted for, and SCAN on every
    shard finds nothing left."""
    cluster: RedisCluster = redis_cluster_factory()
    slots = {cluster.keyslot(LAYOUT.base(p)) for p in range(PARTITIONS)}
    source, target = cluster.primaries()[:2]
    # redis-cli moves the source's slots from its first one: as many as it
    # takes to move four partitions.
    owned = sorted(cluster.slots_of(source))
    theirs = [number for number, slot in enumerate(owned) if slot in slots]
    count = theirs[3] + 1
    moved: list[int] = []

    def reshard() -> None:
        moved.extend(cluster.reshard(count, source, target))

    run_random_load(cluster, workers, during=reshard)
    assert len(set(moved) & slots) >= 4, "the reshard moved no partition"


def run_random_load(
    server: Target, workers: Workers, during: Callable[[], None] | None = None
) -> None:
    """Four processes run a random mix of takes, waits (some with timeouts),
    wakes, stores, pops and cancels; ``during()`` runs while they do. Every
    value is accounted for.

    Keys of two kinds keep the accounting exact. *Wake keys* are woken and
    never set, and their takes never time out, so no value of theirs is ever
    stored (a value handed to a taker is only given back when the taker
    leaves without it). On the *strict* ones nothing times out: each woken
    value is returned by exactly as many tasks as wake() counted, and the
    cancels count exactly the tasks that raise KeyCancelled. Elsewhere a task
    whose timeout fires after a value (or a cancellation) was handed to it in
    Redis, but before its process received it, is counted and does not
    return it: each such task explains at most one missing return. *Set keys*
    are each set once, by one process: their value is taken (or popped) by
    exactly one task, or is still stored at the end; a taker that times out
    after the value was handed to it gives it back (to the next taker, or to
    the store).
    """
    wake_keys = [f"w{n}" for n in range(30)]
    strict_keys = wake_keys[:10]
    procs = start_mixed(workers, server, count=4)
    set_keys = {proc.label: [f"s{n}.{proc.label}" for n in range(80)] for proc in procs}
    all_set_keys = [key for keys in set_keys.values() for key in keys]
    started = time.monotonic()
    for n, proc in enumerate(procs):
        proc.send(
            op="load",
            seed=1000 + n,
            ops=1500,
            prefix=proc.label,
            wake_keys=wake_keys,
            strict_keys=strict_keys,
            set_keys=all_set_keys,
            own_set_keys=set_keys[proc.label],
            max_tasks=40,
            max_timeout=0.2,
        )
    if during is not None:
        during()
    for proc in procs:
        proc.expect(lambda e: e["event"] == "load_done", timeout=90)

    # The tasks still waiting: cancel every key until none is left (these
    # cancels are counted with the others, from the events).
    for _ in range(30):
        if all(proc.status()["tasks"] == 0 for proc in procs):
            break
        for key in wake_keys + all_set_keys:
            procs[0].call("cancel", key)
        time.sleep(0.1)
    else:
        pytest.fail("tasks kept waiting after every key was cancelled")
    stop_all(server, procs)
    elapsed = time.monotonic() - started

    events = [e for proc in procs for e in proc.events]
    errors = [e for e in events if e["event"] in ("error", "closed")]
    assert errors == []
    woken = {e["value"]: e for e in events if e["event"] == "woke"}
    sets = {
        e["value"]: e["key"]
        for e in events
        if e["event"] == "done" and e["op"] == "set"
    }
    assert set(all_set_keys) == set(sets.values())
    cancels: collections.Counter[str] = collections.Counter()
    for e in events:
        if e["event"] == "done" and e["op"] == "cancel":
            cancels[e["key"]] += e["result"]
    returns: collections.Counter[tuple[str, str]] = collections.Counter()
    taken: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    for e in events:
        if e["event"] == "value":
            returns[e["value"], e["op"]] += 1
            if e["op"] == "take":
                taken[e["value"]] += 1
            key = woken[e["value"]]["key"] if e["value"] in woken else sets[e["value"]]
            assert e["key"] == key, f"{e} returned a value sent to {key}"
        elif e["event"] == "done" and e["op"] == "pop" and e["result"] is not None:
            taken[e["result"]] += 1
            assert sets[e["result"]] == e["key"]
        elif e["event"] in ("key_cancelled", "timeout"):
            outcomes[e["key"], e["event"]] += 1
    # Nothing returned that was never sent; each value taken at most once.
    assert set(taken) | {value for value, _ in returns} <= set(woken) | set(sets)
    assert max(taken.values()) == 1

    final = {key: stored(server, key) for key in wake_keys + all_set_keys}
    for key in wake_keys:
        assert final[key] is None, f"a value of {key} was stored"
        missing = 0
        for value, event in woken.items():
            if event["key"] != key:
                continue
            received = returns[value, "take"] + returns[value, "wait"]
            assert returns[value, "take"] <= 1
            assert received <= event["count"], event
            missing += event["count"] - received
        cancelled = outcomes[key, "key_cancelled"]
        assert cancelled <= cancels[key]
        missing += cancels[key] - cancelled
        if key in strict_keys:
            assert outcomes[key, "timeout"] == 0
            assert missing == 0, key
        else:
            assert missing <= outcomes[key, "timeout"], key
    for value, key in sets.items():
        still = final[key] == b"s" + value.encode()
        assert final[key] is None or still, (key, final[key])
        assert taken[value] + still == 1, (value, taken[value], final[key])
        cancelled = outcomes[key, "key_cancelled"]
        assert 0 <= cancels[key] - cancelled <= outcomes[key, "timeout"], key

    # At the end Redis holds the stored values and nothing else.
    left = {names(key)[0].encode() for key, value in final.items() if value}
    assert set(all_keys(server)) == left
    assert scan_all(server, LAYOUT.control_pattern()) == []

    # The load went through every path.
    kinds = collections.Counter(e["event"] for e in events)
    assert kinds["value"] > 300, kinds
    assert kinds["timeout"] > 20, kinds
    assert kinds["key_cancelled"] > 20, kinds
    assert sum(1 for e in woken.values() if e["count"] == 0) > 50
    assert sum(1 for e in woken.values() if e["count"] > 1) > 20
    assert sum(taken.values()) > 50
    assert left
    print(f"load: {len(events)} events in {elapsed:.1f} s, {dict(kinds)}")
