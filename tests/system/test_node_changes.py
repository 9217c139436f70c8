"""A replica that has seen no history yet (no epoch to compare) meets its Redis node changing
under it, for real: the rules table's row "a Redis restart ... over no history"
(ARCHITECTURE.md, "Watermark and epoch"). Its streams are told ``reset`` only where the
node's data does not carry on what the replica last looked at: a restart without
persistence. A failover to a replica (Sentinel; a cluster's ``CLUSTER FAILOVER``, or its
master killed) carries it on, which the promoted node's replication ids prove (INFO
replication's ``master_replid2`` is the old master's id), and tells nothing. A cluster slot
resharded to another master is told: nothing proves that its keys came along.

Found in CI: a partition's master failed over before that partition's first event, and every
stream was told ``reset`` for a failover that lost nothing (the replica knew no epoch, and the
new master's run id was another).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpx
import pytest
import redis

from devtools.rediscluster import LocalRedisCluster, key_slot
from publisher import AsyncPublisher, Keys
from tests.support.gateway_server import gateway_settings, spawn_gateway
from tests.support.http import metric_value
from tests.support.identities import ALICE, seed, session_of
from tests.support.redis_server import RedisServer
from tests.support.sentinel import sentinel_set
from tests.support.wait import until
from tests.system.test_sentinel import _close_orphans
from tests.system.test_watermark import reading

pytestmark = pytest.mark.anyio

#: the change of a Redis deployment's node that the test makes (each deployment below yields
#: its URL, with the identities stored, and its change)
Change = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def restart() -> AsyncIterator[tuple[str, Change]]:
    """One redis-server without persistence, SIGKILLed and started again: back empty."""
    with RedisServer() as server:
        await seed(server.url)

        async def change() -> None:
            server.restart()
            await seed(server.url)  # the identities went with the rest

        yield server.url, change


@contextlib.asynccontextmanager
async def sentinel() -> AsyncIterator[tuple[str, Change]]:
    """Master, replica, sentinel: the master SIGKILLed, the replica promoted."""
    with sentinel_set() as (master, _replica, url, replica_port):
        await seed(master.url)  # replicated to the replica

        async def change() -> None:
            master.stop(kill=True)

            def promoted() -> bool:
                try:
                    with redis.Redis(port=replica_port) as raw:
                        return raw.info("replication")["role"] == "master"
                except redis.ConnectionError:
                    return False

            await until(promoted, 15, "the sentinel to promote the replica")

        yield url, change


@contextlib.asynccontextmanager
async def cluster(how: str) -> AsyncIterator[tuple[str, Change]]:
    """A local Redis Cluster whose bus slot's master fails over to its replica (``CLUSTER
    FAILOVER``), is SIGKILLed and its replica promoted, or whose bus slot is resharded to
    another master with its keys."""
    slot = key_slot(Keys("{kev}", cluster=True).history)
    with LocalRedisCluster() as nodes:
        await seed(nodes.url)

        def move() -> None:
            if how == "failover":
                nodes.failover(slot)
            elif how == "kill":
                nodes.kill_master(slot)
            else:
                old = nodes.master_of_slot(slot)
                nodes.reshard_slot(slot, next(p for p in nodes.masters() if p != old))

        async def change() -> None:
            await anyio.to_thread.run_sync(move)

        yield nodes.url, change


def deployment(change: str) -> contextlib.AbstractAsyncContextManager[tuple[str, Change]]:
    """The deployment whose node ``change`` changes (a key of :data:`NOTICES`)."""
    if change.startswith("restart"):
        return restart()
    if change.startswith("cluster"):
        return cluster(change.split()[-1])
    return sentinel()


#: each change of the node, and the notices an open stream gets for it
NOTICES: dict[str, list[str]] = {
    "restart without persistence": ["reset"],
    "Sentinel failover": [],
    "cluster failover": [],
    "cluster master kill": [],
    # Another master, unrelated to the old one: nothing proves the keys came with the slot
    # (a slot can be given to a node without them), so a replica that saw no history there
    # says so. (Once it has seen the history, the epoch proves it: test_redis_cluster.py.)
    "cluster reshard": ["reset"],
}


def _metric(base_url: str, name: str) -> float:
    return metric_value(httpx.get(base_url + "/metrics", timeout=5).text, name)


@pytest.mark.parametrize("change", list(NOTICES))
async def test_a_replica_that_saw_no_history_is_told_reset_only_where_data_was_lost(
    change: str,
) -> None:
    notices = NOTICES[change]
    async with deployment(change) as (url, make_change):
        with spawn_gateway(gateway_settings(url, probe_interval=0.5)) as gw:
            async with reading(gw.base_url) as reader:
                await until(
                    lambda: httpx.get(gw.base_url + "/ready", timeout=5).json()["streams"] >= 1,
                    10,
                    "the stream",
                )
                sessions = _metric(gw.base_url, "kev_redis_reconnects_total")
                await make_change()
                # A session on the node there is now: the notice, if any, comes before the
                # event, which only that node has.
                await until(
                    lambda: _metric(gw.base_url, "kev_redis_reconnects_total") > sessions,
                    20,
                    "the subscription to start over",
                )
                async with AsyncPublisher.from_url(url) as pub:
                    # (queued while the publisher finds the new master, then sent)
                    await pub.publish(session_of(ALICE, "after").started("after"))
                    assert await pub.flush(timeout=15)
                await _close_orphans()  # the Sentinel pool's, when the master changed
                await until(lambda: len(reader.kernel()) >= 1, 20, "the event after the change")
                assert [json.loads(e.data)["reason"] for e in reader.kernel()] == ["after"]
                assert [n["reason"] for n in reader.notices()] == notices
                told = _metric(gw.base_url, "kev_new_histories_total")
                assert told == len(notices)
