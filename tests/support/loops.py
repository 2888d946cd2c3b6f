"""Event loops that tests run by hand: plain asyncio, and uvloop."""

from __future__ import annotations

import asyncio
import sys

import pytest


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
