"""The publisher while Redis is away: bounded buffer, ordered flush, no duplicate on retry."""

from __future__ import annotations

import time

import pytest
import redis

from publisher import AsyncPublisher, Keys, SessionRef, SyncPublisher, decode_event
from publisher.buffer import BufferFull, OutageBuffer, Pending
from tests.redis_server import RedisServer

REF = SessionRef(
    session_id="outage", owner_access_key="AK", owner_user_id="u", domain="d", group="g"
)


def _history(url: str) -> list[str]:
    with redis.Redis.from_url(url) as client:
        return [decode_event(f[b"e"]).reason for _, f in client.xrange(Keys().history)]


@pytest.mark.anyio
async def test_async_publisher_buffers_through_an_outage_and_flushes_in_order(
    private_redis: RedisServer,
) -> None:
    async with AsyncPublisher.from_url(private_redis.url, timeout=0.5) as pub:
        assert await pub.publish(REF.started("before")) is not None
        private_redis.stop(kill=True)
        started = time.monotonic()
        for i in range(20):
            assert await pub.publish(REF.started(f"down-{i}")) is None
        assert time.monotonic() - started < 0.5 + 1.0  # the agent was not held up
        assert pub.buffered == 20
        private_redis.start()
        assert await pub.publish(REF.started("after")) is None  # queued behind the buffer
        assert await pub.flush(timeout=10)
        assert await pub.publish(REF.started("live again")) is not None
    assert _history(private_redis.url) == [
        *(f"down-{i}" for i in range(20)),
        "after",
        "live again",
    ]  # "before" went with the killed, non-durable server


def test_sync_publisher_buffers_through_an_outage_and_flushes_in_order(
    private_redis: RedisServer,
) -> None:
    with SyncPublisher.from_url(private_redis.url, timeout=0.5, retry_interval=0.05) as pub:
        private_redis.stop(kill=True)
        ids = [pub.publish(REF.started(f"down-{i}")) for i in range(5)]
        assert ids == [None] * 5 and pub.buffered == 5
        private_redis.start()
        time.sleep(0.06)  # past retry_interval: the next publish flushes first
        assert pub.publish(REF.started("after")) is not None
        assert pub.buffered == 0
    assert _history(private_redis.url) == [*(f"down-{i}" for i in range(5)), "after"]


def test_a_retry_after_an_ambiguous_failure_does_not_publish_twice(redis_url: str) -> None:
    # Redis ran the script but the reply was lost: the buffer sends the same sequence
    # numbers again, and the script skips them.
    with SyncPublisher.from_url(redis_url) as pub:
        items = pub._core.pending([REF.started("once-1"), REF.started("once-2")])
        first = pub._send(items)
        again = pub._send(items)
        later = pub.publish(REF.started("next"))
    assert all(first) and again == ["", ""] and later
    assert _history(redis_url) == ["once-1", "once-2", "next"]


def test_overflow_policies_are_explicit_and_counted() -> None:
    def items(*seqs: int) -> list[Pending]:
        return [Pending(s, b"%d" % s) for s in seqs]

    oldest = OutageBuffer(3, "drop_oldest")
    oldest.add(items(1, 2, 3))
    oldest.add(items(4, 5))
    assert [p.seq for p in oldest.peek(10)] == [3, 4, 5] and oldest.dropped == 2
    oldest.add(items(6, 7, 8, 9))
    assert [p.seq for p in oldest.peek(10)] == [7, 8, 9] and oldest.dropped == 6

    newest = OutageBuffer(3, "drop_newest")
    newest.add(items(1, 2))
    newest.add(items(3, 4, 5))
    assert [p.seq for p in newest.peek(10)] == [1, 2, 3] and newest.dropped == 2

    strict = OutageBuffer(2, "raise")
    strict.add(items(1, 2))
    with pytest.raises(BufferFull, match="capacity 2"):
        strict.add(items(3))
    assert len(strict) == 2
    with pytest.raises(ValueError, match="policy"):
        OutageBuffer(1, "drop_everything")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_async_overflow_drops_oldest_and_counts(private_redis: RedisServer) -> None:
    async with AsyncPublisher.from_url(
        private_redis.url, timeout=0.3, buffer_size=10, overflow="drop_oldest"
    ) as pub:
        private_redis.stop(kill=True)
        for i in range(25):
            await pub.publish(REF.started(str(i)))
        assert (pub.buffered, pub.dropped) == (10, 15)
        private_redis.start()
        assert await pub.flush(timeout=10)
    assert _history(private_redis.url) == [str(i) for i in range(15, 25)]
