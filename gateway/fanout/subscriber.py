"""The process's one Redis subscription, kept alive and proven live.

Flow of one subscription session (see ARCHITECTURE.md, "Watermark and epoch"):

1. Before subscribing, look at the history (:func:`~gateway.fanout.history.history_state`)
   and Redis' clock. The first session takes the history's last id as the hub's watermark:
   everything after it is new to this replica. Later sessions compare the epoch: another
   one means Redis lost its history, so the watermark is reset and every open stream is told
   (``history_truncated``, reason ``reset``); a watermark past the history's end is pulled
   back to it, with the same notice (reason ``unknown``).
2. ``SUBSCRIBE <live channel> <own probe channel>`` on a fresh pub/sub connection, then
   gap-fill: read history after the watermark and dispatch it (the hub drops ids it has
   already seen, so live messages that queued up meanwhile are not delivered twice).
3. Read the live channel as a doorbell: each round of messages that arrived together is
   answered by one history read after the watermark, whose entries go to the hub. A live
   message is never dispatched itself: history proves every event, so a forged live message
   (any id, any payload) delivers nothing and moves nothing; one whose id history does not
   hold is counted (``unproven``). Every ``probe_interval`` read history anyway (an entry no
   live message announced is delivered within one interval) and publish a probe on
   the replica's own channel; if no probe has come back for 1.5 intervals the connection is
   silently dead (seen after failovers): drop it and start over at 1. redis-py re-subscribing
   by itself after a dropped connection also starts over, since messages were missed.

Any Redis error ends the session; the next starts after a bounded, jittered backoff, on fresh
connections (every pooled one is closed: one idle through a Redis restart looks alive).

On a Redis Cluster each session runs on the node that serves the slot of the deployment's
names (:mod:`publisher.keys`): the cluster client is asked where the slot is (one keyed
command first, so a failover or a resharding it has not seen yet is learned by ``MOVED`` or a
failed connection), and the session opens a plain client to that master for everything it
does (SSUBSCRIBE, the history reads, TIME and INFO of the node that holds the history). When
the slot moves away (resharded: the node sends ``sunsubscribe``; failed over: the connection
drops, or a read gets ``MOVED``), the session ends and the next one finds the slot's new
master and gap-fills from history, as after any reconnect.

The same subscription carries the process's other channels (``listeners``: the identity
changes), whose messages go to their callbacks; ``on_subscribed`` runs after each session's
subscribe, so whatever was published while the subscription was down can be caught up on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

import redis.asyncio as aredis
from redis.exceptions import RedisClusterException, RedisError

from publisher.bus import Bus, Replication
from publisher.connection import is_cluster

from .frames import StreamId, format_stream_id, parse_stream_id
from .history import ReadFacts, entry_exists, history_state, read_after
from .hub import Hub
from .lanes import Lane
from .watermark import Found, Known, Verdict, decide

__all__ = ["ProbeLost", "Subscriber", "SubscriptionReset"]

log = logging.getLogger(__name__)

_POLL: Final = 0.25  # longest a read waits, so probe deadlines are checked on time
_ID_MAX: Final = 48  # no stream id is longer (two 20-digit parts and a dash)
#: at most one log line per this many seconds about epoch key rewrites over the same history
_EPOCH_SAY_EVERY: Final = 60.0
#: clock samples kept per session (one per probe interval: 40 s at the default 5 s)
_CLOCK_SAMPLES: Final = 8

#: the log line of each decision that changes something (arguments: the epoch, history's end)
_SAYS: Final[dict[Verdict, str]] = {
    "epoch_key_replaced": "the history's epoch key changed (%s, end %s): history intact",
    "new_history_followed": "redis holds a new history (epoch %s, end %s), already followed",
    "new_history": "redis holds a new history (epoch %s, end %s): every open stream is told, "
    "and gets the new history from its start",
    "removed": "entries after the watermark were removed (epoch %s, end %s): streams told",
    "restarted_unseen": "redis restarted (epoch %s, end %s), no history seen before: told",
    "past_the_end": "the watermark is past the end of history (epoch %s, end %s): pulled back",
}


class ProbeLost(RedisError):
    """The subscription looked open but its probe did not come back in time."""


class SubscriptionReset(RedisError):
    """redis-py re-established the pub/sub connection by itself: what was published while it
    was down never arrived, so the session starts over (and gap-fills)."""


class Subscriber:
    def __init__(
        self,
        redis: aredis.Redis,
        bus: Bus,
        hub: Hub | Lane,
        *,
        replica: str,
        probe_interval: float = 5.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        listeners: Mapping[str, Callable[[bytes], None]] | None = None,
        on_subscribed: Callable[[], None] | None = None,
        connect_node: Callable[[str, int], aredis.Redis] | None = None,
    ) -> None:
        """``listeners``: more channels to subscribe, each with a callback that gets every
        message's data (called from the read loop: it must not block or raise);
        ``on_subscribed``: called once each session is subscribed and gap-filled;
        ``connect_node``: on a cluster (``redis`` a cluster client), a plain client of the
        node at (host, port), with the cluster's credentials
        (:func:`publisher.connection.connect_node_async`)."""
        if is_cluster(redis) and connect_node is None:
            raise ValueError("a subscriber on a Redis Cluster needs connect_node")
        self._connect_node = connect_node
        self._redis = redis
        #: the client of the current session: ``redis``, or on a cluster a plain client of
        #: the node serving the slot (:meth:`_connect`)
        self._node = redis
        self._left_open: aredis.Redis | None = None
        self._listeners = {name.encode(): fn for name, fn in (listeners or {}).items()}
        self._on_subscribed = on_subscribed
        self._bus = bus
        self._hub = hub
        self._probe_channel = bus.keys.probe_channel(replica)
        self._probe_interval = probe_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._rng = rng or random.Random()
        self.subscribed = False
        self.probe_ok = False
        self.reconnects = 0
        self.probe_failures = 0
        self.new_histories = 0
        self._reset = False
        #: the epoch this replica's watermark belongs to; unset until the first session
        self._epoch: str | None = None
        self._started = False
        #: the Redis instance's run id at the last session: another one means a restart
        self._run_id: str | None = None
        #: its replication id and offset, read at the session's start and at each probe
        #: (:func:`~.watermark.carries_on`: a failover to a node that had it all tells nothing)
        self._replication: Replication | None = None
        self._replication_unknown_said = False
        self._replication_refused = False
        #: epoch key rewrites followed over the same history (:meth:`_epoch_changed`)
        self.epoch_rewrites = 0
        self._epoch_said = float("-inf")
        #: this session's recent clock samples: (round trip s, Redis minus ours ms)
        self._clock_samples: deque[tuple[float, float]] = deque(maxlen=_CLOCK_SAMPLES)

    @property
    def run_id(self) -> str | None:
        """The run id of the Redis instance the current (or last) session looked at."""
        return self._run_id

    @property
    def ready(self) -> bool:
        """Subscribed, and a probe has made the round trip on this subscription."""
        return self.subscribed and self.probe_ok

    @property
    def watermark(self) -> StreamId | None:
        """The id of the newest event dispatched (the hub's watermark)."""
        return self._hub.last_id

    def redis_now_ms(self) -> float:
        """Redis' clock as last synced (each session start and probe): no round trip."""
        return self._hub.redis_now_ms()

    @property
    def epoch(self) -> str | None:
        """The epoch of the history the watermark belongs to (None: none yet)."""
        return self._epoch

    def resync(self, why: str) -> None:
        """End the session at its next read, so the next one locates the history again (a new
        history is told to every open stream there): the history watch's call."""
        log.warning("subscription starts over: %s", why)
        self._reset = True

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled; reconnects forever on Redis errors."""
        failures = 0
        while True:
            try:
                await self._session()
            except Exception as exc:  # never let the process's only subscription die
                if not isinstance(exc, (RedisError, RedisClusterException, OSError, TimeoutError)):
                    log.exception("unexpected error in the subscriber; starting over")
                if self.probe_ok:
                    # That session was live: this is a new outage, not the same one going
                    # on, so the backoff starts short again (it grew for the whole life of
                    # the process before).
                    failures = 0
                self.subscribed = self.probe_ok = False
                if isinstance(exc, ProbeLost):
                    self.probe_failures += 1
                self.reconnects += 1
                delay = min(self._backoff_max, self._backoff_base * 2**failures)
                delay *= 0.5 + self._rng.random() / 2  # jitter: replicas do not stampede
                failures = min(failures + 1, 16)
                log.warning(
                    "redis subscription lost (%s: %s); reconnecting in %.2fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._drop_pooled()
                await asyncio.sleep(delay)

    async def _drop_pooled(self) -> None:
        """Close every connection of the subscriber's own pool, so the next session starts
        on fresh ones. A connection idle in the pool while Redis restarted is dead but looks
        alive (redis-py >= 6 skips its check-out test when maintenance notifications are on):
        the first session after every restart failed on it (its gap-fill read) and waited
        one more full backoff, ~2 s, before the replica was ready again."""
        if is_cluster(self._redis):
            return  # each session's node client was closed with it; the cluster client
            # finds dead nodes itself (a failed connection makes it look again)
        try:
            await self._redis.connection_pool.disconnect()
        except (RedisError, OSError) as exc:  # nothing to keep: they are being thrown away
            log.debug("closing the subscriber's pooled connections: %s", exc)

    async def _connect(self) -> aredis.Redis:
        """The client this session runs on: the process's own, or on a cluster a plain
        client of the master that serves the slot of the history (and of the live channel,
        the probe channel and the change feed: one hash tag)."""
        if not is_cluster(self._redis):
            return self._redis
        cluster: aredis.RedisCluster = self._redis  # type: ignore[assignment]
        history = self._bus.keys.history
        # Keyed, so the cluster client follows a MOVED (or a dead master) to where the slot
        # is now before it is asked for the slot's node.
        await cluster.exists(history)
        node = cluster.get_node_from_key(history)
        if node is None:  # pragma: no cover - get_node_from_key raises when no node has it
            raise RedisError(f"no node serves the slot of {history}")
        assert self._connect_node is not None
        log.info("subscribing on %s:%s, the master of %s's slot", node.host, node.port, history)
        return self._connect_node(node.host, int(node.port))

    async def _session(self) -> None:
        self._node = await self._connect()
        try:
            await self._subscribed_session()
        finally:
            await self._close_node()

    async def _close_node(self) -> None:
        node, self._node = self._node, self._redis
        if node is not self._redis:
            self._left_open = node  # until closed: a cancel may cut the close short
            await node.aclose()
            self._left_open = None

    async def aclose(self) -> None:
        """Close the session's node client if a cancelled session left it open (on a
        cluster; the process's own client is its owner's to close)."""
        if self._left_open is not None:
            await self._left_open.aclose()
            self._left_open = None

    async def _subscribed_session(self) -> None:
        self._clock_samples.clear()  # another node (a failover) may keep another clock
        await self._sync_clock()
        await self._locate_history()
        pubsub = self._node.pubsub()
        try:
            await self._bus.subscribe(pubsub, self._probe_channel, *self._listeners)
            self._reset = False
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_reconnect)
            await self._gap_fill()
            self.subscribed = True
            log.info("subscribed to %s", self._bus.keys.channel)
            if self._on_subscribed is not None:
                self._on_subscribed()
            await self._read(pubsub)
        finally:
            self.subscribed = False
            await pubsub.aclose()

    async def _check_run_id(self) -> None:
        """End the session if Redis restarted under it. redis-py may reconnect and
        re-subscribe a pub/sub connection without the connect callback telling (seen with
        redis-py 8: a SIGKILLed Redis back on its port, the subscription answering probes and
        the replica ready, the restart and its lost history never noticed). Else note the
        node's replication offset: the look that follows saw its data up to there."""
        # The replication look first, then the run id it is kept under: a command retried
        # on a new connection may land on a newly promoted master, whose look must not pass
        # for the old one's (the review: then a failover told reset). Read before the probe's
        # history read, and before its PUBLISH, which a replica gets asynchronously like any
        # write (a master killed just after it would otherwise look ahead of its caught-up
        # replica). A master's id changes when its first replica attaches: the id of the
        # session's start alone made a later failover look like a restart.
        replication = None if self._replication_refused else await self._bus.replication(self._node)
        run_id = await self._bus.run_id(self._node)
        if self._run_id is not None and run_id != self._run_id:
            raise SubscriptionReset(f"redis restarted under the subscription (run id {run_id})")
        if replication is not None:
            self._replication = replication

    def _on_reconnect(self, connection: object) -> None:
        self._reset = True

    async def _sync_clock(self) -> None:
        """Redis' clock against ours (the history watch's check of ids ahead of it, the
        resume ids' bound), the way NTP filters its samples: each TIME is taken at the
        midpoint of its round trip, and of this session's last :data:`_CLOCK_SAMPLES` the one
        with the shortest round trip is used (its error is at most half of it). Reading our
        clock only after the reply put every delay of a loaded event loop into the offset:
        a history just written looked 0.2 s ahead of Redis' clock (the bound is 0.25 s)."""
        wall = self._hub.wall_clock
        sent = wall()
        now_ms = await self._bus.clock_ms(self._node)
        round_trip = wall() - sent
        samples = self._clock_samples
        samples.append((round_trip, now_ms - (sent + round_trip / 2) * 1000))
        self._hub.redis_clock_offset_ms = min(samples)[1]

    async def _locate_history(self) -> None:
        """Where the watermark stands in the history Redis holds now: the facts, then the
        decision (:func:`~.watermark.decide`, one row of ARCHITECTURE.md's rules table),
        applied to the hub before anything of this session is dispatched."""
        hub = self._hub
        bus, redis = self._bus, self._node
        state = await history_state(redis, bus)
        replication = await bus.replication(redis)  # before the run id it is kept under
        run_id = await bus.run_id(redis)
        self._replication_refused = replication is None  # not asked again at each probe
        if replication is None and not self._replication_unknown_said:
            self._replication_unknown_said = True
            log.warning(
                "redis refuses INFO replication to this user: a failover before the first "
                "event of a history will tell streams reset (grant +info)"
            )
        persistent = await bus.persistent(redis)
        watermark = hub.last_id
        in_history = await self.holds_watermark(redis)
        known = Known(
            self._started, self._epoch, watermark, hub.first_id, self._run_id, self._replication
        )
        found = Found(state, run_id, persistent, in_history, replication)
        decision = decide(known, found)
        self._started, self._epoch, self._run_id = True, state.epoch, found.run_id
        self._replication = replication
        hub.last_id = decision.watermark
        if decision.reset:
            hub.first_id = None
        if decision.notice is not None:
            hub.notice_all(decision.notice)
        verdict = decision.verdict
        if verdict in ("new_history", "new_history_followed", "restarted_unseen"):
            self.new_histories += 1
        if verdict not in ("same", "baseline"):
            log.warning(_SAYS[verdict], state.epoch, format_stream_id(state.last_id))

    async def _gap_fill(self, *, quiet: bool = False) -> tuple[set[bytes], bool]:
        """Dispatch every history entry after the watermark; the ids read, and whether the
        read found entries removed after the watermark. ``quiet``: the
        live channel rang (no log line for what is the normal path). Each chunk's look at the
        history is checked first: another epoch than the session located means a new history
        (``gateway reset-history``, a Redis that lost its data) began under the cursor, and
        the session starts over, so the locate step tells streams ``reset`` before any of it
        is dispatched. Entries removed after the watermark (trimmed past it, the stream
        emptied, XDEL) are told ``trimmed`` once, and the watermark moves past them."""
        hub = self._hub
        assert hub.last_id is not None, "the watermark is set before the first gap-fill"
        after = format_stream_id(hub.last_id)
        read: set[bytes] = set()
        removed = False
        seen: list[ReadFacts] = []

        async def check(facts: ReadFacts) -> None:
            if self._epoch is None and (facts.epoch is None or hub.first_id is None):
                # The history was empty when located, and nothing was dispatched since: its
                # first epoch is this one. (After something was, an epoch appearing is for
                # the locate step to judge: the entries dispatched may be of another history.)
                self._epoch = facts.epoch
            elif facts.epoch != self._epoch:
                await self._epoch_changed(facts.epoch)
            seen[:] = [facts]

        async for batch, gap in read_after(
            self._node, self._bus, after, max_payload=hub.max_payload, facts=check
        ):
            if gap:
                log.warning("history lost entries after the watermark %s: streams told", after)
                hub.notice_all("trimmed")
                removed = True
            for stream_id, payload in batch:
                hub.publish(stream_id, payload)
                read.add(stream_id)
        through = seen[0].accounted() if seen else None
        if through is not None and hub.last_id is not None and through > hub.last_id:
            hub.last_id = through  # nothing at or below it is left to read
        if read and not quiet:
            log.info("gap-filled %d events from history after %s", len(read), after)
        return read, removed

    async def holds_watermark(self, redis: aredis.Redis) -> bool:
        """Whether the history ``redis`` holds now still has the watermark's own entry: the
        history the watermark was followed in (a stream only grows; only the admin user may
        delete from it). False without a watermark, or at ``0-0``."""
        watermark = self._hub.last_id
        if watermark is None or watermark == (0, 0):
            return False
        return await entry_exists(redis, self._bus, watermark)

    async def _epoch_changed(self, epoch: str | None) -> None:
        """The epoch key no longer names the history this session follows. Another history
        (``gateway reset-history``, a Redis that lost its data, a failover that lost the
        watermark's entry) has no entry at the watermark: the session starts over, and the
        locate step tells streams. Over the same history (the watermark's own entry is still
        there: a stream only grows, and only the admin user may delete it) the key was
        written by hand (any user that may publish can SET it): the new value is followed
        and nothing is told. Restarting the session for it let a publisher credential that
        rewrote the key every few milliseconds keep every replica unready (the review)."""
        if not await self.holds_watermark(self._node):
            raise SubscriptionReset(f"a new history began (epoch {epoch})")
        watermark = self._hub.last_id
        assert watermark is not None
        now = self._clock()
        if now - self._epoch_said >= _EPOCH_SAY_EVERY:
            self._epoch_said = now
            log.warning(
                "the history's epoch key changed (%s, was %s) over the same history (the "
                "watermark %s is in it): followed; a publisher may be writing it",
                epoch,
                self._epoch,
                format_stream_id(watermark),
            )
        self.epoch_rewrites += 1
        self._epoch = epoch

    async def _follow(self, rang: list[bytes]) -> None:
        """The live channel rang with these messages: read history after the watermark (one
        read for all of them) and count the ones history does not prove: an id after the
        watermark as it stood that the read did not return was never written to history (the
        publish scripts write history first, atomically; a read that found history trimmed
        past its start proves nothing, and counts nothing)."""
        hub = self._hub
        before = hub.last_id
        read, removed = await self._gap_fill(quiet=True)
        if removed:
            return
        for data in rang:
            end = data.find(b" ", 0, _ID_MAX)
            raw_id = data[:end] if end > 0 else data[:_ID_MAX]
            if raw_id in read:
                continue
            try:
                stream_id = parse_stream_id(raw_id)
            except (ValueError, UnicodeDecodeError):
                hub.drop("bad_id", raw_id)
                continue
            if before is None or stream_id > before:
                hub.drop("unproven", raw_id)

    async def _read(self, pubsub: aredis.client.PubSub) -> None:
        probe_channel = self._probe_channel.encode()
        listeners = self._listeners
        interval = self._probe_interval
        # Probes go out every interval and normally return within milliseconds, so the
        # newest answer is at most one interval old; 1.5 intervals without one means the
        # connection is silently dead, found within two intervals of the fault.
        limit = 1.5 * interval
        poll = min(_POLL, interval / 5) if interval > 0 else 1.0
        message_type = self._bus.message_type  # "message", or "smessage" on a cluster
        live_channel = self._bus.keys.channel.encode()
        answered = next_probe = self._clock()
        while True:
            now = self._clock()
            if interval > 0:
                if now - answered > limit:
                    raise ProbeLost(f"no probe came back for {now - answered:.1f}s")
                if now >= next_probe:
                    await self._check_run_id()
                    await self._bus.probe(self._node, self._probe_channel)
                    await self._sync_clock()
                    # an entry no live message announced (written by hand, or its message
                    # lost) is delivered within one interval
                    await self._gap_fill()
                    next_probe = now + interval
            message = await pubsub.get_message(timeout=poll)
            if self._reset:
                raise SubscriptionReset("the pub/sub connection was re-established underneath")
            rang: list[bytes] = []
            while message is not None:
                kind = message["type"]
                if kind == message_type:
                    channel = message["channel"]
                    if channel == probe_channel:
                        answered = self._clock()
                        self.probe_ok = True
                    elif channel in listeners:
                        try:
                            listeners[channel](message["data"])
                        except Exception:  # one bad listener must not end the subscription
                            log.exception("listener of %r failed", channel)
                    else:
                        rang.append(message["data"])
                elif kind in ("sunsubscribe", "unsubscribe") and message["channel"] == live_channel:
                    # Unasked: on a cluster, the slot was resharded to another node (which
                    # now has the history, and gets the next SPUBLISH)
                    raise SubscriptionReset("the live channel's slot moved to another node")
                # drain what is already buffered without another wait
                message = await pubsub.get_message(timeout=0)
            if rang:
                await self._follow(rang)
            if interval <= 0:
                self.probe_ok = True
