"""Which partitions a replica subscribes to (:class:`PartitionKeeper`): partition 0 always
(it also carries the change feed); another one while a stream of this replica needs it (a
user's stream needs its owner's partition, a stream that spans partitions needs them all),
and ``linger`` seconds after the last such stream ended, so a stream that comes back soon
finds it live. ``linger`` 0 keeps every partition subscribed from the start.

A stream pins the partitions it needs before it is registered (:meth:`PartitionKeeper.pin`,
which waits until each one's subscription is live: located in its history, subscribed, a
probe back), and unpins them when it ends. A partition's subscription that stops is thrown
away with its watermark (the lane is reset): when it is needed again, a new one locates the
history afresh, as a replica's first subscription does, so a new stream starts from then
and a resuming one replays from its own id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Final

from gateway.errors import Unavailable
from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from publisher.tasks import cancel_and_wait

__all__ = ["PartitionKeeper", "Pin"]

log = logging.getLogger(__name__)

#: how long a stream waits for a partition's subscription to go live, seconds
START_TIMEOUT: Final = 10.0
#: the counters of a subscription that /metrics adds up over the partitions
COUNTERS: Final = ("reconnects", "new_histories", "probe_failures")


def _ended(task: asyncio.Task[None]) -> None:
    """A subscription's task ended: by its stop (cancelled), or by a bug (it retries every
    Redis error itself), which leaves the partition unready until the replica restarts."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended", task.get_name(), exc_info=task.exception())


class Pin:
    """The partitions one stream holds; :meth:`release` (idempotent) lets them go."""

    __slots__ = ("_keeper", "lanes")

    def __init__(self, keeper: PartitionKeeper, lanes: tuple[int, ...]) -> None:
        self._keeper: PartitionKeeper | None = keeper
        self.lanes = lanes

    def release(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.unpin(self.lanes)


class PartitionKeeper:
    """Runs the subscriptions of partitions 1..n-1 of ``hub`` as streams need them
    (partition 0's is the lifespan's own, always running)."""

    def __init__(
        self,
        hub: Hub,
        make_subscriber: Callable[[int], Subscriber],
        *,
        linger: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``make_subscriber(p)``: a new subscriber of partition p (driving ``hub.lanes[p]``);
        ``linger``: seconds an unneeded partition stays subscribed (0: every partition,
        always)."""
        self._hub = hub
        self._make = make_subscriber
        self.linger = linger
        self._clock = clock
        #: the running subscriptions, by partition, and their tasks
        self.subscribers: dict[int, Subscriber] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: streams holding each partition
        self._pins: Counter[int] = Counter()
        #: when each running partition stopped being held
        self._idle_since: dict[int, float] = {}
        #: partitions being stopped: set when their subscription has ended
        self._stopping: dict[int, asyncio.Event] = {}
        #: when each running subscription started
        self._started_at: dict[int, float] = {}
        #: the :data:`COUNTERS` of the subscriptions stopped so far, summed
        self._retired: Counter[str] = Counter()
        self._closed = False

    @property
    def n(self) -> int:
        return len(self._hub.lanes)

    def running(self) -> list[Subscriber]:
        """The subscriptions running now (partitions 1..n-1), by partition."""
        return [self.subscribers[p] for p in sorted(self.subscribers)]

    def count(self, counter: str) -> int:
        """One of :data:`COUNTERS`, summed over every subscription this keeper ran
        (partitions 1..n-1, running or stopped): it only grows, as a Prometheus counter must."""
        running: int = sum(getattr(s, counter) for s in self.subscribers.values())
        return self._retired[counter] + running

    def held(self) -> tuple[int, ...]:
        """The partitions some stream holds now (pinned and not released), in order."""
        return tuple(sorted(self._pins))

    def alive(self) -> bool:
        """Every running subscription's task is running. One that is not live (its Redis
        unreachable) is still alive: it retries on its own, and the replica stays ready for
        the streams of the other partitions; only a task that ended (a bug) is not, and
        leaves the replica unready until it restarts."""
        return not any(task.done() for task in self._tasks.values())

    def not_live(self) -> list[int]:
        """The running partitions whose subscription is not live, but for those started in
        the last :data:`START_TIMEOUT` seconds (a stream waits for those)."""
        now = self._clock()
        return [
            p
            for p, s in sorted(self.subscribers.items())
            if not s.ready and now - self._started_at.get(p, now) >= START_TIMEOUT
        ]

    def ready(self) -> bool:
        """Every running subscription is live, but for those started in the last
        :data:`START_TIMEOUT` seconds (a stream waits for those)."""
        now = self._clock()
        return all(
            s.ready or now - self._started_at.get(p, now) < START_TIMEOUT
            for p, s in self.subscribers.items()
        )

    def states(self) -> list[bool | None]:
        """Each partition's subscription: live (True), not (False), not running (None);
        partition 0's is not the keeper's (None)."""
        return [
            None if p not in self.subscribers else self.subscribers[p].ready for p in range(self.n)
        ]

    def needs(self, lane: int | None) -> tuple[int, ...]:
        """The partitions (beyond 0) a stream of ``lane`` needs (None: it spans them)."""
        if lane is None:
            return tuple(range(1, self.n))
        return () if lane == 0 else (lane,)

    async def pin(self, lanes: Iterable[int]) -> Pin:
        """Hold ``lanes`` for a stream, starting their subscriptions if they are not
        running, and wait until each is live. Raises :class:`~gateway.errors.Unavailable`
        (503, ``Retry-After``) when one is not live within :data:`START_TIMEOUT`."""
        pin = Pin(self, tuple(lanes))
        for p in pin.lanes:
            self._pins[p] += 1
            self._idle_since.pop(p, None)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            for p in pin.lanes:
                while p in self._stopping:  # a stop under way ends first
                    await self._stopping[p].wait()
                if p not in self.subscribers:
                    self._start(p)
            for p in pin.lanes:
                while not (p in self.subscribers and self.subscribers[p].ready):
                    if loop.time() > deadline:
                        raise Unavailable(
                            f"the subscription to partition {p} is not live yet", retry_after=1
                        )
                    await asyncio.sleep(0.02)
        except BaseException:
            pin.release()
            raise
        return pin

    def unpin(self, lanes: Iterable[int]) -> None:
        now = self._clock()
        for p in lanes:
            self._pins[p] -= 1
            if self._pins[p] <= 0:
                del self._pins[p]
                self._idle_since[p] = now

    def _start(self, p: int) -> None:
        if self._closed:
            raise Unavailable("this replica is shutting down", retry_after=1)
        subscriber = self._make(p)
        self.subscribers[p] = subscriber
        task = asyncio.get_running_loop().create_task(subscriber.run(), name=f"subscriber-p{p}")
        self._tasks[p] = task  # the strong reference; removed when it is stopped
        task.add_done_callback(_ended)
        self._started_at[p] = self._clock()
        log.info("subscribing to partition %d", p)

    async def _stop(self, p: int) -> None:
        """End partition p's subscription and forget its watermark."""
        done = self._stopping[p] = asyncio.Event()
        try:
            subscriber = self.subscribers.pop(p)
            task = self._tasks.pop(p)
            self._idle_since.pop(p, None)
            self._started_at.pop(p, None)
            await cancel_and_wait(task)
            await subscriber.aclose()
            for counter in COUNTERS:
                self._retired[counter] += getattr(subscriber, counter)
            lane = self._hub.lanes[p]
            lane.last_id = lane.first_id = None
            log.info("unsubscribed from partition %d: no stream needs it", p)
        finally:
            del self._stopping[p]
            done.set()

    async def run(self) -> None:
        """With ``linger`` 0: start every partition, once. Else every ``linger``/4 seconds
        (at most 1 s), stop each partition no stream has held for ``linger`` seconds."""
        if self.linger <= 0:
            for p in range(1, self.n):
                if p not in self.subscribers and p not in self._stopping:
                    self._start(p)
            await asyncio.Event().wait()  # until cancelled: nothing is ever stopped
        period = min(1.0, self.linger / 4)
        while True:
            await asyncio.sleep(period)
            now = self._clock()
            idle = [
                p
                for p, since in self._idle_since.items()
                if p in self.subscribers and not self._pins[p] and now - since >= self.linger
            ]
            for p in idle:
                if p in self.subscribers and not self._pins[p]:  # (may have changed)
                    await self._stop(p)

    async def aclose(self) -> None:
        """Stop every running subscription (idempotent)."""
        self._closed = True
        for p in list(self.subscribers):
            if p not in self._stopping:
                await self._stop(p)
