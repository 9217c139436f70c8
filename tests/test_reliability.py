"""Faults with nothing lost: Redis killed and restarted, the subscription killed or frozen,
a replica stopped with SIGTERM. Real redis-server, real uvicorn processes, on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
import redis

from gateway.client import KernelEventStream
from publisher import AsyncPublisher
from tests.gateway_server import gateway_settings, run_gateway, spawn_gateway
from tests.identities import ROOT, seed, session_of
from tests.redis_server import RedisServer
from tests.tcp_proxy import tcp_proxy


@dataclass
class Consumer:
    ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    closes: int = 0
    log: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fleet(urls: str | Sequence[str], n: int) -> AsyncIterator[list[Consumer]]:
    """``n`` superadmin consumers that reconnect with Last-Event-ID, collecting events."""
    consumers = [Consumer() for _ in range(n)]

    async def consume(consumer: Consumer) -> None:
        stream = KernelEventStream(
            urls, access_key=ROOT.access_key, secret_key=ROOT.secret_key,
            include_control=True, max_backoff=1.0,
        )  # fmt: skip
        async for event in stream:
            consumer.log.append(
                f"{event.event} {event.id} {stream.url} r={stream.reconnects} {event.data[-12:]}"
            )
            if event.event == "server_close":
                consumer.closes += 1
            elif event.id is not None:
                consumer.ids.append(event.id)
                consumer.reasons.append(json.loads(event.data)["reason"])

    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            tg.start_soon(consume, consumer)
        yield consumers
        tg.cancel_scope.cancel()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


async def _streams(base_url: str) -> int:
    async with httpx.AsyncClient() as http:
        return int((await http.get(base_url + "/ready")).json()["streams"])


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


class Publishing:
    """Publishes a numbered event every ``interval`` until stopped; remembers the order."""

    def __init__(self, pub: AsyncPublisher, interval: float = 0.01) -> None:
        self.pub = pub
        self.interval = interval
        self.reasons: list[str] = []
        self.stop = anyio.Event()

    async def run(self) -> None:
        ref = session_of(ROOT, "reliable")
        i = 0
        while not self.stop.is_set():
            reason = f"n={i}"
            await self.pub.publish(ref.started(reason))
            self.reasons.append(reason)
            i += 1
            await anyio.sleep(self.interval)


def _assert_complete(consumers: list[Consumer], expected: list[str]) -> None:
    for i, consumer in enumerate(consumers):
        if consumer.reasons != expected:
            at = next(
                (
                    j
                    for j, (a, b) in enumerate(zip(consumer.reasons, expected, strict=False))
                    if a != b
                ),
                min(len(consumer.reasons), len(expected)),
            )
            window = "\n".join(consumer.log[max(0, at - 3) : at + 3])
            raise AssertionError(
                f"consumer {i}: {len(consumer.reasons)} events, expected {len(expected)}; "
                f"first difference at {at}:\n{window}"
            )
        assert len(set(consumer.ids)) == len(consumer.ids)


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
                with anyio.fail_after(10):
                    while await _streams(gw.base_url) < 200:
                        await anyio.sleep(0.05)
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
                await _until(
                    lambda: all(len(c.reasons) >= len(expected) for c in consumers),
                    20,
                    "every consumer to catch up",
                )
                await anyio.sleep(0.3)  # a duplicate would show up by now
            _assert_complete(consumers, expected)
            assert _metric(gw.base_url, "kev_redis_reconnects_total") >= 1


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
                await _until(lambda: len(gw.state.hub) == 20, 10, "20 streams")
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
                    await _until(lambda: subscriber.reconnects > before, 5, "a reconnect")
                    detected = time.monotonic() - faulted
                    await _until(lambda: subscriber.ready, 5, "the new subscription")
                    await anyio.sleep(0.5)
                    publishing.stop.set()
                expected = publishing.reasons
                await _until(
                    lambda: all(len(c.reasons) >= len(expected) for c in consumers),
                    10,
                    "every consumer to catch up",
                )
                await anyio.sleep(0.3)
            _assert_complete(consumers, expected)
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
            with anyio.fail_after(10):
                while await _streams(first.base_url) < 200:
                    await anyio.sleep(0.05)
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
            await _until(
                lambda: all(len(c.reasons) >= len(expected) for c in consumers),
                15,
                "every consumer to catch up on the second replica",
            )
            await anyio.sleep(0.3)
            assert await _streams(second.base_url) == 200
        assert first.proc.returncode == 0
        assert exited_after < drain
        assert all(c.closes == 1 for c in consumers)  # each got exactly one server_close
        _assert_complete(consumers, expected)
