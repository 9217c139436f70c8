"""Every task that loops on Redis stops when it is told to, on a real redis-server.

On Python 3.11 a cancellation that lands as a redis-py 8 command is being sent is swallowed
(``publisher/tasks.py``): a gateway in-thread then hung in its shutdown, its subscriber task
"cancelling" but still reading (seen once in ~20 stops under the parallel suite). These stop
the three owners of such loops many times over, at random moments, each within a bound:
:func:`cancel_and_wait` itself, the publisher's close, and the gateway's lifespan."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as aredis

from gateway.http.app import create_app
from publisher import AsyncPublisher, SessionRef
from publisher.tasks import cancel_and_wait
from tests.support.gateway_server import gateway_settings

pytestmark = pytest.mark.anyio


async def test_a_task_publishing_in_a_loop_always_stops(redis_url: str) -> None:
    client = aredis.Redis.from_url(redis_url)  # redis-py's defaults: a socket timeout
    rng = random.Random(7)

    async def publishing() -> None:
        while True:
            await client.publish("kev:test", b"x")

    try:
        for _ in range(200):
            task = asyncio.create_task(publishing())
            await asyncio.sleep(rng.random() * 0.003)
            started = time.monotonic()
            await cancel_and_wait(task)
            assert task.done() and time.monotonic() - started < 1.0
    finally:
        await client.aclose()


async def test_the_publisher_closes_in_time_while_calls_are_in_flight(redis_url: str) -> None:
    rng = random.Random(11)
    ref = SessionRef(
        session_id="cancel-me",
        owner_access_key="AKIACANCELTEST000001",
        owner_user_id="u",
        domain="default",
        group="g",
    )
    for _ in range(30):
        pub = AsyncPublisher.from_url(redis_url, timeout=1.0)
        callers = [asyncio.create_task(pub.publish(ref.started())) for _ in range(20)]
        await asyncio.sleep(rng.random() * 0.01)
        started = time.monotonic()
        report = await pub.aclose()
        assert time.monotonic() - started < 3.0, "aclose hung"
        await asyncio.gather(*callers, return_exceptions=True)
        assert report.ok or report.in_doubt or report.undelivered


async def test_the_gateway_lifespan_always_ends(redis_url: str) -> None:
    """Start and stop the whole lifespan (subscriber probing every 10 ms, re-authorization,
    leases) at random moments: each stop ends within the drain deadline and a second."""
    settings = gateway_settings(redis_url, probe_interval=0.01, drain_deadline=0.5)
    rng = random.Random(3)
    for _ in range(15):
        app = create_app(settings).app
        started = time.monotonic()
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.05 + rng.random() * 0.1)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 1.5, "the lifespan hung on its way out"
        assert stopping > started
