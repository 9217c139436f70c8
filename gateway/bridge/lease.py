"""One active bridge at a time: a lease in the gateway's Redis (``SET NX PX``), renewed every
third of its lifetime by the holder, taken by a standby once it expires. The holder's writes
are fenced by it (:data:`publisher.bus.PUBLISH_AT_SCRIPT` refuses anyone else), so a holder
that stalled past its lease cannot write after a standby took over."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import redis.asyncio as aredis
from redis.exceptions import RedisError

from publisher.bus import Bus

__all__ = ["Lease", "LeaseLost", "holder_name"]

log = logging.getLogger(__name__)


def holder_name() -> str:
    """This process as a lease holder: host, pid and a random part (a restarted process on
    the same host and pid is another holder)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseLost(Exception):
    """This process no longer holds the lease (or cannot tell that it does): it must stop
    writing at once."""


class Lease:
    """The lease at ``key`` for ``holder``, ``ttl`` seconds long; ``name`` says whose it is
    in the log ("the active bridge backendai", "the active identity syncer")."""

    def __init__(
        self, redis: aredis.Redis, bus: Bus, key: str, holder: str, ttl: float, *, name: str
    ) -> None:
        self._redis = redis
        self._bus = bus
        self.key = key
        self.name = name
        self.holder = holder
        self._ms = int(ttl * 1000)
        self.ttl = ttl
        #: whether the gateway's Redis answered the last attempt at the lease
        self.reachable = True

    async def acquire(self, poll: float | None = None) -> None:
        """Wait until this process holds the lease (a standby waits here)."""
        poll = poll if poll is not None else min(1.0, self.ttl / 5)
        told: str | None = None
        while True:
            try:
                if await self._bus.acquire_lease(self._redis, self.key, self.holder, self._ms):
                    self.reachable = True
                    return
                holder = await self._bus.lease_holder(self._redis, self.key)
                self.reachable = True
                if holder != told and holder is not None:
                    log.info("standby: %s is %s", holder, self.name)
                    told = holder
            except (RedisError, OSError) as exc:
                if self.reachable:
                    log.warning(
                        "the gateway's redis does not answer (%s); waiting for the lease", exc
                    )
                self.reachable = False
            await asyncio.sleep(poll)

    async def try_acquire(self) -> bool:
        """Take the lease if no one holds it, at once (no waiting)."""
        return await self._bus.acquire_lease(self._redis, self.key, self.holder, self._ms)

    async def current_holder(self) -> str | None:
        """Who holds the lease now (None: no one)."""
        return await self._bus.lease_holder(self._redis, self.key)

    async def keep(self) -> None:
        """Renew the lease every third of its lifetime until cancelled; raise
        :class:`LeaseLost` when it is found taken, or when no renewal succeeded for a whole
        lifetime (it may have expired)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                held = await self._bus.renew_lease(self._redis, self.key, self.holder, self._ms)
            except (RedisError, OSError) as exc:
                if time.monotonic() - renewed >= self.ttl:
                    raise LeaseLost(
                        f"the lease could not be renewed for {self.ttl}s: {exc}"
                    ) from exc
                continue
            if not held:
                raise LeaseLost(f"{self.name}: the lease was taken over")
            renewed = time.monotonic()

    async def release(self) -> None:
        """Give the lease up (a standby takes over at once); never raises."""
        try:
            await self._bus.release_lease(self._redis, self.key, self.holder)
        except (RedisError, OSError) as exc:
            log.warning("could not release the lease %s (%s); it expires by itself", self.name, exc)
