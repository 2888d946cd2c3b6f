"""The public surface: what is exported, and how it presents itself."""

from __future__ import annotations

import importlib
import sys

import pytest

import anyio_waitmap
import anyio_waitmap.lowlevel

PUBLIC_MODULES = [anyio_waitmap, anyio_waitmap.lowlevel]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_names_exist_and_nothing_public_is_missing(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert sorted(names) == names, "keep __all__ sorted"
    for name in names:
        assert hasattr(module, name), name
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("anyio_waitmap")
    }
    assert public <= set(names)


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_classes_show_their_public_module(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        obj = getattr(module, name)
        if isinstance(obj, type):
            assert obj.__module__ == module.__name__, name  # type: ignore[attr-defined]
            assert obj.__qualname__ == name


@pytest.mark.skipif(sys.version_info < (3, 11), reason="@final marks from 3.11")
@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_public_classes_are_final(module: object) -> None:
    for name in module.__all__:  # type: ignore[attr-defined]
        obj = getattr(module, name)
        if isinstance(obj, type):
            assert getattr(obj, "__final__", False), f"{name} is not @final"


def test_hot_objects_have_no_instance_dict() -> None:
    from anyio_waitmap import Closed, NoMatch, WaitMap, WaitMapStatistics, Woke
    from anyio_waitmap._registry import ExpectedWaiter, KeyWaiter

    stats = WaitMapStatistics(0, 0, 0, False)
    wm: WaitMap[int, int] = WaitMap()
    for obj in (wm, Woke(1), NoMatch(1), Closed(1), stats, wm.expect(1)):
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    for cls in (KeyWaiter, ExpectedWaiter):
        assert "__dict__" not in dir(cls), cls.__name__


def test_importing_does_not_import_trio() -> None:
    # asyncio users never pay for trio: the trio binding loads on first use.
    code = (
        "import sys, anyio_waitmap, anyio_waitmap.lowlevel; "
        "assert 'trio' not in sys.modules, 'trio was imported'"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("anyio_waitmap").joinpath("py.typed").is_file()
    assert importlib.import_module("anyio_waitmap") is anyio_waitmap
