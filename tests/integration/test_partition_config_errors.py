"""A publisher whose number of partitions cannot be checked, or is not Redis', on a real
redis-server: configuration errors, said in one error line (no traceback: not a bug).

* Its Redis user may not read or record ``kev:partitions`` (an ACL made without
  ``--partitions``): the events stay queued and are retried, as with any other NOPERM (a
  user without a partition's history), and written once the ACL is fixed.
* Redis records another number: the events are rejected (no retry of this process can
  succeed), the line names both numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from gateway.cli.acl import rules
from publisher import AsyncPublisher, Keys, SyncPublisher
from publisher.errors import PublishRejected
from publisher.partitions import Partitions, partition_of
from publisher.schema import SessionRef
from tests.support.redis_server import RedisServer

N = 2
#: an owner in partition 1 (of N)
OWNER = next(f"user-{i}" for i in range(100) if partition_of(f"user-{i}", N) == 1)
USER, PASSWORD = "kev-publisher", "publisher-pw-1"

#: what the publisher's ACL lacks, and the rules that grant it back
LACKS = {
    # an ACL made before partitions existed (or without --partitions N)
    "the partitions key": ("kev:partitions", ["~kev:partitions", "(~kev:partitions +set)"]),
    # any other NOPERM: partition 1's history
    "a partition's history": ("kev.p1:events", ["~kev.p1:events", "(~kev.p1:events +xadd)"]),
}


def ref(owner: str = OWNER) -> SessionRef:
    return SessionRef(
        session_id="s", owner_access_key=f"AK-{owner}", owner_user_id=owner, domain="d",
        group="g",
    )  # fmt: skip


@pytest.fixture
def superuser(private_redis: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(private_redis.url) as client:
        yield client


def _publisher_without(client: redis.Redis, name: str, port: int) -> str:
    """A publisher user of N partitions whose rules leave ``name`` out: its URL."""
    kept = []
    for rule in rules(Keys("kev"), "publisher", N):
        if rule.startswith("("):
            words = [w for w in rule.strip("()").split() if w != f"~{name}"]
            if any(w.startswith("~") for w in words):
                kept.append(f"({' '.join(words)})")
        elif rule != f"~{name}":
            kept.append(rule)
    client.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *kept)  # type: ignore[no-untyped-call]
    return f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "publisher.client" and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("lacks", sorted(LACKS))
def test_a_noperm_keeps_the_events_queued_until_the_acl_is_fixed(
    private_redis: RedisServer,
    superuser: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    lacks: str,
) -> None:
    name, grants = LACKS[lacks]
    url = _publisher_without(superuser, name, private_redis.port)
    caplog.set_level(logging.DEBUG, logger="publisher.client")
    pub = SyncPublisher.from_url(
        url, partitions=N, timeout=1.0, retry_interval=0.05, max_retry_interval=0.2
    )
    try:
        assert pub.publish(ref().started("r")) is None  # not written: queued
        assert pub.publish(ref().started("r")) is None
        health = pub.health
        assert (health.state, health.buffered, health.rejected) == ("refused", 2, 0)
        assert health.last_error is not None and "no permissions" in health.last_error
        if name == "kev:partitions":  # a configuration error, said as such, once
            [line] = _errors(caplog)
            assert line.exc_info is None
            text = line.getMessage()
            assert text.startswith("configuration error, 1 events queued, retrying"), text
            assert "has 2 partitions" in text and "gateway acl --partitions 2" in text, text
        else:
            assert _errors(caplog) == []
        superuser.execute_command("ACL", "SETUSER", USER, *grants)  # type: ignore[no-untyped-call]
        assert pub.flush(10)
        assert pub.health.state == "ok"
    finally:
        report = pub.close()
    assert report.ok and report.rejected == 0
    history = Partitions(Keys(), N).keys[1].history
    assert superuser.xlen(history) == 2
    assert superuser.get("kev:partitions") == b"2"


@pytest.mark.anyio
async def test_an_asyncio_publisher_keeps_them_queued_too(
    private_redis: RedisServer, superuser: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    name, grants = LACKS["the partitions key"]
    url = _publisher_without(superuser, name, private_redis.port)
    caplog.set_level(logging.DEBUG, logger="publisher.client")
    pub = AsyncPublisher.from_url(
        url, partitions=N, timeout=1.0, retry_interval=0.05, max_retry_interval=0.2
    )
    try:
        assert await pub.publish(ref().started("r")) is None
        assert (pub.health.state, pub.health.buffered) == ("refused", 1)
        [line] = _errors(caplog)
        assert line.exc_info is None and "configuration error" in line.getMessage()
        superuser.execute_command("ACL", "SETUSER", USER, *grants)  # type: ignore[no-untyped-call]
        assert await pub.flush(10)
    finally:
        report = await pub.aclose()
    assert report.ok and superuser.xlen(Partitions(Keys(), N).keys[1].history) == 1


def test_another_number_is_rejected_in_one_line_naming_both(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("kev:partitions", "4")
    caplog.set_level(logging.DEBUG, logger="publisher.client")
    pub = SyncPublisher.from_url(
        redis_url, partitions=N, timeout=1.0, retry_interval=0.05, max_retry_interval=0.2
    )
    try:
        with pytest.raises(PublishRejected, match=r"has 2 partition\(s\) but Redis records 4"):
            pub.publish(ref().started("r"))
        health = pub.health
        assert (health.state, health.buffered, health.rejected) == ("rejected", 0, 1)
        [line] = _errors(caplog)
        assert line.exc_info is None  # a configuration error, not a bug: no traceback
        text = line.getMessage()
        assert text.startswith("configuration error, 1 events discarded: "), text
        assert "has 2 partition(s) but Redis records 4" in text
    finally:
        pub.close()
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("kev:partitions") == b"4"
        assert not any(client.exists(k.history) for k in Partitions(Keys(), N).keys)
