"""Every few seconds, each replica looks at the history the way a hostile writer could have
left it (ARCHITECTURE.md, "Watermark and epoch"; issue: one publisher credential must not
silence the fleet unnoticed):

* **ahead of the clock**: an entry written with an explicit id far in the future (``XADD
  <history> 18446744073709551615-18446744073709551615 ...`` by anyone who may write to it)
  makes every later id "future" to every replica, or leaves Redis no id to give at all
  ("The stream has exhausted the last possible ID"): publishing stops for good. The replica
  says so at once: ``/ready`` fails with the reason (:attr:`HistoryWatch.problem`), the gauge
  ``kev_history_ahead_seconds`` and one log line naming the fix, ``gateway reset-history``.
* **a new history**: the epoch changed under a running subscription (that command, or any
  deletion of the history): the subscription starts over, so every open stream is told
  ``history_truncated`` (``reset``) and follows the new history at once, instead of at its
  next reconnect.
* **the number of partitions**: recorded again if Redis lost the record (a Redis without
  persistence that restarted), so a publisher started later with another number is refused
  at its first write, as at any other time; a record of another number (a process with
  another number recorded it first) is named in ``/ready``
  (:attr:`HistoryWatch.partitions_problem`), by the gauge ``kev_partitions_mismatch`` and one
  log line. The replica stays ready: it still serves every event of the partitions it knows,
  and the events of the other process are dropped and counted (``wrong_partition``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final

import redis.asyncio as aredis
from redis.exceptions import RedisClusterException, RedisError

from gateway.fanout.frames import format_stream_id
from gateway.fanout.history import history_state
from gateway.fanout.subscriber import Subscriber
from publisher.bus import Bus
from publisher.keys import Keys
from publisher.partitions import PartitionMismatch, check_partitions

__all__ = ["HistoryWatch"]

log = logging.getLogger(__name__)

#: what an operator runs to start a new history (README, "Faults")
RESET_COMMAND: Final = "gateway reset-history --yes (with the admin user's credentials)"


class HistoryWatch:
    """:meth:`run` every ``interval`` seconds for the life of the replica. With more than one
    partition, ``partitions()`` gives (partition, its bus, its subscriber) of every partition
    subscribed to at the time, 0 included (``bus`` and ``subscriber`` are partition 0's):
    each one's history is watched alike."""

    def __init__(
        self,
        redis: aredis.Redis,
        bus: Bus,
        subscriber: Subscriber,
        *,
        max_skew_ms: float,
        interval: float,
        partitions: Callable[[], Sequence[tuple[int, Bus, Subscriber]]] | None = None,
        n: int | None = None,
    ) -> None:
        """``n``: the deployment's number of partitions, checked against Redis' record at
        every look (None: not checked)."""
        self._redis = redis
        self._n = n
        self._base = bus.keys
        self._partitions = partitions
        self._only: Sequence[tuple[int, Bus, Subscriber]] = [(0, bus, subscriber)]
        self.max_skew_ms = max_skew_ms
        self.interval = interval
        #: why a history cannot take new events (None: every one can)
        self.problem: str | None = None
        #: how far a history's last id is ahead of Redis' clock, seconds (0 when none is)
        self.ahead_seconds = 0.0
        #: per partition: why it cannot take new events, and the epoch the last check saw
        #: (a change is a history started anew)
        self._problems: dict[int, str] = {}
        self._seen_epochs: dict[int, str | None] = {}
        #: Redis records another number of partitions than this replica has (the message)
        self.partitions_problem: str | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except (RedisError, RedisClusterException) as exc:  # the subscriber says what
                # Redis being away means
                log.debug("history watch: %s", exc)
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        """One look at each partition's history: its last id against Redis' clock, its
        epoch against the one the subscription follows."""
        if self._n is not None:
            await self._check_partitions(self._n, self._base)
        watched = self._only if self._partitions is None else self._partitions()
        many = self._partitions is not None
        for gone in set(self._seen_epochs) - {p for p, _, _ in watched}:
            self._seen_epochs.pop(gone)  # no longer subscribed: no longer watched
            self._problems.pop(gone, None)
        ahead = 0.0
        for p, bus, sub in watched:
            ahead = max(ahead, await self._check(p, bus, sub, many=many))
        self.ahead_seconds = ahead
        self.problem = next((self._problems[p] for p in sorted(self._problems)), None)

    async def _check_partitions(self, n: int, base: Keys) -> None:
        try:
            await check_partitions(self._redis, base, n, quiet=True)
        except PartitionMismatch as exc:
            if self.partitions_problem is None:
                log.error("%s", exc)
            self.partitions_problem = str(exc)
        else:
            if self.partitions_problem is not None:
                log.warning("Redis records %d partition(s) again, as this replica has", n)
            self.partitions_problem = None

    async def _check(self, p: int, bus: Bus, sub: Subscriber, *, many: bool) -> float:
        """Partition ``p``'s look; how far its last id is ahead of Redis' clock, seconds."""
        # the watermark first: an event dispatched after the history's end is read would
        # look like one past it (every event is in history before it goes live)
        watermark = sub.watermark
        state = await history_state(self._redis, bus)
        now_ms = sub.redis_now_ms()  # synced by the subscriber: no TIME here
        ahead_ms = state.last_id[0] - now_ms
        which = f"partition {p}'s history" if many else "the history"
        if ahead_ms > self.max_skew_ms:
            problem = (
                f"{which}'s last id {format_stream_id(state.last_id)} is "
                f"{ahead_ms / 1000:.0f} s ahead of Redis' clock: an entry was written with an "
                "id in the future, so new events cannot follow it; start a new history: "
                + RESET_COMMAND
            )
            if p not in self._problems:
                log.error("not ready: %s", problem)
            self._problems[p] = problem
        elif self._problems.pop(p, None) is not None:
            log.warning(
                "%s takes new events again (last id %s)", which, format_stream_id(state.last_id)
            )
        seen, self._seen_epochs[p] = self._seen_epochs.get(p), state.epoch
        if not sub.subscribed:
            return max(0.0, ahead_ms / 1000)
        followed = sub.epoch if sub.epoch is not None else seen
        if followed is not None and state.epoch != followed:
            # over the same history (the watermark's entry still there) the key was written
            # by hand: the subscriber follows it at its next read, without starting over
            if not await sub.holds_watermark(self._redis):
                sub.resync(f"{which}'s epoch is now {state.epoch} (was {followed})")
        elif watermark is not None and watermark > state.last_id:
            # every event is in history before it goes live, so a watermark past history's
            # end means entries were removed under it: the history was started anew
            sub.resync(
                f"the watermark {format_stream_id(watermark)} is past {which}'s end "
                f"{format_stream_id(state.last_id)}"
            )
        return max(0.0, ahead_ms / 1000)
