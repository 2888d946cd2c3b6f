"""The suite tests the package that ``python3 dev.py test`` installed.

dev.py runs the suite on each Python against the wheel it built, installed in an
environment of its own, and says so with ``ANYIO_WAITMAP_TEST_INSTALLED=1``.
The repository must then not be importable: ``import anyio_waitmap`` would
find the source tree there first, and a module missing from the wheel would go
unnoticed.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

import anyio_waitmap

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not os.environ.get("ANYIO_WAITMAP_TEST_INSTALLED"),
    reason="not a run against the installed wheel (python3 dev.py test)",
)
def test_the_package_comes_from_the_environment() -> None:
    package = Path(anyio_waitmap.__file__).resolve().parent
    site_packages = Path(sysconfig.get_path("purelib")).resolve()
    assert package == site_packages / "anyio_waitmap"
    assert REPOSITORY not in {Path(entry or ".").resolve() for entry in sys.path}
