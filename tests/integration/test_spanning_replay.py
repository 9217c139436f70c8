"""A stream that spans partitions resumes under steady load, goes live, and gets every event
once, in each partition's order (issue 24, item 2; a review's finding).

The replay used to go live only when every partition stood at its watermark at one check;
with an event arriving during every round of reads it never did: the stream replayed for good,
and a handoff during it recorded where it began, so the next replica sent it everything
again. A real redis-server, the real publisher with 4 partitions, the real hub; the
subscriber's part (an entry in history, then dispatched by its partition's lane) is this
test's loop: one event in every partition each millisecond, so each partition moves while the
replay awaits any read."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis.asyncio as aredis

from gateway.consumer import SSEParser
from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.fanout.resume import resume
from gateway.settings import FanoutSettings
from publisher import AsyncPublisher, Keys
from publisher.bus import Bus
from publisher.partitions import Partitions, encode_vector
from publisher.schema import encode_event
from tests.support.partitioned import numbered_event, owner_per_partition

N = 4


def _owners() -> list[str]:
    return owner_per_partition(Partitions(Keys(), N))


_event = numbered_event


@pytest.mark.anyio
async def test_a_spanning_replay_goes_live_under_steady_load(
    redis_url: str, async_redis: aredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = Partitions(Keys(), N)
    owners = _owners()
    hub = Hub(
        FanoutSettings(retry_jitter_ms=0, max_lag=0.0, ping_interval=0, buffer_cap=64 << 20),
        partitions=parts,
    )
    rounds = 1500  # of one event per partition: history written first, dispatched as it goes
    events = [_event(owners[n % N], n) for n in range(rounds * N)]
    async with AsyncPublisher.from_url(redis_url, partitions=N) as pub:
        ids = []
        for i in range(0, len(events), 1000):
            ids += await pub.publish_many(events[i : i + 1000])
    where = [
        (parts.of(e.owner_user_id), stream_id) for e, stream_id in zip(events, ids, strict=True)
    ]
    dispatched = 0

    def dispatch_round() -> None:
        """One event in every partition, dispatched as each one's subscriber would."""
        nonlocal dispatched
        for n in range(dispatched, dispatched + N):
            p, stream_id = where[n]
            hub.lanes[p].publish(stream_id.encode(), encode_event(events[n]))
        dispatched += N

    for _ in range(100):  # what the replica had dispatched when the stream came back
        dispatch_round()
    start = [(0, 0)] * N
    for n in range(40):  # the stream had the first 40
        p, stream_id = where[n]
        ms, seq = stream_id.split("-")
        start[p] = (int(ms), int(seq))

    connection = hub.new_connection(Filter(), "AK")
    hub.register(connection)
    connection.begin_replay()
    buses = [Bus(k) for k in parts.keys]

    async def load() -> None:  # a round every millisecond: ~4,000 events/s
        while dispatched < len(events):
            dispatch_round()
            await asyncio.sleep(0.001)

    # and a round during every history read the replay makes: every partition has moved by
    # the time any read returns (the steady load of the review, without its timing luck)
    read_history = Bus.read_history

    async def read_while_events_come(self: Bus, *args: Any, **kwargs: Any) -> Any:
        if dispatched < len(events):
            dispatch_round()
        return await read_history(self, *args, **kwargs)

    monkeypatch.setattr(Bus, "read_history", read_while_events_come)

    loader = asyncio.ensure_future(load())
    out = b""
    live_at: list[int] = []  # how many events had been dispatched when it went live

    async def resumed() -> None:
        await resume(connection, hub, async_redis, buses, encode_vector(start))
        live_at.append(dispatched)

    replaying = asyncio.ensure_future(resumed())
    try:
        while not replaying.done():
            await asyncio.sleep(0.005)
            out += connection.take()
        await replaying
        assert live_at[0] < len(events), "still replaying when the load ended"
        assert not connection.replaying and not connection.closed
        await loader  # then live events follow on
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        replaying.cancel()
    out += connection.take()
    got = [
        int(json.loads(e.data)["reason"].removeprefix("n="))
        for e in SSEParser().feed(out)
        if e.event == "kernel_started"
    ]
    assert len(got) == len(set(got)), "an event sent twice"
    assert sorted(got) == list(range(40, len(events))), "an event missing"
    for p in range(N):  # each partition in its own order
        mine = [n for n in got if where[n][0] == p]
        assert mine == sorted(mine, key=lambda n: tuple(map(int, where[n][1].split("-"))))


@pytest.mark.anyio
async def test_an_event_in_another_partition_than_its_owners_is_not_replayed(
    async_redis: aredis.Redis,
) -> None:
    """Dropped live (``wrong_partition``), and not sent by a replay either: a spanning
    stream sees the same events whether it was live or resumed."""
    parts = Partitions(Keys(), N)
    owners = _owners()
    hub = Hub(FanoutSettings(retry_jitter_ms=0, max_lag=0.0, ping_interval=0), partitions=parts)
    right, wrong = _event(owners[1], 1), _event(owners[2], 2)  # both written to partition 1
    history = parts.keys[1].history
    ids = [await async_redis.xadd(history, {"e": encode_event(e)}) for e in (right, wrong)]
    for p, lane in enumerate(hub.lanes):
        lane.last_id = tuple(map(int, ids[-1].decode().split("-"))) if p == 1 else (0, 0)  # type: ignore[assignment]
    connection = hub.new_connection(Filter(), "AK")
    hub.register(connection)
    connection.begin_replay()
    buses = [Bus(k) for k in parts.keys]
    await resume(connection, hub, async_redis, buses, encode_vector([(0, 0)] * N))
    got = [
        json.loads(e.data)["reason"]
        for e in SSEParser().feed(connection.take())
        if e.event == "kernel_started"
    ]
    assert got == ["n=1"]
