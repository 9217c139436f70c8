"""Redis losing its data is not a mass revocation.

A redis-server without persistence is killed and restarted on the same port: it comes back
empty. The replica must see "Redis lost the identity store", not "every key was revoked":
open streams keep flowing with the rights they had, new requests get 503 (not 401), and
``/ready``'s body, the log and ``/metrics`` say ``lost`` until the identities are re-imported;
then decisions resume (a key the re-import left out is revoked). With an append-only file
(the shipped configurations) the same restart changes nothing."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aredis

from gateway.identity.signing import signed_headers
from gateway.identity.store import IdentityStore
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.http import STREAM_PATH
from tests.support.identities import ALICE, ROOT, Person, import_doc, seed
from tests.support.reauth import Watch, publish_steadily, watch
from tests.support.redis_server import RedisServer

#: the replica's identity cache ttl and backstop period: short, so a wrong revocation shows
CACHE_TTL = 1.0


def _ready(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    response = httpx.get(gw.base_url + "/ready", timeout=5)
    return response.status_code, response.json()


def _signed_get(gw: RunningGateway, person: Person) -> httpx.Response:
    headers = signed_headers("HEAD", STREAM_PATH, gw.host, person.access_key, person.secret_key)
    # HEAD: the answer to the request, without a stream to hold
    return httpx.head(gw.base_url + STREAM_PATH, headers=headers, timeout=5)


def _store_state_metric(gw: RunningGateway) -> str:
    text = httpx.get(gw.base_url + "/metrics", timeout=5).text
    states = re.findall(r'^kev_identity_store\{state="(\w+)"\} 1\.0$', text, re.MULTILINE)
    assert len(states) == 1, text
    return str(states[0])


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)


async def _reimport(url: str, *, without: Person | None = None) -> None:
    doc = import_doc()
    if without is not None:
        doc["keypairs"] = [k for k in doc["keypairs"] if k["access_key"] != without.access_key]
    client = aredis.Redis.from_url(url)
    try:
        await IdentityStore(client, Keys()).import_data(doc)
    finally:
        await client.aclose()


def test_a_restart_without_persistence_is_data_loss_not_revocation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with RedisServer() as server:
        anyio.run(seed, server.url)
        settings = gateway_settings(server.url, identity_cache_ttl=CACHE_TTL)
        with run_gateway(settings) as gw:

            async def main() -> tuple[Watch, Watch]:
                stop = anyio.Event()
                root, alice = Watch(), Watch()
                async with anyio.create_task_group() as pub, anyio.create_task_group() as tg:
                    pub.start_soon(publish_steadily, server.url, stop)
                    tg.start_soon(lambda: watch(gw.base_url, root, person=ROOT))
                    tg.start_soon(lambda: watch(gw.base_url, alice, person=ALICE))
                    await _until(
                        lambda: root.kernel_events() and alice.kernel_events(), 10, "events"
                    )
                    assert _ready(gw)[1]["identity_store"] == "ok"

                    server.restart(kill=True)  # no AOF: it comes back empty
                    await _until(
                        lambda: _ready(gw) == (200, {**_ready(gw)[1], "identity_store": "lost"}),
                        15,
                        "ready, with the identity store reported lost",
                    )
                    seen = root.kernel_events(), alice.kernel_events()
                    # several backstop periods and re-checks: nobody is judged on lost data
                    await anyio.sleep(4 * CACHE_TTL)
                    assert root.close() is None and alice.close() is None, (
                        root.events[-2:],
                        alice.events[-2:],
                    )
                    assert root.kernel_events() > seen[0] and alice.kernel_events() > seen[1]
                    refused = _signed_get(gw, ROOT)
                    assert refused.status_code == 503, refused.status_code
                    assert refused.headers["retry-after"]
                    assert _store_state_metric(gw) == "lost"

                    # the operator re-imports, leaving alice's keypair out
                    await _reimport(server.url, without=ALICE)
                    await _until(lambda: alice.ended.is_set(), 5, "alice's stream to end")
                    assert _ready(gw)[1]["identity_store"] == "ok"
                    assert _store_state_metric(gw) == "ok"
                    assert _signed_get(gw, ROOT).status_code == 200
                    assert _signed_get(gw, ALICE).status_code == 401
                    before = root.kernel_events()
                    await _until(lambda: root.kernel_events() > before, 5, "root's events")
                    assert root.close() is None
                    stop.set()
                    tg.cancel_scope.cancel()
                await anyio.sleep(0.1)  # cancelled readers' sockets close in a loop callback
                return root, alice

            _, alice = anyio.run(main)
    close = alice.close()
    assert close is not None and json.loads(close[1])["reason"] == "revoked"
    messages = [r.getMessage() for r in caplog.records]
    assert any("identity store LOST" in m for m in messages), messages
    assert any("identity store is back" in m for m in messages), messages
    assert not any("revoked" in m for m in messages if "AKIAROOT" in m), messages


def test_with_an_append_only_file_a_restart_changes_nothing() -> None:
    with RedisServer(aof=True) as server:
        anyio.run(seed, server.url)
        time.sleep(1.2)  # appendfsync everysec: what was written a second ago is on disk
        settings = gateway_settings(server.url, identity_cache_ttl=CACHE_TTL)
        with run_gateway(settings) as gw:

            async def main() -> Watch:
                stop = anyio.Event()
                root = Watch()
                async with anyio.create_task_group() as pub, anyio.create_task_group() as tg:
                    pub.start_soon(publish_steadily, server.url, stop)
                    tg.start_soon(lambda: watch(gw.base_url, root, person=ROOT))
                    await _until(lambda: root.kernel_events(), 10, "events")
                    reconnects = gw.state.subscriber.reconnects
                    server.restart(kill=True)
                    await _until(
                        lambda: (
                            gw.state.subscriber.reconnects > reconnects and _ready(gw)[0] == 200
                        ),
                        15,
                        "the replica to reconnect",
                    )
                    seen = root.kernel_events()
                    await anyio.sleep(2 * CACHE_TTL)
                    assert _ready(gw)[1]["identity_store"] == "ok"
                    assert _signed_get(gw, ROOT).status_code == 200
                    assert root.kernel_events() > seen and root.close() is None
                    stop.set()
                    tg.cancel_scope.cancel()
                await anyio.sleep(0.1)
                return root

            anyio.run(main)
