"""Fixtures shared by the tests of every folder.

The helpers that test modules import are in ``support/``: this file's folder is
on ``sys.path`` (pytest's default "prepend" import mode), so they are
``support.checkpoints``, ``support.workers`` and so on from every folder.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from anyio_waitmap._backends._asyncio import AsyncioBinding
from anyio_waitmap._backends._trio import TrioBinding

# The helpers check things with plain asserts: have pytest rewrite them, as it
# does the test modules, so that a failure there shows the values compared.
pytest.register_assert_rewrite("support")

from support.loops import RUNNERS, Runner  # noqa: E402 (once the rewrite is set up)


def pytest_report_header() -> str:
    """Which copy of the package the run tests, and with which dependencies."""
    spec = find_spec("anyio_waitmap")  # without importing it before the tests do
    where = Path(spec.origin).parent if spec and spec.origin else "not found"
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("anyio", "trio", "outcome")
    )
    return f"anyio_waitmap: {where} (with {versions})"


BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="asyncio+uvloop",
        marks=pytest.mark.skipif(
            sys.platform == "win32", reason="uvloop does not support Windows"
        ),
    ),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=RUNNERS)
def run_asyncio(request: pytest.FixtureRequest) -> Runner:
    """``asyncio.run`` or ``uvloop.run``, for the tests that run a coroutine under
    the native runners, with nothing of anyio around its tasks."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def unpark_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, as thread idents, every call that a wake-up makes into a loop."""
    calls: list[int] = []

    def counting(original: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
        def unpark(self: Any, handle: Any) -> bool:
            calls.append(threading.get_ident())
            return original(self, handle)

        return unpark

    monkeypatch.setattr(AsyncioBinding, "unpark", counting(AsyncioBinding.unpark))
    monkeypatch.setattr(TrioBinding, "unpark", counting(TrioBinding.unpark))
    return calls
