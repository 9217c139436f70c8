"""The bridge's test helpers: the bridge itself, in this process or as a process of its own,
what the gateway's history holds, and waiting for it. The Backend.AI beside it (its database,
its bus, a session's life) is :mod:`devtools.backendai`, re-exported here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aredis

from devtools.backendai import SCHEMA_OF, Installation, Life, bridge_settings
from gateway.bridge.run import Bridge
from gateway.settings import BridgeSettings
from publisher.keys import Keys
from publisher.schema import KernelEvent, SourceGap, decode_event, decode_gap
from publisher.tasks import cancel_and_wait

__all__ = [
    "SCHEMA_OF",
    "Installation",
    "Life",
    "bridge_settings",
    "gateway_history",
    "names",
    "running_bridge",
    "spawned_bridge",
    "wait_for",
]


async def gateway_history(
    redis: aredis.Redis, prefix: str = "kev"
) -> list[tuple[str, KernelEvent | SourceGap]]:
    """Everything the gateway's history holds: ``(id, event or gap marker)``."""
    out: list[tuple[str, KernelEvent | SourceGap]] = []
    for raw_id, fields in await redis.xrange(Keys(prefix).history):
        payload = fields[b"e"]
        marker = decode_gap(payload)
        out.append((raw_id.decode(), marker if marker is not None else decode_event(payload)))
    return out


async def wait_for(check: Any, timeout: float = 10.0, what: str = "") -> Any:
    """``await check()`` until it returns something truthy (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_bridge(
    settings: BridgeSettings, *, active: bool = True, timeout: float = 10.0
) -> AsyncIterator[Bridge]:
    """The bridge in this event loop; with ``active``, once it follows the bus."""
    bridge = Bridge(settings)
    task = asyncio.create_task(bridge.run(), name="test-bridge")
    try:
        if active:

            async def following() -> bool:
                if task.done():
                    task.result()
                return bridge.role == "active" and bridge.source_ok and bridge.format is not None

            await wait_for(following, timeout, "the bridge to follow the bus")
        yield bridge
    finally:
        await cancel_and_wait(task)  # a swallowed cancel too (publisher.tasks)
        await bridge.close()
        # a task of the bridge left running would reopen what close() just closed, and leak it
        left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("bridge-")]
        assert not left, f"the bridge's tasks outlived it: {left}"


@dataclass
class SpawnedBridge:
    """``gateway bridge`` as a process of its own."""

    settings: BridgeSettings
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.bridge.port}"

    def ready(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(self.url + "/ready", timeout=2)
        except httpx.HTTPError:
            return None
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5).text

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: nothing is given back, not even the lease."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def spawned_bridge(
    settings: BridgeSettings, *, wait: str | None = "active", timeout: float = 20.0
) -> Iterator[SpawnedBridge]:
    """Start ``gateway bridge``; with ``wait``, until ``/ready`` reports that role."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "bridge"], env=env)
    running = SpawnedBridge(settings, proc)
    try:
        deadline = time.monotonic() + timeout
        while wait is not None:
            if proc.poll() is not None:
                raise AssertionError(f"gateway bridge exited with {proc.returncode}")
            state = running.ready()
            if state is not None and state.get("role") == wait and state.get("ready"):
                break
            if time.monotonic() >= deadline:
                raise AssertionError(f"gateway bridge not {wait} within {timeout}s: {state}")
            time.sleep(0.1)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def names(history: Sequence[tuple[str, KernelEvent | SourceGap]]) -> list[str]:
    return [e.name if isinstance(e, KernelEvent) else "GAP" for _, e in history]
