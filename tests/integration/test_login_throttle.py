"""Logins under attack, against real gateways on a real Redis: failed-login throttling per
account and per address shared by every replica (a blocked address locking no one else out),
password work isolated from streams and from other accounts, a cap on sessions per key, the
password policy on import, the warning about an untrusted load balancer. Every test runs on a
single redis-server and again on a Redis Cluster (the gateways given its URL)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import redis

from gateway.identity.models import IdentityError
from gateway.identity.sessions import SESSION_COOKIE, token_hash
from gateway.identity.store import IdentityStore
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway
from tests.support.http import problem, stream_as
from tests.support.identities import ALICE, ALICE_PASSWORD, BOB, ROOT, Person, seed

StartGateway = Callable[..., RunningGateway]

#: The test gateways trust loopback as their load balancer, so X-Forwarded-For names clients.
#: A block outlasts any test that does not wait for it to end: one that ended while password
#: checks ran on a loaded machine turned an expected 429 into 401 (seen once in CI with 1 s).
THROTTLED: dict[str, Any] = {
    "trusted_proxies": ("127.0.0.1/32",),
    "login_free_failures": 3,
    "login_free_failures_per_address": 6,
    "login_backoff": 60.0,
    "login_backoff_max": 60.0,
}


@pytest.fixture
def redis_url(topology_url: str) -> str:
    """Every test here runs on a single redis-server and on a Redis Cluster: the throttle's
    counters and the sessions are the gateways' writes on either."""
    return topology_url


@pytest.fixture
def cast(redis_url: str) -> str:
    anyio.run(functools.partial(seed, redis_url, password=True))
    return redis_url


def _password(user_id: str, password: str) -> dict[str, str]:
    return {"user_id": user_id, "password": password}


def _keypair(person: Person) -> dict[str, str]:
    return {"access_key": person.access_key, "secret_key": person.secret_key}


async def _login(
    client: httpx.AsyncClient, gw: RunningGateway, body: object, address: str
) -> httpx.Response:
    return await client.post(
        f"{gw.base_url}/auth/login", json=body, headers={"X-Forwarded-For": address}
    )


@pytest.mark.anyio
async def test_a_flooded_account_is_throttled_with_backoff(
    cast: str, start_gateway: StartGateway
) -> None:
    # a backoff long enough to outlast 60 concurrent password checks on a loaded machine
    # (0.5 s ran out before the right password was tried, once in a full parallel run)
    gw = start_gateway(**{**THROTTLED, "login_backoff": 2.0, "login_backoff_max": 4.0})
    async with httpx.AsyncClient(timeout=10) as client:
        # 60 wrong passwords at once, from 60 addresses: at most the free ones and the one
        # that starts the backoff reach the password check.
        wrong = [
            _login(client, gw, _password("alice", f"guess {i}"), f"10.0.1.{i}") for i in range(60)
        ]
        answers = await asyncio.gather(*wrong)
        codes = [r.status_code for r in answers]
        assert codes.count(401) <= THROTTLED["login_free_failures"] + 1, codes
        assert codes.count(429) >= 55, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert problem(refused)[1] == "rate-limit-exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 4
        # The right password now is refused too, unchecked...
        right = await _login(client, gw, _password("alice", ALICE_PASSWORD), "10.0.2.1")
        assert right.status_code == 429
        # ...other accounts are not...
        other = await _login(client, gw, _keypair(BOB), "10.0.2.2")
        assert other.status_code == 200
        # ...and after the backoff it works, and resets the account's count.
        await asyncio.sleep(int(right.headers["retry-after"]) + 0.1)
        right = await _login(client, gw, _password("alice", ALICE_PASSWORD), "10.0.2.1")
        assert right.status_code == 200, right.text
        for i in range(THROTTLED["login_free_failures"]):
            wrong_again = await _login(client, gw, _password("alice", "nope"), f"10.0.3.{i}")
            assert wrong_again.status_code == 401


@pytest.mark.anyio
async def test_an_address_is_throttled_across_accounts(
    cast: str, start_gateway: StartGateway
) -> None:
    gw = start_gateway(**THROTTLED)
    async with httpx.AsyncClient(timeout=10) as client:
        codes = [
            (await _login(client, gw, _password(f"user{i}", "wrong"), "10.9.9.9")).status_code
            for i in range(10)
        ]
        assert codes[:6] == [401] * 6 and 429 in codes[6:], codes
        # another unknown account from that address waits too; from another it does not
        blocked = await _login(client, gw, _password("user99", "wrong"), "10.9.9.9")
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert (
            await _login(client, gw, _password("user99", "wrong"), "10.9.9.10")
        ).status_code == 401
        # a wrong credential for a known account gets the same 429 as an unknown one
        wrong = await _login(client, gw, {**_keypair(BOB), "secret_key": "x" * 40}, "10.9.9.9")
        assert wrong.status_code == 429
        # an X-Forwarded-For entry the client wrote itself is not its address
        forged = await _login(client, gw, _password("user98", "wrong"), "10.9.9.11, 10.9.9.9")
        assert forged.status_code == 429


@pytest.mark.anyio
async def test_a_blocked_address_locks_no_one_else_out(
    cast: str, start_gateway: StartGateway
) -> None:
    """The review's probe: behind one address (a proxy not trusted, a NAT), 26 failed logins
    on made-up accounts locked every user out. A correct password or keypair still gets in;
    guessing one account from there still blocks that account."""
    gw = start_gateway(**THROTTLED)
    shared = "10.7.7.7"
    async with httpx.AsyncClient(timeout=10) as client:
        codes = [
            (await _login(client, gw, _password(f"nobody{i}", "wrong"), shared)).status_code
            for i in range(30)
        ]
        assert codes.count(429) >= 20, codes  # the address is blocked
        for body in (_password("alice", ALICE_PASSWORD), _keypair(BOB), _keypair(ALICE)):
            r = await _login(client, gw, body, shared)
            assert r.status_code == 200, (body.keys(), r.text)
            assert r.cookies.get(SESSION_COOKIE)
        # guessing alice's password from the blocked address: each guess is checked and
        # counted against alice (429, as any failure there); past her free failures alice
        # is blocked, and then even her right password waits, from anywhere
        for i in range(THROTTLED["login_free_failures"] + 1):
            r = await _login(client, gw, _password("alice", f"guess {i}"), shared)
            assert r.status_code == 429
        for address in (shared, "10.7.7.8"):
            r = await _login(client, gw, _password("alice", ALICE_PASSWORD), address)
            assert r.status_code == 429, address
        # bob, not under attack, still gets in from the blocked address
        assert (await _login(client, gw, _keypair(BOB), shared)).status_code == 200


@pytest.mark.anyio
async def test_x_forwarded_for_without_trusted_proxies_is_warned_about_once(
    cast: str, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http.app")
    gw = start_gateway()  # trusted_proxies empty, as a replica behind an unconfigured proxy
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{gw.base_url}/")).status_code == 200
        assert not [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
        for i in range(5):
            await _login(client, gw, _password(f"user{i}", "wrong"), f"10.3.0.{i}")
            await client.get(f"{gw.base_url}/", headers={"X-Forwarded-For": "10.3.1.1"})
    warned = [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert warned[0].levelno == logging.WARNING
    assert "TRUSTED_PROXIES" in warned[0].getMessage()
    assert "127.0.0.1" in warned[0].getMessage()  # the peer that sent it


@pytest.mark.anyio
async def test_trusted_proxies_set_means_no_warning(
    cast: str, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http.app")
    gw = start_gateway(**THROTTLED)
    async with httpx.AsyncClient(timeout=10) as client:
        await _login(client, gw, _password("user1", "wrong"), "10.3.0.1")
    assert not [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]


@pytest.mark.anyio
async def test_the_throttle_is_shared_by_replicas(cast: str, start_gateway: StartGateway) -> None:
    one, two = start_gateway(**THROTTLED), start_gateway(**THROTTLED)
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(THROTTLED["login_free_failures"] + 1):
            gw = (one, two)[i % 2]
            r = await _login(client, gw, _password("alice", "wrong"), f"10.1.0.{i}")
            assert r.status_code == 401
        for gw in (one, two):
            r = await _login(client, gw, _password("alice", ALICE_PASSWORD), "10.1.1.1")
            assert r.status_code == 429, (gw.base_url, r.text)


@pytest.mark.anyio
async def test_a_login_flood_leaves_streams_and_other_accounts_alone(
    cast: str, start_gateway: StartGateway
) -> None:
    # Generous free attempts: the flood really reaches the password check, one scrypt thread.
    gw = start_gateway(
        trusted_proxies=("127.0.0.1/32",),
        login_free_failures=10_000,
        login_free_failures_per_address=10_000,
        login_hash_threads=1,
        login_hash_queue=8,
    )
    stop = asyncio.Event()
    flood_codes: list[int] = []

    async def flood(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            r = await _login(client, gw, _password("alice", f"bad {n}"), f"10.2.0.{n}")
            flood_codes.append(r.status_code)

    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=40)) as client:
        flooders = [asyncio.create_task(flood(client, n)) for n in range(30)]
        try:
            await asyncio.sleep(0.5)  # the queue is full by now
            latencies = []
            for _ in range(5):
                started = time.monotonic()
                async with stream_as(ROOT, gw.base_url):  # StreamError unless 200
                    pass
                latencies.append(time.monotonic() - started)
            # a keypair login needs no password check: it is not queued behind the flood
            started = time.monotonic()
            r = await _login(client, gw, _keypair(BOB), "10.2.1.1")
            keypair_took = time.monotonic() - started
            assert r.status_code == 200
        finally:
            stop.set()
            await asyncio.gather(*flooders)
    print(
        f"flood: {len(flood_codes)} logins, {flood_codes.count(503)} turned away (503); "
        f"stream opened in max {max(latencies):.3f}s; keypair login {keypair_took:.3f}s"
    )
    assert 503 in flood_codes  # the password queue did fill up
    # Not a speed target: a stream (or a keypair login) queued behind the password checks
    # would wait for the whole queue (32 scrypt runs on one thread, several seconds); the
    # bound leaves room for a loaded CI machine (1.08 s seen under the full suite).
    assert max(latencies) < 3.0, latencies
    assert keypair_took < 3.0


def _login_sync(gw: RunningGateway, person: Person) -> str:
    r = httpx.post(f"{gw.base_url}/auth/login", json=_keypair(person), timeout=10)
    assert r.status_code == 200, r.text
    return r.cookies[SESSION_COOKIE]


def _me(gw: RunningGateway, token: str) -> int:
    r = httpx.get(f"{gw.base_url}/auth/me", cookies={SESSION_COOKIE: token}, timeout=5)
    return r.status_code


def test_sessions_per_key_are_capped_oldest_first(
    cast: str, start_gateway: StartGateway, sync_redis: redis.Redis
) -> None:
    gw = start_gateway(max_sessions_per_key=3)
    tokens = [_login_sync(gw, ALICE) for _ in range(6)]
    bob = _login_sync(gw, BOB)
    assert [_me(gw, t) for t in tokens] == [401, 401, 401, 200, 200, 200]
    assert _me(gw, bob) == 200  # another key's sessions are its own
    keys = Keys.on(sync_redis)  # kev:... on one redis-server, {kev}:... on a cluster
    index = keys.browser_sessions_of(ALICE.access_key)
    assert sync_redis.zcard(index) == 3
    session_bytes = sync_redis.memory_usage(keys.browser_session(token_hash(tokens[-1])))
    index_bytes = sync_redis.memory_usage(index)
    assert session_bytes is not None and index_bytes is not None
    print(f"memory: session {session_bytes} B, index of 3 {index_bytes} B")
    assert session_bytes < 1024


@pytest.mark.anyio
async def test_a_weak_password_is_refused_on_import(store: IdentityStore) -> None:
    for password, rule in [
        ("short", "at least 12 characters"),
        ("aaaaaaaaaaaabbbb", "at least 5 different characters"),
        ("my name is alice!", "must not contain the user id"),
    ]:
        doc = {"users": [{"user_id": "alice", "role": "user", "domain": "d", "password": password}]}
        with pytest.raises(IdentityError, match=rf"users\[0\] \('alice'\): .*{rule}") as info:
            await store.import_data(doc)
        assert password not in str(info.value)
    assert await store.get_user("alice") is None
