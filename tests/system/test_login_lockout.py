"""One client cannot lock the others out of browser login behind the shipped load balancers.

The review's probe: two replicas behind the shipped nginx with no ``trusted_proxies``, 26
failed logins on made-up accounts, and every user's login got 429, since every attempt was
counted against the proxy's address. Here the replicas trust the proxy as the local cluster
ships it (``devtools.cluster.NGINX_ADDRESS``), the attacker and the users connect from
different loopback addresses (127.0.0.2, 127.0.0.3), and the load balancer's
``X-Forwarded-For`` is what names them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from devtools.cluster import NGINX_ADDRESS
from gateway.identity.sessions import SESSION_COOKIE
from tests.support.gateway_server import RunningGateway
from tests.support.identities import ALICE_PASSWORD, BOB, seed
from tests.support.proxies import PROXY_RUNNERS, RunProxy

pytestmark = pytest.mark.anyio

ATTACKER, USER = "127.0.0.2", "127.0.0.3"


def _client(address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10, transport=httpx.AsyncHTTPTransport(local_address=address))


@pytest.mark.parametrize("runner", PROXY_RUNNERS)
async def test_failed_logins_on_made_up_accounts_lock_no_one_else_out(
    runner: RunProxy,
    tmp_path: Path,
    redis_url: str,
    sync_redis: redis.Redis,
    start_gateway: Callable[..., RunningGateway],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.http.app")
    await seed(redis_url, password=True)
    # Only the proxy trusted, as the shipped deployments do; the shipped free attempts, and a
    # first backoff long enough that no block ends while the test runs on a loaded machine
    # (with the shipped 1 s the attacker's address could be free again before its guesses,
    # which then got 401): who is counted is the point here, not for how long.
    one, two = (
        start_gateway(
            trusted_proxies=(f"{NGINX_ADDRESS}/32",), login_backoff=60.0, login_backoff_max=60.0
        )
        for _ in range(2)
    )
    async with (
        runner(tmp_path, [one.host, two.host, one.host]) as proxy,
        _client(ATTACKER) as attacker,
        _client(USER) as user,
    ):
        login = f"http://127.0.0.1:{proxy.port}/auth/login"
        codes = [
            (
                await attacker.post(login, json={"user_id": f"u{i}", "password": "x" * 12})
            ).status_code
            for i in range(40)
        ]
        assert codes[:20] == [401] * 20 and codes.count(429) >= 15, codes
        # counted against the attacker's own address, not the proxy's
        assert sync_redis.exists(f"kev:login-throttle:address:{ATTACKER}")
        assert not sync_redis.exists(f"kev:login-throttle:address:{NGINX_ADDRESS}")
        # The users get in, from their own address and even from the attacker's (a NAT
        # shared with it), with a password and with a keypair.
        bob = {"access_key": BOB.access_key, "secret_key": BOB.secret_key}
        alice = {"user_id": "alice", "password": ALICE_PASSWORD}
        for client in (user, attacker):
            for body in (alice, bob):
                r = await client.post(login, json=body)
                assert r.status_code == 200, (client, body.keys(), r.text)
                assert r.cookies.get(SESSION_COOKIE)
        # ... and while the attacker goes on guessing made-up accounts, at the same time
        guessed: list[int] = []
        got_in: list[int] = []

        async def guess() -> None:
            for i in range(40, 80):
                body = {"user_id": f"u{i}", "password": "x" * 12}
                guessed.append((await attacker.post(login, json=body)).status_code)

        async def log_in() -> None:
            for body in (alice, bob) * 3:
                got_in.append((await user.post(login, json=body)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(guess)
            tg.start_soon(log_in)
        assert set(guessed) == {429} and got_in == [200] * 6, (guessed, got_in)
        # Guessing one account still blocks it, for everyone.
        for i in range(6):
            r = await attacker.post(login, json={"user_id": "alice", "password": f"guess {i}"})
            assert r.status_code == 429, r.text  # the attacker's address is blocked
        with anyio.fail_after(5):
            r = await user.post(login, json=alice)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert (await user.post(login, json=bob)).status_code == 200
    assert not [rec for rec in caplog.records if "X-Forwarded-For" in rec.getMessage()]
