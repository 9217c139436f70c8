"""The local cluster end to end: real nginx in front of three real replicas."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from devtools.cluster import LocalCluster
from gateway.settings import Settings
from publisher import AsyncPublisher
from tests.support.fleet import assert_complete, caught_up, fleet, publishing, streams
from tests.support.identities import seed

pytestmark = pytest.mark.skipif(not LocalCluster().use_nginx, reason="nginx is not installed")


def _settings() -> Settings:
    return Settings.load({}, probe_interval=0.5, max_streams_per_key=10_000, drain_deadline=3)


@pytest.mark.anyio
async def test_a_replica_killed_mid_stream_loses_no_event_behind_nginx() -> None:
    with LocalCluster(replicas=3, settings=_settings()) as cluster:
        await seed(cluster.redis_url)
        survivors = cluster.replica_urls[1:]
        async with (
            AsyncPublisher.from_url(cluster.redis_url) as pub,
            fleet(cluster.url, 300) as consumers,
        ):
            with anyio.fail_after(20):
                while sum([await streams(url) for url in cluster.replica_urls]) < 300:
                    await anyio.sleep(0.1)
            before = [await streams(url) for url in cluster.replica_urls]
            async with publishing(pub) as steady:
                await anyio.sleep(1.0)
                cluster.kill(0)  # SIGKILL: no drain, no server_close
                killed_at = steady.begun  # the last of them may be delivered, unconfirmed
                await anyio.sleep(2.0)
            expected = await caught_up(consumers, steady, 30)
            after = [await streams(url) for url in survivors]
        assert_complete(consumers, expected)

        # nginx spread the consumers, and the one killed had its share (else: nothing tested)
        assert sum(before) == 300 and before[0] > 0, before
        # Exactly that share reconnected (through nginx, to a survivor), and nobody else did.
        moved = [c for c in consumers if c.first_after_reconnect() is not None]
        assert len(moved) == before[0], (len(moved), before)
        assert sum(after) == 300 and all(a >= b for a, b in zip(after, before[1:], strict=True))
        assert all(c.closes == 0 for c in consumers)  # a crash says no goodbye
        for consumer in moved:
            resumed = consumer.first_after_reconnect()
            # It had events from the killed replica, then the rest over its new stream. Its
            # reconnect waited out a backoff of half a second or more while events went on
            # being published every 10 ms: that assert_complete found none of them missing
            # means the new stream resumed from Last-Event-ID.
            assert resumed is not None and 0 < resumed <= killed_at < len(expected)


def test_cluster_serves_the_shipped_config_and_fails_over(tmp_path: object) -> None:
    with LocalCluster(replicas=2, settings=_settings()) as cluster:
        assert cluster.use_nginx and cluster.nginx is not None
        assert httpx.get(cluster.url + "/func/", timeout=5).status_code == 200
        cluster.kill(1)
        for _ in range(6):  # every request lands on the live replica
            assert httpx.get(cluster.url + "/func/", timeout=5).status_code == 200
        # the operations endpoints answer on each replica, never through the public door
        for path in ("/ready", "/health", "/metrics"):
            assert httpx.get(cluster.url + path, timeout=5).status_code == 403
        live = cluster.replica_urls[0]
        assert httpx.get(live + "/ready", timeout=5).json()["ready"] is True
        assert json.loads(httpx.get(live + "/health", timeout=5).text) == {"status": "ok"}
