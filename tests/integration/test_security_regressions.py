"""A security review of the identity and login hardening: cases it had missed, each against
real processes (redis-server, a real gateway, the real CLIs). Each test fails on the bug it
names."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import anyio
import httpx
import pytest
import redis

from gateway.cli.acl import PROFILES, render
from gateway.identity.sessions import SESSION_COOKIE
from gateway.identity.store import IdentityStore
from publisher import Keys
from tests.support.gateway_server import RunningGateway
from tests.support.identities import ALICE, ALICE_PASSWORD, import_doc, seed
from tests.support.redis_server import free_port
from tests.support.secure_redis import spawn_redis

StartGateway = Callable[..., RunningGateway]


@pytest.fixture
def cast(redis_url: str) -> str:
    anyio.run(functools.partial(seed, redis_url, password=True))
    return redis_url


def _me(gw: RunningGateway, token: str) -> int:
    cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
    return httpx.get(f"{gw.base_url}/auth/me", headers=cookie, timeout=5).status_code


def _import(redis_url: str, doc: dict[str, object]) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await IdentityStore(client, Keys()).import_data(doc)
        finally:
            await client.aclose()

    anyio.run(run)


def _gone_within(gw: RunningGateway, token: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _me(gw, token) == 401:
            return True
        time.sleep(0.05)
    return False


def test_a_browser_session_ends_when_its_keypairs_secret_is_replaced(
    cast: str, start_gateway: StartGateway
) -> None:
    """README: a stream ends ``revoked`` when its keypair is "given a new secret". A browser
    session opened with the old secret keeps working (and its streams keep flowing) for the
    whole session_ttl: whoever stole the secret keeps access after the rotation."""
    gw = start_gateway(identity_cache_ttl=1.0)
    login = {"access_key": ALICE.access_key, "secret_key": ALICE.secret_key}
    response = httpx.post(f"{gw.base_url}/auth/login", json=login, timeout=10)
    token = response.cookies[SESSION_COOKIE]
    assert _me(gw, token) == 200
    doc = import_doc()
    for kp in doc["keypairs"]:
        if kp["access_key"] == ALICE.access_key:
            kp["secret_key"] = "rotated-secret-" + "r" * 30
    _import(cast, doc)
    assert _gone_within(gw, token, 3.0), "the session outlived its keypair's secret"


def test_a_browser_session_ends_when_its_users_password_is_replaced(
    cast: str, start_gateway: StartGateway
) -> None:
    """The same for a password login whose password an operator replaced."""
    gw = start_gateway(identity_cache_ttl=1.0)
    login = {"user_id": "alice", "password": ALICE_PASSWORD}
    response = httpx.post(f"{gw.base_url}/auth/login", json=login, timeout=10)
    token = response.cookies[SESSION_COOKIE]
    assert _me(gw, token) == 200
    doc = import_doc()
    for user in doc["users"]:
        if user["user_id"] == "alice":
            user["password"] = "a brand new passphrase 42"
    _import(cast, doc)
    assert _gone_within(gw, token, 3.0), "the session outlived the password it was opened with"


def test_a_login_body_that_never_ends_is_closed_in_time(
    cast: str, start_gateway: StartGateway
) -> None:
    """header_timeout bounds a request head on every path, but not the body that follows:
    a POST /auth/login whose body never completes holds its connection (and a task) forever,
    so max_connections such connections lock the replica (nginx passes the body through
    unbuffered, proxy_request_buffering off, so a byte a minute keeps both ends open)."""
    gw = start_gateway(header_timeout=1.0)
    port = int(gw.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n{"
        )
        sock.settimeout(6.0)
        try:
            while sock.recv(4096):
                pass
            closed = True
        except TimeoutError:
            closed = False
        except OSError:
            closed = True
    assert closed, "a login body that never ends kept its connection open past 6 s"


def test_kev_publish_never_prints_the_password_of_an_unparsable_url() -> None:
    """publisher.connection.check_url lets urlsplit's ValueError ("Invalid IPv6 URL") escape
    unredacted: argparse then prints the whole KEV_REDIS_URL, password included."""
    secret = "Zq9-review-secret"
    env = {**os.environ, "KEV_REDIS_URL": f"redis://:{secret}@[::1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "publisher.cli", "emit", "--name", "kernel_started",
         "--session-id", "s", "--owner-access-key", "AK", "--owner-user-id", "u"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert secret not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def acl_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    passwords = {p: f"{p}-pw-review" for p in PROFILES}
    users = {p: f"kev-{p}" for p in PROFILES}
    aclfile = tmp_path_factory.mktemp("acl") / "users.acl"
    aclfile.write_text(render(Keys("kev"), passwords, users, superuser_password="root-pw-review"))
    port = free_port()
    with spawn_redis(
        ["--port", str(port), "--aclfile", str(aclfile)],
        lambda: redis.Redis(port=port, password="root-pw-review", socket_timeout=1).ping(),
    ):
        yield port


def test_a_publisher_credential_cannot_change_the_type_of_an_event_key(acl_port: int) -> None:
    """``SET <prefix>:events x`` turned the stream into a string (every gateway's subscription
    then failed on WRONGTYPE and stayed unready, every publish failed, and neither the gateway
    nor the admin user could repair it). Each command the publish script runs is granted on
    its key alone (ACL selectors); what arguments cannot limit (XADD MAXLEN trims, the epoch
    may be overwritten) is in the README's threat model."""
    pub = redis.Redis(port=acl_port, username="kev-publisher", password="publisher-pw-review")
    with pub:
        for attack in (
            lambda: pub.set("kev:events", "x"),
            lambda: pub.delete("kev:events"),
            lambda: pub.xtrim("kev:events", maxlen=0),
            lambda: pub.xadd("kev:epoch", {"a": "b"}),
            lambda: pub.xadd("kev:pubseq:p", {"a": "b"}),
            lambda: pub.get("kev:events"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attack()
        # what the publish script does, it still may
        pub.xadd("kev:events", {"e": "x"})
        pub.set("kev:pubseq:p", "1")
        pub.set("kev:epoch", "1-0", nx=True)
