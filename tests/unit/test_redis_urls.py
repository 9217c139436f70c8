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


def test_sentinels_get_their_own_credentials_never_the_masters() -> None:
    from publisher.connection import _sentinel_args, connect_sync, redact_url

    url = "redis+sentinel://kev-gateway:gw-pw@s1:26379,s2:26379/mymaster/0"
    target, sentinel_kwargs, master = _sentinel_args(url, {})
    assert sentinel_kwargs is None  # no AUTH to the Sentinels by default
    assert (master["username"], master["password"]) == ("kev-gateway", "gw-pw")
    # the password given apart from the URL is the master's too, never the Sentinels'
    _, sentinel_kwargs, master = _sentinel_args(url.replace(":gw-pw", ""), {"password": "p"})
    assert sentinel_kwargs is None and master["password"] == "p"

    with_query = url + "?sentinel_username=kev-client&sentinel_password=s%26pw"
    target, sentinel_kwargs, _ = _sentinel_args(with_query, {}, "ignored: the URL wins")
    assert (target.sentinel_username, target.sentinel_password) == ("kev-client", "s&pw")
    assert sentinel_kwargs == {"username": "kev-client", "password": "s&pw"}
    # user in the URL, password from a setting (a file, the environment)
    _, sentinel_kwargs, _ = _sentinel_args(url + "?sentinel_username=kev-client", {}, "from-file")
    assert sentinel_kwargs == {"username": "kev-client", "password": "from-file"}
    _, sentinel_kwargs, _ = _sentinel_args(url, {}, "requirepass")
    assert sentinel_kwargs == {"password": "requirepass"}
    # over TLS, the Sentinels keep the TLS options as well
    tls_url = "rediss+sentinel://s1:26379/mymaster?sentinel_password=x"
    _, sentinel_kwargs, _ = _sentinel_args(tls_url, {"ssl_cert_reqs": "none"})
    assert sentinel_kwargs == {"ssl_cert_reqs": "none", "ssl": True, "password": "x"}

    with pytest.raises(RedisURLError, match="sentinel_username needs"):
        _sentinel_args(url + "?sentinel_username=kev-client", {})
    with pytest.raises(RedisURLError, match="need a Sentinel URL"):
        check_url("redis://h:1/0?sentinel_password=x")
    with pytest.raises(RedisURLError, match="needs a Sentinel URL") as info:
        connect_sync("redis://u:secret@h:1/0", sentinel_password="x")
    assert "secret" not in str(info.value)

    shown = redact_url(with_query)
    assert "s&pw" not in shown and "s%26pw" not in shown and "gw-pw" not in shown
    assert "sentinel_password=***" in shown and "sentinel_username=kev-client" in shown
