"""The demo publisher (``publisher.demo``) against a real redis-server: the rate for the
duration, every session a valid lifecycle, cancellation and stop with exact totals (the
simulator alone: tests/unit/test_demo.py)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
import redis.asyncio as aredis

from publisher import AsyncPublisher, KernelEvent, Keys, decode_event
from publisher.demo import DemoStats, LifecycleDemo, LifecycleGenerator, run_demo
from tests.support.lifecycles import check_lifecycles


async def history(client: aredis.Redis, prefix: str) -> list[KernelEvent]:
    entries = await client.xrange(Keys(prefix).history)
    return [decode_event(fields[b"e"]) for _, fields in entries]


@pytest.mark.anyio
async def test_demo_publishes_the_rate_for_the_duration(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    rate, duration, tick = 400.0, 0.6, 0.025
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        stats = await run_demo(
            publisher, rate=rate, sessions=20, rng=random.Random(1), duration=duration, tick=tick
        )
    expected = math.floor(rate * duration)
    assert abs(stats.published - expected) <= rate * tick
    assert stats.behind == 0
    assert duration <= stats.elapsed < duration + 0.5
    assert await async_redis.xlen(Keys("demo").history) == stats.published
    assert sum(stats.by_name.values()) == stats.published


@pytest.mark.anyio
async def test_every_session_walks_a_valid_lifecycle(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        stats = await run_demo(
            publisher, rate=20_000, sessions=25, rng=random.Random(2), max_events=3000
        )
    assert stats.published == 3000
    events = await history(async_redis, "demo")
    assert len(events) == 3000
    names = check_lifecycles(events)
    assert stats.sessions_started == len(names)
    last: dict[str, str] = {}
    for event in events:
        last[event.session_id] = event.name
    finished = [n for n in last.values() if n in ("session_terminated", "session_cancelled")]
    assert stats.sessions_finished == len(finished)
    # Sessions still in flight when the run ended are a prefix; the rest are whole.
    assert stats.active_sessions == len(names) - len(finished) <= 25
    assert all(n[0] == "kernel_enqueued" for n in names.values())
    # Session ids are unique within a run.
    assert len({e.session_id for e in events}) == len({e.session_uuid for e in events})


@pytest.mark.anyio
async def test_cancelling_the_run_propagates_and_keeps_counts(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        demo = LifecycleDemo(publisher, rate=2000, sessions=10, rng=random.Random(5))
        with pytest.raises(TimeoutError):  # only if CancelledError came out of run()
            async with asyncio.timeout(0.3):
                await demo.run()
        stats = demo.stats()
        stored = await async_redis.xlen(Keys("demo").history)
        # A batch cut off on the wire may have landed without being counted.
        assert 0 < stats.published <= stored <= math.floor(2000 * stats.elapsed)
        assert 0.3 <= stats.elapsed < 1.0
        assert sum(stats.by_name.values()) == stats.published
        # The publisher is still usable after a cancelled batch.
        (event,) = LifecycleGenerator(random.Random(0), sessions=1).next_events(1)
        await publisher.publish(event)
    assert await async_redis.xlen(Keys("demo").history) == stored + 1


@pytest.mark.anyio
async def test_stop_ends_the_run_with_exact_totals(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    seen: list[DemoStats] = []

    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:

        def progress(stats: DemoStats) -> None:
            seen.append(stats)
            if stats.published >= 100:
                demo.stop()

        demo = LifecycleDemo(
            publisher,
            rate=2000,
            sessions=10,
            rng=random.Random(6),
            progress=progress,
            progress_interval=0.05,
        )
        totals = await demo.run()
    assert totals.published >= 100
    assert await async_redis.xlen(Keys("demo").history) == totals.published
    assert seen[-1] == totals
    assert [s.published for s in seen] == sorted(s.published for s in seen)
