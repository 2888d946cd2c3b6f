"""Real Redis servers for the tests of anyio_waitmap.redis (see redis_servers.py)."""

from __future__ import annotations

from redis_servers import (
    persistent_redis_server,
    redis_server,
    redis_server_factory,
)

__all__ = ["persistent_redis_server", "redis_server", "redis_server_factory"]
