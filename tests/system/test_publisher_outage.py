"""The publishers while their Redis is killed, restarted, frozen (SIGSTOP) or refusing writes
(maxmemory + noeviction, WRONGTYPE): bounded queue, ordered flush, one behaviour per error
class whether the publisher is fresh or back from an outage, bounded blocking, and a close
that reports what it could not deliver (the queue alone: tests/unit/test_outage_buffer.py;
concurrency and the exactly-once retry: tests/integration/test_publisher_concurrency.py)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
import redis
import redis.asyncio as aredis

from publisher import (
    AsyncPublisher,
    CloseReport,
    Keys,
    PublishRejected,
    SyncPublisher,
    UndeliveredEvents,
    aresolve_in_doubt,
    resolve_in_doubt,
)
from tests.support.events import REF, history_reasons
from tests.support.redis_server import RedisServer
from tests.support.wait import until, wait_until


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
        assert pub.buffered == 20 and pub.health.state == "unreachable"
        private_redis.start()
        assert await pub.publish(REF.started("after")) is None  # queued behind the backlog
        assert await pub.flush(timeout=10)
        assert await pub.publish(REF.started("live again")) is not None
        assert str(pub.health.state) == "ok"  # (mypy narrowed it above)
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
        # No call needed: the writer thread retries with backoff (<= max_retry_interval).
        wait_until(lambda: pub.buffered == 0, 10, "the background flush")
        assert pub.publish(REF.started("after")) is not None
    assert history_reasons(private_redis.url) == [*(f"down-{i}" for i in range(5)), "after"]


@pytest.mark.anyio
async def test_async_overflow_drops_oldest_counts_and_close_reports_it(
    private_redis: RedisServer,
) -> None:
    pub = AsyncPublisher.from_url(
        private_redis.url, timeout=0.3, buffer_size=10, overflow="drop_oldest"
    )
    private_redis.stop(kill=True)
    for i in range(25):
        await pub.publish(REF.started(str(i)))
    assert (pub.buffered, pub.dropped) == (10, 15)
    private_redis.start()
    assert await pub.flush(timeout=10)
    report = await pub.aclose()
    assert not report.ok and report.dropped == 15 and report.undelivered == ()
    assert history_reasons(private_redis.url) == [str(i) for i in range(15, 25)]


@contextmanager
def _refusing_writes(server: RedisServer) -> Iterator[redis.Redis]:
    """Redis up, answering, and refusing every write: maxmemory below what it uses, with
    noeviction."""
    with redis.Redis.from_url(server.url) as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            yield admin
        finally:
            admin.config_set("maxmemory", "0")


@pytest.mark.anyio
@pytest.mark.parametrize("history", ["fresh", "after_outage"])
async def test_a_redis_refusing_writes_is_one_behaviour_fresh_or_after_an_outage(
    private_redis: RedisServer, history: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="publisher")
    pub = AsyncPublisher.from_url(
        private_redis.url, timeout=0.5, retry_interval=0.05, max_retry_interval=0.4
    )
    expected: list[str] = []
    if history == "after_outage":
        private_redis.stop(kill=True)
        assert await pub.publish(REF.started("down")) is None
        expected.append("down")
        private_redis.start()
    with _refusing_writes(private_redis):
        started = time.monotonic()
        for i in range(5):
            assert await pub.publish(REF.started(f"oom-{i}")) is None  # queued, never raised
            expected.append(f"oom-{i}")
        assert time.monotonic() - started < 0.5 + 0.5
        await until(lambda: pub.health.state == "refused", 5, "the refusal to show")
        health = pub.health
        assert "maxmemory" in (health.last_error or "") and health.buffered == len(expected)
        await until(lambda: pub.health.errors.get("refused", 0) >= 2, 5, "a retry")
        before = pub.health.errors["refused"]
        await anyio.sleep(1.0)
        retries = pub.health.errors["refused"] - before
        assert 1 <= retries <= 6, retries  # it retries, backing off (<= 0.4 s apart)
        assert history_reasons(private_redis.url) == []
    assert await pub.flush(timeout=10)
    assert history_reasons(private_redis.url) == expected
    assert pub.health.state == "ok" and pub.health.published == len(expected)
    warnings = [r.getMessage() for r in caplog.records if "maxmemory" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, warnings  # said once, not once per retry
    assert (await pub.aclose()).ok


@pytest.mark.anyio
async def test_a_write_no_retry_can_fix_raises_and_is_counted(
    private_redis: RedisServer,
) -> None:
    history = Keys().history
    pub = AsyncPublisher.from_url(private_redis.url, timeout=0.5)
    with pytest.raises(UndeliveredEvents, match="1 rejected"):  # the exit says so, too
        async with pub:
            with redis.Redis.from_url(private_redis.url) as admin:
                admin.set(history, "not a stream")  # WRONGTYPE for every XADD
                with pytest.raises(PublishRejected, match="WRONGTYPE"):
                    await pub.publish(REF.started("rejected"))
                assert (pub.rejected, pub.buffered, pub.health.state) == (1, 0, "rejected")
                admin.delete(history)
            assert await pub.publish(REF.started("fine")) is not None
            assert pub.health.state == "ok"
    assert history_reasons(private_redis.url) == ["fine"]


def test_close_while_redis_is_unreachable_reports_what_was_not_delivered(
    private_redis: RedisServer,
) -> None:
    pub = SyncPublisher.from_url(private_redis.url, timeout=0.3, retry_interval=0.05)
    assert pub.publish(REF.started("in")) is not None
    private_redis.stop(kill=True)
    assert pub.publish_many([REF.started("lost-1"), REF.started("lost-2")]) == []
    started = time.monotonic()
    report = pub.close(timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0 + 0.3
    assert not report.ok and report.published == 1
    assert [e.reason for e in report.undelivered] == ["lost-1", "lost-2"]
    assert "ConnectionError" in (report.last_error or "")
    assert pub.close() is report  # idempotent

    async_pub = AsyncPublisher.from_url(private_redis.url, timeout=0.3)

    async def scenario() -> None:
        async with async_pub:
            assert await async_pub.publish(REF.started("lost-3")) is None

    with pytest.raises(UndeliveredEvents, match="1 events undelivered") as raised:
        anyio.run(scenario)
    assert [e.reason for e in raised.value.report.undelivered] == ["lost-3"]


@contextmanager
def _frozen(server: RedisServer) -> Iterator[None]:
    """The server stopped (SIGSTOP): connections are accepted by the kernel, never answered."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_sync_publisher_never_blocks_beyond_its_timeout_on_a_frozen_redis(
    private_redis: RedisServer,
) -> None:
    timeout = 0.3
    pub = SyncPublisher.from_url(
        private_redis.url, timeout=timeout, retry_interval=0.05, max_retry_interval=0.2
    )
    assert pub.publish(REF.started("before")) is not None
    waits: list[float] = []
    with _frozen(private_redis):
        deadline = time.monotonic() + 3.0  # many retries of the writer, each one frozen
        i = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert pub.publish(REF.started(f"frozen-{i}")) is None
            waits.append(time.monotonic() - started)
            i += 1
            time.sleep(0.02)
        assert pub.health.errors.get("unreachable", 0) >= 3  # the writer kept retrying
        started = time.monotonic()
        report = pub.close(timeout=timeout)
        closing = time.monotonic() - started
    assert max(waits) < timeout + 0.15, max(waits)
    assert sum(waits) < timeout + 0.15 + 0.01 * len(waits), sum(waits)  # only the first waits
    assert closing < timeout + 1.0 + 0.15, closing
    # The writer's attempt was sent to the frozen server: in doubt; the rest never went out.
    assert report.in_doubt and len(report.in_doubt) + len(report.undelivered) == i


def _check_in_doubt_and_republish(server: RedisServer, report: CloseReport, n: int) -> None:
    """After SIGCONT: what the frozen server runs of the in-doubt writes, plus what
    ``resolve_in_doubt`` says was not written, is every in-doubt event exactly once; no
    undelivered event is in history; publishing both again gives every event once, in
    order."""
    assert not report.ok and report.published == 1
    assert len(report.in_doubt) + len(report.undelivered) == n
    with redis.Redis.from_url(server.url) as client:
        again = resolve_in_doubt(client, report)
    time.sleep(0.3)  # a write still pending on the old connections would have landed now
    landed = history_reasons(server.url)[1:]
    doubt = [e.reason for e in report.in_doubt]
    assert landed == [r for r in doubt if r not in {e.reason for e in again}]
    with SyncPublisher.from_url(server.url) as pub:  # a new publisher: no deduplication
        assert len(pub.publish_many([*again, *report.undelivered])) == len(again) + len(
            report.undelivered
        )
    assert history_reasons(server.url) == ["before", *(f"e-{i}" for i in range(n))]


def test_close_on_a_frozen_redis_tells_in_doubt_from_undelivered(
    private_redis: RedisServer,
) -> None:
    # chunk_size 1: an attempt carries 8 events, so the queue holds more than one attempt.
    pub = SyncPublisher.from_url(private_redis.url, timeout=0.5, chunk_size=1, retry_interval=0.05)
    assert pub.publish(REF.started("before")) is not None
    with _frozen(private_redis):
        assert pub.publish_many([REF.started(f"e-{i}") for i in range(50)]) == []
        time.sleep(1.2)
        report = pub.close(timeout=0.2)
        # The writer's attempts went to the frozen server: those 8 may land when it
        # resumes; the other 42 were never sent.
        assert [e.reason for e in report.in_doubt] == [f"e-{i}" for i in range(8)]
        assert [e.reason for e in report.undelivered] == [f"e-{i}" for i in range(8, 50)]
        assert "8 in doubt" in report.summary()
    _check_in_doubt_and_republish(private_redis, report, 50)


def test_whole_in_flight_batch_is_in_doubt_not_undelivered(private_redis: RedisServer) -> None:
    # The reviewer's case: the whole batch was in flight; after SIGCONT it all lands, and
    # re-publishing report.undelivered must not write it twice.
    pub = SyncPublisher.from_url(private_redis.url, timeout=0.5)
    assert pub.publish(REF.started("before")) is not None
    with _frozen(private_redis):
        assert pub.publish_many([REF.started(f"e-{i}") for i in range(50)]) == []
        time.sleep(1.2)
        report = pub.close(timeout=0.2)
    assert len(report.in_doubt) == 50 and report.undelivered == ()
    wait_until(lambda: len(history_reasons(private_redis.url)) == 51, 5, "the frozen writes")
    with redis.Redis.from_url(private_redis.url) as client:
        assert resolve_in_doubt(client, report) == ()  # all 50 landed, once
    assert history_reasons(private_redis.url) == ["before", *(f"e-{i}" for i in range(50))]


@pytest.mark.anyio
async def test_async_close_on_a_frozen_redis_tells_in_doubt_from_undelivered(
    private_redis: RedisServer,
) -> None:
    pub = AsyncPublisher.from_url(private_redis.url, timeout=0.5, chunk_size=1, retry_interval=0.05)
    assert await pub.publish(REF.started("before")) is not None
    with _frozen(private_redis):
        assert await pub.publish_many([REF.started(f"e-{i}") for i in range(50)]) == []
        await anyio.sleep(1.2)
        with pytest.raises(UndeliveredEvents, match="42 events undelivered, 8 in doubt"):
            async with pub:
                pass
        report = await pub.aclose()  # the same report
        assert [e.reason for e in report.in_doubt] == [f"e-{i}" for i in range(8)]
        assert [e.reason for e in report.undelivered] == [f"e-{i}" for i in range(8, 50)]
    client = aredis.Redis.from_url(private_redis.url)
    try:
        again = await aresolve_in_doubt(client, report)
    finally:
        await client.aclose()
    await anyio.sleep(0.3)
    landed = history_reasons(private_redis.url)[1:]
    assert landed == [e.reason for e in report.in_doubt if e not in again]


def test_nothing_is_logged_as_retrying_after_close(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="publisher")
    pub = SyncPublisher.from_url(private_redis.url, timeout=0.5, retry_interval=0.05)
    assert pub.publish(REF.started("before")) is not None
    with _frozen(private_redis):
        assert pub.publish_many([REF.started(f"e-{i}") for i in range(50)]) == []
        time.sleep(1.2)
        report = pub.close(timeout=0.2)
        assert pub._writer is not None
        pub._writer.join(2.0)  # the writer has ended, and said all it will say
        assert not pub._writer.is_alive()
    assert not report.ok and pub.health.state == "closed"
    messages = [r.getMessage() for r in caplog.records]
    closed = next(i for i, m in enumerate(messages) if m.startswith("publisher closed: "))
    after = [m for m in messages[closed + 1 :] if "retrying" in m or "unreachable" in m]
    assert after == [], after
