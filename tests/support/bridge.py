"""A Backend.AI beside the gateway, for the bridge's tests: its PostgreSQL (a database of one
schema generation, read through a read-only role), its Redis bus (the stand-in producer of
tests/support/backendai_bus.py, which writes Backend.AI's exact bytes), the rows and the
messages of a session's life in the manager's order, and the bridge itself, in this process
or as a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aredis

from gateway.bridge.run import Bridge
from gateway.settings import BridgeSettings
from publisher.keys import Keys
from publisher.schema import KernelEvent, SourceGap, decode_event, decode_gap
from tests.support.backendai_bus import BackendAIBus
from tests.support.postgres import (
    BackendAIDatabase,
    Kernel,
    Owner,
    owner_sql,
    session_sql,
    transition_sql,
)
from tests.support.redis_server import free_port

__all__ = [
    "Installation",
    "Life",
    "bridge_settings",
    "gateway_history",
    "running_bridge",
    "spawned_bridge",
    "wait_for",
]

#: the schema generation of each bus generation the tests drive
SCHEMA_OF = {"22.09.5": "23.09", "23.09": "23.09", "25.6": "26.8", "26.8": "26.8"}


def bridge_settings(
    source_url: str, dsn: str, gateway_url: str, **changes: object
) -> BridgeSettings:
    """Settings for a test bridge: a free metrics port, the shortest lease, quick lookups."""
    base: dict[str, object] = {
        "from_redis": source_url,
        "from_db": dsn,
        "redis_url": gateway_url,
        "port": free_port(),
        "lease_ttl": 1.0,
        "lookup_timeout": 1.5,
        "log_level": "warning",
    }
    base.update(changes)
    return BridgeSettings.load({}, **base)


@dataclass
class Life:
    """One session as the manager and its agents make it: rows, then messages."""

    installation: Installation
    owner: Owner
    session: uuid.UUID
    name: str
    kernels: list[Kernel]
    creation_id: str = field(default_factory=lambda: uuid.uuid4().hex[:22])

    @property
    def main(self) -> Kernel:
        return self.kernels[0]

    async def rows(self, at: datetime | None = None) -> None:
        """The rows ``enqueue_session`` writes."""
        sql = session_sql(
            self.installation.db.version,
            self.owner,
            self.session,
            self.name,
            self.kernels,
            at or datetime.now(UTC),
        )
        await asyncio.to_thread(self.installation.db.execute, sql)

    async def transition(self, status: str, **options: Any) -> None:
        sql = transition_sql(self.session, status, datetime.now(UTC), **options)
        await asyncio.to_thread(self.installation.db.execute, sql)

    async def lifecycle(self, *, result: str = "SUCCESS") -> list[str]:
        """The whole life on the bus (and its status in the database, as the manager keeps
        it): the names of the messages sent, in order."""
        bus, gen = self.installation.bus, self.installation.generation
        sent: list[str] = []
        s, cid = self.session, self.creation_id

        async def kernels(name: str, *args: Any) -> None:
            for k in self.kernels:
                if gen == "22.09.5":
                    await bus.emit(name, k.id, cid, *args)
                else:
                    await bus.emit(name, k.id, s, *args)
                sent.append(name)

        pubsub = self.installation.format == "pubsub"
        if pubsub:
            await bus.emit("session_enqueued", s, cid)
            sent.append("session_enqueued")
            await bus.emit("scheduling", s, cid, "SCHEDULED", "triggered-by-scheduler")
            sent.append("scheduling")
        else:
            for name in ("session_enqueued", "session_scheduled"):
                await bus.emit(name, s, cid)
                sent.append(name)
        for name in ("kernel_preparing", "kernel_pulling", "kernel_creating", "kernel_started"):
            reason = "cr.backend.ai/python:3.11" if name == "kernel_pulling" else ""
            await kernels(name, reason)
        await self.transition("RUNNING")
        if pubsub:
            await bus.emit("scheduling", s, cid, "RUNNING", "triggered-by-scheduler")
            sent.append("scheduling")
        else:
            await bus.emit("session_started", s, cid)
            sent.append("session_started")
        await self.transition("TERMINATING", reason="task-finished")
        # the agents pass the reason as the enum member (agent/agent.py 23.09.0 L1612): it
        # travels as ExtType 6, a pickle the bridge reads without running it
        finished = bus.reasons["TASK_FINISHED"] if bus.reasons is not None else "task-finished"
        for name in ("kernel_terminating", "kernel_terminated"):
            for k in self.kernels:
                if gen == "22.09.5":
                    await bus.emit(name, k.id, finished, 0)
                else:
                    await bus.emit(name, k.id, s, finished, 0)
                sent.append(name)
        await self.transition("TERMINATED", result=result)
        await bus.emit("session_terminated", s, "task-finished")
        sent.append("session_terminated")
        outcome = "session_success" if result == "SUCCESS" else "session_failure"
        await bus.emit(outcome, s, "task-finished", 0 if result == "SUCCESS" else 1)
        sent.append(outcome)
        return sent


@dataclass
class Installation:
    """A Backend.AI: its database, its Redis (database 4 unless the URL names another) and
    the stand-in bus of one generation writing to it."""

    db: BackendAIDatabase
    source_url: str
    generation: str
    client: aredis.Redis
    bus: BackendAIBus
    dsn: str
    owners: list[Owner] = field(default_factory=list)

    @classmethod
    async def create(cls, db: BackendAIDatabase, source_url: str, generation: str) -> Installation:
        client = aredis.Redis.from_url(source_url if "/" in source_url[8:] else source_url + "/4")
        bus = BackendAIBus(client, generation, source="i-agent-01")
        role = f"kevbridge{uuid.uuid4().hex[:8]}"
        dsn = db.create_readonly_role(role, "bridge-pw", ("bridge", "reconcile"))
        return cls(db, source_url, generation, client, bus, dsn)

    async def close(self) -> None:
        await self.client.aclose()

    @property
    def format(self) -> str:
        """The bus generation as ``--format`` names it."""
        return (
            "pubsub" if self.generation in ("25.11", "25.12", "25.13", "26.2", "26.8") else "stream"
        )

    def settings(self, gateway_url: str, **changes: object) -> BridgeSettings:
        changes.setdefault("format", self.format)
        return bridge_settings(self.source_url, self.dsn, gateway_url, **changes)

    async def owner(self, name: str, *, domain: str = "default", group: str = "ml") -> Owner:
        """A user with a keypair in a group, stored as the manager stores them."""
        tag = f"{name.upper()}{uuid.uuid4().hex.upper()}"
        owner = Owner(
            user_uuid=uuid.uuid4(),
            email=f"{name}-{uuid.uuid4().hex[:6]}@example.com",
            access_key=f"AKIA{tag}"[:20],
            secret_key=(f"{name}-secret-" + uuid.uuid4().hex * 2)[:40],
            group_id=uuid.uuid5(uuid.NAMESPACE_DNS, f"{domain}/{group}"),
            group_name=group,
            domain=domain,
        )
        await asyncio.to_thread(self.db.execute, owner_sql(self.db.version, owner))
        self.owners.append(owner)
        return owner

    def life(self, owner: Owner, name: str, *, kernels: int = 2) -> Life:
        made = [Kernel(uuid.uuid4(), "main", 1, 0)]
        made += [Kernel(uuid.uuid4(), "sub", i, i) for i in range(1, kernels)]
        return Life(self, owner, uuid.uuid4(), name, made)


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
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await bridge.close()


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
