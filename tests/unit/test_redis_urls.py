"""Redis URLs (``publisher.connection``), checked before anything connects: schemes, hosts,
Sentinel targets, and no password in an error message."""

from __future__ import annotations

import pytest

from publisher.connection import RedisURLError, check_url, parse_sentinel


def test_redis_urls_are_checked() -> None:
    assert check_url("redis://127.0.0.1:6379/0")
    assert check_url("rediss://h:1/0")
    assert check_url("unix:///tmp/redis.sock")
    target = parse_sentinel("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2")
    assert target.sentinels == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db, target.password) == ("mymaster", 2, "pw")
    for bad, what in [
        ("http://h", "scheme"),
        ("redis://", "no host"),
        ("redis+sentinel://s1/svc", "host:port"),
        ("redis+sentinel://s1:1", "service"),
        ("redis+sentinel://s1:1/svc/x", "database"),
    ]:
        with pytest.raises(RedisURLError, match=what):
            check_url(bad)
    with pytest.raises(RedisURLError) as info:
        check_url("http://u:secret@h")
    assert "secret" not in str(info.value)
