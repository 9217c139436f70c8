"""Faults with nothing lost: Redis killed and restarted, the subscription killed or frozen,
a replica stopped with SIGTERM. Real redis-server, real uvicorn processes, on loopback."""

from __future__ import annotations

import signal
import time

import anyio
import httpx
import pytest
import redis

from publisher import AsyncPublisher
from tests.fleet import (
    Publishing,
    assert_complete,
    caught_up,
    fleet,
    metric,
    streams,
    until,
    until_streams,
)
from tests.gateway_server import gateway_settings, run_gateway, spawn_gateway
from tests.identities import seed
from tests.redis_server import RedisServer
from tests.tcp_proxy import tcp_proxy


@pytest.mark.anyio
async def test_redis_killed_and_restarted_loses_nothing() -> None:
    with RedisServer(durable=True) as server:
        await seed(server.url)
        settings = gateway_settings(server.url, probe_interval=0.5)
        with spawn_gateway(settings) as gw:
            async with (
                AsyncPublisher.from_url(server.url, timeout=0.3) as pub,
                fleet(gw.base_url, 200) as consumers,
            ):
                await until_streams(gw.base_url, 200)
                publishing = Publishing(pub)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publishing.run)
                    await anyio.sleep(1.0)
                    server.stop(kill=True)
                    await anyio.sleep(0.2)
                    async with httpx.AsyncClient() as http:
                        assert (await http.get(gw.base_url + "/ready")).status_code == 503
                        assert (await http.get(gw.base_url + "/health")).status_code == 200
                    await anyio.sleep(0.8)
                    server.start()
                    await anyio.sleep(1.5)
                    publishing.stop.set()
                assert await pub.flush(timeout=10)
                assert pub.dropped == 0
                expected = publishing.reasons
                await caught_up(consumers, expected, 20)
            assert_complete(consumers, expected)
            assert metric(gw.base_url, "kev_redis_reconnects_total") >= 1


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["client_kill", "frozen"])
async def test_a_dead_or_silent_subscription_is_found_and_recovered(fault: str) -> None:
    probe = 0.5
    with RedisServer() as server, tcp_proxy(server.port) as proxy:
        await seed(server.url)
        # The gateway reaches Redis through the proxy, so its pub/sub socket can be frozen.
        with run_gateway(gateway_settings(proxy.url, probe_interval=probe)) as gw:
            async with (
                AsyncPublisher.from_url(server.url) as pub,
                fleet(gw.base_url, 20) as consumers,
            ):
                await until(lambda: len(gw.state.hub) == 20, 10, "20 streams")
                publishing = Publishing(pub)
                subscriber = gw.state.subscriber
                async with anyio.create_task_group() as tg:
                    tg.start_soon(publishing.run)
                    await anyio.sleep(0.5)
                    before = subscriber.reconnects
                    faulted = time.monotonic()
                    if fault == "client_kill":
                        with redis.Redis.from_url(server.url) as raw:
                            assert raw.client_kill_filter(_type="pubsub") == 1
                    else:
                        assert proxy.freeze_where(b"SUBSCRIBE") == 1
                    await until(lambda: subscriber.reconnects > before, 5, "a reconnect")
                    detected = time.monotonic() - faulted
                    await until(lambda: subscriber.ready, 5, "the new subscription")
                    await anyio.sleep(0.5)
                    publishing.stop.set()
                expected = publishing.reasons
                await caught_up(consumers, expected, 10)
            assert_complete(consumers, expected)
            assert detected <= 2 * probe, detected
            if fault == "frozen":
                assert subscriber.probe_failures >= 1


@pytest.mark.anyio
async def test_sigterm_drains_to_another_replica_and_loses_nothing(redis_url: str) -> None:
    await seed(redis_url)
    drain = 5.0
    with (
        spawn_gateway(gateway_settings(redis_url, drain_deadline=drain)) as first,
        spawn_gateway(gateway_settings(redis_url, drain_deadline=drain)) as second,
    ):
        async with (
            AsyncPublisher.from_url(redis_url) as pub,
            fleet([first.base_url, second.base_url], 200) as consumers,
        ):
            await until_streams(first.base_url, 200)
            publishing = Publishing(pub)
            async with anyio.create_task_group() as tg:
                tg.start_soon(publishing.run)
                await anyio.sleep(0.5)
                assert first.proc is not None
                stopped = time.monotonic()
                first.proc.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(first.proc.wait, drain + 2)
                exited_after = time.monotonic() - stopped
                await anyio.sleep(0.5)
                publishing.stop.set()
            expected = publishing.reasons
            await caught_up(consumers, expected, 15)
            assert await streams(second.base_url) == 200
        assert first.proc.returncode == 0
        assert exited_after < drain
        assert all(c.closes == 1 for c in consumers)  # each got exactly one server_close
        assert_complete(consumers, expected)
