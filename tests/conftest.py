"""The fixture family every layer of the suite draws on: one real redis-server for the run
(flushed per test), clients on it, the identity store, the cast of identities, and in-thread
gateways on free ports."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio as aredis

from gateway.identity.store import IdentityStore
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.identities import seed
from tests.support.redis_server import RedisServer

# the PostgreSQL fixtures (postgres_server, backendai_db, private_postgres, ...)
pytest_plugins = ("tests.support.postgres",)


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


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    if redis_server.proc is None:  # a previous test stopped it and failed before restarting
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    yield redis_server.url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def async_redis(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def store(async_redis: aredis.Redis) -> IdentityStore:
    """The identity store under the default prefix, uncached: what a test writes, it reads."""
    return IdentityStore(async_redis, Keys(), cache_ttl=0)


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
