"""The faults a fresh review of the bridge found, each kept as the test that finds its kind:
hostile nesting that ended the bridge's loop for good, a source stream that went back and got
everything published twice, ends told twice (reconciled, then from the bus), and a gateway
Redis that lost the bridge's position making it skip the source. Real parts throughout
(tests/system/test_bridge.py's)."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
import redis.asyncio as aredis

from devtools.postgres import BackendAIDatabase
from tests.support.bridge import (
    SCHEMA_OF,
    Installation,
    gateway_history,
    names,
    running_bridge,
    wait_for,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
async def installation(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    redis_url: str,
    backendai_db_factory: Callable[[str], BackendAIDatabase],
) -> AsyncIterator[Installation]:
    generation = getattr(request, "param", "23.09")
    db = backendai_db_factory(SCHEMA_OF[generation])
    made = await Installation.create(db, f"redis://127.0.0.1:{redis_server.port}", generation)
    yield made
    await made.close()


def _counts(history: list[tuple[str, object]]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (getattr(e, "name", "GAP"), getattr(e, "session_id", "")) for _, e in history
    )


@pytest.mark.parametrize("installation", ["23.09", "26.8"], indirect=True)
async def test_hostile_nesting_is_dropped_and_the_bridge_goes_on(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    life = installation.life(alice, "deep-1", kernels=1)
    await life.rows()
    async with running_bridge(installation.settings(redis_url)) as bridge:
        await installation.bus.emit("session_enqueued", life.session, "c")
        await wait_for(lambda: gateway_history(async_redis), 10, "the first event")
        if installation.format == "stream":
            await installation.bus.raw("kernel_started", b"\x91" * 1000 + b"\xc0")
        else:
            nested = b"[" * 3000 + b"]" * 3000  # in a field the envelope does not read
            await installation.client.publish(
                "events_all", b'{"name":"x","args":"","metadata":' + nested + b"}"
            )
        await installation.bus.emit("session_enqueued", life.session, "again")

        async def both() -> list[str]:
            got = names(await gateway_history(async_redis))
            return got if len(got) == 2 else []

        await wait_for(both, 10, "the event after the hostile one")
        dropped = bridge.metrics.registry.get_sample_value(
            "kev_bridge_events_dropped_total",
            {"reason": "msgpack" if installation.format == "stream" else "encoding"},
        )
        assert dropped == 1


async def test_a_stream_that_went_back_publishes_nothing_twice(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    lives = [installation.life(alice, f"rb-{i}", kernels=1) for i in range(6)]
    for life in lives:
        await life.rows()
    async with running_bridge(installation.settings(redis_url)):
        for life in lives[:5]:
            await installation.bus.emit("session_enqueued", life.session, "c")

        async def five() -> object:
            return len(await gateway_history(async_redis)) == 5

        await wait_for(five, 10, "five events")
        # an XDEL of the newest entry, a restart from an older RDB, a lagging replica
        newest = (await installation.client.xrevrange("events", count=1))[0][0]
        await installation.client.xdel("events", newest)
        await anyio.sleep(1.5)
        await installation.bus.emit("session_enqueued", lives[5].session, "c")

        async def sixth() -> object:
            return ("session_enqueued", "rb-5") in _counts(await gateway_history(async_redis))

        await wait_for(sixth, 10, "the entry after the rollback")
        history = await gateway_history(async_redis)
    counts = _counts(history)
    assert max(n for key, n in counts.items() if key[0] != "GAP") == 1, counts
    assert counts[("GAP", "")] == 1  # told once


@pytest.mark.parametrize("installation", ["23.09", "26.8"], indirect=True)
async def test_an_end_reconciled_is_not_published_again_when_its_message_comes(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    """The manager commits an end, then sends it: its message can follow the gap."""
    alice = await installation.owner("alice")
    first = installation.life(alice, "first-1", kernels=1)
    late = installation.life(alice, "late-1", kernels=1)
    await first.rows()
    await late.rows()
    settings = installation.settings(redis_url)
    async with running_bridge(settings):
        await installation.bus.emit("session_enqueued", first.session, "c")
        await wait_for(lambda: gateway_history(async_redis), 10, "the first event")
    if installation.format == "stream":
        await installation.client.xtrim("events", maxlen=0)  # the bus lost what was missed
    await late.transition("TERMINATED", result="SUCCESS")
    async with running_bridge(settings):

        async def reconciled() -> object:
            return ("session_success", "late-1") in _counts(await gateway_history(async_redis))

        await wait_for(reconciled, 10, "the reconciled end")
        await installation.bus.emit("session_terminated", late.session, "task-finished")
        await installation.bus.emit("session_success", late.session, "task-finished", 0)
        await installation.bus.emit("session_enqueued", first.session, "after")

        async def after() -> object:
            counts = _counts(await gateway_history(async_redis))
            return counts[("session_enqueued", "first-1")] == 2

        await wait_for(after, 10, "the event after the late ends")
        counts = _counts(await gateway_history(async_redis))
    assert counts[("session_terminated", "late-1")] == 1, counts
    assert counts[("session_success", "late-1")] == 1, counts


async def test_the_gateway_redis_losing_the_position_skips_nothing_of_the_source(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    lives = [installation.life(alice, f"gl-{i}", kernels=1) for i in range(4)]
    for life in lives:
        await life.rows()
    async with running_bridge(installation.settings(redis_url)):
        await installation.bus.emit("session_enqueued", lives[0].session, "c")
        await wait_for(lambda: gateway_history(async_redis), 10, "the first event")
        await async_redis.flushdb()  # restarted empty (no persistence); the lease goes too
        for life in lives[1:]:
            await installation.bus.emit("session_enqueued", life.session, "c")

        async def the_rest() -> object:
            got = {getattr(e, "session_id", "") for _, e in await gateway_history(async_redis)}
            return {"gl-1", "gl-2", "gl-3"} <= got

        await wait_for(the_rest, 15, "the entries written after the gateway's Redis reset")
