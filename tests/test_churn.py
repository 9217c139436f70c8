"""5,000 streams opened and dropped: no task, descriptor or memory left behind."""

from __future__ import annotations

import asyncio
import gc
import os

import anyio
import pytest

from gateway.identity.signing import signed_headers
from tests.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.identities import ALICE, ROOT, seed

PATH = "/stream/kernel/_/events"


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _gateway_tasks(gw: RunningGateway) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    loop = gw.state.loop
    assert loop is not None
    return asyncio.run_coroutine_threadsafe(count(), loop).result(5)


async def _cycle(gw: RunningGateway, i: int) -> None:
    person = ROOT if i % 2 else ALICE
    target = PATH + (f"?sessionId=churn-{i}" if i % 3 == 0 else "")
    headers = signed_headers("GET", target, gw.host, person.access_key, person.secret_key)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.settings.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {gw.host}\r\n{head}\r\n".encode())
        await reader.readuntil(b"retry: 3000\n\n")  # the stream is open and registered
        if i % 4 == 0:  # some leave abruptly, some politely
            writer.transport.abort()
    finally:
        writer.close()
        with anyio.CancelScope(shield=True):
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def _churn(gw: RunningGateway, cycles: int, parallel: int = 25) -> None:
    async def worker(start: int) -> None:
        for i in range(start, cycles, parallel):
            await _cycle(gw, i)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for start in range(parallel):
                tg.start_soon(worker, start)
        while len(gw.state.hub):
            await anyio.sleep(0.02)  # every disconnect processed


@pytest.mark.anyio
async def test_5000_connect_disconnect_cycles_leave_nothing_behind(redis_url: str) -> None:
    await seed(redis_url)
    with run_gateway(gateway_settings(redis_url, identity_cache_ttl=5.0)) as gw:
        await _churn(gw, 500)  # warm up: caches, pools, allocator arenas
        gc.collect()
        tasks, fds, rss = _gateway_tasks(gw), _fds(), _rss_kib()
        await _churn(gw, 5000)
        gc.collect()
        await anyio.sleep(0.2)
        grown = (_gateway_tasks(gw) - tasks, _fds() - fds, _rss_kib() - rss)
        assert gw.state.hub.stats.connections_total == 5500
        assert len(gw.state.hub) == 0 and gw.state.hub.buffered_bytes() == 0
    # Margins: a task or two in flight (a probe publish), a few pooled Redis sockets, and
    # allocator noise; a leak of one task or socket per stream would be thousands.
    assert grown[0] <= 3, f"gateway tasks grew by {grown[0]}"
    assert grown[1] <= 10, f"file descriptors grew by {grown[1]}"
    assert grown[2] <= 16 * 1024, f"RSS grew by {grown[2]} KiB"
