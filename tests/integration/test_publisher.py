"""The publishers against a real redis-server: one id in history and on the channel, order,
bounded history, sync and async alike, prefixes, batches, exactly-once retries, Unix sockets
(the schema alone: tests/unit/test_schema.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aredis

from publisher import (
    AsyncPublisher,
    InvalidEvent,
    KernelEvent,
    Keys,
    SessionRef,
    SyncPublisher,
    decode_event,
    encode_event,
    resolve_in_doubt,
)
from publisher.buffer import Pending
from publisher.writer import CloseReport
from tests.support.events import REF, history_reasons, lifecycle


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


@pytest.mark.anyio
async def test_publish_lands_in_history_and_on_channel_with_same_id(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    keys = Keys()
    pubsub = async_redis.pubsub()
    await pubsub.subscribe(keys.channel)
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    event = REF.started("ready")
    async with AsyncPublisher.from_url(redis_url) as pub:
        stream_id = await pub.publish(event)

    [(history_id, fields)] = await async_redis.xrange(keys.history)
    assert history_id.decode() == stream_id
    assert decode_event(fields[b"e"]) == event

    message = None
    with anyio.fail_after(5):
        while message is None:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    live_id, _, payload = message["data"].partition(b" ")
    assert live_id.decode() == stream_id
    assert decode_event(payload) == event
    await pubsub.aclose()


@pytest.mark.anyio
async def test_ids_increase_and_batches_keep_order(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    events = [
        SessionRef(
            session_id=f"s{i}", owner_access_key="AK", owner_user_id="u", domain="d", group="g"
        ).event("kernel_started", reason=str(i))
        for i in range(1000)
    ]
    async with AsyncPublisher.from_url(redis_url, chunk_size=64) as pub:
        single = await pub.publish(events[0])
        ids = await pub.publish_many(events[1:])
        assert await pub.publish_many([]) == []
    all_ids = [single, *ids]
    assert [_id(i) for i in all_ids] == sorted({_id(i) for i in all_ids})
    history = await async_redis.xrange(Keys().history)
    assert [h.decode() for h, _ in history] == all_ids
    assert [decode_event(f[b"e"]).reason for _, f in history] == [str(i) for i in range(1000)]


def test_history_stays_bounded(redis_url: str, sync_redis: redis.Redis) -> None:
    events = lifecycle(REF) * 150  # 1,050 events
    with SyncPublisher.from_url(redis_url, maxlen=200) as pub:
        for i in range(0, len(events), 50):
            pub.publish_many(events[i : i + 50])
    length = sync_redis.xlen(Keys().history)
    # Approximate trimming (MAXLEN ~) removes whole stream nodes (100 entries by default),
    # so the stream may exceed MAXLEN by less than one node, never more.
    assert 200 <= length < 200 + 100
    with SyncPublisher.from_url(redis_url, maxlen=200, exact_trim=True) as pub:
        pub.publish(REF.started())
    assert sync_redis.xlen(Keys().history) == 200


@pytest.mark.anyio
async def test_sync_and_async_publishers_write_the_same_bytes(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    events = lifecycle(REF)
    with SyncPublisher.from_url(redis_url, prefix="sync") as spub:
        spub.publish_many(events)
    async with AsyncPublisher.from_url(redis_url, prefix="async") as apub:
        await apub.publish_many(events)
    sync_rows = await async_redis.xrange(Keys("sync").history)
    async_rows = await async_redis.xrange(Keys("async").history)
    assert [f[b"e"] for _, f in sync_rows] == [f[b"e"] for _, f in async_rows]
    assert [f[b"e"] for _, f in sync_rows] == [encode_event(e) for e in events]


def test_prefix_separates_deployments(redis_url: str, sync_redis: redis.Redis) -> None:
    with SyncPublisher.from_url(redis_url, prefix="east") as pub:
        pub.publish(REF.started())
    assert sync_redis.xlen("east:events") == 1
    assert sync_redis.exists(Keys().history) == 0
    with pytest.raises(ValueError, match="prefix"):
        Keys("has space")


def test_a_bad_event_fails_the_whole_batch(redis_url: str, sync_redis: redis.Redis) -> None:
    bad = {"name": "kernel_started"}  # what a buggy caller might pass
    with SyncPublisher.from_url(redis_url) as pub, pytest.raises(InvalidEvent):
        pub.publish_many([REF.started(), bad])  # type: ignore[list-item]
    assert sync_redis.xlen(Keys().history) == 0


@pytest.mark.anyio
async def test_subscriber_decodes_exactly_what_was_published(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    keys = Keys("sub")
    pubsub = async_redis.pubsub()
    await pubsub.subscribe(keys.channel)
    await pubsub.get_message(timeout=1)
    events = [*lifecycle(REF), REF.cancelled("pull failed"), REF.success(), REF.failure()]
    async with AsyncPublisher.from_url(redis_url, prefix="sub") as pub:
        ids = await pub.publish_many(events)
    got: list[tuple[str, KernelEvent]] = []
    with anyio.fail_after(5):
        while len(got) < len(events):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                sid, _, payload = message["data"].partition(b" ")
                got.append((sid.decode(), decode_event(payload)))
    assert got == list(zip(ids, events, strict=True))
    await pubsub.aclose()


def test_unix_socket_connection(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline, "redis-server did not open its socket"
            time.sleep(0.02)
        with SyncPublisher.from_url(f"unix://{sock}") as pub:
            stream_id = pub.publish(REF.started())
        with redis.Redis(unix_socket_path=str(sock)) as client:
            assert client.xrange(Keys().history)[0][0].decode() == stream_id
    finally:
        proc.kill()
        proc.wait()


def test_a_retry_after_an_ambiguous_failure_does_not_publish_twice(redis_url: str) -> None:
    # Redis ran the script but the reply was lost: the buffer sends the same sequence
    # numbers again, and the script skips them.
    with SyncPublisher.from_url(redis_url) as pub:
        items = [Pending(i, encode_event(REF.started(f"once-{i + 1}"))) for i in range(2)]
        pub._core.next_seq = 2  # numbers 0 and 1 are taken by the two sent by hand
        [first] = pub._send(items)
        [again] = pub._send(items)
        later = pub.publish(REF.started("next"))
    assert isinstance(first, list) and all(first) and again == ["", ""] and later
    assert history_reasons(redis_url) == ["once-1", "once-2", "next"]


def test_resolving_in_doubt_events_fences_their_sequence_numbers(redis_url: str) -> None:
    # Numbers 0-1 applied; 2-3 in doubt (sent, never answered) and not applied:
    # resolve_in_doubt says 2-3 are not written and makes sure a pending write of them
    # (here: sent after the resolve) is skipped, so publishing them again cannot duplicate.
    with SyncPublisher.from_url(redis_url) as pub:
        assert len(pub.publish_many([REF.started("a0"), REF.started("a1")])) == 2
        doubt = (REF.started("d2"), REF.started("d3"))
        report = CloseReport(
            published=2, undelivered=(), in_doubt=doubt, dropped=0, rejected=0,
            last_error=None, sequence_key=pub._core.seq_key, in_doubt_seqs=(2, 3),
        )  # fmt: skip
        with redis.Redis.from_url(redis_url) as client:
            assert resolve_in_doubt(client, report) == doubt
            items = [Pending(2 + i, encode_event(e)) for i, e in enumerate(doubt)]
            assert pub._send(items) == [["", ""]]  # the late write: skipped
            assert resolve_in_doubt(client, report) == doubt  # the same answer again
        pub._core.next_seq = 4
    assert history_reasons(redis_url) == ["a0", "a1"]
