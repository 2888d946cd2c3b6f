"""Native asyncio cancellation that arrives after a value was handed over: WakeSink.

The value is kept, and the cancellation is re-armed for the task's next
checkpoint: the task still ends cancelled, with the message it was cancelled
with, and ``Task.cancelling()`` counts it once. Run under ``asyncio.run`` (and
``uvloop.run``) without anything of anyio around the task. The same for
WaitMap is in tests/waitmap/test_map_native_handover.py.
"""

from __future__ import annotations

import pytest
from support.cancellation import expected, run_and_cancel
from support.loops import Runner

from anyio_waitmap import WakeSink

pytestmark = pytest.mark.native


def test_sink_value_from_the_first_check_survives_cancel(run_asyncio: Runner) -> None:
    """wait_until() got a value from its first check and yields; Task.cancel()
    arrives then: the value (consumed from the deque) is returned."""

    async def main() -> None:
        items = [3]
        sink = WakeSink()
        events = await run_and_cancel(
            lambda: sink.wait_until(lambda: items.pop() if items else None),
            lambda: None,
        )
        assert events == expected(3)
        assert items == []
        assert not sink.statistics().consumer_waiting

    run_asyncio(main())
