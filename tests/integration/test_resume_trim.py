"""A replay that waits for a slow reader while MAXLEN trims past its cursor says so: the
entries right after the cursor may be gone, and the reader is told before what follows."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis

from gateway.consumer import SSEParser
from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.fanout.resume import replay
from gateway.settings import FanoutSettings
from publisher import AsyncPublisher, Keys
from publisher.bus import Bus
from tests.support.identities import ALICE, session_of


@pytest.mark.anyio
async def test_trimming_past_a_waiting_replay_is_told(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    ref = session_of(ALICE, "trim-race")
    async with AsyncPublisher.from_url(redis_url, maxlen=600, exact_trim=True) as pub:
        old = await pub.publish_many([ref.started(str(i)) for i in range(600)])
        hub = Hub(FanoutSettings(retry_jitter_ms=0, max_lag=0.0, buffer_cap=4096, ping_interval=0))
        connection = hub.new_connection(Filter(), "AK")
        connection.begin_replay()
        task = asyncio.ensure_future(replay(connection, hub, async_redis, Bus(Keys()), old[0]))
        out = b""
        for _ in range(5):  # the reader takes a little, then stalls
            await asyncio.sleep(0.02)
            out += connection.take()
        new = await pub.publish_many([ref.started(f"n{i}") for i in range(600)])
        async with asyncio.timeout(10):
            while not task.done():
                await asyncio.sleep(0)
                out += connection.take()
        await task
        out += connection.take()
    events = SSEParser().feed(out)
    kinds = [e.event for e in events]
    assert "history_truncated" in kinds, "the trim went unsaid"
    told = kinds.index("history_truncated")
    before = [e.id for e in events[:told]]
    after = [e.id for e in events[told + 1 :]]
    assert before == old[1 : 1 + len(before)]  # a prefix of the old history, in order
    assert after == new  # everything history holds after the gap, in order
