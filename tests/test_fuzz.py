"""Hostile input, fuzzed (hypothesis): the query parser, the auth header parsers, the date
parser and the Redis payload decoder answer with a GatewayError or drop and count; nothing else
escapes. 10,000 cases each, then a few hundred whole requests against a live gateway."""

from __future__ import annotations

import asyncio
import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.http.errors import STATUS
from gateway.http.query import parse_query
from gateway.identity.authenticate import authenticate
from gateway.identity.signing import parse_authorization, parse_date
from gateway.identity.store import IdentityStore
from publisher import Keys
from tests.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.identities import ALICE, seed

MANY = settings(max_examples=10_000, deadline=None, database=None)
PARAM_NAMES = ["sessionId", "ownerAccessKey", "group", "groupName", "lastEventId", "x", ""]
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
ascii_junk = st.text(alphabet=string.printable + "\x00\x7f*%&=", max_size=120)


@MANY
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.tuples(st.sampled_from(PARAM_NAMES), ascii_junk), max_size=6).map(
            lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "replace")
        ),
    ),
    st.one_of(st.none(), ascii_junk),
)
def test_query_parser_answers_400_or_a_query(query: bytes, last_id: str | None) -> None:
    headers = {} if last_id is None else {"last-event-id": last_id}
    try:
        parsed = parse_query(query, headers)
    except GatewayError as exc:
        assert (STATUS[exc.slug], exc.slug) == (400, "invalid-api-params")
    else:
        assert parsed.session_id is None or 0 < len(parsed.session_id) <= 64


@MANY
@given(st.one_of(text, ascii_junk, st.datetimes().map(str), st.datetimes().map(
    lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT"))))  # fmt: skip
def test_date_parser_answers_400_or_an_aware_date(value: str) -> None:
    try:
        parsed = parse_date(value)
    except GatewayError as exc:
        assert (STATUS[exc.slug], exc.slug) == (400, "invalid-auth-params")
    else:
        assert parsed.tzinfo is not None


@MANY
@given(
    st.one_of(
        text,
        ascii_junk,
        st.builds(
            lambda m, ak, sig: f"BackendAI signMethod={m}, credential={ak}:{sig}",
            st.sampled_from(["HMAC-SHA256", "HMAC-SHA1", "", "hmac-sha256"]),
            ascii_junk,
            ascii_junk,
        ),
    )
)
def test_authorization_parser_answers_400_or_a_credential(value: str) -> None:
    try:
        access_key, signature = parse_authorization(value)
    except GatewayError as exc:
        assert (STATUS[exc.slug], exc.slug) == (400, "invalid-auth-params")
    else:
        assert access_key and signature


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as run:
        yield run


@pytest.fixture(scope="module")
def store(redis_server: object, runner: asyncio.Runner) -> Iterator[IdentityStore]:
    from tests.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
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
    store: IdentityStore,
    runner: asyncio.Runner,
    headers: dict[str, str],
    method: str,
    target: str,
) -> None:
    with pytest.raises(GatewayError) as info:  # no valid signature can come out of this
        runner.run(authenticate(method, target, headers, store, now=datetime.now(UTC)))
    assert (STATUS[info.value.slug], info.value.slug) in {
        (400, "invalid-auth-params"),
        (401, "auth-failed"),
    }


def _event_dict(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "kernel_started",
        "session_id": "s1",
        "session_uuid": str(uuid.uuid4()),
        "kernel_id": str(uuid.uuid4()),
        "owner_access_key": "AK",
        "owner_user_id": "u",
        "domain": "d",
        "group": "g",
    }
    base.update(changes)
    return base


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | text
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=10,
)


@MANY
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(lambda i, p: i + b" " + p, st.binary(max_size=30), st.binary(max_size=300)),
        st.builds(
            lambda n, p: b"%d-0 " % n + msgspec.msgpack.encode(p),
            st.integers(min_value=1, max_value=2**40),
            st.one_of(
                msgpack_values,
                st.dictionaries(
                    st.sampled_from(list(_event_dict())), msgpack_values, max_size=9
                ).map(lambda d: {**_event_dict(), **d}),
            ),
        ),
    )
)
def test_the_payload_decoder_drops_and_counts_garbage(message: bytes) -> None:
    hub = Hub(buffer_cap=1 << 20, write_deadline=5, ping_interval=0)
    client = hub.new_connection(Filter(), "x")
    hub.register(client)
    hub.publish_message(message)  # must not raise
    stats = hub.stats
    # every message is counted exactly once: a bad id, or an event in (then maybe dropped)
    assert stats.events_in + stats.dropped["bad_id"] + stats.duplicates == 1
    undecodable = stats.dropped["decode"] + stats.dropped["schema"] + stats.dropped["oversized"]
    assert undecodable + stats.events_matched == stats.events_in
    assert stats.deliveries == stats.events_matched


@pytest.fixture(scope="module")
def live_gateway(redis_server: object) -> Iterator[RunningGateway]:
    from tests.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
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
