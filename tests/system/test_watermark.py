"""Where the history is: the watermark and the epoch, against a real redis-server and real
gateway processes (``gateway serve``). Each test is one failing case of the issue "Zero loss
for real", replayed as an operator or a hostile publisher would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from devtools.localredis import PrivateRedis
from gateway.consumer import SSEEvent
from publisher import SyncPublisher
from publisher.keys import Keys
from publisher.schema import encode_event
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, seed, session_of
from tests.support.tcp_proxy import tcp_proxy
from tests.support.wait import until

KEYS = Keys()


class Reader:
    """One open stream, read in the background into ``events`` (every SSE event)."""

    def __init__(self) -> None:
        self.events: list[SSEEvent] = []

    def kernel(self) -> list[SSEEvent]:
        return [e for e in self.events if e.event.startswith("kernel_")]

    def notices(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event == "history_truncated"]


@contextlib.asynccontextmanager
async def reading(base_url: str, **options: Any) -> AsyncIterator[Reader]:
    reader = Reader()
    async with stream_as(ROOT, base_url, **options) as (_, events):

        async def pump() -> None:
            async for event in events:
                reader.events.append(event)

        task = asyncio.ensure_future(pump())
        try:
            yield reader
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _metric(gw: RunningGateway, sample: str) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


async def _restarted_empty(server: PrivateRedis, gw: RunningGateway) -> None:
    """SIGKILL Redis; it comes back empty: store the identities again, wait for the replica."""
    server.restart()
    await seed(server.url)
    await until(
        lambda: httpx.get(gw.base_url + "/ready", timeout=5).status_code == 200,
        15,
        "the replica back",
    )


async def _streams(gw: RunningGateway, n: int) -> None:
    await until(
        lambda: httpx.get(gw.base_url + "/ready", timeout=5).json()["streams"] >= n,
        10,
        f"{n} open streams",
    )


@pytest.mark.anyio
async def test_forged_live_messages_blind_no_replica(redis_url: str) -> None:
    await seed(redis_url)
    ref = session_of(ALICE, "after-poison")
    with spawn_gateway(gateway_settings(redis_url)) as gw:
        async with reading(gw.base_url) as reader:
            await _streams(gw, 1)
            now_ms = int(time.time() * 1000)
            with redis.Redis.from_url(redis_url) as raw:
                raw.publish(KEYS.channel, b"%d-0 x" % (now_ms + 20_000))
                # a valid payload under a future id that history does not hold: not trusted
                forged = encode_event(ref.started("forged"))
                raw.publish(KEYS.channel, b"%d-1 " % (now_ms + 20_000) + forged)
                raw.publish(KEYS.channel, b"18446744073709551616-0 x")  # past 64 bits
            with SyncPublisher.from_url(redis_url) as pub:
                real = [pub.publish(ref.started(str(i))) for i in range(3)]
            await until(lambda: len(reader.kernel()) >= 3, 5, "the real events")
            assert [e.id for e in reader.kernel()] == real
        assert httpx.get(gw.base_url + "/ready", timeout=5).status_code == 200
        assert _metric(gw, 'kev_payloads_dropped_total{kind="unproven"}') >= 2
        assert _metric(gw, 'kev_payloads_dropped_total{kind="bad_id"}') >= 1


@pytest.mark.anyio
async def test_a_cold_replica_gap_fills_across_a_redis_blip() -> None:
    with PrivateRedis() as server:
        await seed(server.url)
        proxy_port = None
        with tcp_proxy(server.port) as proxy:
            proxy_port = proxy.port
            settings = gateway_settings(proxy.url, probe_interval=0.3)
            with spawn_gateway(settings) as gw:
                async with reading(gw.base_url) as reader:
                    await _streams(gw, 1)
                    proxy.close()  # the link is cut; the gateway has dispatched nothing
                    await until(
                        lambda: httpx.get(gw.base_url + "/ready", timeout=5).status_code == 503,
                        10,
                        "the replica to notice",
                    )
                    with SyncPublisher.from_url(server.url) as pub:
                        missed = pub.publish(session_of(ALICE, "during-blip").started())
                    await asyncio.sleep(3.0)  # the outage itself
                    with tcp_proxy(server.port, port=proxy_port):
                        await until(lambda: len(reader.kernel()) >= 1, 15, "the missed event")
                        assert [e.id for e in reader.kernel()] == [missed]
                        assert reader.notices() == []


@pytest.mark.anyio
async def test_redis_losing_its_history_is_told_never_silent() -> None:
    with PrivateRedis() as server:  # no persistence, as compose and the demo run it
        await seed(server.url)
        ref = session_of(ALICE, "epochs")
        with spawn_gateway(gateway_settings(server.url)) as gw:
            async with reading(gw.base_url) as open_stream:
                await _streams(gw, 1)
                with SyncPublisher.from_url(server.url) as pub:
                    old = [pub.publish(ref.started(f"old-{i}")) for i in range(3)]
                # push the watermark far ahead, as an old history with later ids would
                now_ms = int(time.time() * 1000)
                with redis.Redis.from_url(server.url) as raw:
                    ahead = raw.xadd(
                        KEYS.history,
                        {"e": encode_event(ref.started("ahead"))},
                        id=f"{now_ms + 3_600_000}-0",
                    ).decode()
                    payload = raw.xrange(KEYS.history, ahead, ahead)[0][1][b"e"]
                    raw.publish(KEYS.channel, ahead.encode() + b" " + payload)
                await until(lambda: len(open_stream.kernel()) >= 4, 10, "the old history")
                assert [e.id for e in open_stream.kernel()] == [*old, ahead]

                await _restarted_empty(server, gw)
                with SyncPublisher.from_url(server.url) as pub:
                    new = [pub.publish(ref.started(f"new-{i}")) for i in range(3)]
                assert all(n < ahead for n in new)  # the new ids are below the watermark
                await until(lambda: len(open_stream.kernel()) >= 7, 15, "the new history")
                events = open_stream.events
                kinds = [e.event for e in events if e.event != "ping"]
                notice_at = kinds.index("history_truncated")
                assert kinds[notice_at + 1 :] == ["kernel_started"] * 3
                assert [e.id for e in open_stream.kernel()][4:] == new
                assert open_stream.notices()[0]["reason"] == "reset"

            # resuming from an id of the old history: told first, then the new history
            async with reading(gw.base_url, last_event_id=old[-1]) as resumed:
                await until(lambda: len(resumed.kernel()) >= 3, 10, "the replay")
                assert resumed.events[0].event == "history_truncated"
                assert resumed.notices()[0]["reason"] in ("reset", "trimmed", "unknown")
                assert [e.id for e in resumed.kernel()] == new

            # an id an hour ahead: told, then live
            future = f"{int(time.time() * 1000) + 3_600_000}-0"
            async with reading(gw.base_url, last_event_id=future) as ahead_reader:
                await until(lambda: len(ahead_reader.notices()) == 1, 10, "the notice")
                assert ahead_reader.notices()[0]["reason"] == "ahead"
                with SyncPublisher.from_url(server.url) as pub:
                    live = pub.publish(ref.started("live"))
                await until(lambda: len(ahead_reader.kernel()) >= 1, 10, "the live event")
                assert [e.id for e in ahead_reader.kernel()] == [live]


@pytest.mark.anyio
async def test_resume_over_a_large_backlog_reaches_every_reader(redis_url: str) -> None:
    await seed(redis_url)
    ref = session_of(ALICE, "backlog")
    with SyncPublisher.from_url(redis_url) as pub:
        start = pub.publish(ref.started("start"))
        backlog = [pub.publish(ref.started("r" * 1000)) for _ in range(240)]
    with spawn_gateway(gateway_settings(redis_url)) as gw:
        async with reading(gw.base_url, last_event_id=start) as reader:
            await until(lambda: len(reader.kernel()) >= 240, 20, "the whole backlog")
            assert [e.id for e in reader.kernel()] == backlog
            assert not any(e.event == "server_close" for e in reader.events)
        for reason in ("slow_consumer", "write_timeout", "write_error"):
            assert _metric(gw, f'kev_evictions_total{{reason="{reason}"}}') == 0


@pytest.mark.parametrize(
    "query",
    [
        "lastEventId=0-0%0A",
        "lastEventId=18446744073709551616-0",
        "lastEventId=1-18446744073709551616",
        "lastEventId=%D9%A3-0",  # an Arabic-Indic digit: not an id this server sent
        "sessionId=abc%0A",
        "ownerAccessKey=AK%0A",
    ],
)
def test_resume_ids_and_values_match_the_whole_string(gateway: RunningGateway, query: str) -> None:
    from gateway.identity.signing import signed_headers

    target = f"/stream/kernel/_/events?{query}"
    headers = signed_headers("GET", target, gateway.host, ROOT.access_key, ROOT.secret_key)
    response = httpx.get(gateway.base_url + target, headers=headers, timeout=5)
    assert response.status_code == 400, response.text
    assert response.json()["type"].endswith("/invalid-api-params")


@pytest.mark.anyio
async def test_replay_holds_oversized_history_entries_back_in_redis(redis_url: str) -> None:
    await seed(redis_url)
    ref = session_of(ALICE, "oversized")
    with SyncPublisher.from_url(redis_url) as pub:
        start = pub.publish(ref.started("start"))
    with redis.Redis.from_url(redis_url) as raw:
        for _ in range(10):
            raw.xadd(KEYS.history, {"e": b"\x80" * (4 * 1024 * 1024)})
    with SyncPublisher.from_url(redis_url) as pub:
        after = pub.publish(ref.started("after"))
    with spawn_gateway(gateway_settings(redis_url)) as gw:
        assert gw.proc is not None
        rss_before = _rss_kb(gw.proc.pid)
        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(reading(gw.base_url, last_event_id=start))
                for _ in range(5)
            ]
            await until(lambda: all(r.kernel() for r in readers), 15, "the later event")
            assert all([e.id for e in r.kernel()] == [after] for r in readers)
        growth_mb = (_rss_kb(gw.proc.pid) - rss_before) / 1024
        assert growth_mb < 30, f"the replica grew {growth_mb:.0f} MB replaying 40 MB of garbage"
        assert _metric(gw, 'kev_payloads_dropped_total{kind="oversized"}') >= 50


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):  # the high-water mark: a spike counts too
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_failing_write_strands_no_one_else() -> None:
    # (unit-sized, but it pins case 7 of the issue next to the others)
    from gateway.fanout.filters import Filter
    from gateway.fanout.hub import Hub
    from gateway.settings import FanoutSettings
    from tests.support.fakes import FakeSink

    async def run() -> None:
        hub = Hub(
            FanoutSettings(
                retry_jitter_ms=0,
                max_lag=0.0,
                buffer_cap=1 << 16,
                write_deadline=5,
                ping_interval=0,
            )
        )

        class Broken(FakeSink):
            def write_chunk(self, framed: bytes) -> None:
                raise OSError("the transport is gone")

        good, bad = FakeSink(), Broken()
        clients = [hub.new_connection(Filter(), k) for k in ("bad", "good")]
        for client, sink in zip(clients, (bad, good), strict=True):
            hub.register(client)
            client.go_direct(sink, hub.notify)
        hub.last_id = (0, 0)
        hub.publish(b"1-0", encode_event(session_of(ALICE, "s").started()))
        await asyncio.sleep(0)
        assert clients[0].closed and clients[0].close_reason == "write_error"
        assert len(good.writes) == 1
        assert hub.stats.evictions["write_error"] == 1

    asyncio.run(run())


@pytest.mark.anyio
async def test_trimming_past_the_watermark_during_an_outage_is_told() -> None:
    with PrivateRedis() as server:
        await seed(server.url)
        ref = session_of(ALICE, "trimmed-away")
        with tcp_proxy(server.port) as proxy:
            proxy_port = proxy.port
            with spawn_gateway(gateway_settings(proxy.url, probe_interval=0.3)) as gw:
                async with reading(gw.base_url) as reader:
                    await _streams(gw, 1)
                    with SyncPublisher.from_url(server.url, maxlen=50, exact_trim=True) as pub:
                        first = pub.publish(ref.started("before"))
                    await until(lambda: len(reader.kernel()) == 1, 10, "the first event")
                    proxy.close()
                    await until(
                        lambda: httpx.get(gw.base_url + "/ready", timeout=5).status_code == 503,
                        10,
                        "the replica to notice",
                    )
                    with SyncPublisher.from_url(server.url, maxlen=50, exact_trim=True) as pub:
                        ids = [pub.publish(ref.started(str(i))) for i in range(200)]
                    with tcp_proxy(server.port, port=proxy_port):
                        await until(lambda: len(reader.kernel()) >= 51, 15, "what history held")
                        kinds = [e.event for e in reader.events if e.event != "ping"]
                        # told before the 50 that history still held, nothing silent
                        assert kinds[:2] == ["kernel_started", "history_truncated"]
                        assert reader.notices()[0]["reason"] == "trimmed"
                        assert [e.id for e in reader.kernel()] == [first, *ids[-50:]]


@pytest.mark.anyio
async def test_an_epoch_key_replaced_over_an_intact_history_resends_nothing(
    redis_url: str,
) -> None:
    await seed(redis_url)
    ref = session_of(ALICE, "epoch-key")
    with spawn_gateway(gateway_settings(redis_url, probe_interval=0.3)) as gw:
        async with reading(gw.base_url) as reader:
            await _streams(gw, 1)
            with SyncPublisher.from_url(redis_url) as pub:
                ids = [pub.publish(ref.started(str(i))) for i in range(3)]
                with redis.Redis.from_url(redis_url) as raw:
                    raw.delete(KEYS.epoch)  # an operator's slip; the history is intact
                ids.append(pub.publish(ref.started("after")))  # sets a new epoch key
                await until(lambda: len(reader.kernel()) == 4, 10, "the events")
                with redis.Redis.from_url(redis_url) as raw:
                    raw.client_kill_filter(_type="pubsub")  # the next session compares epochs
                await until(
                    lambda: _metric(gw, "kev_redis_reconnects_total") >= 1, 10, "a new session"
                )
                ids.append(pub.publish(ref.started("fence")))
            await until(lambda: len(reader.kernel()) == 5, 10, "the fence")
            assert [e.id for e in reader.kernel()] == ids  # nothing sent twice
            assert reader.notices() == []


@pytest.mark.anyio
async def test_an_entry_deleted_before_any_replica_read_it_is_told_once(redis_url: str) -> None:
    """A credential with write access to the history (the bridge's, the publisher's scripts
    aside) deletes an entry no replica has read yet: every stream is told ``trimmed`` once,
    before what follows, and later events flow without another notice (the review found
    deletions told only when a session restarted)."""
    await seed(redis_url)
    ref = session_of(ALICE, "xdel")
    with spawn_gateway(gateway_settings(redis_url)) as gw:
        async with reading(gw.base_url) as reader:
            await _streams(gw, 1)
            with redis.Redis.from_url(redis_url) as raw:
                seconds, micros = raw.time()
                ms = seconds * 1000 + micros // 1000
                kept, deleted = f"{ms}-1".encode(), f"{ms}-2"
                with raw.pipeline(transaction=True) as tx:  # atomic: no read in between
                    tx.xadd(KEYS.history, {"e": encode_event(ref.started("kept"))}, id=kept)
                    tx.xadd(KEYS.history, {"e": encode_event(ref.started("gone"))}, id=deleted)
                    tx.xdel(KEYS.history, deleted)
                    assert tx.execute()[2] == 1
            with SyncPublisher.from_url(redis_url) as pub:
                later = [pub.publish(ref.started(f"later-{i}")) for i in range(3)]
            await until(lambda: len(reader.kernel()) >= 4, 10, "the events")
            await asyncio.sleep(1.2)  # two probe intervals: no second notice comes
            names = [(e.event, e.id) for e in reader.events if e.event != "ping"]
            assert [e.id for e in reader.kernel()] == [kept.decode(), *later], names
            assert [n["reason"] for n in reader.notices()] == ["trimmed"], names
            assert names[0][0] == "history_truncated", names


@pytest.mark.anyio
async def test_a_new_history_trimmed_before_the_replica_read_it_is_told() -> None:
    """The model test's find: Redis restarted empty (no persistence), and the first publish
    held more events than MAXLEN keeps. The replica reads the new history from 0-0, whose
    oldest entry is always newer than 0-0: the trimmed events were skipped untold. The
    epoch (the first entry this history ever held) is older than its oldest entry: told."""
    with PrivateRedis() as server:
        await seed(server.url)
        ref = session_of(ALICE, "trimmed-new")
        with spawn_gateway(gateway_settings(server.url)) as gw:
            async with reading(gw.base_url) as open_stream:
                await _streams(gw, 1)
                await _restarted_empty(server, gw)
                with SyncPublisher.from_url(server.url, maxlen=5, exact_trim=True) as pub:
                    ids = pub.publish_many([ref.started(f"n-{i}") for i in range(12)])
                # one script call: the first 7 are trimmed before any reader can see them
                await until(lambda: len(open_stream.kernel()) >= 5, 15, "the kept events")
                await asyncio.sleep(0.5)  # (anything more would show now)
                assert [e.id for e in open_stream.kernel()] == ids[-5:]
                kinds = [e.event for e in open_stream.events if e.event != "ping"]
                told = [n["reason"] for n in open_stream.notices()]
                assert "trimmed" in told, told
                # told before the first event that follows the gap
                assert kinds.index("history_truncated") < kinds.index("kernel_started")
                assert kinds[kinds.index("kernel_started") :] == ["kernel_started"] * 5
