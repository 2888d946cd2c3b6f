"""Event loops that tests run by hand: plain asyncio, and uvloop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test dependency group
    uvloop = None  # type: ignore[assignment]


def new_asyncio_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


def new_uvloop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


#: For ``@pytest.mark.parametrize("new_loop", LOOP_FACTORIES)``.
LOOP_FACTORIES = [
    pytest.param(new_asyncio_loop, id="asyncio"),
    pytest.param(
        new_uvloop,
        id="uvloop",
        marks=pytest.mark.skipif(
            sys.platform == "win32", reason="uvloop does not support Windows"
        ),
    ),
]

#: The native runners, one test each: the ``run_asyncio`` fixture of conftest.py.
RUNNERS: list[Any] = [pytest.param(asyncio.run, id="asyncio.run")]
if uvloop is not None:
    RUNNERS.append(pytest.param(uvloop.run, id="uvloop.run"))

#: What ``run_asyncio`` is: ``asyncio.run`` or ``uvloop.run``.
Runner = Callable[[Coroutine[Any, Any, None]], None]
