"""A oneshot channel on a WakeSink: one value, sent once, from any thread.

The sender stores the value in a slot and notifies; the receiver awaits
``wait_until`` with a predicate that reads the slot. A sender that goes away
without sending closes the sink, and the receiver gets
:exc:`anyio.ClosedResourceError` instead of waiting forever.

Run it: ``python examples/oneshot.py [--backend trio]``.
"""

from __future__ import annotations

import argparse
import threading
from typing import Generic, TypeVar

import anyio

from anyio_waitmap import WakeSink

T = TypeVar("T")


class _Box(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class Oneshot(Generic[T]):
    def __init__(self) -> None:
        self._box: _Box[T] | None = None  # a box, so that None can be sent too
        self._lock = threading.Lock()
        self._sink = WakeSink()

    def send(self, value: T) -> None:
        """Send the value; any thread. A second send raises RuntimeError."""
        with self._lock:
            if self._box is not None or self._sink.closed:
                raise RuntimeError("this oneshot channel was already used")
            self._box = _Box(value)
        self._sink.notify()

    def abandon(self) -> None:
        """The sender will never send: the receiver gets ClosedResourceError."""
        with self._lock:
            if self._box is None:
                self._sink.close()

    async def receive(self) -> T:
        box = await self._sink.wait_until(lambda: self._box)
        return box.value


async def demo() -> tuple[str, str]:
    answer: Oneshot[str] = Oneshot()
    never: Oneshot[str] = Oneshot()

    def worker() -> None:
        answer.send("computed in a thread")
        never.abandon()

    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, worker)
        value = await answer.receive()
        try:
            await never.receive()
            outcome = "received"
        except anyio.ClosedResourceError:
            outcome = "sender gave up"
    return value, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    options = parser.parse_args()
    print(anyio.run(demo, backend=options.backend))


if __name__ == "__main__":
    main()
