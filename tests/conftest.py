from __future__ import annotations

import sys
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import pytest


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
