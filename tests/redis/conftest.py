"""Fixtures of the tests of anyio_waitmap.redis: real Redis servers, started by
each test (redis_servers.py), and worker processes (worker_processes.py)."""

from __future__ import annotations

from redis_servers import persistent_redis_server as persistent_redis_server
from redis_servers import redis_cluster as redis_cluster
from redis_servers import redis_cluster_factory as redis_cluster_factory
from redis_servers import redis_server as redis_server
from redis_servers import redis_server_factory as redis_server_factory
from worker_processes import workers as workers
