"""5,000 streams opened and dropped: no task, descriptor or memory left behind."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable

import anyio
import pytest

from tests.support.gateway_server import RunningGateway
from tests.support.http import STREAM_PATH, raw_stream_request
from tests.support.identities import ALICE, ROOT


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
    target = STREAM_PATH + (f"?sessionId=churn-{i}" if i % 3 == 0 else "")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.settings.server.port)
    try:
        writer.write(raw_stream_request(gw.host, person, target))
        await reader.readuntil(b"\r\n\r\n")  # headers: the stream is open and registered
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
async def test_5000_connect_disconnect_cycles_leave_nothing_behind(
    cast: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    gw = start_gateway(identity_cache_ttl=5.0)
    await _churn(gw, 500)  # warm up: caches, pools, allocator arenas
    gc.collect()
    tasks, fds, rss = _gateway_tasks(gw), _fds(), _rss_kib()
    await _churn(gw, 5000)
    gc.collect()

    def growth() -> tuple[int, int, int]:
        return _gateway_tasks(gw) - tasks, _fds() - fds, _rss_kib() - rss

    # Margins: a task or two in flight (a probe publish), a few pooled Redis sockets, and
    # allocator noise; a leak of one task or socket per stream would be thousands. The last
    # closes finish in later loop iterations: give tasks and sockets a moment to settle.
    with anyio.move_on_after(5):
        while (grown := growth())[0] > 3 or grown[1] > 10:
            await anyio.sleep(0.05)
    grown = growth()
    assert gw.state.hub.stats.connections_total == 5500
    assert len(gw.state.hub) == 0 and gw.state.hub.buffered_bytes() == 0
    assert grown[0] <= 3, f"gateway tasks grew by {grown[0]}"
    assert grown[1] <= 10, f"file descriptors grew by {grown[1]}"
    assert grown[2] <= 16 * 1024, f"RSS grew by {grown[2]} KiB"
