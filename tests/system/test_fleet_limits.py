"""Per-key stream limits across a fleet, and a drain's reconnects: two
real gateway processes on one real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator

import anyio
import httpx

from gateway.identity.signing import signed_headers
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.http import STREAM_PATH
from tests.support.identities import ROOT

#: clients that resume by themselves (``resumable=1``): a drain tells them ``server_close``
#: with a reconnect hint (an SDK's stream is handed off instead: tests/system/test_handoff.py)
_PATH = STREAM_PATH + ("&" if "?" in STREAM_PATH else "?") + "resumable=1"


def _headers(gw: RunningGateway) -> dict[str, str]:
    return signed_headers("GET", _PATH, gw.host, ROOT.access_key, ROOT.secret_key)


@contextlib.asynccontextmanager
async def _stream(http: httpx.AsyncClient, gw: RunningGateway) -> AsyncIterator[httpx.Response]:
    async with http.stream("GET", gw.base_url + _PATH, headers=_headers(gw)) as response:
        yield response


async def _server_close(response: httpx.Response) -> dict[str, object]:
    """The data of the stream's ``server_close`` event."""
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "server_close":
            data: dict[str, object] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended without server_close")


def test_a_drained_replicas_streams_fit_on_the_others(cast: str) -> None:
    """A key at its limit across two replicas (7 streams on A, 3 on B, limit 10): an 11th
    is refused on either (429, counted fleet-wide, not per replica); A drains, and all 7 of
    its clients are admitted by B (A withdrew its counts), none refused. Their reconnect
    hints are jittered, so they come back spread over the jitter window, not in one burst."""
    options = {"max_streams_per_key": 10, "retry_ms": 100, "retry_jitter_ms": 2000}
    with (
        spawn_gateway(gateway_settings(cast, **options)) as a,
        spawn_gateway(gateway_settings(cast, **options)) as b,
    ):

        async def scenario() -> tuple[list[int], list[int], list[int]]:
            async with contextlib.AsyncExitStack() as stack:
                http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
                on_a = [await stack.enter_async_context(_stream(http, a)) for _ in range(7)]
                on_b = [await stack.enter_async_context(_stream(http, b)) for _ in range(3)]
                assert [r.status_code for r in on_a + on_b] == [200] * 10
                extra = []
                for gw in (a, b):
                    async with _stream(http, gw) as response:
                        extra.append(response.status_code)
                assert a.proc is not None
                a.proc.send_signal(signal.SIGTERM)
                closes = await asyncio.gather(*(_server_close(r) for r in on_a))
                hints = [int(str(c["retry"])) for c in closes]
                assert all(c["reason"] == "shutdown" for c in closes)

                async def come_back(hint_ms: int) -> int:
                    await anyio.sleep(hint_ms / 1000)
                    response = await stack.enter_async_context(_stream(http, b))
                    return response.status_code

                statuses = await asyncio.gather(*(come_back(h) for h in hints))
                return extra, hints, list(statuses)

        extra, hints, statuses = anyio.run(scenario)
    assert extra == [429, 429], extra
    assert statuses == [200] * 7, statuses
    assert all(100 <= h <= 2100 for h in hints), hints
    spread = max(hints) - min(hints)
    assert spread >= 300, f"reconnect hints {sorted(hints)} ms: not spread"
    print(f"drain: 7 reconnects spread over {spread} ms ({sorted(hints)})")
