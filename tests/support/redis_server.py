"""The tests' real redis-server: the same launcher the demo and the bench use."""

from __future__ import annotations

from devtools.localredis import PrivateRedis as RedisServer
from devtools.localredis import free_port

__all__ = ["RedisServer", "free_port"]
