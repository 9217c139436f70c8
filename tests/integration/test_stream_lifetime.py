"""``stream_max_lifetime`` on a real gateway: a resuming client's stream is ended with
``server_close`` ``rebalance`` (jittered) and the client resumes without losing or repeating
an event; a client that does not resume (the official SDKs: no Last-Event-ID, no
``resumable=1``) is never ended that way."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import pytest

from gateway.consumer import KernelEventStream, SSEEvent, open_stream
from gateway.http.stream import LIFETIME_JITTER
from publisher import AsyncPublisher, SyncPublisher
from tests.support.gateway_server import RunningGateway
from tests.support.identities import ROOT, session_of

StartGateway = Callable[..., RunningGateway]
pytestmark = pytest.mark.anyio

LIFETIME = 1.0


def _lifetime_gateway(start_gateway: StartGateway) -> RunningGateway:
    # retry 200 ms, no server-side jitter: the test waits for the rebalance, not the retry
    return start_gateway(stream_max_lifetime=LIFETIME, retry_ms=200, retry_jitter_ms=0)


async def test_a_resuming_client_loses_nothing_across_lifetime_closes(
    cast: str, start_gateway: StartGateway
) -> None:
    gateway = _lifetime_gateway(start_gateway)
    stream = KernelEventStream(
        gateway.base_url,
        access_key=ROOT.access_key,
        secret_key=ROOT.secret_key,
        include_control=True,
    )
    got: list[SSEEvent] = []
    published: list[str] = []

    async def consume() -> None:
        async for event in stream:
            got.append(event)

    ref = session_of(ROOT, "rebalanced")
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        with anyio.fail_after(5):
            while not len(gateway.state.hub):
                await anyio.sleep(0.02)
        # ~4.5 s of steady events: several lifetimes, and events while the client is away
        with SyncPublisher.from_url(cast) as pub:
            for i in range(90):
                stream_id = pub.publish(ref.started(f"n{i}"))
                assert stream_id is not None
                published.append(stream_id)
                await anyio.sleep(0.05)
        with anyio.fail_after(10):
            while [e.id for e in got if e.event.startswith("kernel_")][-1:] != published[-1:]:
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()

    closes = [json.loads(e.data) for e in got if e.event == "server_close"]
    assert len(closes) >= 2 and {c["reason"] for c in closes} == {"rebalance"}
    assert all(c["retry"] == 200 for c in closes)
    assert [e.id for e in got if e.event.startswith("kernel_")] == published
    assert not [e for e in got if e.event == "history_truncated"]
    assert stream.reconnects >= len(closes)


async def test_streams_that_do_not_resume_are_never_rebalanced(
    cast: str, start_gateway: StartGateway
) -> None:
    """A signed stream without Last-Event-ID or ``resumable=1`` (what the official SDKs
    open) outlives the lifetime; one with Last-Event-ID, or the flag, is ended with
    ``rebalance`` within the lifetime's jitter."""
    gateway = _lifetime_gateway(start_gateway)
    async with AsyncPublisher.from_url(cast) as pub:
        first = await pub.publish(session_of(ROOT, "anchor").started())
    keys = {"access_key": ROOT.access_key, "secret_key": ROOT.secret_key}
    ended: dict[str, float] = {}

    async def watch(name: str, **options: object) -> None:
        async with open_stream(gateway.base_url, **keys, **options) as (_, events):  # type: ignore[arg-type]
            started = anyio.current_time()
            async for event in events:
                if event.event == "server_close":
                    assert json.loads(event.data)["reason"] == "rebalance"
                    ended[name] = anyio.current_time() - started

    with anyio.move_on_after(LIFETIME * LIFETIME_JITTER[1] + 3.0):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: watch("plain"))
            tg.start_soon(lambda: watch("sdk-like", params={"sessionId": "anchor"}))
            tg.start_soon(lambda: watch("last-event-id", last_event_id=first))
            tg.start_soon(lambda: watch("flag", params={"resumable": "1"}))
            tg.start_soon(lambda: watch("flag-off", params={"resumable": "0"}))
    assert set(ended) == {"last-event-id", "flag"}, ended
    low, high = LIFETIME * LIFETIME_JITTER[0], LIFETIME * LIFETIME_JITTER[1]
    # the hub's timer ticks at most every second: the close comes within one tick of it
    assert all(low - 0.05 <= t <= high + 1.05 for t in ended.values()), ended


async def test_a_bad_resumable_flag_is_refused(gateway: RunningGateway) -> None:
    from gateway.consumer import StreamError

    with anyio.fail_after(5), pytest.raises(StreamError) as info:
        async with open_stream(
            gateway.base_url,
            access_key=ROOT.access_key,
            secret_key=ROOT.secret_key,
            params={"resumable": "yes please"},
        ):
            pass
    assert info.value.status == 400 and b"resumable" in info.value.body
