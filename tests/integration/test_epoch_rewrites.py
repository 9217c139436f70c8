"""The epoch key rewritten over and over by anyone who may publish (the publisher's ACL user
may SET it: its scripts do) while real events flow: two replicas stay ready, every event
reaches every stream once, in order, and nothing is told (the history is the same one; its
entry at the watermark proves it). The review found every replica unready 85% of the time
under such a loop: each rewrite restarted every subscription."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import anyio
import httpx
import pytest
import redis

from gateway.consumer import SSEEvent
from publisher import Keys, SyncPublisher
from tests.support.gateway_server import RunningGateway
from tests.support.http import stream_as
from tests.support.identities import ROOT, session_of

pytestmark = pytest.mark.anyio

INTERVAL = 0.3  # the replicas' probe interval: the history watch looks this often
CHURN = 3.0  # seconds of rewriting


async def _collect(url: str, out: list[SSEEvent], opened: anyio.Event) -> None:
    async with stream_as(ROOT, url) as (_, events):
        opened.set()
        async for event in events:
            out.append(event)


async def test_an_epoch_key_rewritten_every_few_ms_keeps_every_replica_ready(
    cast: str, start_gateway: Callable[..., RunningGateway], redis_url: str
) -> None:
    replicas = [start_gateway(probe_interval=INTERVAL) for _ in range(2)]
    pub = SyncPublisher.from_url(redis_url)
    ref = session_of(ROOT, "epoch-churn")
    raw = redis.Redis.from_url(redis_url)
    pub.publish(ref.started("first"))  # the history and its epoch exist
    got: list[list[SSEEvent]] = [[], []]
    rng = random.Random(20261205)
    ready_samples: list[bool] = []
    sent: list[str] = []
    async with anyio.create_task_group() as tg:
        for gw, out in zip(replicas, got, strict=True):
            opened = anyio.Event()
            tg.start_soon(_collect, gw.base_url, out, opened)
            with anyio.fail_after(10):
                await opened.wait()
        deadline = time.monotonic() + CHURN
        n = 0
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                raw.set(Keys().epoch, f"{rng.randrange(1, 2**40)}-0")  # the hostile write
                if n % 10 == 0:
                    sent.append(f"churn-{n}")
                    pub.publish(ref.started(sent[-1]))
                    for gw in replicas:
                        r = await http.get(gw.base_url + "/ready")
                        ready_samples.append(r.status_code == 200)
                n += 1
                await anyio.sleep(0.005)
        with anyio.fail_after(10):
            while not all(len([e for e in out if "churn-" in e.data]) >= len(sent) for out in got):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    for gw in replicas:
        assert gw.state.subscriber.epoch_rewrites > 0  # it did see them
    assert all(ready_samples), f"{ready_samples.count(False)} of {len(ready_samples)} not ready"
    for out in got:
        reasons = [e.data for e in out if "churn-" in e.data]
        assert len(reasons) == len(sent), (len(reasons), len(sent))
        assert all(f'"{s}"' in r for s, r in zip(sent, reasons, strict=True))
        assert not [e for e in out if e.event == "history_truncated"], "nothing is told"
