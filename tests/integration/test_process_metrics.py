"""``/metrics`` carries the process basics an operator graphs first, for the replica's own
process (``gateway serve`` in a subprocess): resident memory, open file descriptors, CPU,
asyncio tasks and threads, and they follow what the replica holds."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from gateway.identity.signing import signed_headers
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.http import STREAM_PATH, metric_value
from tests.support.identities import ROOT, seed
from tests.support.wait import wait_until

STREAMS = 12


def scrape(gateway: RunningGateway) -> str:
    return httpx.get(gateway.base_url + "/metrics", timeout=5).text


def test_metrics_show_the_replica_process_and_follow_its_streams(redis_url: str) -> None:
    asyncio.run(seed(redis_url))
    with spawn_gateway(gateway_settings(redis_url)) as gateway:
        text = scrape(gateway)
        rss = metric_value(text, "process_resident_memory_bytes")
        assert 10e6 < rss < 2e9  # a Python process with uvicorn, not this test's
        assert metric_value(text, "process_max_fds") >= 256
        assert metric_value(text, "process_cpu_seconds_total") > 0
        assert metric_value(text, "kev_threads") >= 1
        for family in ("process_virtual_memory_bytes", "process_start_time_seconds"):
            assert text.count(f"# TYPE {family} ") == 1  # one registry, no duplicates
        fds_idle = metric_value(text, "process_open_fds")
        tasks_idle = metric_value(text, "kev_asyncio_tasks")
        assert tasks_idle >= 4  # the supervised background tasks at least

        path = STREAM_PATH + "?sessionId=*"
        headers = signed_headers("GET", path, gateway.host, ROOT.access_key, ROOT.secret_key)
        limits = httpx.Limits(max_connections=STREAMS)
        with httpx.Client(limits=limits, timeout=10) as client, contextlib.ExitStack() as held:
            for _ in range(STREAMS):
                response = held.enter_context(
                    client.stream("GET", gateway.base_url + path, headers=headers)
                )
                assert response.status_code == 200

            def grown() -> bool:
                now = scrape(gateway)
                return (
                    metric_value(now, "kev_clients") == STREAMS
                    and metric_value(now, "process_open_fds") >= fds_idle + STREAMS
                    and metric_value(now, "kev_asyncio_tasks") >= tasks_idle + STREAMS
                )

            wait_until(grown, 5, f"{STREAMS} more fds and tasks while {STREAMS} streams are open")

        def shrunk() -> bool:
            now = scrape(gateway)
            return (
                metric_value(now, "kev_clients") == 0
                and metric_value(now, "process_open_fds") < fds_idle + STREAMS
                and metric_value(now, "kev_asyncio_tasks") < tasks_idle + STREAMS
            )

        wait_until(shrunk, 5, "fds and tasks given back once the streams closed")
