"""A multi-producer, single-consumer channel on a WakeSink.

Producers, in tasks or in plain threads, append to a deque and notify; the one
receiver awaits ``wait_until`` with a predicate that pops. The deque does the
thread-safe part (``append`` and ``popleft`` are atomic); the sink only tells
the receiver when to look again.

Run it: ``python examples/mpsc_channel.py [--backend trio]``.
"""

from __future__ import annotations

import argparse
import collections
from typing import Generic, TypeVar

import anyio

from anyio_waitmap import WakeSink

T = TypeVar("T")


class _End:
    """Marks the end of the stream, after the last item of the last sender."""


_END = _End()


class Channel(Generic[T]):
    """Unbounded; ``send`` never blocks and works from any thread."""

    def __init__(self) -> None:
        self._items: collections.deque[T | _End] = collections.deque()
        self._sink = WakeSink()
        self._source = self._sink.source()

    def send(self, item: T) -> None:
        self._items.append(item)
        self._source.notify()

    def close(self) -> None:
        """No more items: the receiver stops once it has taken every item."""
        self._items.append(_END)
        self._source.notify()

    def _pop(self) -> T | _End | None:
        return self._items.popleft() if self._items else None

    async def receive(self) -> T:
        """The next item; :exc:`anyio.EndOfStream` once closed and drained."""
        item = await self._sink.wait_until(self._pop)
        if isinstance(item, _End):
            self._items.appendleft(item)  # keep answering EndOfStream
            raise anyio.EndOfStream
        return item

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


async def demo(per_producer: int = 1000) -> list[tuple[str, int]]:
    channel: Channel[tuple[str, int]] = Channel()

    def thread_producer(name: str) -> None:
        for n in range(per_producer):
            channel.send((name, n))

    async def task_producer(name: str) -> None:
        for n in range(per_producer):
            channel.send((name, n))
            await anyio.lowlevel.checkpoint()

    received: list[tuple[str, int]] = []
    async with anyio.create_task_group() as tg:

        async def produce_all() -> None:
            async with anyio.create_task_group() as producers:
                for name in ("thread-1", "thread-2"):
                    producers.start_soon(
                        anyio.to_thread.run_sync, thread_producer, name
                    )
                producers.start_soon(task_producer, "task")
            channel.close()

        tg.start_soon(produce_all)
        async for item in channel:
            received.append(item)
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    options = parser.parse_args()
    received = anyio.run(demo, backend=options.backend)
    by_sender = collections.Counter(name for name, _ in received)
    print(f"received {len(received)} items: {dict(by_sender)}")


if __name__ == "__main__":
    main()
