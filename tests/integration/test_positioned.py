"""The positioned publisher (the bridge's) against a real redis-server: each source position
written once and in order, whatever is retried or replayed; the place kept with the write;
writes fenced by the lease; the source-gap marker on the wire as a gateway reads it."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.fanout.hub import Hub
from gateway.settings import FanoutSettings
from publisher import Keys, decode_event
from publisher.bus import Bus
from publisher.positioned import (
    NotHolder,
    Position,
    PositionedPublisher,
    format_position,
    parse_position,
)
from publisher.schema import KernelEvent, SourceGap, decode_gap
from tests.support.events import REF

HOLDER = "bridge-a"


async def _lease(redis: aredis.Redis, holder: str = HOLDER, name: str = "bai") -> None:
    assert await Bus(Keys()).acquire_lease(redis, Keys().bridge_lease(name), holder, 60_000)


def _event(i: int) -> KernelEvent:
    return REF.event("kernel_started", reason=str(i))


async def _history(redis: aredis.Redis) -> list[str]:
    return [decode_event(f[b"e"]).reason for _, f in await redis.xrange(Keys().history)]


def test_positions_round_trip_and_order_as_text() -> None:
    positions = [(0, 0, 0, 0), (0, 1, 0, 0), (0, 1, 0, 1), (0, 1, 1, 0), (1, 0, 0, 0)]
    positions.append((2**64 - 1,) * 4)
    texts = [format_position(p) for p in positions]
    assert texts == sorted(texts)
    assert [parse_position(t) for t in texts] == positions
    for bad in [(0, 0, 0), (-1, 0, 0, 0), (0, 2**64, 0, 0), (True, 0, 0, 0)]:
        with pytest.raises(ValueError):
            format_position(bad)  # type: ignore[arg-type]
    for text in ["", "1" * 79, "x" * 80, "9" * 80]:
        with pytest.raises(ValueError):
            parse_position(text)


@pytest.mark.anyio
async def test_each_position_is_written_once_and_the_place_kept(
    async_redis: aredis.Redis,
) -> None:
    await _lease(async_redis)
    pub = PositionedPublisher(async_redis, "bai", lease="bai")
    assert await pub.applied() is None
    first = [((0, 10, i, 0), _event(i)) for i in range(3)]
    ids = await pub.publish(first, holder=HOLDER)
    assert all(ids)
    # a retry of the same call, and one overlapping it: only the new position is written
    assert await pub.publish(first, holder=HOLDER) == [None, None, None]
    ids = await pub.publish([*first[1:], ((0, 10, 3, 0), _event(3))], holder=HOLDER)
    assert ids[:2] == [None, None] and ids[2]
    # an entry without an event only moves the place on
    assert await pub.publish([((0, 11, 0, 0), None)], holder=HOLDER) == [None]
    assert await pub.applied() == (0, 11, 0, 0)
    assert await _history(async_redis) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="increase"):
        await pub.publish([((0, 12, 0, 0), None), ((0, 12, 0, 0), None)], holder=HOLDER)


@pytest.mark.anyio
async def test_writes_are_fenced_by_the_lease(async_redis: aredis.Redis) -> None:
    pub = PositionedPublisher(async_redis, "bai", lease="bai")
    with pytest.raises(NotHolder):  # no one holds it
        await pub.publish([((0, 1, 0, 0), _event(1))], holder=HOLDER)
    await _lease(async_redis, "someone-else")
    with pytest.raises(NotHolder):
        await pub.publish([((0, 1, 0, 0), _event(1))], holder=HOLDER)
    assert await async_redis.xlen(Keys().history) == 0
    bus = Bus(Keys())
    assert not await bus.renew_lease(async_redis, Keys().bridge_lease("bai"), HOLDER, 1000)
    assert await bus.release_lease(async_redis, Keys().bridge_lease("bai"), "someone-else")
    await _lease(async_redis)
    assert (await pub.publish([((0, 1, 0, 0), _event(1))], holder=HOLDER))[0]


@pytest.mark.anyio
async def test_the_gap_marker_is_told_to_every_stream(async_redis: aredis.Redis) -> None:
    await _lease(async_redis)
    pub = PositionedPublisher(async_redis, "bai", lease="bai")
    marker = SourceGap(gap="source", source="bai", since=1.0, until=2.0)
    [stream_id] = await pub.publish([((0, 1, 0, 1), marker)], holder=HOLDER)
    assert stream_id is not None
    [(_, fields)] = await async_redis.xrange(Keys().history)
    assert decode_gap(fields[b"e"]) == marker
    hub = Hub(FanoutSettings())
    hub.last_id = (0, 0)
    told: list[bytes] = []
    hub.notice_all = lambda reason: told.append(reason.encode())  # type: ignore[method-assign]
    hub.publish(stream_id.encode(), fields[b"e"])
    assert told == [b"source"] and hub.stats.source_gaps == 1
    assert hub.stats.dropped["schema"] == 0
    assert hub.last_id is not None and hub.last_id > (0, 0)  # the watermark passed it


@pytest.mark.anyio
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.booleans()), max_size=25),
    st.integers(0, 2**32),
)
async def test_any_replay_of_a_source_writes_each_position_once_in_order(
    async_redis: aredis.Redis, steps: list[tuple[int, int, bool]], seed: int
) -> None:
    """A model: the source is a sorted list of positions; a bridge reads batches from its
    place, and may crash (forget what it read) before or after each write, and start again
    from :meth:`applied`, or replay from anywhere before it. History must equal the source's
    events, each once, in order."""
    rng = random.Random(seed)
    await async_redis.flushall()
    await _lease(async_redis)
    pub = PositionedPublisher(async_redis, "bai", lease="bai")
    source: list[tuple[Position, KernelEvent | None]] = []
    entries = {(ms, seq): has_event for ms, seq, has_event in steps}
    for i, ((ms, seq), has_event) in enumerate(sorted(entries.items())):
        source.append(((0, ms, seq, 0), _event(i) if has_event else None))
    expected = [str(e.reason) for _, e in source if e is not None]
    for _ in range(30):
        applied = await pub.applied()
        start = 0 if applied is None else sum(1 for p, _ in source if p <= applied)
        start = rng.randint(0, start)  # a replay from anywhere at or before the place
        batch = source[start : start + rng.randint(1, 4)]
        if batch:
            await pub.publish(batch, holder=HOLDER)
        if applied is not None and applied == (source[-1][0] if source else None):
            break
    while source and await pub.applied() != source[-1][0]:
        applied = await pub.applied()
        rest = [(p, e) for p, e in source if applied is None or p > applied]
        await pub.publish(rest, holder=HOLDER)
    assert await _history(async_redis) == expected
