"""What the Redis ACL tests (one redis-server: tests/system/test_redis_acl.py; a cluster:
tests/system/test_redis_cluster_acl.py) run on the gateway's and the publisher's users: the
same flows on both, so a grant one topology's users lack fails the same way."""

from __future__ import annotations

import json

import anyio
import httpx

from gateway.identity.sessions import SESSION_COOKIE
from publisher import AsyncPublisher
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, session_of


async def publish_and_receive(base_url: str, publisher_url: str, name: str) -> None:
    """A publish on the publisher's user reaches a live stream; a resume after it replays
    the next one from history (the gateway's read-only script, EVALSHA_RO). ``name``
    prefixes the two session names."""
    with anyio.fail_after(20):
        async with stream_as(ROOT, base_url) as (_, events):
            async with AsyncPublisher.from_url(publisher_url) as pub:
                stream_id = await pub.publish(session_of(ALICE, f"{name}-01").started())
                assert stream_id is not None  # published, not buffered
            async for event in events:
                if event.event == "kernel_started":
                    assert json.loads(event.data)["sessionId"] == f"{name}-01"
                    assert event.id == stream_id
                    break
        async with AsyncPublisher.from_url(publisher_url) as pub:
            later = await pub.publish(session_of(ALICE, f"{name}-02").started())
            assert later is not None
        async with stream_as(ROOT, base_url, last_event_id=stream_id) as (_, events):
            async for event in events:
                assert event.event in ("kernel_started", "ping"), event
                if event.event == "kernel_started":
                    assert json.loads(event.data)["sessionId"] == f"{name}-02"
                    assert event.id == later
                    return


def browser_logins(base_url: str, alice_password: str) -> None:
    """Browser logins by keypair and by password (sessions, the login throttle), the
    session read back, a logout (a session write and a change message): each on the
    gateway's user; the replica stays ready."""
    login = httpx.post(
        f"{base_url}/auth/login",
        json={"access_key": ALICE.access_key, "secret_key": ALICE.secret_key},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    cookie = {"Cookie": f"{SESSION_COOKIE}={login.cookies[SESSION_COOKIE]}"}
    assert httpx.get(f"{base_url}/auth/me", headers=cookie, timeout=10).status_code == 200
    by_password = httpx.post(
        f"{base_url}/auth/login",
        json={"user_id": "alice", "password": alice_password},
        timeout=10,
    )
    assert by_password.status_code == 200, by_password.text
    out = httpx.post(
        f"{base_url}/auth/logout",
        headers={**cookie, "Content-Type": "application/json"},
        timeout=10,
    )
    assert out.status_code == 204, out.text
    assert httpx.get(f"{base_url}/auth/me", headers=cookie, timeout=10).status_code == 401
    assert httpx.get(f"{base_url}/ready", timeout=5).status_code == 200
