"""``max_streams_per_key`` under concurrency: many simultaneous requests for one key, split
over two real gateway processes on one real redis-server, never get more streams than the
limit (the count is taken and the slot reserved in one step, gateway.replica.limits), and
the slots come back once the streams end."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import redis

from gateway.identity.signing import signed_headers
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.http import STREAM_PATH
from tests.support.identities import ROOT
from tests.support.proxies import needs_nginx, run_nginx

LIMIT = 100
REQUESTS = 300


@dataclass(frozen=True)
class Target:
    """Where requests go: a replica, or a load balancer in front of the replicas."""

    base_url: str
    host: str

    @classmethod
    def of(cls, gw: RunningGateway) -> Target:
        return cls(gw.base_url, gw.host)


async def _request(
    http: httpx.AsyncClient,
    gw: Target,
    start: asyncio.Event,
    hold: asyncio.Event,
    answers: list[tuple[int, str | None]],
) -> None:
    """One stream request, sent when ``start`` is set: its status and ``Retry-After`` go
    to ``answers``; an admitted stream stays open until ``hold`` is set."""
    headers = signed_headers("GET", STREAM_PATH, gw.host, ROOT.access_key, ROOT.secret_key)
    await start.wait()
    async with http.stream("GET", gw.base_url + STREAM_PATH, headers=headers) as response:
        answers.append((response.status_code, response.headers.get("retry-after")))
        if response.status_code == 200:
            await hold.wait()


async def _burst(replicas: Sequence[Target], n: int) -> list[tuple[int, str | None]]:
    """``n`` simultaneous requests for one key, alternating over ``replicas`` (or all to
    one load balancer in front of them); the
    admitted streams are held open until every request has its answer."""
    start, hold = asyncio.Event(), asyncio.Event()
    answers: list[tuple[int, str | None]] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(timeout=30, limits=limits) as http,
        anyio.create_task_group() as tg,
    ):
        for i in range(n):
            tg.start_soon(_request, http, replicas[i % len(replicas)], start, hold, answers)
        await anyio.sleep(0.2)  # every request signed and waiting
        start.set()
        with anyio.fail_after(30):
            while len(answers) < n:
                await anyio.sleep(0.02)
        hold.set()
    return answers


def _at_most_the_limit(answers: list[tuple[int, str | None]], how: str) -> None:
    """Some streams, at most the limit; every other request 429 with ``Retry-After``."""
    statuses = Counter(status for status, _ in answers)
    print(f"{REQUESTS} simultaneous requests{how}, limit {LIMIT}: {dict(statuses)}")
    assert set(statuses) <= {200, 429}, statuses
    assert 0 < statuses[200] <= LIMIT, statuses
    assert all(retry for status, retry in answers if status == 429)


def _counted(sync: redis.Redis) -> int:
    """The key's streams as the fleet counts them in Redis (every replica's live count)."""
    holders = sync.hgetall(Keys().key_streams(ROOT.access_key))
    return sum(int(value.split(b":")[0]) for value in holders.values())


def test_simultaneous_requests_for_one_key_get_at_most_the_limit(cast: str) -> None:
    """300 simultaneous stream requests for one key over two replicas (limit 100): at most
    100 streams open fleet-wide, every other request 429 with ``Retry-After``. (Counted
    before the stream was registered, the same burst got 261.) Once they end, the slots are
    free again: the key gets its 100 streams anew, and the 101st is refused."""
    options = {"max_streams_per_key": LIMIT, "stream_lease": 1.5}
    with (
        spawn_gateway(gateway_settings(cast, **options)) as a,
        spawn_gateway(gateway_settings(cast, **options)) as b,
        redis.Redis.from_url(cast) as sync,
    ):
        _at_most_the_limit(anyio.run(_burst, [Target.of(a), Target.of(b)], REQUESTS), "")

        # every stream ended: the fleet's count drains to zero (renewed every lease / 3)
        anyio.run(_until_counted, sync, 0)
        again = anyio.run(_burst, [Target.of(a), Target.of(b)], LIMIT + 1)
        statuses = Counter(status for status, _ in again)
        print(f"after they ended, {LIMIT + 1} more: {dict(statuses)}")
        assert statuses == {200: LIMIT, 429: 1}, statuses


async def _until_counted(sync: redis.Redis, n: int) -> None:
    with anyio.fail_after(10):
        while _counted(sync) != n:
            await anyio.sleep(0.1)


@needs_nginx
def test_simultaneous_requests_through_the_shipped_nginx_get_at_most_the_limit(
    cast: str, tmp_path: Path
) -> None:
    """The same burst as a client fleet sends it: all to the shipped nginx, which spreads it
    over the two replicas (keep-alive off, as many connections as requests)."""
    options = {"max_streams_per_key": LIMIT, "stream_lease": 1.5}
    with (
        spawn_gateway(gateway_settings(cast, **options)) as a,
        spawn_gateway(gateway_settings(cast, **options)) as b,
        redis.Redis.from_url(cast) as sync,
    ):

        async def through_nginx() -> list[tuple[int, str | None]]:
            async with run_nginx(tmp_path, [a.host, b.host]) as proxy:
                lb = f"127.0.0.1:{proxy.port}"
                return await _burst([Target(f"http://{lb}", lb)], REQUESTS)

        _at_most_the_limit(anyio.run(through_nginx), " through nginx")
        anyio.run(_until_counted, sync, 0)
