"""A RedisWaitMap in a process of its own, driven by the tests of tests/redis.

Run as ``python worker.py --url URL --name MAP --loop LOOP [--commands JSON]``,
where LOOP is ``asyncio``, ``uvloop`` (asyncio with anyio's ``use_uvloop``) or
``trio``. The worker opens the map, prints ``{"event": "ready", ...}``, runs the
commands given with ``--commands`` (a JSON list), then the commands it reads
from its standard input, one JSON object a line. It prints one JSON object a
line for everything that happens (flushed at once), and exits when told, when
its input closes, or, with ``{"op": "exit", "when": "idle"}``, once its tasks
have all ended.

Commands (``tag`` names the command in the events it causes):

``{"op": "take" | "wait", "key": K, "tag": T, "timeout": S}``
    start a task that takes (waits on) ``K``, under ``move_on_after(S)`` if
    ``timeout`` is given; it prints one of ``value`` (with ``value``),
    ``key_cancelled``, ``timeout`` (its scope ran out, or ``abort``),
    ``closed`` or ``error`` when it ends.
``{"op": "abort", "tag": T}``
    cancel the task ``T`` (it prints ``timeout`` unless it returns a value).
``{"op": "wake", "key": K, "value": V, "tag": T}``
    prints ``woke`` with ``count`` (0 for NoMatch).
``{"op": "set" | "get" | "pop" | "cancel", ...}``
    print ``done`` with ``result`` (``set`` takes ``ttl``; ``cancel`` returns
    a count).
``{"op": "status"}``
    prints ``status``: the tasks still running, and the map's statistics.
``{"op": "load", ...}``
    a bounded random mix of operations (see :func:`Worker.load`).
``{"op": "exit", "when": "now" | "idle"}``
    close the map (waiting tasks raise WaitMapClosed) and exit.

An operation that fails prints ``error`` with the exception's ``type`` and
``message``; anything unexpected prints ``crash`` with the traceback, and the
worker exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import traceback
from typing import Any

import anyio
import anyio.abc

from anyio_waitmap import KeyCancelled, WaitMapClosed, Woke
from anyio_waitmap.redis import RedisWaitMap

LOOPS = {
    "asyncio": ("asyncio", {"use_uvloop": False}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

_MISSING: Any = object()


def emit(event: str, **fields: Any) -> None:
    """Print one event as a JSON line, at once."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def error_fields(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


class Worker:
    """Runs the commands on one open map."""

    def __init__(self, wm: RedisWaitMap[Any], task_group: anyio.abc.TaskGroup) -> None:
        self.wm = wm
        self.task_group = task_group
        #: The scopes of the take and wait tasks still running, by tag.
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.idle = anyio.Event()
        self.idle.set()

    # -- commands --------------------------------------------------------------------

    async def run(self, command: dict[str, Any]) -> bool:
        """Carry out one command; False once told to exit."""
        op = command["op"]
        tag = command.get("tag")
        if op in ("take", "wait"):
            self.start_waiting(op, command["key"], tag, command.get("timeout"))
        elif op == "abort":
            scope = self.scopes.get(tag)  # type: ignore[arg-type]
            if scope is not None:
                scope.cancel()
        elif op == "load":
            self.task_group.start_soon(self.load, command)
        elif op == "status":
            stats = self.wm.statistics()
            emit(
                "status",
                tag=tag,
                tasks=len(self.scopes),
                tasks_waiting=stats.tasks_waiting,
                pending_operations=stats.pending_operations,
                subscribed=stats.subscribed,
            )
        elif op == "exit":
            if command.get("when") == "idle":
                await self.idle.wait()
            return False
        else:
            await self.call(op, command, tag)
        return True

    async def call(self, op: str, command: dict[str, Any], tag: Any) -> None:
        """wake, set, get, pop or cancel: print the outcome."""
        wm, key = self.wm, command["key"]
        try:
            if op == "wake":
                outcome = await wm.wake(key, command["value"])
                count = outcome.count if isinstance(outcome, Woke) else 0
                emit("woke", tag=tag, key=key, value=command["value"], count=count)
                return
            if op == "set":
                result = await wm.set(key, command["value"], ttl=command.get("ttl"))
            elif op == "get":
                result = await wm.get(key)
            elif op == "pop":
                result = await wm.pop(key, None)
            elif op == "cancel":
                result = await wm.cancel(key)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            emit("error", tag=tag, op=op, key=key, **error_fields(exc))
            return
        emit("done", tag=tag, op=op, key=key, value=command.get("value"), result=result)

    def start_waiting(self, op: str, key: Any, tag: Any, timeout: float | None) -> None:
        if tag in self.scopes:
            raise ValueError(f"tag {tag!r} is in use")
        scope = anyio.CancelScope()
        if timeout is not None:
            scope.deadline = anyio.current_time() + timeout
        self.scopes[tag] = scope
        self.idle = anyio.Event()
        self.task_group.start_soon(self.wait_task, op, key, tag, scope)

    async def wait_task(
        self, op: str, key: Any, tag: Any, scope: anyio.CancelScope
    ) -> None:
        result = _MISSING
        try:
            with scope:
                if op == "take":
                    result = await self.wm.take(key)
                else:
                    result = await self.wm.wait(key)
        except KeyCancelled:
            emit("key_cancelled", tag=tag, op=op, key=key)
        except WaitMapClosed:
            emit("closed", tag=tag, op=op, key=key)
        except Exception as exc:
            emit("error", tag=tag, op=op, key=key, **error_fields(exc))
        else:
            if result is _MISSING:
                emit("timeout", tag=tag, op=op, key=key)
            else:
                emit("value", tag=tag, op=op, key=key, value=result)
        finally:
            del self.scopes[tag]
            if not self.scopes:
                self.idle.set()

    # -- the random load -------------------------------------------------------------

    async def load(self, command: dict[str, Any]) -> None:
        """A bounded random mix of operations, the same for the same seed.

        ``command`` holds ``seed``, ``ops`` (how many operations), ``prefix``
        (for tags and values, unique to the worker), ``wake_keys`` (keys that
        are woken and never set), ``strict_keys`` (those of ``wake_keys`` on
        which no task has a timeout), ``set_keys`` (keys that are set once
        each, by their owner), ``own_set_keys`` (the ones this worker sets, in
        order), ``max_tasks`` (tasks waiting at once) and ``max_timeout``.

        Takes on a key that is woken never time out (a value handed to a taker
        that left would go back into the store, where it could meet another).
        Every operation prints its outcome; ``load_done`` comes last, once
        every operation was issued (tasks may still be waiting).
        """
        rng = random.Random(command["seed"])
        prefix = command["prefix"]
        wake_keys: list[str] = command["wake_keys"]
        strict_keys = set(command["strict_keys"])
        set_keys: list[str] = command["set_keys"]
        own_set_keys: list[str] = list(command["own_set_keys"])
        max_tasks: int = command["max_tasks"]
        max_timeout: float = command["max_timeout"]
        for n in range(command["ops"]):
            tag = f"{prefix}-{n}"
            value = f"{prefix}/{n}"
            choice = rng.random()
            if choice < 0.35 and len(self.scopes) < max_tasks:
                op = rng.choice(["take", "wait"])
                timeout = rng.uniform(0.005, max_timeout)
                if rng.random() < 0.5:
                    key = rng.choice(wake_keys)
                    if op == "take" or key in strict_keys:
                        timeout = None
                else:
                    key = rng.choice(set_keys)
                    if rng.random() < 0.5:
                        timeout = None
                self.start_waiting(op, key, tag, timeout)
            elif choice < 0.7:
                await self.call(
                    "wake", {"key": rng.choice(wake_keys), "value": value}, tag
                )
            elif choice < 0.8 and own_set_keys:
                key = own_set_keys.pop(0)
                await self.call("set", {"key": key, "value": value}, tag)
            elif choice < 0.85:
                await self.call("pop", {"key": rng.choice(set_keys)}, tag)
            elif choice < 0.9:
                key = rng.choice(wake_keys + set_keys)
                await self.call("cancel", {"key": key}, tag)
            else:
                await anyio.sleep(rng.choice([0, 0.001, 0.005]))
        # The sets the dice left out: every set key gets its value.
        for n, key in enumerate(own_set_keys):
            tag = f"{prefix}-end-{n}"
            await self.call("set", {"key": key, "value": f"{prefix}/end-{n}"}, tag)
        emit("load_done", prefix=prefix)


async def read_commands(worker: Worker) -> None:
    """Run the commands of the standard input until told to exit, or its end."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    buffer = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip() and not await worker.run(json.loads(line)):
                return


async def main(args: argparse.Namespace) -> None:
    wm = RedisWaitMap.connect(
        args.url,
        name=args.name,
        lease=args.lease,
        timeout=args.timeout,
        cluster=args.cluster,
    )
    # The tasks' group encloses the map, so that leaving the map's block (which
    # makes the tasks still waiting raise WaitMapClosed) happens in the task
    # that entered it, and the tasks can then finish.
    async with anyio.create_task_group() as task_group:
        worker = Worker(wm, task_group)
        async with wm:
            emit("ready", pid=os.getpid(), owner=wm._owner, loop=args.loop)
            go_on = True
            for command in json.loads(args.commands):
                go_on = await worker.run(command)
                if not go_on:
                    break
            if go_on:
                await read_commands(worker)
        await worker.idle.wait()
        task_group.cancel_scope.cancel()  # a load still running
    emit("bye")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--loop", choices=sorted(LOOPS), required=True)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--cluster", action="store_true", help="URL names a node")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--commands", default="[]", help="a JSON list of commands")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_arguments()
    backend, options = LOOPS[arguments.loop]
    try:
        anyio.run(main, arguments, backend=backend, backend_options=options)
    except BaseException:
        emit("crash", traceback=traceback.format_exc())
        sys.exit(1)
