"""Redis connections from one URL, for the publisher and the gateway alike.

Accepted forms:

* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS)
* ``unix:///path/to/redis.sock[?db=N]``
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``: the
  master of ``service_name`` as the given Sentinels report it, re-resolved on failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

__all__ = ["RedisURLError", "SentinelTarget", "connect_async", "connect_sync", "parse_sentinel"]

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


class RedisURLError(ValueError):
    """A Redis URL this project cannot use; the message names the URL's bad part."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    service: str
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def parse_sentinel(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RedisURLError(f"{_redact(url)}: sentinel {hostport!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise RedisURLError(f"{_redact(url)}: the path must name the Sentinel service")
    db = 0
    if len(path) > 1:
        if not path[1].isdigit():
            raise RedisURLError(f"{_redact(url)}: database {path[1]!r} is not a number")
        db = int(path[1])
    return SentinelTarget(
        service=path[0],
        sentinels=tuple(sentinels),
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def check_url(url: str) -> str:
    """Raise :class:`RedisURLError` unless ``url`` has one of the accepted forms."""
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise RedisURLError(
            f"{_redact(url)}: scheme must be one of {', '.join(_SCHEMES)}, not {scheme!r}"
        )
    if scheme == "redis+sentinel":
        parse_sentinel(url)
    elif scheme != "unix" and not urlsplit(url).hostname:
        raise RedisURLError(f"{_redact(url)}: no host")
    return url


def connect_async(url: str, *, pool_size: int | None = None, **options: Any) -> aredis.Redis:
    """An asyncio client for ``url`` (not connected until first use).

    With ``pool_size``, at most that many connections are opened and a command waits up to
    ``pool_timeout`` seconds (default 5) for one, instead of redis-py's default of failing
    once 100 are in use (plain URLs; a Sentinel client keeps redis-py's pool)."""
    check_url(url)
    pool_timeout = options.pop("pool_timeout", 5.0)
    if url.startswith("redis+sentinel://"):
        target = parse_sentinel(url)
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs={"password": target.password} if target.password else None,
        )
        client: aredis.Redis = sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
        return client
    if pool_size is not None:
        pool = aredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=pool_timeout, **options
        )
        return aredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
    return aredis.Redis.from_url(url, **options)


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """A blocking client for ``url``."""
    check_url(url)
    if url.startswith("redis+sentinel://"):
        target = parse_sentinel(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels),
            sentinel_kwargs={"password": target.password} if target.password else None,
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
        return client
    return redis.Redis.from_url(url, **options)
