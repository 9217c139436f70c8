"""What a review found breaking on a cluster, each as a test on a real 3+3 cluster: the
publisher threw events away, or stalled, where a single Redis would have it queue and retry
(the whole cluster unreachable, a slot mid-migration, a frozen master), and the gateway
answered 500 instead of 503 while the cluster was away.

redis-py's cluster client raises its own errors (``RedisClusterException``: no node
answering; ``ClusterError``: a slot mid-migration that its redirections did not settle),
which are no ``ConnectionError``: the publisher classed them "rejected" and discarded the
events; ``publisher.connection`` raises them as ``ClusterUnavailableError`` now, and the
publisher classes what is left of them as unreachable."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from devtools.rediscluster import LocalRedisCluster, key_slot
from gateway.consumer import StreamError
from publisher import AsyncPublisher, Keys, SyncPublisher
from publisher.schema import decode_event
from tests.support.gateway_server import gateway_settings, run_gateway
from tests.support.http import stream_as
from tests.support.identities import ROOT, seed, session_of
from tests.support.redis_server import is_master
from tests.support.wait import until

pytestmark = pytest.mark.anyio

KEYS = Keys("{kev}", cluster=True)
BUS_SLOT = key_slot(KEYS.history)


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(aof=True) as running:  # (a whole-cluster restart keeps its data)
        yield running


def _history(cluster: LocalRedisCluster) -> list[str]:
    with redis.Redis(port=cluster.master_of_slot(BUS_SLOT)) as master:
        rows = master.xrange(KEYS.history)
    return [decode_event(fields[b"e"]).reason for _, fields in rows]


async def test_the_publishers_queue_through_a_whole_cluster_outage(
    cluster: LocalRedisCluster,
) -> None:
    ref = session_of(ROOT, "outage")
    # a publisher made while the cluster is away starts (the blocking cluster client asked
    # for the slot map in its constructor, and raised there)
    for port in cluster.ports:
        cluster.kill(port)
    spub = SyncPublisher.from_url(cluster.url, timeout=0.5)
    apub = AsyncPublisher.from_url(cluster.url, timeout=0.5)
    try:
        assert spub.publish(ref.started("sync-0")) is None  # queued
        assert await apub.publish(ref.started("async-0")) is None
        assert spub.health.state == apub.health.state == "unreachable"
        assert spub.rejected == apub.rejected == 0
        await asyncio.to_thread(cluster.start_stopped)
        assert await asyncio.to_thread(spub.flush, 15.0)
        assert await apub.flush(timeout=15)
        assert spub.publish(ref.started("sync-1")) and await apub.publish(ref.started("async-1"))
    finally:
        sreport = await asyncio.to_thread(spub.close)
        areport = await apub.aclose()
    assert sreport.ok and areport.ok and sreport.rejected == areport.rejected == 0
    assert sorted(_history(cluster)) == ["async-0", "async-1", "sync-0", "sync-1"]


async def test_a_slow_resharding_of_the_bus_slot_loses_no_event(
    cluster: LocalRedisCluster,
) -> None:
    """One key at a time with a pause: the publish script's keys are split between the two
    nodes for seconds, and Redis answers TRYAGAIN; redis-py gives up with "TTL exhausted"
    (a ClusterError) within half a second, which discarded the events."""
    await seed(cluster.url)  # identities in the slot too: more keys to move
    ref = session_of(ROOT, "reshard")
    async with AsyncPublisher.from_url(cluster.url, timeout=1.0) as pub:
        assert await pub.publish(ref.started("before"))  # the history and the epoch exist
        source = cluster.master_of_slot(BUS_SLOT)
        target = next(port for port in cluster.masters() if port != source)
        moving = asyncio.ensure_future(
            asyncio.to_thread(cluster.reshard_slot, BUS_SLOT, target, keys_per_migrate=1, pause=0.3)
        )
        sent = []
        while not moving.done():
            reason = f"n-{len(sent)}"
            await pub.publish(ref.started(reason))
            sent.append(reason)
            await asyncio.sleep(0.05)
        await moving
        assert await pub.flush(timeout=15)
        assert pub.rejected == 0 and pub.dropped == 0
    assert cluster.master_of_slot(BUS_SLOT) == target
    assert _history(cluster) == ["before", *sent]


async def test_an_asyncio_publisher_follows_a_failover_away_from_a_frozen_master(
    cluster: LocalRedisCluster,
) -> None:
    """SIGSTOP, not SIGKILL: the old master's sockets stay open and silent. The publisher's
    call timeout cancelled each read before redis-py's own socket timeout, the one that
    makes the cluster client look for the slot's new master: it stayed on the frozen node
    for the whole freeze (99 s in the review) while its replica had taken over in 4 s."""
    ref = session_of(ROOT, "frozen")
    async with AsyncPublisher.from_url(cluster.url, timeout=1.0) as pub:
        assert await pub.publish(ref.started("before"))
        frozen = cluster.master_of_slot(BUS_SLOT)
        (replica,) = cluster.replicas_of(frozen)
        proc = cluster.node(frozen).proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await until(
                lambda: is_master(replica), 20, "the replica to take over the frozen master's slots"
            )
            taken_over = time.monotonic()
            ids = await pub.publish_many([ref.started(f"after-{i}") for i in range(3)])
            if not ids:
                assert await pub.flush(timeout=15), "still on the frozen master"
            followed = time.monotonic() - taken_over
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert pub.rejected == 0
    print(f"\nfollowed the failover {followed:.1f} s after the replica took over")
    assert followed < 10
    with redis.Redis(port=replica) as new_master:
        assert new_master.xlen(KEYS.history) >= 4


async def test_the_gateway_answers_503_while_the_cluster_is_away(
    cluster: LocalRedisCluster,
) -> None:
    await seed(cluster.url, password=True)
    with run_gateway(gateway_settings(cluster.url, identity_cache_ttl=0.0)) as gw:
        for port in cluster.ports:
            cluster.kill(port)
        async with httpx.AsyncClient(timeout=10) as http:
            login = await http.post(
                f"{gw.base_url}/auth/login", json={"user_id": "alice", "password": "x" * 12}
            )
        assert login.status_code == 503 and login.headers.get("retry-after"), login.text
        with pytest.raises(StreamError) as refused:
            async with stream_as(ROOT, gw.base_url, last_event_id="1-0"):
                pass
        assert refused.value.status == 503, refused.value
        await asyncio.to_thread(cluster.start_stopped)
        await until(
            lambda: httpx.get(gw.base_url + "/ready", timeout=5).status_code == 200,
            20,
            "the replica ready again",
        )
        async with stream_as(ROOT, gw.base_url):
            pass
        assert gw.state.task_restarts.get("history-watch", 0) == 0
