"""Redis Sentinel failover, for real: master, replica and a sentinel on loopback; the master is
SIGKILLed and the sentinel promotes the replica under a streaming gateway and a publisher."""

from __future__ import annotations

import gc
import time

import anyio
import httpx
import pytest
import redis
from redis.asyncio.connection import AbstractConnection

from publisher import AsyncPublisher, Keys
from tests.support.fleet import caught_up, fleet, publishing, until_streams
from tests.support.gateway_server import gateway_settings, spawn_gateway
from tests.support.identities import seed
from tests.support.redis_server import is_master
from tests.support.sentinel import sentinel_set
from tests.support.wait import until


async def ready(base_url: str) -> bool:
    async with httpx.AsyncClient() as http:
        return (await http.get(base_url + "/ready")).status_code == 200


async def _close_orphans() -> None:
    """redis-py's SentinelConnectionPool.reset() (run when the master changes) forgets its
    connections to the old master without closing them; close them here rather than let the
    garbage collector warn about them at an arbitrary later moment."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, AbstractConnection) and obj.is_connected:
            await obj.disconnect()


@pytest.mark.anyio
async def test_gateway_and_publisher_follow_a_sentinel_failover() -> None:
    with sentinel_set() as (master, _replica, url, replica_port):
        await seed(master.url)  # replicated to the replica
        # A process of its own: the failover makes the gateway log a burst of errors, and
        # CPython 3.11's compile() is not thread-safe against pytest rewriting in this one.
        with spawn_gateway(gateway_settings(url, probe_interval=0.5)) as gw:
            async with (
                AsyncPublisher.from_url(url, timeout=0.3) as pub,
                fleet(gw.base_url, 20) as consumers,
            ):
                await until_streams(gw.base_url, 20)
                async with publishing(pub) as steady:
                    await anyio.sleep(0.5)
                    master.stop(kill=True)
                    failed_over = time.monotonic()
                    await until(
                        lambda: is_master(replica_port), 15, "the sentinel to promote the replica"
                    )
                    with anyio.fail_after(15):  # the gateway follows: subscribed and probed
                        while not await ready(gw.base_url):
                            await anyio.sleep(0.05)
                    await until(lambda: pub.buffered == 0, 15, "the publisher to flush")
                    recovered_after = time.monotonic() - failed_over
                    mark = len(steady.reasons)
                    await anyio.sleep(1.0)
                assert await pub.flush(timeout=10)
                expected = await caught_up(consumers, steady, 15)
                after_failover = expected[mark:]
                with redis.Redis(port=replica_port) as r:
                    history = [f[b"e"] for _, f in r.xrange(Keys().history)]
            await _close_orphans()
        first = consumers[0]
        for consumer in consumers:
            # every consumer got all that was published after the failover
            assert consumer.reasons[-len(after_failover) :] == after_failover
            assert consumer.reasons == first.reasons  # everyone saw the same sequence
            assert len(set(consumer.ids)) == len(consumer.ids)
            assert consumer.ids == sorted(consumer.ids, key=lambda i: tuple(map(int, i.split("-"))))
        # Nothing the new master holds is missing, and the publisher lost nothing it had not
        # already handed to Redis: what async replication dropped at the kill (if anything)
        # is at most the few events in flight at that instant.
        assert len(history) <= len(first.reasons)
        assert set(expected) - set(first.reasons) <= set(expected[:mark])
        assert len(set(expected) - set(first.reasons)) <= 3
        assert recovered_after < 15
