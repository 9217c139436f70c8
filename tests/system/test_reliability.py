"""Faults with nothing lost: Redis killed and restarted, the subscription killed or frozen,
a replica stopped with SIGTERM. Real redis-server, real uvicorn processes, on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from publisher import AsyncPublisher
from publisher.keys import Keys
from tests.support.fleet import (
    assert_complete,
    caught_up,
    fleet,
    metric,
    publishing,
    streams,
    until_streams,
)
from tests.support.gateway_server import gateway_settings, run_gateway, spawn_gateway
from tests.support.identities import ROOT, seed
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import tcp_proxy
from tests.support.wait import until


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
                async with publishing(pub) as steady, httpx.AsyncClient() as http:
                    await anyio.sleep(1.0)
                    server.stop(kill=True)
                    down = time.monotonic()
                    with anyio.fail_after(5):  # not ready once the subscription is lost ...
                        while (await http.get(gw.base_url + "/ready")).status_code != 503:
                            await anyio.sleep(0.02)
                    noticed = time.monotonic() - down
                    assert (await http.get(gw.base_url + "/health")).status_code == 200  # ... alive
                    await anyio.sleep(max(0.0, down + 1.0 - time.monotonic()))  # 1 s down
                    server.start()
                    await anyio.sleep(1.5)
                assert await pub.flush(timeout=10)
                assert pub.dropped == 0
                expected = await caught_up(consumers, steady, 20)
            assert_complete(consumers, expected)
            assert metric(gw.base_url, "kev_redis_reconnects_total") >= 1
            assert noticed <= 0.2, noticed  # the lost connection is noticed, not probed for


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
                subscriber = gw.state.subscriber
                async with publishing(pub) as steady:
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
                expected = await caught_up(consumers, steady, 10)
            assert_complete(consumers, expected)
            assert detected <= 2 * probe, detected
            if fault == "frozen":
                assert subscriber.probe_failures >= 1


@pytest.mark.anyio
async def test_sigterm_drains_to_another_replica_and_loses_nothing(
    cast: str, redis_url: str
) -> None:
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
            async with publishing(pub) as steady:
                await anyio.sleep(0.5)
                assert first.proc is not None
                stopped = time.monotonic()
                first.proc.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(first.proc.wait, drain + 2)
                exited_after = time.monotonic() - stopped
                await anyio.sleep(0.5)
            expected = await caught_up(consumers, steady, 15)
            assert await streams(second.base_url) == 200
        assert first.proc.returncode == 0
        assert exited_after < drain
        assert all(c.closes == 1 for c in consumers)  # each got exactly one server_close
        assert_complete(consumers, expected)


def _counted(holders: dict[bytes, bytes]) -> int:
    """Streams in a per-key count hash (``<count>:<lease end>`` per replica)."""
    return sum(int(value.split(b":")[0]) for value in holders.values())


@pytest.mark.anyio
async def test_sigterm_closes_the_streams_of_every_worker(cast: str, redis_url: str) -> None:
    """With ``--workers 2`` the exit signal reaches each worker's streams: every one gets
    ``server_close`` (``shutdown``) and the replica exits within the drain deadline. (The
    workers' drain used to rest on sse-starlette's private exit hook; now each worker's
    lifespan chains its own signal handler: gateway.replica.lifespan._chain_exit_signals.)"""
    drain = 5.0
    settings = gateway_settings(redis_url, workers=2, drain_deadline=drain, stream_lease=0.6)
    counts = Keys().key_streams(ROOT.access_key)
    with spawn_gateway(settings) as gw, redis.Redis.from_url(redis_url) as sync:
        assert gw.proc is not None
        async with contextlib.AsyncExitStack() as fleets:
            # The kernel hands a connection to whichever worker accepts first, and one idle
            # worker takes them all: the first wave goes there, then that worker is paused
            # (SIGSTOP) while the second wave goes to the other. Each worker's streams show
            # as its per-replica count in Redis, under a replica name holding its pid.
            consumers = await fleets.enter_async_context(fleet(gw.base_url, 10))
            await until(lambda: _counted(sync.hgetall(counts)) == 10, 10, "the first wave")
            holders = sync.hgetall(counts)
            if len(holders) == 1:
                (first,) = holders
                first_pid = int(first.decode().rsplit("-", 1)[1])  # "<replica>-<worker pid>"
                ppid = Path(f"/proc/{first_pid}/stat").read_text().rpartition(")")[2].split()[1]
                assert int(ppid) == gw.proc.pid, "not a worker of this replica"
                os.kill(first_pid, signal.SIGSTOP)
                try:
                    consumers += await fleets.enter_async_context(fleet(gw.base_url, 10))
                    await until(
                        lambda: any(k != first for k in sync.hgetall(counts)), 10, "wave two"
                    )
                finally:
                    os.kill(first_pid, signal.SIGCONT)
            await until(lambda: len(sync.hgetall(counts)) == 2, 10, "both workers' streams")
            stopped = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(gw.proc.wait, drain + 3)
            exited_after = time.monotonic() - stopped
            await until(lambda: all(c.closes >= 1 for c in consumers), 5, "every server_close")
    assert gw.proc.returncode == 0
    assert exited_after < drain + 1.5
    assert all(c.closes == 1 for c in consumers)
