"""The fixture family every layer of the suite draws on: one real redis-server for the run
(flushed per test), clients on it, the identity store, the cast of identities, and in-thread
gateways on free ports.

A Redis Cluster too (:class:`devtools.rediscluster.LocalRedisCluster`: 3 masters, 3
replicas), started for the run the first time a test asks for it (``redis_cluster``, one per
xdist worker) and flushed per test. A module runs its tests on both topologies by basing its
``redis_url`` on ``topology_url`` (parametrized ``single``/``cluster``); ``sync_redis``,
``async_redis`` and ``store`` then follow the URL's topology, and its names are asked of the
client (``Keys.on(client)``: hash-tagged on a cluster, ``{kev}:...``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio as aredis

from devtools.rediscluster import HOST as CLUSTER_HOST
from devtools.rediscluster import LocalRedisCluster
from gateway.identity.store import IdentityStore
from publisher.connection import connect_async, connect_sync
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.identities import seed
from tests.support.redis_server import RedisServer

# the PostgreSQL fixtures (postgres_server, backendai_db, private_postgres, ...); what a
# test that hangs was doing, printed before pytest-timeout fails it
pytest_plugins = ("tests.support.postgres", "tests.support.hangs")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole run; tests that stop it must restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill and restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[LocalRedisCluster]:
    """One real Redis Cluster for the whole run (per xdist worker), started only when a test
    asks for it (about 2 s); use ``redis_cluster``, which flushes it first."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_server: LocalRedisCluster) -> LocalRedisCluster:
    """The run's Redis Cluster, every master flushed (their replicas follow): each test starts
    with an empty cluster. Its topology must be left as it was (no failover, no resharding):
    a test that changes it starts a cluster of its own."""
    for port in redis_cluster_server.masters():
        with redis.Redis(host=CLUSTER_HOST, port=port) as client:
            client.flushall()
    return redis_cluster_server


@pytest.fixture
def single_redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The run's redis-server, flushed: its URL."""
    if redis_server.proc is None:  # a previous test stopped it and failed before restarting
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url


@pytest.fixture(params=["single", "cluster"])
def topology_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty Redis of each topology in turn: the run's redis-server
    (``redis://``), then the run's cluster (``redis+cluster://``). A module whose tests must
    hold on both makes its ``redis_url`` this one."""
    if request.param == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("single_redis_url")
    return url


@pytest.fixture
def redis_url(single_redis_url: str) -> str:
    return single_redis_url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test's Redis, of its topology (redis-py's RedisCluster on a cluster)."""
    client = connect_sync(redis_url)
    yield client
    client.close()


@pytest.fixture
async def async_redis(redis_url: str) -> AsyncIterator[aredis.Redis]:
    """An asyncio client of the test's Redis, of its topology."""
    client = connect_async(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(async_redis: aredis.Redis) -> IdentityStore:
    """The identity store under the default prefix, uncached: what a test writes, it reads."""
    return IdentityStore(async_redis, Keys.on(async_redis), cache_ttl=0)


@pytest.fixture
def cast(redis_url: str) -> str:
    """The test's Redis URL, with the cast of :mod:`tests.support.identities` stored."""
    anyio.run(seed, redis_url)
    return redis_url


@pytest.fixture
def start_gateway(redis_url: str) -> Iterator[Callable[..., RunningGateway]]:
    """Starts an in-thread gateway on the test's Redis, ``gateway_settings`` changed by the
    keywords given; every one started stops at teardown."""
    with contextlib.ExitStack() as running:

        def start(**changes: object) -> RunningGateway:
            return running.enter_context(run_gateway(gateway_settings(redis_url, **changes)))

        yield start


@pytest.fixture
def gateway(cast: str, start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway with the test settings, the cast stored."""
    return start_gateway()
