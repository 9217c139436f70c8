"""The tests' real redis-server: the same launcher the demo and the bench use."""

from __future__ import annotations

import redis

from devtools.localredis import PrivateRedis as RedisServer
from devtools.localredis import free_port

__all__ = ["RedisServer", "free_port", "is_master"]


def is_master(port: int) -> bool:
    """Whether the redis-server on ``port`` answers within a second, as a master (a replica
    promoted by a failover)."""
    try:
        with redis.Redis(port=port, socket_timeout=1) as raw:
            return bool(raw.info("replication")["role"] == "master")
    except redis.RedisError:
        return False
