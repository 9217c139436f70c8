"""What the replica's lifespan builds (:mod:`.lifespan`) and every request reads: one
:class:`GatewayState` per process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from gateway.identity.methods import AuthMethod
from gateway.identity.sessions import SessionStore
from gateway.identity.store import IdentityStore
from gateway.identity.throttle import LoginThrottle
from gateway.settings import Settings
from publisher.bus import Bus
from publisher.keys import Keys

from .handoff import Handoff, Ticket
from .history_watch import HistoryWatch
from .limits import KeyLeases, fd_stream_limit
from .partitions import PartitionKeeper
from .reauthorize import Reauthorizer

__all__ = ["GatewayState"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class GatewayState:
    """The process's resources (``request.state.gateway``), owned by the lifespan."""

    settings: Settings
    redis: aredis.Redis
    keys: Keys
    #: every Redis verb on the keys the publishers share (publisher.bus)
    bus: Bus
    hub: Hub
    store: IdentityStore
    subscriber: Subscriber
    #: the ways a request proves who it is, in the order they are tried
    #: (:func:`gateway.identity.methods.authenticate`)
    methods: Sequence[AuthMethod] = ()
    #: browser sessions (None only in tests without a lifespan)
    sessions: SessionStore | None = None
    #: failed-login counts, shared by every replica
    throttle: LoginThrottle | None = None
    accepting: bool = True
    loop: asyncio.AbstractEventLoop | None = None
    #: re-checks open streams when identities change (None only in tests without a lifespan)
    reauth: Reauthorizer | None = None
    #: the fleet-wide per-key stream counts (None: this replica's own count decides)
    leases: KeyLeases | None = None
    #: streams this process may hold: ``max_streams``, or fewer where its file descriptors
    #: would run out first (:func:`gateway.replica.limits.fd_stream_limit`; -1: work it out)
    stream_limit: int = -1
    #: streams admitted whose response has not registered them in the hub yet
    opening: int = 0
    #: stream requests refused at a limit, by limit (``fd_limit``, ``max_streams``,
    #: ``key_limit``), for ``/metrics``
    refused: Counter[str] = field(default_factory=Counter)
    #: refused requests by problem title, for ``/metrics``
    auth_failures: Counter[str] = field(default_factory=Counter)
    #: restarts of each supervised background task, and the ones down right now
    task_restarts: Counter[str] = field(default_factory=Counter)
    tasks_down: set[str] = field(default_factory=set)
    #: with more than one partition, the subscriptions of partitions 1..n-1, run while
    #: streams need them (``subscriber`` is partition 0's, which also carries the change
    #: feed); None with one partition
    keeper: PartitionKeeper | None = None
    #: each partition's bus, by partition (empty: ``bus`` is the one)
    partition_buses: Sequence[Bus] = ()
    #: the history's health (ahead of the clock, started anew), or None (tests)
    history_watch: HistoryWatch | None = None
    #: where drained SDK streams stood, for their reconnects (None: they get server_close)
    handoff: Handoff | None = None
    #: partition 0's history holds events of other partitions' owners (written with fewer
    #: partitions): named in /ready and /metrics, found at start-up
    foreign_history: str | None = None
    #: monotonic time since which the replica has been unable to deliver, or None
    _unready_since: float | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def buses(self) -> Sequence[Bus]:
        """Each partition's bus, by partition (one partition: ``[bus]``)."""
        return self.partition_buses or (self.bus,)

    @property
    def subscribed(self) -> bool:
        """Partition 0's subscription is ready (subscribed, a probe made the round trip), and
        every other one's task runs (:meth:`PartitionKeeper.alive`). Another partition whose
        Redis is unreachable leaves the replica ready: the streams of the other partitions
        go on (a stream that needs it waits, then gets 503), and its subscription fills the
        gap from history once it is back."""
        return self.subscriber.ready and (self.keeper is None or self.keeper.alive())

    def watched_partitions(self) -> list[tuple[int, Bus, Subscriber]]:
        """(partition, bus, subscriber) of every partition subscribed to now, 0 first."""
        watched = [(0, self.buses[0], self.subscriber)]
        if self.keeper is not None:
            running = self.keeper.subscribers
            watched += [(p, self.buses[p], running[p]) for p in sorted(running)]
        return watched

    def __post_init__(self) -> None:
        if self.stream_limit < 0:
            self.stream_limit = fd_stream_limit(self.settings)
        if self.stream_limit < self.settings.limits.max_streams:
            # a cap well short of max_streams is a misconfiguration; a few % is headroom
            short = self.stream_limit < 0.9 * self.settings.limits.max_streams
            (log.warning if short else log.info)(
                "file descriptors cap this replica at %d streams (max_streams %d): raise "
                "RLIMIT_NOFILE (ulimit -n) to serve more",
                self.stream_limit,
                self.settings.limits.max_streams,
            )

    @property
    def partitions_problem(self) -> str | None:
        """What is wrong with the partitions, for /ready and /metrics: Redis records another
        number than this replica has (the history watch, now), else partition 0's history
        was found written with fewer (at start-up); None when neither."""
        watch = self.history_watch
        if watch is not None and watch.partitions_problem is not None:
            return watch.partitions_problem
        return self.foreign_history

    @property
    def ready(self) -> bool:
        """Accepting streams, subscribed with a probe round trip, every task running, and a
        history that can take new events (:mod:`.history_watch`)."""
        watch = self.history_watch
        return (
            self.accepting
            and self.subscribed
            and not self.tasks_down
            and (watch is None or watch.problem is None)
        )

    def unable_to_deliver_for(self) -> float:
        """Seconds this replica has been accepting but unable to deliver (0 when it can, or
        is draining), as seen by the health endpoints that ask. A history that cannot take
        new events is not counted: it is shared, a restart of this replica cannot fix it, and
        every replica restarted by its liveness probe would cut its open streams for nothing
        (the review found the whole fleet restarting after one hostile write)."""
        now = time.monotonic()
        deliverable = self.accepting and self.subscribed and not self.tasks_down
        if deliverable or not self.accepting:
            self._unready_since = None
            return 0.0
        if self._unready_since is None:
            self._unready_since = now
        return now - self._unready_since

    def begin_shutdown(self) -> None:
        """Not ready, accept no new stream, and tell every client to go elsewhere."""
        if not self.accepting:
            return
        self.accepting = False
        # what is queued and can go out now, out first: a watcher that keeps up then has
        # nothing left in the process, and is recorded exactly where it stands
        self.hub.flush()
        stands = self._stands()
        log.info(
            "shutting down: closing %d streams, %d handed off (ended without server_close; "
            "their SDKs reconnect and resume where they stood)",
            len(self.hub),
            len(stands),
        )
        if self.leases is not None:
            # Its clients are about to reconnect elsewhere: they must not count twice there.
            self._in_background(self.leases.withdraw())
        if stands and self.handoff is not None:
            # Written long before the SDKs come back (their retry delay is 5 s); the drain
            # waits for it.
            self._in_background(self._hand_off(self.handoff, stands))
        self.hub.close_all("shutdown")

    def _stands(self) -> list[tuple[str, str, str]]:
        """``(access key, request digest, stream id)`` of every stream handed off at this
        drain (gateway.replica.handoff): where it stands with nothing of it unsent
        (:meth:`Hub.handoff_position`), else where it began. What is still queued for it is
        dropped: the reconnect sends it again, and a reader slower than ``drain_deadline``
        would never get it."""
        stands = []
        for client in self.hub.connections():
            ticket = client.handoff
            if isinstance(ticket, Ticket):
                at = self.hub.handoff_position(client) or ticket.began_at
                if client.buffered:
                    client.discard_queue()
                if at is not None:
                    stands.append((client.access_key, ticket.request, at))
        return stands

    async def _hand_off(self, handoff: Handoff, stands: list[tuple[str, str, str]]) -> None:
        try:
            count = await handoff.record(stands)
        except RedisError as exc:
            log.warning("could not record where %d streams stood: %s", len(stands), exc)
        else:
            log.info("recorded where %d streams stood, for their reconnects", count)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no running loop: nothing to do it on
            work.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> bool:
        """:meth:`begin_shutdown`, then wait up to ``drain_deadline`` for every stream to
        end; True when none is left. The one drain of both the lifespan's exit and SIGTERM."""
        self.begin_shutdown()
        drained = await self.hub.drained(self.settings.server.drain_deadline)
        if self._background:  # the handoff records and lease withdrawal, a round trip each
            await asyncio.wait(set(self._background), timeout=2.0)
        if drained:
            return True
        log.warning("drain deadline passed with %d streams left", len(self.hub))
        return False
