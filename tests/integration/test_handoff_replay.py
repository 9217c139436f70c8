"""A drain records, for a stream it hands off, a position whose every event has left the
process, so the next replica sends every event once (issue 23's handoff, with issue 24's
partitions).

The record used to be where the replay began: a second drain within a replay (a rolling
deploy of several replicas, one after another) sent the SDK everything the replay had sent
again. Then it was how far the replay had pushed, and a review lost 247 events with a reader
slower than ``drain_deadline``: what was queued at the drain was never written. Here a stream
that a drain hands off (``Connection.handoff``) replays from history, paced by a client that
reads a few frames at a time; the drain comes after the client has read ``m`` frames, for
many ``m``, with frames still queued: the position it records (:meth:`Hub.handoff_position`,
or where the stream began, as the drain does) is where a second stream resumes, what was
queued is dropped (as the drain does), and the two streams together must hold every event
after the start, once. With one partition (a plain id), and with four: a user's stream (its
owner's partition, a plain id) and a stream that spans them (a vector id). And a live stream
with a backlog at the drain: the position of the last tick that found it all written. A real
redis-server, the real publisher and hub."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Coroutine
from typing import Any

import pytest
import redis.asyncio as aredis

from gateway.consumer import SSEParser
from gateway.fanout.connection import Connection
from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.fanout.resume import resume
from gateway.settings import FanoutSettings
from publisher import AsyncPublisher, Keys
from publisher.bus import Bus
from publisher.partitions import Partitions, encode_vector
from publisher.schema import KernelEvent, encode_event
from tests.support.partitioned import numbered_event, owner_per_partition

EVENTS = 240
#: the first events the stream had before it was handed off (its replay starts after them)
HAD = 20


def _numbers(data: bytes) -> list[int]:
    return [
        int(json.loads(e.data)["reason"].removeprefix("n="))
        for e in SSEParser().feed(data)
        if e.event == "kernel_started"
    ]


async def _history(redis_url: str, n: int) -> tuple[Hub, list[KernelEvent], list[str], Filter]:
    """A hub of ``n`` partitions that has dispatched :data:`EVENTS` events (each in history
    first, as the subscriber finds them)."""
    parts = Partitions(Keys(), n)
    hub = Hub(
        FanoutSettings(retry_jitter_ms=0, max_lag=0.0, ping_interval=0, buffer_cap=4096),
        partitions=parts,
    )
    owners = owner_per_partition(parts)
    events = [numbered_event(owners[i % n], i, sessions=5) for i in range(EVENTS)]
    async with AsyncPublisher.from_url(redis_url, partitions=n) as pub:
        ids = await pub.publish_many(events)
    for event, stream_id in zip(events, ids, strict=True):
        p = parts.of(event.owner_user_id)
        (hub.lanes[p] if hub.lanes else hub).publish(stream_id.encode(), encode_event(event))
    return hub, events, ids, Filter()


def _start(hub: Hub, events: list[KernelEvent], ids: list[str], lane: int | None) -> str:
    """The resume id of a stream that had the first :data:`HAD` events."""
    if not hub.lanes or lane is not None:
        mine = [i for i, e in enumerate(events[:HAD]) if _in(hub, e, lane)]
        return ids[mine[-1]] if mine else "0-0"
    assert hub.partitions is not None
    at = [(0, 0)] * hub.partitions.n
    for event, stream_id in zip(events[:HAD], ids, strict=False):
        ms, seq = stream_id.split("-")
        at[hub.partitions.of(event.owner_user_id)] = (int(ms), int(seq))
    return encode_vector(at)


def _in(hub: Hub, event: KernelEvent, lane: int | None) -> bool:
    return lane is None or hub.partitions is None or hub.partitions.of(event.owner_user_id) == lane


async def _stream(hub: Hub, filter: Filter, handoff: object) -> Connection:
    connection = hub.new_connection(filter, "AK")
    connection.handoff = handoff
    hub.register(connection)
    connection.begin_replay()
    return connection


async def _read_to_the_end(connection: Connection, replay: Coroutine[Any, Any, None]) -> bytes:
    """What ``connection`` gets from ``replay``, read as it comes, until it is live."""
    task = asyncio.ensure_future(replay)
    out = b""
    for _ in range(100_000):
        out += connection.take()
        if task.done():
            break
        await asyncio.sleep(0)
    await task
    assert not connection.replaying and not connection.closed
    return out + connection.take()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("partitions", "lane"), [(1, None), (4, None), (4, 2)], ids=["one", "spanning", "user"]
)
async def test_a_drain_during_a_replay_records_how_far_it_went(
    redis_url: str, async_redis: aredis.Redis, partitions: int, lane: int | None
) -> None:
    rng = random.Random(partitions * 10 + (lane or 0))
    hub, events, ids, filter = await _history(redis_url, partitions)
    if lane is not None:
        assert hub.partitions is not None
        owner = next(e.owner_user_id for e in events if hub.partitions.of(e.owner_user_id) == lane)
        filter = Filter(owner_user_id=owner)
        assert hub.lane_of(filter) == lane
    owed = [i for i, e in enumerate(events) if i >= HAD and _in(hub, e, lane)]
    stops = sorted({0, 1, 2, 5, *rng.sample(range(3, len(owed)), 12)})
    start = _start(hub, events, ids, lane)
    buses = [Bus(k) for k in (hub.partitions.keys if hub.partitions else (Keys(),))]
    moved = slow = 0
    for stop in stops:
        first = await _stream(hub, filter, handoff=object())
        replaying = asyncio.ensure_future(resume(first, hub, async_redis, buses, start))
        got = b""
        for _ in range(10_000):  # the client reads until it has ``stop`` events, or it is live
            got += first.take()
            if len(_numbers(got)) >= stop or replaying.done():
                break
            await asyncio.sleep(0)
        for _ in range(rng.randrange(4)):  # the replay pushes on while the client is slow
            await asyncio.sleep(0)
        # the drain (GatewayState._stands, then close_all): what it records, what is still
        # queued dropped (a slow reader would not get it before drain_deadline), the close
        unsent = first.buffered
        at = hub.handoff_position(first) or start
        if first.buffered:
            first.discard_queue()
        first.close("shutdown")
        got += first.take()
        slow += bool(unsent)
        await replaying
        moved += at != start
        second = await _stream(hub, filter, handoff=None)
        rest = await _read_to_the_end(second, resume(second, hub, async_redis, buses, at))
        both = _numbers(got) + _numbers(rest)
        assert len(both) == len(set(both)), f"stop {stop}: sent twice from {at}"
        assert sorted(both) == owed, f"stop {stop}: missing after {at}"
        for connection in (first, second):
            hub.unregister(connection)
        assert not hub.replay_marks  # nothing kept once the stream is gone
    assert moved >= len(stops) - 2  # the record moved with the replay (not its start)
    assert slow >= len(stops) // 3  # many drains found frames queued


@pytest.mark.anyio
async def test_a_live_stream_with_a_backlog_at_the_drain_loses_nothing(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    """Live, with frames queued at the drain: the record is where the last tick found the
    stream all written; what was queued after it is dropped and sent by the reconnect."""
    _, events, ids, filter = await _history(redis_url, 1)  # in history; dispatched below
    hub = Hub(FanoutSettings(retry_jitter_ms=0, max_lag=0.0, ping_interval=0, buffer_cap=4096))
    dispatched = 0
    live = hub.new_connection(filter, "AK")
    live.handoff = object()
    hub.register(live)

    def dispatch(n: int) -> None:
        nonlocal dispatched
        for i in range(dispatched, dispatched + n):
            hub.publish(ids[i].encode(), encode_event(events[i]))
        dispatched += n

    dispatch(HAD)
    got = live.take()  # the client read all of it
    hub.tick(ping=False)  # a tick finds it all written: the safe position
    dispatch(10)  # queued, unread: the client is slow
    assert live.unsent() and hub.handoff_position(live) == ids[HAD - 1]
    at = hub.handoff_position(live)
    assert at is not None
    live.discard_queue()
    live.close("shutdown")
    got += live.take()
    second = await _stream(hub, filter, handoff=None)
    dispatch(len(events) - dispatched)
    rest = await _read_to_the_end(second, resume(second, hub, async_redis, [Bus(Keys())], at))
    both = _numbers(got) + _numbers(rest)
    assert len(both) == len(set(both)) and sorted(both) == list(range(len(events)))
