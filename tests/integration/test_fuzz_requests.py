"""Hostile requests, fuzzed (hypothesis), against real Redis: any headers to
``authenticate`` over the identity store (10,000 cases), then a few hundred whole requests
to a live gateway, which answers each with a 4xx problem+json. Slow lane: fuzz."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.http.errors import STATUS
from gateway.identity.authenticate import authenticate_signature
from gateway.identity.store import IdentityStore
from publisher import Keys
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.hostile import PARAM_NAMES, ascii_junk
from tests.support.identities import ALICE, seed
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as run:
        yield run


@pytest.fixture(scope="module")
def cached_store(redis_server: RedisServer, runner: asyncio.Runner) -> Iterator[IdentityStore]:
    """Module-wide (the shared one is per test), cached: 10,000 cases stay fast."""
    client = aredis.Redis.from_url(redis_server.url)
    yield IdentityStore(client, Keys("fuzz-auth"), cache_ttl=60)
    runner.run(client.aclose())


@settings(
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "authorization": st.one_of(
                ascii_junk,
                st.just(
                    "BackendAI signMethod=HMAC-SHA256, credential=AKIAALICE00000000000:" + "0" * 64
                ),
            ),
            "date": st.one_of(ascii_junk, st.just(datetime.now(UTC).isoformat())),
            "x-backendai-date": ascii_junk,
            "x-backendai-version": st.one_of(ascii_junk, st.just("v4.20190615")),
            "host": ascii_junk,
            "content-type": ascii_junk,
        },
    ),
    st.sampled_from(["GET", "HEAD", "POST", "get"]),
    ascii_junk,
)
def test_authenticate_answers_400_or_401_for_any_headers(
    cached_store: IdentityStore,
    runner: asyncio.Runner,
    headers: dict[str, str],
    method: str,
    target: str,
) -> None:
    with pytest.raises(GatewayError) as info:  # no valid signature can come out of this
        runner.run(
            authenticate_signature(method, target, headers, cached_store, now=datetime.now(UTC))
        )
    assert (STATUS[info.value.slug], info.value.slug) in {
        (400, "invalid-auth-params"),
        (401, "auth-failed"),
    }


@pytest.fixture(scope="module")
def live_gateway(redis_server: RedisServer) -> Iterator[RunningGateway]:
    """One gateway for every case (the shared ``gateway`` is per test), its own prefix."""
    asyncio.run(seed(redis_server.url, prefix="fuzz"))
    with run_gateway(gateway_settings(redis_server.url, prefix="fuzz")) as gw:
        yield gw


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    query=st.lists(st.tuples(st.sampled_from(PARAM_NAMES), ascii_junk), max_size=5),
    headers=st.dictionaries(
        st.sampled_from(["Authorization", "Date", "X-BackendAI-Version", "Last-Event-ID", "X-A"]),
        st.text(alphabet=string.ascii_letters + string.digits + " =:,-+./*", max_size=100),
        max_size=5,
    ),
)
def test_whole_requests_get_only_4xx(
    live_gateway: RunningGateway, query: list[tuple[str, str]], headers: dict[str, str]
) -> None:
    params = httpx.QueryParams(query)
    response = httpx.get(
        live_gateway.base_url + "/stream/kernel/_/events",
        params=params,
        headers={k: v.strip() for k, v in headers.items()},
        timeout=5,
    )
    assert response.status_code in {400, 401, 403, 404}, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert ALICE.secret_key not in response.text
