"""The local cluster end to end: real nginx in front of three real replicas."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from devtools.cluster import LocalCluster
from gateway.settings import Settings
from publisher import AsyncPublisher
from tests.fleet import Publishing, assert_complete, caught_up, fleet
from tests.identities import seed

pytestmark = pytest.mark.skipif(not LocalCluster().use_nginx, reason="nginx is not installed")


def _settings() -> Settings:
    return Settings.load({}, probe_interval=0.5, max_streams_per_key=10_000, drain_deadline=3)


@pytest.mark.anyio
async def test_a_replica_killed_mid_stream_loses_no_event_behind_nginx() -> None:
    with LocalCluster(replicas=3, settings=_settings()) as cluster:
        await seed(cluster.redis_url)
        async with (
            AsyncPublisher.from_url(cluster.redis_url) as pub,
            fleet(cluster.url, 300) as consumers,
        ):

            async def total_streams() -> int:
                async with httpx.AsyncClient() as http:
                    counts = [
                        (await http.get(url + "/ready")).json()["streams"]
                        for url in cluster.replica_urls
                        if cluster.replicas[cluster.replica_urls.index(url)].poll() is None
                    ]
                return sum(counts)

            with anyio.fail_after(20):
                while await total_streams() < 300:
                    await anyio.sleep(0.1)
            publishing = Publishing(pub)
            async with anyio.create_task_group() as tg:
                tg.start_soon(publishing.run)
                await anyio.sleep(1.0)
                cluster.kill(0)  # SIGKILL: no drain, no server_close
                await anyio.sleep(2.0)
                publishing.stop.set()
            expected = publishing.reasons
            await caught_up(consumers, expected, 30)
            assert await total_streams() == 300
        assert_complete(consumers, expected)
        moved = sum(1 for c in consumers if any("kernel_" in line for line in c.log))
        assert moved == 300


def test_cluster_serves_the_shipped_config_and_fails_over(tmp_path: object) -> None:
    with LocalCluster(replicas=2, settings=_settings()) as cluster:
        assert cluster.use_nginx and cluster.nginx is not None
        assert httpx.get(cluster.url + "/ready", timeout=5).status_code == 200
        cluster.kill(1)
        for _ in range(6):  # every request lands on the live replica
            body = httpx.get(cluster.url + "/ready", timeout=5).json()
            assert body["ready"] is True
        assert json.loads(httpx.get(cluster.url + "/health", timeout=5).text) == {"status": "ok"}
