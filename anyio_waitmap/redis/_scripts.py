"""The Lua scripts that make each step atomic in Redis (the ``lua`` folder).

Each script is ``common.lua`` followed by its own file, loaded once, and run
with EVALSHA (coredis loads it again after a Redis restart forgets it).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Final

NAMES: Final = ("register", "handover", "cancel", "release", "reclaim", "lock")


@cache
def source(name: str) -> str:
    """The full source of the script ``name``."""
    folder = files("anyio_waitmap.redis").joinpath("lua")
    common = folder.joinpath("common.lua").read_text(encoding="utf-8")
    return common + "\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
