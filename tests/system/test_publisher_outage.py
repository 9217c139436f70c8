"""The publishers while their Redis is killed and restarted: bounded buffer, ordered flush,
overflow counted (the buffer alone: tests/unit/test_outage_buffer.py; the exactly-once retry:
tests/integration/test_publisher.py)."""

from __future__ import annotations

import time

import pytest

from publisher import AsyncPublisher, SyncPublisher
from tests.support.events import REF, history_reasons
from tests.support.redis_server import RedisServer


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
    assert history_reasons(private_redis.url) == [
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
    assert history_reasons(private_redis.url) == [*(f"down-{i}" for i in range(5)), "after"]


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
    assert history_reasons(private_redis.url) == [str(i) for i in range(15, 25)]
