"""What the lifespan builds and every request reads: one :class:`GatewayState` per process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import redis.asyncio as aredis

from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from gateway.identity.store import IdentityStore
from gateway.settings import Settings
from publisher.keys import Keys

__all__ = ["GatewayState"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class GatewayState:
    """The process's resources (``request.state.gateway``), owned by the lifespan."""

    settings: Settings
    redis: aredis.Redis
    keys: Keys
    hub: Hub
    store: IdentityStore
    subscriber: Subscriber
    accepting: bool = True
    loop: asyncio.AbstractEventLoop | None = None
    #: refused requests by problem title, for ``/metrics``
    auth_failures: Counter[str] = field(default_factory=Counter)
    #: restarts of each supervised background task, and the ones down right now
    task_restarts: Counter[str] = field(default_factory=Counter)
    tasks_down: set[str] = field(default_factory=set)
    #: monotonic time since which the replica has been unable to deliver, or None
    _unready_since: float | None = None

    @property
    def ready(self) -> bool:
        """Accepting streams, subscribed with a probe round trip, every task running."""
        return self.accepting and self.subscriber.ready and not self.tasks_down

    def unable_to_deliver_for(self) -> float:
        """Seconds this replica has been accepting but not ready (0 when it is ready or
        draining), as seen by the health endpoints that ask."""
        now = time.monotonic()
        if self.ready or not self.accepting:
            self._unready_since = None
            return 0.0
        if self._unready_since is None:
            self._unready_since = now
        return now - self._unready_since

    @property
    def max_skew(self) -> timedelta:
        return timedelta(seconds=self.settings.max_clock_skew)

    def begin_shutdown(self) -> None:
        """Not ready, accept no new stream, and tell every client to go elsewhere."""
        if not self.accepting:
            return
        self.accepting = False
        log.info("shutting down: closing %d streams with server_close", len(self.hub))
        self.hub.close_all("shutdown")

    async def drain(self) -> bool:
        """:meth:`begin_shutdown`, then wait up to ``drain_deadline`` for every stream to
        end; True when none is left. The one drain of both the lifespan's exit and SIGTERM."""
        self.begin_shutdown()
        if await self.hub.drained(self.settings.drain_deadline):
            return True
        log.warning("drain deadline passed with %d streams left", len(self.hub))
        return False
