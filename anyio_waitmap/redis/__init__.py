"""Waiting and waking across processes and machines, with Redis holding the state.

Install with ``pip install "anyio-waitmap[redis]"`` (it brings coredis). See
:doc:`/redis` for the guarantees, what survives a Redis restart, and recipes.
"""

from __future__ import annotations

from ._codec import Codec as Codec
from ._codec import JsonCodec as JsonCodec
from ._codec import RedisKey as RedisKey
from ._map import RedisExpectation as RedisExpectation
from ._map import RedisUnavailable as RedisUnavailable
from ._map import RedisWaitMap as RedisWaitMap
from ._map import RedisWaitMapStatistics as RedisWaitMapStatistics

__all__ = [
    "Codec",
    "JsonCodec",
    "RedisExpectation",
    "RedisKey",
    "RedisUnavailable",
    "RedisWaitMap",
    "RedisWaitMapStatistics",
]


def _set_public_module() -> None:
    # Show the public classes as anyio_waitmap.redis.X in reprs and docs.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            obj.__module__ = __name__


_set_public_module()
