"""Redis' clock as a replica knows it, on a loaded event loop: a TIME reply that the loop takes
up late must not make Redis' clock look behind ours (the history watch would then see a
history just written as ahead of Redis' clock, and fail /ready; the bound is 0.25 s)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aredis

from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from gateway.settings import FanoutSettings
from publisher.bus import Bus
from publisher.keys import Keys
from publisher.tasks import cancel_and_wait

pytestmark = pytest.mark.anyio

LATE = 0.3  # seconds the loop takes to come back to a TIME reply (all but the first)


class LateLoop:
    """The project's bus, whose TIME replies are taken up ``LATE`` seconds after they came
    (the first one at once): what a busy event loop does to any await. Everything else is
    the bus itself."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.times = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def clock_ms(self, redis: aredis.Redis) -> float:
        now = await self._bus.clock_ms(redis)
        self.times += 1
        if self.times > 1:
            await asyncio.sleep(LATE)
        return now


async def test_a_late_taken_clock_reply_does_not_move_redis_clock(
    async_redis: aredis.Redis,
) -> None:
    bus = LateLoop(Bus(Keys.on(async_redis)))
    hub = Hub(FanoutSettings(ping_interval=0))
    subscriber = Subscriber(
        async_redis,
        bus,  # type: ignore[arg-type]  # the bus, late
        hub,
        replica="clock",
        probe_interval=0.05,
    )
    task = asyncio.create_task(subscriber.run())
    try:
        with anyio.fail_after(10):
            while bus.times < 4 or not subscriber.ready:  # late samples taken since
                await asyncio.sleep(0.02)
        sent = time.time()
        seconds, micros = await async_redis.time()
        truth = seconds * 1000 + micros / 1000 - (sent + time.time()) / 2 * 1000
        error_ms = abs(hub.redis_clock_offset_ms - truth)
        # the late replies' offsets are off by LATE / 2 at least (300 ms taken whole before)
        assert error_ms < 50, (error_ms, hub.redis_clock_offset_ms, truth)
    finally:
        with contextlib.suppress(Exception):
            await cancel_and_wait(task)
