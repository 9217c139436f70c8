"""One writer of the history (any ACL user allowed to XADD to it: the publisher, a bridge)
writes an id in the future: publishing stops for good, every replica saw nothing wrong, and
clients just saw silence (the security review, #22 finding 1). Now every replica says so
within seconds (/ready 503 naming the cause and the fix, kev_history_ahead_seconds, one log
line), the publisher's error names the cause, and ``gateway reset-history`` (the admin) starts
a new history: streams whose position was in the old one are told history_truncated (reset),
and events flow again, none lost. /health stays 200: a restart cannot fix a shared history."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aredis

from gateway.cli import main as gateway_main
from gateway.consumer import SSEEvent
from gateway.fanout.history import ReadFacts, read_after
from publisher import Keys, PublishRejected, SyncPublisher
from publisher.bus import Bus
from tests.support.gateway_server import RunningGateway
from tests.support.http import metric_value, stream_as
from tests.support.identities import ROOT, session_of
from tests.support.wait import wait_until

#: what the gauge may read with nothing ahead: an entry written within the last few ms, against
#: Redis' clock as the replica estimates it (to half a round trip)
CLOCK_NOISE = 0.05

pytestmark = pytest.mark.anyio

#: the largest id a stream can hold, and one far ahead of any clock but not the largest
IDS = ["18446744073709551615-18446744073709551615", "99999999999999-0"]
#: the watch looks this often (the replicas' probe_interval)
INTERVAL = 0.5
WATCH_LOGGER = "gateway.replica.history_watch"


def _ready(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(gateway.base_url + "/ready", timeout=5)


def _health(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(gateway.base_url + "/health", timeout=5)


def _ahead(gateway: RunningGateway) -> float:
    metrics = httpx.get(gateway.base_url + "/metrics", timeout=5).text
    return metric_value(metrics, "kev_history_ahead_seconds")


def _watch_lines(
    caplog: pytest.LogCaptureFixture, gateway: RunningGateway, level: int, text: str
) -> list[str]:
    """What ``gateway``'s history watch logged at ``level`` containing ``text`` (each
    in-thread replica runs its loop in the thread ``gateway-<port>``)."""
    thread = f"gateway-{gateway.settings.server.port}"
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == WATCH_LOGGER
        and r.levelno == level
        and r.threadName == thread
        and text in r.getMessage()
    ]


@pytest.mark.parametrize("future_id", IDS)
async def test_a_future_id_in_history_is_seen_said_and_undone_by_the_admin(
    cast: str,
    start_gateway: Callable[..., RunningGateway],
    redis_url: str,
    future_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=WATCH_LOGGER)
    # two replicas on one Redis: every one of them must see it, not just the first
    gateway, other = (
        start_gateway(liveness_timeout=1.0, probe_interval=INTERVAL) for _ in range(2)
    )
    replicas = [gateway, other]
    future_ms = int(future_id.split("-")[0])
    ref = session_of(ROOT, "ahead")
    raw = redis.Redis.from_url(redis_url)
    pub = SyncPublisher.from_url(redis_url)
    async with stream_as(ROOT, gateway.base_url) as (_, events):
        try:
            first = pub.publish(ref.started("before"))
            for gw in replicas:  # the gauge is exported, and says nothing is wrong yet
                assert _ahead(gw) < CLOCK_NOISE
            raw.xadd(Keys().history, {"e": b"x"}, id=future_id)  # the hostile write
            written_at = time.time()

            for gw in replicas:  # within a few looks of the watch
                wait_until(
                    lambda gw=gw: _ready(gw).status_code == 503, 4 * INTERVAL + 2, "/ready 503"
                )
                # (the first ask starts the liveness clock; asked again below)
                assert _health(gw).status_code == 200
            for gw in replicas:
                body = _ready(gw).json()
                assert body["ready"] is False, body
                assert body["subscribed"] and body["probe_ok"], body  # only the history
                assert future_id in body["history"], body  # names the id written
                assert "ahead of Redis' clock" in body["history"], body
                assert "gateway reset-history" in body["history"], body
                # the gauge: how far ahead, to the second (the test's clock is Redis' here)
                expected = future_ms / 1000 - written_at
                assert _ahead(gw) == pytest.approx(expected, abs=30), expected
            await anyio.sleep(4 * INTERVAL)  # several more looks, past liveness_timeout
            for gw in replicas:
                body = _ready(gw).json()
                assert body["ready"] is False, body
                # still only the history: the subscription stands, streams are served
                assert body["subscribed"] and body["probe_ok"], body
                assert _ahead(gw) > 0
                # no liveness restart over a shared history
                assert _health(gw).status_code == 200, _health(gw).text
                # said once per replica, not once per look
                said = _watch_lines(caplog, gw, logging.ERROR, "not ready: ")
                assert len(said) == 1, said
                assert future_id in said[0] and "gateway reset-history" in said[0], said

            if future_id == IDS[0]:  # no id is left after it: the publisher says why
                with pytest.raises(PublishRejected, match="gateway reset-history"):
                    pub.publish(ref.started("lost"))
            else:  # ids follow it, all in the future: the watermark goes there too
                during = pub.publish(ref.started("during"))

            run = anyio.to_thread.run_sync  # the command runs its own event loop
            assert await run(gateway_main, ["reset-history", "--redis-url", redis_url]) == 2
            assert (
                await run(gateway_main, ["reset-history", "--yes", "--redis-url", redis_url]) == 0
            )
            # published at once: the review found these lost (the watermark stayed in the
            # old history's future)
            right_after = [pub.publish(ref.started(f"right-after-{i}")) for i in range(3)]
            for gw in replicas:
                wait_until(
                    lambda gw=gw: _ready(gw).status_code == 200, 4 * INTERVAL + 2, "/ready 200"
                )
            await anyio.sleep(2 * INTERVAL)  # more looks: nothing more is said
            for gw in replicas:
                assert _ready(gw).json()["history"] == "ok"
                assert _ahead(gw) < CLOCK_NOISE
                errors = _watch_lines(caplog, gw, logging.ERROR, "not ready: ")
                assert len(errors) == 1, errors  # still only the first
                again = _watch_lines(caplog, gw, logging.WARNING, "takes new events again")
                assert len(again) == 1, again
            after = pub.publish(ref.started("after"))
        finally:
            pub.close()  # (the rejected event is in its report, not raised)

        got: list[SSEEvent] = []
        with anyio.fail_after(15):
            async for event in events:
                got.append(event)
                if event.id == after:
                    break
    names = [(e.event, e.id) for e in got]
    # the new history is told once (`reset`), before any of it; nothing of it is missed or
    # sent twice, whether the replica meets it by a live message, a probe or the watch
    reset = [i for i, e in enumerate(got) if e.event == "history_truncated"]
    assert len(reset) == 1 and json.loads(got[reset[0]].data)["reason"] == "reset", names
    assert got[reset[0] + 1].id == right_after[0], names
    before = [first] if future_id == IDS[0] else [first, during]
    kernel = [e.id for e in got if e.event.startswith("kernel_")]
    assert kernel == [*before, *right_after, after], names
    raw.close()


async def test_a_reader_at_the_largest_id_reads_nothing_and_fails_nothing(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    """Every reader's cursor follows history: once the largest id is in it, the next read is
    after that id, which Redis refuses as an exclusive start ("invalid start ID for the
    interval"). That failed the subscription in a loop on every replica (unready for a
    reason other than the history, then /health 503: the fleet restarted by its liveness
    probes) and a resume from it; now nothing is read there, and the facts are as ever."""
    with redis.Redis.from_url(redis_url) as raw:
        raw.xadd(Keys().history, {"e": b"x"}, id="1-1")
        raw.xadd(Keys().history, {"e": b"x"}, id=IDS[0])
    bus = Bus(Keys())
    up_to = [e async for batch, _ in read_after(async_redis, bus, "1-1", max_payload=1 << 20)
             for e in batch]  # fmt: skip
    assert [sid for sid, _ in up_to] == [IDS[0].encode()]
    facts: list[ReadFacts] = []

    async def keep(seen: ReadFacts) -> None:
        facts.append(seen)

    after = [e async for batch, _ in read_after(async_redis, bus, IDS[0], max_payload=1 << 20,
                                                facts=keep) for e in batch]  # fmt: skip
    assert after == []
    assert [(f.first, f.generated) for f in facts] == [((1, 1), (2**64 - 1, 2**64 - 1))]
