"""A Backend.AI beside the gateway, made of real parts, for the bridge's tests, its benchmark
and the Backend.AI demo: its PostgreSQL (a database of one schema generation, read through a
read-only role; :mod:`devtools.postgres`), its Redis bus (:mod:`devtools.backendai_bus`, which
writes Backend.AI's exact bytes), and the rows and messages of a session's life in the
manager's order (:class:`Life`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aredis

from devtools.backendai_bus import BackendAIBus
from devtools.cluster import stop_process
from devtools.localredis import free_port
from devtools.postgres import (
    BackendAIDatabase,
    Kernel,
    Owner,
    owner_sql,
    session_sql,
    transition_sql,
)
from gateway.settings import BridgeSettings

__all__ = ["SCHEMA_OF", "BackendAIDemo", "Installation", "Life", "bridge_settings", "demo_owners"]

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

    def rows_sql(self, at: datetime | None = None) -> str:
        """The rows ``enqueue_session`` writes, as SQL (many lives' rows go in one run)."""
        return session_sql(
            self.installation.db.version,
            self.owner,
            self.session,
            self.name,
            self.kernels,
            at or datetime.now(UTC),
        )

    async def rows(self, at: datetime | None = None) -> None:
        """The rows ``enqueue_session`` writes."""
        await asyncio.to_thread(self.installation.db.execute, self.rows_sql(at))

    async def transition(self, status: str, **options: Any) -> None:
        sql = transition_sql(self.session, status, datetime.now(UTC), **options)
        await asyncio.to_thread(self.installation.db.execute, sql)

    async def lifecycle(self, *, result: str = "SUCCESS", database: bool = True) -> list[str]:
        """The whole life on the bus (and, with ``database``, its status in the database, as
        the manager keeps it): the names of the messages sent, in order."""
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
        if database:
            await self.transition("RUNNING")
        if pubsub:
            await bus.emit("scheduling", s, cid, "RUNNING", "triggered-by-scheduler")
            sent.append("scheduling")
        else:
            await bus.emit("session_started", s, cid)
            sent.append("session_started")
        if database:
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
        if database:
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


class BackendAIDemo:
    """A Backend.AI-shaped installation beside a running gateway, for ``scripts/demo
    --backendai``: a private PostgreSQL with the manager's schema (the demo's keypairs as its
    users), a private Redis as its event bus, ``gateway bridge`` as a process of its own, and a
    producer writing sessions' lives as the manager and its agents do, about ``rate`` bus
    messages per second. Needs the full install (PostgreSQL, msgpack): ``scripts/install``."""

    def __init__(
        self,
        gateway_redis_url: str,
        *,
        generation: str = "26.8",
        rate: float = 5.0,
        prefix: str = "kev",
        quiet: bool = True,
    ) -> None:
        if generation not in SCHEMA_OF:
            raise ValueError(f"generation must be one of {sorted(SCHEMA_OF)}, not {generation!r}")
        self.gateway_redis_url = gateway_redis_url
        self.generation = generation
        self.rate = rate
        self.prefix = prefix
        self.quiet = quiet
        self.postgres: Any = None
        self.redis: Any = None
        self.bridge: subprocess.Popen[bytes] | None = None
        self.bridge_port = free_port()
        self.sessions = 0
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def source_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/4"

    def start(self, timeout: float = 30.0) -> None:
        """PostgreSQL, the bus, the bridge (until it follows), then the producer."""
        from devtools.localredis import PrivateRedis
        from devtools.postgres import SCHEMAS, PostgresServer

        self.postgres = PostgresServer()
        self.postgres.start()
        schema = SCHEMA_OF[self.generation]
        self.postgres.create_database("backend", SCHEMAS[schema])  # type: ignore[index]
        db = BackendAIDatabase(self.postgres, schema, "backend")  # type: ignore[arg-type]
        dsn = db.create_readonly_role("kev_bridge", "demo-bridge-db", ("bridge", "reconcile"))
        for owner in demo_owners():
            db.execute(owner_sql(db.version, owner))
        with ThreadPoolExecutor(1) as pool:  # start() may be called from async code
            pool.submit(asyncio.run, self._seed_gateway_identities()).result()
        self.redis = PrivateRedis()
        self.redis.start()
        self._db, self._dsn = db, dsn
        settings = bridge_settings(
            self.source_url, dsn, self.gateway_redis_url, port=self.bridge_port,
            lease_ttl=5.0, log_level="info", prefix=self.prefix,
            format="pubsub" if schema == "26.8" else "stream",
        )  # fmt: skip
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        out = subprocess.DEVNULL if self.quiet else None
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "bridge"], env=env, stdout=out, stderr=out
        )
        self._producer = threading.Thread(target=self._produce, name="backendai-producer")
        self._producer.start()
        deadline = time.monotonic() + timeout
        while not self._bridge_active():
            if self.bridge.poll() is not None:
                raise RuntimeError(f"gateway bridge exited with status {self.bridge.returncode}")
            if self._error is not None:
                raise RuntimeError(f"the Backend.AI producer failed: {self._error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway bridge did not follow the bus within {timeout}s")
            time.sleep(0.2)

    async def _seed_gateway_identities(self) -> None:
        """The demo's keypairs pointed at Backend.AI's user ids (UUIDs), as the identity sync
        stores them: the bridged events name their owner by that id."""
        from gateway.identity.store import IdentityStore
        from publisher.connection import connect_async
        from publisher.keys import Keys

        owners = demo_owners()
        doc = {
            "users": [
                {"user_id": str(o.user_uuid), "role": role, "domain": o.domain}
                for o, role in zip(owners, _gateway_roles(), strict=True)
            ],
            "keypairs": [
                {
                    "access_key": o.access_key,
                    "secret_key": o.secret_key,
                    "user_id": str(o.user_uuid),
                }
                for o in owners
            ],
            "groups": [],
        }
        client = connect_async(self.gateway_redis_url)
        try:
            await IdentityStore(client, Keys.on(client, self.prefix), cache_ttl=0).import_data(doc)
        finally:
            await client.aclose()

    def _bridge_active(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.bridge_port}/ready", timeout=2
            ) as response:
                state = json.load(response)
        except (OSError, ValueError):
            return False
        return bool(state.get("ready")) and state.get("role") == "active"

    def _produce(self) -> None:
        try:
            asyncio.run(self._produce_async())
        except BaseException as exc:  # reported by start() and lines()
            self._error = exc

    async def _produce_async(self) -> None:
        client = aredis.Redis.from_url(self.source_url)
        # what a running manager leaves on its bus, by which the bridge tells the generation
        manager = client.pubsub()
        await manager.subscribe("events_all")
        bus = BackendAIBus(client, self.generation, source="i-demo-agent")
        installation = Installation(self._db, self.source_url, self.generation, client, bus, "")
        owners = demo_owners()
        try:
            while not self._stop.is_set():
                owner = owners[self.sessions % len(owners)]
                self.sessions += 1
                life = installation.life(owner, f"demo-{self.sessions:05d}", kernels=2)
                await life.rows()
                sent = await life.lifecycle(result="SUCCESS" if self.sessions % 4 else "FAILURE")
                pause = len(sent) / self.rate if self.rate > 0 else 1.0
                await asyncio.to_thread(self._stop.wait, pause)
        finally:
            await manager.aclose()
            await client.aclose()

    def lines(self) -> list[str]:
        """The banner's lines about this installation."""
        return [
            f"  Backend.AI {self.generation} beside it: its bus redis://127.0.0.1:"
            f"{self.redis.port}/4, its PostgreSQL {self.postgres.dsn_for('backend')}",
            f"  gateway bridge: http://127.0.0.1:{self.bridge_port}/ready and /metrics; "
            f"a session's life every {self._cadence():.0f} s",
        ]

    def _cadence(self) -> float:
        return 20 / self.rate if self.rate > 0 else 20.0

    def stop(self) -> None:
        self._stop.set()
        if self._producer is not None:
            self._producer.join(timeout=30)
        if self.bridge is not None:
            stop_process(self.bridge)
        if self.redis is not None:
            self.redis.close()
        if self.postgres is not None:
            self.postgres.close()

    def __enter__(self) -> BackendAIDemo:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _demo_keypairs() -> list[Any]:
    from publisher.demo import demo_identities

    return [k for k in demo_identities().keypairs if k.role != "monitor" and k.groups]


def _gateway_roles() -> list[str]:
    return [k.role for k in _demo_keypairs()]


def demo_owners() -> list[Owner]:
    """The demo's keypairs (publisher.demo) as Backend.AI's users own them, so the gateway's
    demo identities see the bridged sessions: the same access keys, domains and groups."""
    return [
        Owner(
            user_uuid=uuid.uuid5(uuid.NAMESPACE_URL, k.user_id),
            email=k.user_id,
            access_key=k.access_key,
            secret_key=k.secret_key,
            group_id=uuid.uuid5(uuid.NAMESPACE_DNS, f"{k.domain}/{k.groups[0]}"),
            group_name=k.groups[0],
            domain=k.domain,
            role=k.role if k.role in ("admin", "superadmin") else "user",
        )
        for k in _demo_keypairs()
    ]
