"""The command pool under a burst, on both topologies: at most ``pool_size`` connections,
and a command that finds none free waits for one (up to ``pool_timeout``) instead of
failing. redis-py's blocking pool does that on one Redis; its cluster client has none and
failed at once (``MaxConnectionsError``: 1-7% of 1,000 streams opened at once got 503 on a
cluster in the bench), so publisher.connection gives it the same wait."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as NoConnection

from publisher.connection import connect_async

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_url(topology_url: str) -> str:
    return topology_url


async def _ours(client: aredis.Redis, name: str) -> int:
    """The most connections of the client named ``name`` that one node sees (a cluster
    client also keeps one to a seed node for the slot map)."""
    if hasattr(client, "get_nodes"):  # a cluster: per node
        per_node = await client.client_list(target_nodes="all")
    else:
        per_node = {"the node": await client.client_list()}
    return max(sum(1 for e in entries if e.get("name") == name) for entries in per_node.values())


async def test_a_burst_waits_for_the_pool_instead_of_failing(redis_url: str) -> None:
    client = connect_async(redis_url, pool_size=4, client_name="burst")
    try:
        answers = await asyncio.gather(
            *(client.incr("{kev}:burst") for _ in range(300)), return_exceptions=True
        )
        assert not [a for a in answers if isinstance(a, BaseException)], answers[:3]
        assert sorted(answers) == list(range(1, 301))  # type: ignore[type-var]
        observer = connect_async(redis_url)
        try:
            assert 1 <= await _ours(observer, "burst") <= 8  # 4, and 4 for pipelines
        finally:
            await observer.aclose()
    finally:
        await client.aclose()


async def test_a_command_waits_at_most_pool_timeout(redis_url: str) -> None:
    client = connect_async(redis_url, pool_size=1, pool_timeout=0.2)
    blocker = connect_async(redis_url)
    try:
        await client.delete("{kev}:list")
        held = asyncio.ensure_future(client.blpop(["{kev}:list"], timeout=2))
        await asyncio.sleep(0.1)  # the one connection is taken by the BLPOP
        with pytest.raises(NoConnection):  # (MaxConnectionsError on a cluster)
            await client.get("{kev}:other")
        await blocker.rpush("{kev}:list", "x")
        assert await held is not None
        assert await client.get("{kev}:other") is None  # free again
    finally:
        await client.aclose()
        await blocker.aclose()
