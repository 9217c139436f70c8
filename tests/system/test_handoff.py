"""A rolling deploy under SDK watchers (issue 23, item 1): two real replicas behind the
shipped nginx; a client that behaves as the official SDKs do (signed, one fixed query, no
``Last-Event-ID``; on ``server_close`` it stops, on a plain end of stream it sleeps and sends
the same request again) watches while events are published without pause, and the replica
serving it gets SIGTERM. Every event reaches it, in order, once; clients that resume by
themselves still get ``server_close``.

The official SDKs themselves go through the same deploy in ``tests/system/test_sdk.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import pytest
import redis

from gateway.consumer import SSEEvent, open_stream
from gateway.identity.signing import signed_headers
from gateway.replica.handoff import request_digest
from publisher import AsyncPublisher
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.http import STREAM_PATH, stream_as
from tests.support.identities import ALICE, ROOT, seed, session_of
from tests.support.proxies import needs_nginx, run_nginx

pytestmark = [pytest.mark.slow, needs_nginx]

#: the SDKs' own delay before they reconnect is 5 s; shorter here, same shape
RETRY = 0.5


@dataclass
class Watcher:
    """The SDK's loop (``SSEResponse.fetch_events``): the stream request signed once, and
    re-sent as it is (the same ``Date``, the same signature) after a plain end of stream."""

    params: dict[str, str]
    #: how old its signature's date is when it first connects (seconds)
    signed_ago: float = 0.0
    events: list[SSEEvent] = field(default_factory=list)
    connections: int = 0
    stopped: str | None = None

    def kernel_ids(self) -> list[str]:
        return [e.id for e in self.events if e.event.startswith("kernel_")]

    async def run(self, base_url: str) -> None:
        target = STREAM_PATH + "?" + urlencode(self.params)
        host = base_url.removeprefix("http://")
        when = datetime.now(UTC) - timedelta(seconds=self.signed_ago)
        headers = signed_headers("GET", target, host, ROOT.access_key, ROOT.secret_key, now=when)
        while True:
            self.connections += 1
            async with open_stream(base_url + target, headers=headers) as (_, events):
                async for event in events:
                    self.events.append(event)
                    if event.event == "server_close":
                        self.stopped = event.data
                        return
            await anyio.sleep(RETRY)  # a plain end: the SDK waits, then asks again


@pytest.fixture
def replicas(redis_url: str) -> Iterator[list[RunningGateway]]:
    anyio.run(seed, redis_url)
    with (
        spawn_gateway(gateway_settings(redis_url, handoff_ttl=30, max_clock_skew=2)) as first,
        spawn_gateway(gateway_settings(redis_url, handoff_ttl=30, max_clock_skew=2)) as second,
    ):
        yield [first, second]


async def _streams(gw: RunningGateway) -> int:
    async with httpx.AsyncClient() as client:
        try:
            reply = await client.get(gw.base_url + "/ready", timeout=5)
        except httpx.TransportError:
            return 0  # stopped
        return int(reply.json()["streams"])


def test_sdk_watchers_see_every_event_through_a_rolling_deploy(
    tmp_path: Path, redis_url: str, replicas: list[RunningGateway]
) -> None:
    """Two replicas behind nginx (a third one's place in its upstream list, not started); the
    deploy, as the shipped Kubernetes Deployment rolls (``maxSurge: 1``, ``maxUnavailable:
    0``): start the third, SIGTERM the first, then the second 1 s later, while events are
    published every 50 ms. Watchers of the first may move twice (the second's drain may catch
    them still replaying what the first left them). The identical twins are two watchers: each
    resumes from its own record."""
    ref = session_of(ALICE, "deploy")
    watchers = [
        Watcher({"sessionId": "*"}),  # everything a superadmin may see
        Watcher({"sessionId": "*"}, signed_ago=1),  # an identical one, signed a second apart
        Watcher({"sessionId": ref.session_id, "ownerAccessKey": ALICE.access_key}),
    ]
    third = gateway_settings(redis_url, handoff_ttl=30, max_clock_skew=2)

    async def scenario() -> None:
        addresses = [gw.base_url.removeprefix("http://") for gw in replicas]
        addresses.append(f"127.0.0.1:{third.server.port}")
        with contextlib.ExitStack() as later:
            async with (
                run_nginx(tmp_path, addresses) as nginx,
                AsyncPublisher.from_url(redis_url) as pub,
                anyio.create_task_group() as tg,
            ):
                base = f"http://127.0.0.1:{nginx.port}"
                for watcher in watchers:
                    tg.start_soon(watcher.run, base)
                with anyio.fail_after(10):
                    while sum([await _streams(gw) for gw in replicas]) < len(watchers):
                        await anyio.sleep(0.05)
                published: list[str] = []
                for i in range(100):  # 5 s of events
                    stream_id = await pub.publish(ref.started(f"e{i}"))
                    assert stream_id is not None
                    published.append(stream_id)
                    if i == 10:  # the new replica first (maxSurge 1, maxUnavailable 0)
                        await anyio.to_thread.run_sync(
                            lambda: later.enter_context(spawn_gateway(third))
                        )
                    # then each old one, one after the other; by then every watcher's
                    # signature is older than max_clock_skew (2 s): its reconnects are let in
                    # by its handoff record alone
                    if i in (50, 70):
                        doomed = replicas[0 if i == 50 else 1]
                        assert doomed.proc is not None
                        os.kill(doomed.proc.pid, signal.SIGTERM)
                    await anyio.sleep(0.05)
                with anyio.fail_after(20):
                    while any(w.kernel_ids()[-1:] != published[-1:] for w in watchers):
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        for watcher in watchers:
            ids = watcher.kernel_ids()
            assert watcher.stopped is None, watcher.stopped  # never told to stop
            assert watcher.connections >= 2, "every replica it was on stopped"
            assert ids == published, (ids, published)  # every one, in order, once

    anyio.run(scenario)


def test_clients_that_resume_still_get_server_close(
    redis_url: str, replicas: list[RunningGateway]
) -> None:
    async def scenario() -> None:
        gw = replicas[0]
        async with stream_as(ROOT, gw.base_url, params={"resumable": "1"}) as (_, events):
            with anyio.fail_after(10):
                while await _streams(gw) < 1:
                    await anyio.sleep(0.05)
            assert gw.proc is not None
            os.kill(gw.proc.pid, signal.SIGTERM)
            with anyio.fail_after(10):
                async for event in events:
                    if event.event == "server_close":
                        assert "shutdown" in event.data
                        return
        raise AssertionError("the stream ended without server_close")

    anyio.run(scenario)


def test_a_stale_signature_gets_in_only_with_its_own_record_once(
    redis_url: str, replicas: list[RunningGateway]
) -> None:
    """The date allowance is the record's, for the request that opened the stream: the same
    signed request is let in once after the drain (its date past ``max_clock_skew``), resumes
    where the stream stood, and is refused (400, clock skew) when sent again; a request
    signed as long ago with no record is refused too."""
    first, second = replicas
    target = STREAM_PATH + "?" + urlencode({"sessionId": "*"})

    def headers_for(gw: RunningGateway, ago: float) -> dict[str, str]:
        when = datetime.now(UTC) - timedelta(seconds=ago)
        return signed_headers("GET", target, gw.host, ROOT.access_key, ROOT.secret_key, now=when)

    async def scenario() -> None:
        stale = headers_for(second, 3)
        async with httpx.AsyncClient() as http:
            refused = await http.get(second.base_url + target, headers=stale, timeout=5)
            assert refused.status_code == 400 and "clock skew" in refused.text, refused.text
        # the drained replica and the next one share one Host: the signature covers it
        headers = headers_for(first, 0)
        host_headers = {**headers, "Host": first.host}
        async with AsyncPublisher.from_url(redis_url) as pub:
            async with open_stream(first.base_url + target, headers=host_headers) as (_, events):
                before = await pub.publish(session_of(ALICE, "stale").started("before"))
                got = [e.id async for e in _until(events, before)]
                await anyio.sleep(2.5)  # now older than max_clock_skew
                assert first.proc is not None
                os.kill(first.proc.pid, signal.SIGTERM)
                rest = [e.event async for e in events]
                assert "server_close" not in rest, rest
            during = await pub.publish(session_of(ALICE, "stale").started("during"))
            async with open_stream(second.base_url + target, headers=host_headers) as (_, ev):
                resumed = [e.id async for e in _until(ev, during)]
            assert resumed == [during], resumed
            assert got[-1] == before
            async with httpx.AsyncClient() as http:
                again = await http.get(second.base_url + target, headers=host_headers, timeout=5)
                assert again.status_code == 400 and "clock skew" in again.text, again.text

    anyio.run(scenario)


async def _until(events: Any, stream_id: str) -> Any:
    """Kernel events up to and including ``stream_id``."""
    async for event in events:
        if event.event.startswith("kernel_"):
            yield event
            if event.id == stream_id:
                return


def test_copies_of_a_stale_request_get_in_once_whatever_they_add(
    redis_url: str, replicas: list[RunningGateway]
) -> None:
    """The record is claimed in the signature check itself: of ten copies of the handed-off
    request sent at once, a ``Last-Event-ID`` added to some, one gets in; the rest are
    refused as stale."""
    first, second = replicas
    target = STREAM_PATH + "?" + urlencode({"sessionId": "*"})
    when = datetime.now(UTC) - timedelta(seconds=3)
    headers = signed_headers("GET", target, first.host, ROOT.access_key, ROOT.secret_key, now=when)
    headers["Host"] = first.host

    async def scenario() -> list[int]:
        async with AsyncPublisher.from_url(redis_url) as pub:
            last = await pub.publish(session_of(ALICE, "copies").started())
        assert last is not None
        # what a drain leaves for this very request (gateway.replica.handoff)
        key = f"kev:handoff:{ROOT.access_key}:{request_digest(headers['Authorization'])}"
        with redis.Redis.from_url(redis_url) as raw:
            raw.rpush(key, last)
            raw.pexpire(key, 30_000)

        async def one(i: int, http: httpx.AsyncClient) -> int:
            extra = {"Last-Event-ID": last} if i % 2 else {}
            async with http.stream(
                "GET", second.base_url + target, headers={**headers, **extra}, timeout=5
            ) as response:
                return response.status_code

        async with httpx.AsyncClient() as http:
            return list(await asyncio.gather(*(one(i, http) for i in range(10))))

    statuses = anyio.run(scenario)
    assert sorted(statuses) == [200] + [400] * 9, statuses


def test_a_copy_with_another_target_or_signature_leaves_the_record_to_the_request(
    redis_url: str, replicas: list[RunningGateway]
) -> None:
    """The date is checked after the signature, so the record of a handed-off request is
    claimed only by a request whose signature holds: a copy of its Authorization header on
    another path, or with a signature changed, is refused (401) and takes nothing; the
    request itself then gets in, once (the review found such a copy destroying the record)."""
    _, second = replicas
    target = STREAM_PATH + "?" + urlencode({"sessionId": "*"})
    when = datetime.now(UTC) - timedelta(seconds=3)
    headers = signed_headers("GET", target, second.host, ROOT.access_key, ROOT.secret_key, now=when)
    key = f"kev:handoff:{ROOT.access_key}:{request_digest(headers['Authorization'])}"

    async def scenario() -> list[int]:
        async with AsyncPublisher.from_url(redis_url) as pub:
            last = await pub.publish(session_of(ALICE, "copy").started())
        assert last is not None
        with redis.Redis.from_url(redis_url) as raw:
            raw.rpush(key, last)
            raw.pexpire(key, 30_000)
        tampered = {**headers, "Authorization": headers["Authorization"][:-4] + "AAAA"}
        statuses = []
        async with httpx.AsyncClient() as http:
            for url, sent in (
                (second.base_url + STREAM_PATH + "?sessionId=other", headers),  # another target
                (second.base_url + target, tampered),  # another signature
                (second.base_url + target, headers),  # the request itself
                (second.base_url + target, headers),  # ... once
            ):
                async with http.stream("GET", url, headers=sent, timeout=5) as response:
                    statuses.append(response.status_code)
        return statuses

    assert anyio.run(scenario) == [401, 401, 200, 400]
