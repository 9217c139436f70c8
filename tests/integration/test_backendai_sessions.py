"""Backend.AI's console sessions as a way in (gateway/identity/backendai_sessions.py), end to
end: a second real redis-server as the web server's Redis, its sessions stored byte for byte
as the web server stores them (tests/support/console_sessions.py), read by the gateway as the
read-only user ``gateway acl --backendai-sessions`` prints; a real gateway, httpx clients."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aredis

from gateway.cli.acl import render_backendai_sessions
from gateway.consumer import SSEEvent, StreamError, decode_data, open_stream
from gateway.identity.backendai_sessions import BackendAISessions
from gateway.identity.methods import RequestView
from gateway.identity.models import Identity
from gateway.identity.store import IdentityStore
from publisher import AsyncPublisher, Keys
from tests.support.console_sessions import Generation, login_value, logout_value, store_session
from tests.support.fleet import kernel_events
from tests.support.gateway_server import RunningGateway
from tests.support.http import STREAM_PATH, problem, stream_as
from tests.support.identities import ALICE, BOB, BOB_OFF, CAROL, Person, session_of
from tests.support.redis_server import RedisServer

USER = "kev-backendai-sessions"
#: the re-authorization period of the test gateway (max(1, identity_cache_ttl 0))
PERIOD = 1.0
#: commands a client may send without reading anything (connecting, health checks), and ours
HANDSHAKE = {"auth", "hello", "ping", "select", "client|setinfo", "config|resetstat", "info"}


@dataclass
class Console:
    """The web server's Redis: an admin client (the web server's side) and the URL the
    gateway reads it with (the read-only user)."""

    admin: redis.Redis
    url: str

    def gets(self) -> int:
        """GETs served since the last :meth:`reset`, after checking that nothing else that
        reads or writes was sent."""
        stats = self.admin.info("commandstats")
        called = {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
        assert set(called) - {"get"} <= HANDSHAKE, called
        return int(called.get("get", 0))

    def reset(self) -> None:
        self.admin.config_resetstat()


@pytest.fixture
def console(private_redis: RedisServer) -> Iterator[Console]:
    admin = redis.Redis.from_url(private_redis.url)
    password = secrets.token_urlsafe(16)
    admin.execute_command(*shlex.split(render_backendai_sessions(USER, password, fmt="commands")))
    # no database in the URL: the web server's, 0
    yield Console(admin, f"redis://{USER}:{password}@127.0.0.1:{private_redis.port}")
    admin.close()


@pytest.fixture
def gateway(
    cast: str, console: Console, start_gateway: Callable[..., RunningGateway]
) -> RunningGateway:
    return start_gateway(backendai_sessions=console.url)


def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"AIOHTTP_SESSION={session_id}"}


def _header(session_id: str) -> dict[str, str]:
    return {"X-BackendAI-SessionID": session_id}


def _get(gw: RunningGateway, headers: dict[str, str], path: str = STREAM_PATH) -> httpx.Response:
    with httpx.stream("GET", gw.base_url + path, headers=headers, timeout=5) as response:
        response.read()
        return response


async def _publish(redis_url: str, *people: Person, name: str = "started") -> None:
    async with AsyncPublisher.from_url(redis_url) as pub:
        await pub.publish_many([getattr(session_of(p, f"{p.user_id}-1"), name)() for p in people])


async def _server_close(events: AsyncIterator[SSEEvent]) -> tuple[SSEEvent, float]:
    """The stream's ``server_close`` and when it came (``time.monotonic()``)."""
    with anyio.fail_after(PERIOD + 5):
        async for event in events:
            if event.event == "server_close":
                return event, time.monotonic()
    raise AssertionError("the stream ended without server_close")


# -- ways in ------------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["23.09", "26.8"])
@pytest.mark.anyio
async def test_the_cookie_streams_with_the_stores_rights_not_the_sessions_role(
    gateway: RunningGateway, console: Console, cast: str, generation: Generation
) -> None:
    # alice is a user; her session's copy of the role says superadmin
    sid = store_session(console.admin, login_value(ALICE, role="superadmin", generation=generation))
    async with open_stream(gateway.base_url + STREAM_PATH, headers=_cookie(sid)) as (
        parser,
        events,
    ):
        await _publish(cast, BOB, ALICE, CAROL)
        await _publish(cast, ALICE, name="terminated")
        seen = await kernel_events(events, 2)
    assert [(e.event, decode_data(e).ownerAccessKey) for e in seen] == [
        ("kernel_started", ALICE.access_key),
        ("kernel_terminated", ALICE.access_key),
    ]
    # a browser's stream: EventSource's reconnect hint
    assert parser.retry_ms is not None
    # what a superadmin may ask for, alice may not
    response = _get(gateway, _cookie(sid), f"{STREAM_PATH}?ownerAccessKey={BOB.access_key}")
    assert problem(response)[:2] == (403, "generic-forbidden")


@pytest.mark.anyio
async def test_the_header_opens_a_stream(
    gateway: RunningGateway, console: Console, cast: str
) -> None:
    sid = store_session(console.admin, login_value(ALICE, generation="23.09"))
    async with open_stream(gateway.base_url + STREAM_PATH, headers=_header(sid)) as (
        parser,
        events,
    ):
        await _publish(cast, BOB, ALICE)
        (event,) = await kernel_events(events, 1)
    assert decode_data(event).ownerAccessKey == ALICE.access_key
    assert parser.retry_ms is None  # not a browser's EventSource: no retry: block


@pytest.mark.parametrize("path", ["/func/stream/kernel/_/events", "/func/events/session"])
@pytest.mark.anyio
async def test_the_web_servers_proxy_paths_serve_every_method(
    gateway: RunningGateway, console: Console, cast: str, path: str
) -> None:
    sid = store_session(console.admin, login_value(ALICE))
    async with (
        open_stream(gateway.base_url + path, headers=_cookie(sid)) as (_, by_cookie),
        stream_as(ALICE, gateway.base_url + path) as (_, signed),
    ):
        await _publish(cast, BOB, ALICE)
        seen = [(await kernel_events(events, 1))[0] for events in (by_cookie, signed)]
    for event in seen:
        assert event.event == "kernel_started"
        assert json.loads(event.data)["ownerAccessKey"] == ALICE.access_key


# -- refusals -----------------------------------------------------------------------------------

NOBODY = Person("nobody", "user", "default", "AKIANOBODY0000000000", "secret-nobody-" + "n" * 30)
REFUSED: dict[str, Callable[[], str]] = {
    "deactivated keypair": lambda: login_value(BOB_OFF),
    "unknown keypair": lambda: login_value(NOBODY),
    "another secret": lambda: login_value(ALICE, secret_key="not-alices-secret-" + "q" * 24),
    "not authenticated": lambda: json.dumps(
        {"created": int(time.time()), "session": {"authenticated": False}}
    ),
    "logged out": logout_value,
    "past expiration_dt": lambda: login_value(ALICE, logged_in_ago=100, lifetime=60),
    "garbled": lambda: "{not json",
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_session_that_does_not_speak_for_an_active_keypair_is_401(
    gateway: RunningGateway, console: Console, case: str
) -> None:
    sid = store_session(console.admin, REFUSED[case]())
    _get(gateway, _cookie(sid))  # the connection and its handshake, before counting
    console.reset()
    for headers in (_cookie(sid), _header(sid)):
        assert problem(_get(gateway, headers))[:2] == (401, "auth-failed")
    assert console.gets() == 2  # one GET per request, nothing else


MALFORMED = [
    "*",
    "AIOHTTP_SESSION_*",
    "0" * 31,
    "0" * 33,
    "ABCDEF0123456789ABCDEF0123456789",  # upper case: uuid4().hex is lower
    "3f2b8c1e-4a5d-4e6f-8a7b-9c0d1e2f3a4b",  # str(uuid4()), not .hex
    "../" + "0" * 29,
    "0" * 32 + "%0d%0aFLUSHALL",
]


def test_a_forged_or_unknown_id_reads_nothing(gateway: RunningGateway, console: Console) -> None:
    victim = store_session(console.admin, login_value(BOB))
    _get(gateway, _cookie(secrets.token_hex(16)))  # connect first
    console.reset()
    for value in MALFORMED:
        for headers in (_cookie(value), _header(value)):
            assert problem(_get(gateway, headers))[:2] == (401, "auth-failed"), value
    assert console.gets() == 0  # refused on sight
    unknown = [secrets.token_hex(16) for _ in range(3)]
    for value in unknown:
        assert problem(_get(gateway, _cookie(value)))[:2] == (401, "auth-failed")
    assert console.gets() == len(unknown)  # one GET each
    assert console.admin.exists(f"AIOHTTP_SESSION_{victim}")  # nothing written either


def test_a_signature_wins_and_no_session_asks_for_one(
    gateway: RunningGateway, console: Console
) -> None:
    sid = store_session(console.admin, login_value(ALICE))
    for empty in ({}, _cookie(""), _header("")):  # empty: a logout's cleared cookie
        assert problem(_get(gateway, empty))[:2] == (400, "invalid-auth-params")
    # a (bad) signature is judged as a signature, whatever session comes with it
    headers = {**_cookie(sid), "Authorization": "BackendAI signMethod=HMAC-SHA256, credential=x"}
    assert problem(_get(gateway, headers))[0] == 400


def test_the_web_servers_redis_away_is_503(
    gateway: RunningGateway, private_redis: RedisServer
) -> None:
    private_redis.stop()
    response = _get(gateway, _cookie(secrets.token_hex(16)))
    assert problem(response)[:2] == (503, "service-unavailable")
    assert response.headers["retry-after"] == "2"


# -- open streams follow the session ------------------------------------------------------------


@pytest.mark.parametrize("how", ["DEL", "invalidate"])
@pytest.mark.anyio
async def test_a_logout_ends_the_stream_within_the_period(
    gateway: RunningGateway, console: Console, cast: str, how: str
) -> None:
    sid = store_session(console.admin, login_value(ALICE))
    async with open_stream(gateway.base_url + STREAM_PATH, headers=_cookie(sid)) as (_, events):
        await _publish(cast, ALICE)
        await kernel_events(events, 1)
        key = f"AIOHTTP_SESSION_{sid}"
        if how == "DEL":
            console.admin.delete(key)
        else:  # what the web server's logout does: the same key, empty data, same TTL
            console.admin.set(key, logout_value(), keepttl=True)
        logged_out = time.monotonic()
        close, at = await _server_close(events)
    took = at - logged_out
    print(f"\nlogout ({how}) -> server_close logged_out: {took * 1000:.0f} ms (period {PERIOD} s)")
    assert json.loads(close.data)["reason"] == "logged_out"
    assert took <= PERIOD + 0.5
    assert problem(_get(gateway, _cookie(sid)))[:2] == (401, "auth-failed")


@pytest.mark.anyio
async def test_a_session_past_its_expiration_ends_its_stream(
    gateway: RunningGateway, console: Console, cast: str
) -> None:
    sid = store_session(console.admin, login_value(ALICE, lifetime=2))
    async with open_stream(gateway.base_url + STREAM_PATH, headers=_cookie(sid)) as (_, events):
        close, _ = await _server_close(events)
    assert json.loads(close.data)["reason"] == "session_expired"


@pytest.mark.anyio
async def test_a_deactivated_keypair_ends_the_stream_at_once(
    gateway: RunningGateway, console: Console, cast: str, async_redis: aredis.Redis
) -> None:
    sid = store_session(console.admin, login_value(ALICE))
    async with open_stream(gateway.base_url + STREAM_PATH, headers=_header(sid)) as (_, events):
        await _publish(cast, ALICE)
        await kernel_events(events, 1)
        await IdentityStore(async_redis, Keys()).set_keypair_active(ALICE.access_key, False)
        changed = time.monotonic()
        close, at = await _server_close(events)
    assert json.loads(close.data)["reason"] == "revoked"
    assert at - changed < PERIOD  # by the change message, not the backstop
    with pytest.raises(StreamError) as refused:
        async with open_stream(gateway.base_url + STREAM_PATH, headers=_header(sid)):
            pass
    assert refused.value.status == 401


# -- the read-only user -------------------------------------------------------------------------


def test_the_acl_user_may_only_get_session_keys(console: Console) -> None:
    store_session(console.admin, login_value(ALICE), "0" * 32)
    console.admin.set("login_history_alice", "x")
    with redis.Redis.from_url(console.url) as reader:
        assert reader.get("AIOHTTP_SESSION_" + "0" * 32)
        for command in (
            ("SET", "AIOHTTP_SESSION_" + "1" * 32, "{}"),
            ("DEL", "AIOHTTP_SESSION_" + "0" * 32),
            ("GET", "login_history_alice"),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("FLUSHDB",),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                reader.execute_command(*command)


def test_gateway_acl_prints_that_user() -> None:
    password = secrets.token_urlsafe(16)
    env = {**os.environ, "KEV_ACL_BACKENDAI_SESSIONS_PASSWORD": password}
    for fmt in ("commands", "aclfile"):  # the two --format choices
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "acl", "--backendai-sessions", "--format", fmt],
            env=env, capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        assert out == render_backendai_sessions(USER, password, fmt=fmt)
        assert password not in out and "default" not in out
    assert "%R~AIOHTTP_SESSION_*" in out and "-@all +get " in out


@pytest.mark.anyio
async def test_with_the_web_servers_redis_away_logouts_wait_but_keypairs_are_judged(
    cast: str, store: IdentityStore, private_redis: RedisServer
) -> None:
    """A re-check that cannot read the sessions ends no stream for a logout it cannot see,
    and still ends one whose keypair was deactivated (no mass logout, no blind spot)."""
    with redis.Redis.from_url(private_redis.url) as admin:
        sids = [store_session(admin, login_value(p)) for p in (ALICE, BOB)]
    client = aredis.Redis.from_url(private_redis.url)
    try:
        method = BackendAISessions(client, store)
        credentials = [await method.authenticate(_view(_header(sid))) for sid in sids]
        await store.set_keypair_active(BOB.access_key, False)
        private_redis.stop()
        verdicts = await method.recheck([c for c in credentials if c is not None])
    finally:
        await client.aclose()
    assert verdicts == [Identity(ALICE.access_key, "alice", "user", "default"), "revoked"]


def _view(headers: dict[str, str]) -> RequestView:
    return RequestView("GET", STREAM_PATH, {k.lower(): v for k, v in headers.items()}, {})
