"""The worked examples in examples/, run on every backend."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import mpsc_channel
import oneshot

pytestmark = pytest.mark.anyio


async def test_mpsc_channel_delivers_everything_in_order_per_sender() -> None:
    received = await mpsc_channel.demo(per_producer=500)
    for sender in ("thread-1", "thread-2", "task"):
        numbers = [n for name, n in received if name == sender]
        assert numbers == list(range(500)), sender
    assert len(received) == 1500


async def test_mpsc_channel_end_of_stream_repeats() -> None:
    channel: mpsc_channel.Channel[int] = mpsc_channel.Channel()
    channel.send(1)
    channel.close()
    assert await channel.receive() == 1
    for _ in range(2):
        with pytest.raises(anyio.EndOfStream):
            await channel.receive()


async def test_oneshot() -> None:
    assert await oneshot.demo() == ("computed in a thread", "sender gave up")
    channel: oneshot.Oneshot[None] = oneshot.Oneshot()
    channel.send(None)  # None is a value like any other
    assert await channel.receive() is None
    with pytest.raises(RuntimeError, match="already used"):
        channel.send(None)
