"""Authentication against the identity store on a real redis-server and on a real Redis
Cluster (every test that uses Redis on both): the vector of docs/design.md §4, each way a
request can fail with its status, slug and title (the parsers alone:
tests/unit/test_signing.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aredis

from gateway.errors import GatewayError
from gateway.http.errors import STATUS
from gateway.identity import authenticate
from gateway.identity.authenticate import authenticate_signature
from gateway.identity.models import Identity, Keypair, User
from gateway.identity.signing import MAX_AUTH_HEADER, signed_headers
from gateway.identity.store import PRESENCE_EVERY, IdentityStore
from publisher.connection import is_cluster
from publisher.keys import Keys
from tests.support.vector import (
    ACCESS_KEY,
    DATE,
    HOST,
    NOW,
    SECRET,
    TARGET,
    signed,
    vector_headers,
)


@pytest.fixture
def redis_url(topology_url: str) -> str:
    """Every test here that uses Redis runs on a single redis-server and on a Redis Cluster."""
    return topology_url


@pytest.fixture
async def store(store: IdentityStore) -> IdentityStore:
    """The shared store, holding the vector's keypair (alice's) and an inactive one."""
    await store.add_user(User("alice", "user", "default"))
    await store.add_keypair(Keypair(ACCESS_KEY, SECRET, "alice"))
    await store.add_keypair(Keypair("AKIAINACTIVE", SECRET, "alice", active=False))
    return store


@pytest.mark.anyio
async def test_the_design_vector_authenticates(store: IdentityStore) -> None:
    identity = await authenticate_signature("GET", TARGET, vector_headers(), store, now=NOW)
    assert identity == Identity(ACCESS_KEY, "alice", "user", "default")


@pytest.mark.parametrize(
    "date",
    [
        "Mon, 07 Oct 2019 12:34:56 GMT",
        "Mon, 07 Oct 2019 14:34:56 +0200",
        "2019-10-07T12:34:56Z",
        "2019-10-07T12:34:56.123456+00:00",
        "2019-10-07T12:34:56",
        "2019-10-07T21:34:56+09:00",
    ],
)
@pytest.mark.anyio
async def test_rfc1123_and_iso_dates_authenticate(store: IdentityStore, date: str) -> None:
    headers = vector_headers(date=date, authorization=signed(date))
    assert (await authenticate_signature("GET", TARGET, headers, store, now=NOW)).user_id == "alice"


@pytest.mark.anyio
async def test_x_backendai_date_is_the_fallback(store: IdentityStore) -> None:
    headers = vector_headers(date=None, x_backendai_date=DATE)
    assert (await authenticate_signature("GET", TARGET, headers, store, now=NOW)).user_id == "alice"


@pytest.mark.anyio
async def test_naive_now_is_utc_and_skew_edges_pass(store: IdentityStore) -> None:
    naive = NOW.replace(tzinfo=None)
    assert await authenticate_signature("GET", TARGET, vector_headers(), store, now=naive)
    exact = datetime(2019, 10, 7, 12, 49, 56, tzinfo=UTC)
    assert await authenticate_signature("GET", TARGET, vector_headers(), store, now=exact)


def _signed_other(date: str) -> str:
    return signed(date, access_key="AKIAINACTIVE")


OLD, NEW = "2019-10-07T12:24:59+00:00", "Mon, 07 Oct 2019 12:55:01 GMT"
FAILURES: list[tuple[str, dict[str, str | None], str, int, str, str]] = [
    # (case, header changes, method, status, slug, title)
    ("wrong signature", {"authorization": signed(DATE, secret="x" * 40)}, "GET", 401,
     "auth-failed", "Signature mismatch"),
    ("other target", {}, "POST", 401, "auth-failed", "Signature mismatch"),
    # signed at that date (the date is checked after the signature: a stale request's one
    # allowance is spent only by a good signature)
    ("date too old", {"date": OLD, "authorization": signed(OLD)}, "GET", 400,
     "invalid-auth-params", "Too large clock skew"),
    ("date too new", {"date": NEW, "authorization": signed(NEW)}, "GET", 400,
     "invalid-auth-params", "Too large clock skew"),
    ("date too old, signed at another", {"date": OLD}, "GET", 401,
     "auth-failed", "Signature mismatch"),
    ("missing version", {"x-backendai-version": None}, "GET", 400,
     "invalid-auth-params", "Missing X-BackendAI-Version header"),
    ("unknown version", {"x-backendai-version": "v3.20170615"}, "GET", 400,
     "invalid-auth-params", "Unsupported X-BackendAI-Version"),
    ("missing date", {"date": None}, "GET", 400,
     "invalid-auth-params", "Missing Date or X-BackendAI-Date header"),
    ("unparseable date", {"date": "yesterday"}, "GET", 400,
     "invalid-auth-params", "Invalid date header"),
    ("missing authorization", {"authorization": None}, "GET", 400,
     "invalid-auth-params", "Missing Authorization header"),
    ("garbled authorization", {"authorization": "Bearer abc"}, "GET", 400,
     "invalid-auth-params", "Malformed Authorization header"),
    ("huge authorization", {"authorization": "BackendAI " + "x" * MAX_AUTH_HEADER}, "GET", 400,
     "invalid-auth-params", "Authorization header too large"),
    ("other sign method", {"authorization": signed(DATE).replace("SHA256", "SHA1")}, "GET", 400,
     "invalid-auth-params", "Unsupported signMethod"),
    ("missing host", {"host": None}, "GET", 400,
     "invalid-auth-params", "Missing or oversized Host header"),
    # an unknown key is told as a wrong signature: the answer says not which keys exist
    ("unknown key", {"authorization": signed(DATE, access_key="AKIANOBODY")}, "GET", 401,
     "auth-failed", "Signature mismatch"),
    ("inactive key", {"authorization": _signed_other(DATE)}, "GET", 401,
     "auth-failed", "Inactive keypair"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "method", "status", "slug", "title"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
@pytest.mark.anyio
async def test_each_failure_has_its_status_slug_and_title(
    store: IdentityStore,
    changes: dict[str, str | None],
    method: str,
    status: int,
    slug: str,
    title: str,
) -> None:
    with pytest.raises(GatewayError) as info:
        await authenticate_signature(method, TARGET, vector_headers(**changes), store, now=NOW)
    assert (STATUS[info.value.slug], info.value.slug, info.value.title) == (status, slug, title)
    assert SECRET not in str(info.value)


def test_failure_titles_are_distinct_per_cause() -> None:
    titles = {case[0]: case[5] for case in FAILURES}
    # the same as another on purpose: a wrong target or a date other than the one signed is
    # a wrong signature; an unknown key is answered as one (which keys exist is not told)
    alike = ("other target", "date too new", "date too old, signed at another", "unknown key")
    causes = [c for c in titles if c not in alike]
    assert len({titles[c] for c in causes}) == len(causes)


@pytest.mark.anyio
async def test_an_inactive_key_with_a_bad_signature_only_says_mismatch(
    store: IdentityStore,
) -> None:
    forged = signed(DATE, access_key="AKIAINACTIVE", secret="y" * 40)
    with pytest.raises(GatewayError, match="Signature mismatch"):
        await authenticate_signature(
            "GET", TARGET, vector_headers(authorization=forged), store, now=NOW
        )


@pytest.mark.anyio
async def test_a_keypair_without_its_user_fails(
    store: IdentityStore, async_redis: aredis.Redis
) -> None:
    await async_redis.delete(store.keys.user("alice"))
    with pytest.raises(GatewayError, match="Keypair owner not found") as info:
        await authenticate_signature("GET", TARGET, vector_headers(), store, now=NOW)
    assert STATUS[info.value.slug] == 401


@pytest.mark.anyio
async def test_custom_max_skew(store: IdentityStore) -> None:
    with pytest.raises(GatewayError, match="Too large clock skew"):
        await authenticate_signature(
            "GET", TARGET, vector_headers(), store, now=NOW, max_skew=timedelta(minutes=1)
        )


@pytest.mark.anyio
async def test_signed_headers_authenticate(store: IdentityStore) -> None:
    now = datetime(2024, 9, 15, 8, 0, 0, 500_000, tzinfo=UTC)
    headers = {
        k.lower(): v
        for k, v in signed_headers("GET", TARGET, HOST, ACCESS_KEY, SECRET, now=now).items()
    }
    assert headers["date"] == "Sun, 15 Sep 2024 08:00:00 GMT"
    headers["host"] = HOST
    assert (await authenticate_signature("GET", TARGET, headers, store, now=now)).user_id == "alice"


@pytest.mark.anyio
async def test_an_unknown_key_costs_what_a_wrong_signature_costs(
    async_redis: aredis.Redis, store: IdentityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown access key and a wrong signature get the same answer (test_stream.py) after
    the same work: one HMAC each and the same Redis commands, but for the store's presence
    read (at most one per PRESENCE_EVERY second, whoever asks): so their times tell no one
    which keys exist. Counted, not timed (Redis' commandstats, and the HMACs made)."""
    if is_cluster(async_redis):
        pytest.skip("commandstats are per node; the single server's count them all")
    made: list[str] = []
    real_signature = authenticate.signature

    def counted(*args: object) -> str:
        made.append("hmac")
        return real_signature(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(authenticate, "signature", counted)
    # the gateway's own store: uncached (every request looks up), watching presence
    gateway_store = IdentityStore(
        async_redis, Keys.on(async_redis), cache_ttl=0, watch_presence=True
    )
    await gateway_store.presence()

    async def commands() -> dict[str, int]:
        stats = await async_redis.info("commandstats")
        return {name: int(value["calls"]) for name, value in stats.items()}

    async def cost(access_key: str, secret: str, n: int) -> tuple[dict[str, int], int]:
        made.clear()
        before = await commands()
        started = time.monotonic()
        for _ in range(n):
            sent = signed(DATE, access_key=access_key, secret=secret)
            with pytest.raises(GatewayError, match="Signature mismatch"):
                await authenticate.authenticate_keypair(
                    "GET", TARGET, vector_headers(authorization=sent), gateway_store, now=NOW
                )
        seconds = time.monotonic() - started
        after = await commands()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta["cmdstat_info"] -= 1  # our own look
        presence_reads = int(seconds / PRESENCE_EVERY) + 1
        return {k: v for k, v in delta.items() if v}, presence_reads

    n = 25
    wrong, _ = await cost(ACCESS_KEY, "not-" + SECRET[4:], n)
    unknown, presence_reads = await cost("AKIANOSUCHKEY0000000", SECRET, n)
    assert len(made) == n, "one HMAC per unknown-key request, as per wrong signature"
    assert wrong == {"cmdstat_hgetall": n}, wrong
    # the unknown key: the same lookups, plus the throttled presence read (GET + EXISTS)
    extra = {k: v - wrong.get(k, 0) for k, v in unknown.items() if v != wrong.get(k, 0)}
    assert unknown["cmdstat_hgetall"] == n
    assert set(extra) <= {"cmdstat_get", "cmdstat_exists"}, unknown
    assert all(v <= presence_reads for v in extra.values()), (extra, presence_reads)
