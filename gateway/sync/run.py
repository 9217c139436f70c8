"""``gateway sync-identities``: the identity sync as a process. One syncer is active at a time
(a lease in the gateway's Redis, as the bridge's); it runs :func:`~.syncer.sync_once` every
``interval`` seconds while it holds the lease. A database that cannot be read changes nothing
(the store keeps what it holds: no mass revocation) and shows in ``/ready`` and
``kev_sync_database_up``; a refused snapshot shows in the log and ``kev_sync_runs_total``
``{result="refused"}``. ``/health``, ``/ready`` and ``/metrics`` on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.applications import Starlette

from gateway.bridge.lease import Lease, LeaseLost, holder_name
from gateway.identity.store import IdentityStore
from gateway.settings import SyncSettings
from gateway.worker import serve_worker, worker_app
from publisher.bus import Bus
from publisher.connection import connect_async, redact_url
from publisher.tasks import cancel_and_wait

from .errors import SourceUnavailable, SyncRefused
from .syncer import SyncReport, sync_once

__all__ = ["Syncer", "create_app", "run_once", "serve"]

log = logging.getLogger(__name__)


class SyncMetrics:
    """The syncer's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.runs = Counter(
            "kev_sync_runs", "Syncs by result: ok, unavailable, refused, error", ["result"],
            registry=r,
        )  # fmt: skip
        self.changes = Counter(
            "kev_sync_changes", "Entries changed, by kind: added, updated, deactivated, removed",
            ["kind"], registry=r,
        )  # fmt: skip
        self.seconds = Histogram("kev_sync_seconds", "Seconds one sync took", registry=r)
        self.database_up = Gauge(
            "kev_sync_database_up", "1 while Backend.AI's PostgreSQL answers", registry=r
        )
        self.last_success = Gauge(
            "kev_sync_last_success_timestamp_seconds", "When a sync last applied", registry=r
        )
        self.keypairs = Gauge("kev_sync_keypairs", "Backend.AI's keypairs in the store", registry=r)
        self.active = Gauge("kev_sync_active", "1 while this process holds the lease", registry=r)


async def _pool(dsn: str) -> Any:
    return await asyncpg.create_pool(
        dsn, min_size=0, max_size=2, timeout=10.0, command_timeout=30.0
    )


class Syncer:
    """One syncer process: :meth:`run` until cancelled, then :meth:`close`."""

    def __init__(self, settings: SyncSettings, *, force: bool = False) -> None:
        self.settings = settings
        self.force = force
        self.holder = holder_name()
        self.metrics = SyncMetrics()
        self.redis = connect_async(
            settings.redis.url,
            **settings.redis.options,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        keys = settings.redis.keys()
        self.store = IdentityStore(self.redis, keys, cache_ttl=0)
        self.lease = Lease(
            self.redis, Bus(keys), keys.sync_lease, self.holder, settings.sync.lease_ttl,
            name="the active identity syncer",
        )  # fmt: skip
        self.role = "standby"
        #: whether the last attempt read the database (None: none tried yet); when a sync
        #: last applied
        self.database_ok: bool | None = None
        self.last_success: float | None = None
        self.last_report: SyncReport | None = None
        self._pool: Any = None

    async def run(self) -> None:
        log.info(
            "identity sync (%s): backend.ai's database %s every %.0fs, the gateway's redis %s",
            self.holder, redact_url(self.settings.sync.from_db), self.settings.sync.interval,
            redact_url(self.settings.redis.url),
        )  # fmt: skip
        while True:
            await self.lease.acquire()
            self.role = "active"
            self.metrics.active.set(1)
            log.info("active: %s holds the identity sync's lease", self.holder)
            keep = asyncio.create_task(self.lease.keep(), name="sync-lease")
            loop = asyncio.create_task(self._loop(), name="sync-loop")
            try:
                done, _ = await asyncio.wait({keep, loop}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            except LeaseLost as lost:
                log.warning("standby again: %s", lost)
            finally:
                self.role = "standby"
                self.metrics.active.set(0)
                await cancel_and_wait(keep, loop)

    async def _loop(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.settings.sync.interval)

    async def sync(self) -> SyncReport | None:
        """One sync; every failure is counted, logged and waited out (nothing is written)."""
        started = time.monotonic()
        try:
            if self._pool is None:
                self._pool = await _pool(self.settings.sync.from_db)
            report = await sync_once(
                self._pool, self.store, self.redis, self.store.keys.prefix,
                max_removal_share=self.settings.sync.max_removal_share, force=self.force,
            )  # fmt: skip
        except (SourceUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.metrics.runs.labels("unavailable").inc()
            if self.database_ok is not False:
                log.warning("backend.ai's database cannot be read (%s): the store is kept", exc)
            self.database_ok = False
            self.metrics.database_up.set(0)
            await self._drop_pool()
            return None
        except SyncRefused as exc:
            self.metrics.runs.labels("refused").inc()
            log.error("identity sync refused: %s", exc)
            self.database_ok = True
            return None
        except RedisError as exc:
            self.metrics.runs.labels("error").inc()
            log.warning("the gateway's redis: %s: %s; syncing again later", type(exc).__name__, exc)
            return None
        if self.database_ok is False:
            log.info("backend.ai's database answers again")
        self.database_ok = True
        if self.force:  # --force applies one snapshot, not every one after it
            log.warning("identity sync: --force used once; the removal guard is on again")
            self.force = False
        self.metrics.database_up.set(1)
        self.metrics.runs.labels("ok").inc()
        self.metrics.seconds.observe(time.monotonic() - started)
        for kind in ("added", "updated", "deactivated", "removed"):
            self.metrics.changes.labels(kind).inc(getattr(report, kind))
        self.metrics.keypairs.set(report.keypairs)
        self.last_success = time.time()
        self.metrics.last_success.set(self.last_success)
        self.last_report = report
        return report

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def state(self) -> dict[str, object]:
        """What /health and /ready show."""
        report = self.last_report
        return {
            "role": self.role,
            "database": {None: "not read yet", True: "ok", False: "unavailable"}[self.database_ok],
            "last_success": self.last_success,
            "keypairs": report.keypairs if report else None,
        }

    @property
    def ready(self) -> bool:
        """Active with a sync applied within three intervals, or a standby that reaches the
        gateway's Redis."""
        if self.role != "active":
            return self.lease.reachable
        recent = self.last_success is not None and (
            time.time() - self.last_success < 3 * self.settings.sync.interval + 30
        )
        return bool(self.database_ok) and recent

    async def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.terminate()  # its connections may be dead: no goodbye to wait for

    async def close(self) -> None:
        if self.role == "active":
            await self.lease.release()
        await self._drop_pool()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()


async def run_once(settings: SyncSettings, *, force: bool = False) -> int:
    """``--once``: one sync (a first import, or a cron job) under the lease, so it never
    writes beside an active syncer; 0 when it applied, 1 when it did not (the reason logged),
    or another syncer holds the lease."""
    syncer = Syncer(settings, force=force)
    try:
        if not await syncer.lease.try_acquire():
            holder = await syncer.lease.current_holder()
            print(f"gateway sync-identities --once: {holder} is the active syncer; not run")
            return 1
        syncer.role = "active"
        report = await syncer.sync()
    finally:
        await syncer.close()
    if report is None:
        return 1
    print(
        f"identity sync: {report.added} added, {report.updated} updated, "
        f"{report.deactivated} deactivated, {report.removed} removed; "
        f"{report.keypairs} keypairs from backend.ai in {report.seconds:.2f}s"
    )
    return 0


def create_app(settings: SyncSettings, syncer: Syncer | None = None) -> Starlette:
    """The app; its lifespan starts the syncer and stops it."""
    return worker_app(syncer or Syncer(settings), name="identity sync")


def serve(settings: SyncSettings, *, force: bool = False) -> None:
    """Run the syncer until SIGTERM or SIGINT."""
    cfg = settings.sync
    serve_worker(
        Syncer(settings, force=force), name="identity sync", host=cfg.host, port=cfg.port,
        log_level=cfg.log_level, log_format=cfg.log_format,
    )  # fmt: skip
