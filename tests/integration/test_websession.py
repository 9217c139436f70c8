"""Browser sessions and CORS end to end: real redis-server (and every test again on a real
Redis Cluster), real uvicorn, httpx (the settings check of an origin:
tests/unit/test_settings.py)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterator

import anyio
import httpx
import msgspec
import pytest
import redis

from gateway.consumer import StreamError, decode_data, open_stream
from gateway.identity.models import Keypair, User
from gateway.identity.passwords import hash_password
from gateway.identity.sessions import SESSION_COOKIE
from gateway.identity.store import IdentityStore
from publisher import AsyncPublisher, Keys, SyncPublisher
from publisher.connection import connect_async
from tests.support.fleet import kernel_events
from tests.support.gateway_server import RunningGateway
from tests.support.http import STREAM_PATH as PATH
from tests.support.http import problem
from tests.support.identities import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_OFF,
    CAROL,
    ROOT,
    Person,
    seed,
    session_of,
)
from tests.support.wait import wait_until

DASH = "http://dash.example.test"
EVIL = "http://evil.example.test"


StartGateway = Callable[..., RunningGateway]


@pytest.fixture
def redis_url(topology_url: str) -> str:
    """Every test here runs on a single redis-server and on a Redis Cluster: the sessions,
    their index and the login throttle are the gateway's writes on either."""
    return topology_url


@pytest.fixture
def cast(redis_url: str) -> str:
    """The shared cast, and alice's browser-login password."""
    anyio.run(functools.partial(seed, redis_url, password=True))
    return redis_url


@pytest.fixture
def gateway(cast: str, start_gateway: StartGateway) -> RunningGateway:
    """The shared gateway, with a dashboard's origin allowed."""
    return start_gateway(cors_origins=(DASH,))


def _login(gw: RunningGateway, body: object, **headers: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/auth/login", json=body, headers=headers, timeout=10)


def _keypair(person: Person) -> dict[str, str]:
    return {"access_key": person.access_key, "secret_key": person.secret_key}


def _token(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    token = response.cookies[SESSION_COOKIE]
    assert token
    return token


def _cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={token}"}


def _me(gw: RunningGateway, token: str) -> httpx.Response:
    return httpx.get(f"{gw.base_url}/auth/me", headers=_cookie(token), timeout=5)


def _cookie_attributes(response: httpx.Response) -> dict[str, str]:
    (raw,) = response.headers.get_list("set-cookie")
    _, *attrs = (part.strip() for part in raw.split(";"))
    out = {}
    for attr in attrs:
        name, _, value = attr.partition("=")
        out[name.lower()] = value
    return out


def _stream_status(gw: RunningGateway, token: str, query: str = "") -> int:
    with httpx.stream("GET", gw.base_url + PATH + query, headers=_cookie(token), timeout=5) as r:
        return r.status_code


def _wait_until_refused(gw: RunningGateway, token: str, within: float) -> float:
    """Seconds until the session stops working (fails after ``within``)."""
    return wait_until(lambda: _me(gw, token).status_code == 401, within, "the session to end")


# -- login --------------------------------------------------------------------------------------


def test_login_with_a_keypair_sets_an_httponly_session_cookie(
    gateway: RunningGateway, sync_redis: redis.Redis
) -> None:
    response = _login(gateway, _keypair(ALICE))
    token = _token(response)
    assert response.json() == {
        "access_key": ALICE.access_key,
        "user_id": "alice",
        "role": "user",
        "domain": "default",
    }
    assert ALICE.secret_key not in response.text
    assert response.headers["cache-control"] == "no-store"
    attrs = _cookie_attributes(response)
    assert attrs == {
        "httponly": "",
        "max-age": str(int(gateway.settings.browser.session_ttl)),
        "path": "/",
        "samesite": "Lax",
    }
    # Redis holds the session under the token's hash, never the token, with the session TTL.
    key = Keys.on(sync_redis).browser_session(hashlib.sha256(token.encode()).hexdigest())
    assert 0 < sync_redis.pttl(key) <= gateway.settings.browser.session_ttl * 1000
    assert not any(token.encode() in k for k in sync_redis.keys("*"))
    assert _me(gateway, token).json()["access_key"] == ALICE.access_key


def test_login_with_user_password_speaks_for_the_first_active_keypair(
    gateway: RunningGateway,
) -> None:
    response = _login(gateway, {"user_id": "alice", "password": ALICE_PASSWORD})
    token = _token(response)
    # alice has two keypairs: the session takes the first in order (AKIAALICE0... < ...SECOND)
    expected = {"access_key": ALICE.access_key, "user_id": "alice", "role": "user"}
    assert response.json() == {**expected, "domain": "default"}
    assert _me(gateway, token).json()["user_id"] == "alice"


def test_failed_logins_all_look_the_same(gateway: RunningGateway) -> None:
    attempts = {
        "wrong secret": {"access_key": ALICE.access_key, "secret_key": "not-the-secret-at-all"},
        "unknown key": {"access_key": "AKIAUNKNOWN000000000", "secret_key": ALICE.secret_key},
        "inactive key": _keypair(BOB_OFF),
        "wrong password": {"user_id": "alice", "password": "not the password"},
        "unknown user": {"user_id": "nobody", "password": ALICE_PASSWORD},
        "user without password": {"user_id": "bob", "password": "anything"},
    }
    answers = {}
    for label, body in attempts.items():
        response = _login(gateway, body)
        assert SESSION_COOKIE not in response.cookies, label
        answers[label] = (response.status_code, response.content)
    assert set(answers.values()) == {
        (401, b'{"type":"https://api.backend.ai/probs/auth-failed","title":"Login failed"}')
    }


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"not json", "application/json"),
        (b"[]", "application/json"),
        (b"{}", "application/json"),
        (b'{"access_key": "AKIAALICE00000000000"}', "application/json"),
        (
            b'{"access_key": "a", "secret_key": "b", "user_id": "c", "password": "d"}',
            "application/json",
        ),
        (b'{"access_key": "a", "password": "d"}', "application/json"),
        (b'{"access_key": "a", "secret_key": "b", "extra": 1}', "application/json"),
        (b'{"access_key": 5, "secret_key": "b"}', "application/json"),
        (b'{"access_key": "", "secret_key": "b"}', "application/json"),
        (json.dumps({"user_id": "alice", "password": "x" * 5000}).encode(), "application/json"),
        (b"access_key=a&secret_key=b", "application/x-www-form-urlencoded"),
        (b'{"access_key": "a", "secret_key": "b"}', "text/plain"),
    ],
)
def test_malformed_login_requests_are_400(
    gateway: RunningGateway, body: bytes, content_type: str
) -> None:
    response = httpx.post(
        f"{gateway.base_url}/auth/login",
        content=body,
        headers={"Content-Type": content_type},
        timeout=5,
    )
    assert problem(response)[:2] == (400, "invalid-api-params")
    assert SESSION_COOKIE not in response.cookies


def test_an_oversized_body_is_refused_even_without_content_length(
    gateway: RunningGateway,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "alice", "password": "'
        for _ in range(10):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(
        f"{gateway.base_url}/auth/login",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert "content-length" not in response.request.headers
    assert problem(response)[:2] == (400, "invalid-api-params")


def test_secure_cookie_when_configured(cast: str, start_gateway: StartGateway) -> None:
    gw = start_gateway(cookie_secure=True, session_ttl=600)
    response = _login(gw, _keypair(ALICE))
    attrs = _cookie_attributes(response)
    assert "secure" in attrs
    assert attrs["max-age"] == "600"
    assert attrs["samesite"] == "Lax"
    assert "httponly" in attrs


def test_login_and_logout_refuse_foreign_origins(gateway: RunningGateway) -> None:
    refused = _login(gateway, _keypair(ALICE), Origin=EVIL)
    assert problem(refused)[:2] == (403, "generic-forbidden")
    assert SESSION_COOKIE not in refused.cookies
    assert problem(_login(gateway, _keypair(ALICE), Origin="null"))[0] == 403
    # the gateway's own origin and the configured one are fine
    assert _login(gateway, _keypair(ALICE), Origin=gateway.base_url).status_code == 200
    token = _token(_login(gateway, _keypair(ALICE), Origin=DASH))
    logout = httpx.post(
        f"{gateway.base_url}/auth/logout",
        headers={**_cookie(token), "Content-Type": "application/json", "Origin": EVIL},
        timeout=5,
    )
    assert problem(logout)[:2] == (403, "generic-forbidden")
    assert _me(gateway, token).status_code == 200


# -- sessions -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_cookie_opens_a_stream_with_the_roles_visibility(
    gateway: RunningGateway, cast: str
) -> None:
    alice = _token(_login(gateway, {"user_id": "alice", "password": ALICE_PASSWORD}))
    root = _token(_login(gateway, _keypair(ROOT)))
    mine, bobs, carols = (
        session_of(ALICE, "alice-1"),
        session_of(BOB, "bob-1"),
        session_of(CAROL, "carol-1", group="ml"),
    )
    async with (
        open_stream(gateway.base_url + PATH, headers=_cookie(alice)) as (parser, alice_events),
        open_stream(gateway.base_url + PATH, headers=_cookie(root)) as (_, root_events),
    ):
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish_many(
                [
                    bobs.started(),
                    mine.started(),
                    carols.started(),
                    mine.terminated("done", "SUCCESS"),
                ]
            )
        seen_by_alice = await kernel_events(alice_events, 2)
        seen_by_root = await kernel_events(root_events, 4)
    # a browser stream (cookie) starts with EventSource's reconnect hint, jittered
    hint = gateway.settings.fanout
    assert hint.retry_ms <= (parser.retry_ms or 0) <= hint.retry_ms + hint.retry_jitter_ms
    assert [(e.event, decode_data(e).sessionId) for e in seen_by_alice] == [
        ("kernel_started", "alice-1"),
        ("kernel_terminated", "alice-1"),
    ]
    assert {decode_data(e).sessionId for e in seen_by_root} == {"alice-1", "bob-1", "carol-1"}


@pytest.mark.anyio
async def test_a_session_id_filter_uses_the_sessions_access_key(
    gateway: RunningGateway, cast: str
) -> None:
    token = _token(_login(gateway, _keypair(ALICE)))
    async with open_stream(
        gateway.base_url + PATH, params={"sessionId": "s1"}, headers=_cookie(token)
    ) as (_, events):
        with SyncPublisher.from_url(cast) as pub:
            pub.publish_many(
                [session_of(ALICE, "s2").started(), session_of(ALICE, "s1").preparing()]
            )
        (event,) = await kernel_events(events, 1)
    assert decode_data(event).sessionId == "s1"


def test_a_signature_wins_over_a_cookie(gateway: RunningGateway) -> None:
    from gateway.identity.signing import signed_headers

    headers = signed_headers("GET", PATH, gateway.host, ROOT.access_key, ROOT.secret_key)
    headers["Cookie"] = f"{SESSION_COOKIE}=garbage"
    with httpx.stream("GET", gateway.base_url + PATH, headers=headers, timeout=5) as response:
        assert response.status_code == 200


@pytest.mark.parametrize("token", ["garbage", "A" * 43, "%00" * 20])
def test_unknown_cookies_are_401(gateway: RunningGateway, token: str) -> None:
    with httpx.stream("GET", gateway.base_url + PATH, headers=_cookie(token), timeout=5) as r:
        r.read()
        assert problem(r)[:2] == (401, "auth-failed")
    assert problem(_me(gateway, token))[:2] == (401, "auth-failed")


def test_without_cookie_or_signature_the_stream_still_asks_for_a_signature(
    gateway: RunningGateway,
) -> None:
    response = httpx.get(gateway.base_url + PATH, timeout=5)
    assert problem(response)[:2] == (400, "invalid-auth-params")
    assert problem(httpx.get(f"{gateway.base_url}/auth/me", timeout=5))[:2] == (
        401,
        "auth-failed",
    )


@pytest.mark.anyio
async def test_logout_ends_the_session(gateway: RunningGateway) -> None:
    token = _token(_login(gateway, _keypair(ALICE)))
    assert _stream_status(gateway, token) == 200
    response = httpx.post(
        f"{gateway.base_url}/auth/logout",
        headers={**_cookie(token), "Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 204
    attrs = _cookie_attributes(response)
    assert attrs["max-age"] == "0" and "httponly" in attrs
    assert response.headers["set-cookie"].startswith(f'{SESSION_COOKIE}="";')
    assert problem(_me(gateway, token))[:2] == (401, "auth-failed")
    with pytest.raises(StreamError) as refused:
        async with open_stream(gateway.base_url + PATH, headers=_cookie(token)):
            pass
    assert refused.value.status == 401


def test_a_new_login_replaces_the_browsers_previous_session(gateway: RunningGateway) -> None:
    first = _token(_login(gateway, _keypair(ALICE)))
    second = _token(_login(gateway, _keypair(ALICE), Cookie=f"{SESSION_COOKIE}={first}"))
    assert _me(gateway, first).status_code == 401
    assert _me(gateway, second).status_code == 200


def test_a_session_expires_with_its_ttl(cast: str, start_gateway: StartGateway) -> None:
    gw = start_gateway(session_ttl=1.0)
    response = _login(gw, _keypair(ALICE))
    assert _cookie_attributes(response)["max-age"] == "1"
    token = _token(response)
    assert _me(gw, token).status_code == 200
    assert _wait_until_refused(gw, token, within=5) < 2.5
    assert _stream_status(gw, token) == 401


def test_a_deactivated_keypair_ends_its_sessions_within_the_cache_ttl(
    cast: str, start_gateway: StartGateway
) -> None:
    ttl = 1.0
    gw = start_gateway(identity_cache_ttl=ttl)
    token = _token(_login(gw, _keypair(ALICE)))
    assert _stream_status(gw, token) == 200  # the keypair is now in the replica's cache

    async def deactivate() -> None:
        client = connect_async(cast)
        try:
            await IdentityStore(client, Keys.on(client)).set_keypair_active(ALICE.access_key, False)
        finally:
            await client.aclose()

    anyio.run(deactivate)
    assert _wait_until_refused(gw, token, within=ttl + 3) <= ttl + 0.5
    assert _stream_status(gw, token) == 401
    # and a new login with it is refused too
    assert _login(gw, _keypair(ALICE)).status_code == 401


def _store_call(redis_url: str, call: Callable[[IdentityStore], Awaitable[None]]) -> None:
    """Run ``call(store)`` (a coroutine) against the identity store, as an operator would."""

    async def run() -> None:
        client = connect_async(redis_url)
        try:
            await call(IdentityStore(client, Keys.on(client)))
        finally:
            await client.aclose()

    anyio.run(run)


def _session_stored(sync_redis: redis.Redis, token: str) -> bool:
    name = hashlib.sha256(token.encode()).hexdigest()
    keys = Keys.on(sync_redis)
    in_index = sync_redis.zscore(keys.browser_sessions_of(ALICE.access_key), name) is not None
    return bool(sync_redis.exists(keys.browser_session(name))) or in_index


NEW_SECRET = "rotated-secret-" + "r" * 30
NEW_PASSWORD = "a brand new passphrase 42"


def test_a_rotated_secret_ends_the_sessions_opened_with_the_old_one(
    gateway: RunningGateway, cast: str, sync_redis: redis.Redis
) -> None:
    old = _token(_login(gateway, _keypair(ALICE)))
    by_password = _token(_login(gateway, {"user_id": "alice", "password": ALICE_PASSWORD}))
    assert _stream_status(gateway, old) == 200  # the keypair is now in the replica's cache
    # `gateway keypair add --replace` with a new secret (an import does the same write)
    _store_call(
        cast,
        lambda store: store.add_keypair(
            Keypair(ALICE.access_key, NEW_SECRET, "alice"), replace=True
        ),
    )
    # the change message drops the cached keypair at once: no cache ttl to wait out
    assert _wait_until_refused(gateway, old, within=3) < 1.0
    assert problem(_me(gateway, old))[:2] == (401, "auth-failed")
    assert _stream_status(gateway, old) == 401
    assert not _session_stored(sync_redis, old), "a refused session is deleted"
    # the old secret opens nothing any more; the new one does
    assert _login(gateway, _keypair(ALICE)).status_code == 401
    fresh = _token(_login(gateway, {"access_key": ALICE.access_key, "secret_key": NEW_SECRET}))
    assert _me(gateway, fresh).json()["access_key"] == ALICE.access_key
    assert _stream_status(gateway, fresh) == 200
    # a password session was not opened with the secret: it stays
    assert _me(gateway, by_password).status_code == 200


def test_a_changed_password_ends_the_sessions_opened_with_the_old_one(
    gateway: RunningGateway, cast: str, sync_redis: redis.Redis
) -> None:
    old = _token(_login(gateway, {"user_id": "alice", "password": ALICE_PASSWORD}))
    by_keypair = _token(_login(gateway, _keypair(ALICE)))
    assert _stream_status(gateway, old) == 200
    user = User("alice", "user", "default", hash_password(NEW_PASSWORD))
    _store_call(cast, lambda store: store.add_user(user, replace=True))
    assert _wait_until_refused(gateway, old, within=3) < 1.0
    assert _stream_status(gateway, old) == 401
    assert not _session_stored(sync_redis, old)
    assert _login(gateway, {"user_id": "alice", "password": ALICE_PASSWORD}).status_code == 401
    fresh = _token(_login(gateway, {"user_id": "alice", "password": NEW_PASSWORD}))
    assert _me(gateway, fresh).status_code == 200
    # a keypair session was not opened with the password: it stays
    assert _me(gateway, by_keypair).status_code == 200


def test_a_session_stored_before_sessions_were_bound_is_refused(
    gateway: RunningGateway, sync_redis: redis.Redis
) -> None:
    """A session without a credential digest (written by an older gateway) may have been
    opened with a secret rotated since: it is refused, and the browser logs in again."""
    token = _token(_login(gateway, _keypair(ALICE)))
    key = Keys.on(sync_redis).browser_session(hashlib.sha256(token.encode()).hexdigest())
    raw = sync_redis.get(key)
    assert isinstance(raw, bytes)
    stored = msgspec.msgpack.decode(raw)
    del stored["credential"]
    sync_redis.set(key, msgspec.msgpack.encode(stored), keepttl=True)
    assert _me(gateway, token).status_code == 401


# -- CORS ---------------------------------------------------------------------------------------


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_an_allowed_origin_gets_credentialed_cors_headers(gateway: RunningGateway) -> None:
    token = _token(_login(gateway, _keypair(ALICE), Origin=DASH))
    response = httpx.get(
        f"{gateway.base_url}/auth/me", headers={**_cookie(token), "Origin": DASH}, timeout=5
    )
    assert response.status_code == 200
    assert _cors(response) == {
        "access-control-allow-origin": DASH,
        "access-control-allow-credentials": "true",
    }
    assert "Origin" in response.headers.get_list("vary")
    # the stream: headers on the streaming response too, and on its errors
    headers = {**_cookie(token), "Origin": DASH}
    with httpx.stream("GET", gateway.base_url + PATH, headers=headers, timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["access-control-allow-origin"] == DASH
        assert stream.headers["access-control-allow-credentials"] == "true"
    refused = httpx.get(
        gateway.base_url + PATH, headers={**_cookie("x" * 43), "Origin": DASH}, timeout=5
    )
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == DASH


def test_a_foreign_origin_gets_no_cors_headers(gateway: RunningGateway) -> None:
    token = _token(_login(gateway, _keypair(ALICE)))
    response = httpx.get(
        f"{gateway.base_url}/auth/me", headers={**_cookie(token), "Origin": EVIL}, timeout=5
    )
    assert response.status_code == 200  # CORS is the browser's to enforce: it sees no grant
    assert _cors(response) == {}
    assert "Origin" in response.headers.get_list("vary")
    plain = httpx.get(f"{gateway.base_url}/auth/me", headers=_cookie(token), timeout=5)
    assert _cors(plain) == {} and "vary" not in plain.headers


@pytest.mark.parametrize(
    ("path", "method", "request_headers"),
    [
        ("/auth/login", "POST", "content-type"),
        ("/auth/logout", "POST", "Content-Type"),
        (PATH, "GET", "last-event-id"),
        ("/auth/me", "GET", None),
    ],
)
def test_preflight(
    gateway: RunningGateway, path: str, method: str, request_headers: str | None
) -> None:
    ask = {"Origin": DASH, "Access-Control-Request-Method": method}
    if request_headers:
        ask["Access-Control-Request-Headers"] = request_headers
    response = httpx.options(gateway.base_url + path, headers=ask, timeout=5)
    assert response.status_code == 204
    cors = _cors(response)
    assert cors["access-control-allow-origin"] == DASH
    assert cors["access-control-allow-credentials"] == "true"
    assert method in cors["access-control-allow-methods"]
    if request_headers:
        assert request_headers.lower() in cors["access-control-allow-headers"]
    assert "*" not in cors.values()

    foreign = httpx.options(gateway.base_url + path, headers={**ask, "Origin": EVIL}, timeout=5)
    assert problem(foreign)[:2] == (403, "generic-forbidden")
    assert _cors(foreign) == {}


def test_preflight_refuses_other_methods_and_headers(gateway: RunningGateway) -> None:
    for ask in (
        {"Access-Control-Request-Method": "DELETE"},
        {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"},
    ):
        response = httpx.options(
            f"{gateway.base_url}/auth/me", headers={"Origin": DASH, **ask}, timeout=5
        )
        assert response.status_code == 403
        assert _cors(response) == {}


def test_no_cors_at_all_without_configured_origins(cast: str, start_gateway: StartGateway) -> None:
    gw = start_gateway()
    response = httpx.get(f"{gw.base_url}/health", headers={"Origin": DASH}, timeout=5)
    assert _cors(response) == {}
    preflight = httpx.options(
        f"{gw.base_url}/auth/login",
        headers={"Origin": DASH, "Access-Control-Request-Method": "POST"},
        timeout=5,
    )
    assert preflight.status_code == 405
    assert _cors(preflight) == {}
    assert problem(_login(gw, _keypair(ALICE), Origin=DASH))[0] == 403


def test_login_failures_are_counted(gateway: RunningGateway) -> None:
    _login(gateway, {"user_id": "alice", "password": "wrong"})
    metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=5).text
    assert 'kev_auth_failures_total{kind="Login failed"} 1.0' in metrics
