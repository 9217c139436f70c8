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
3. Read live messages and hand each to the hub. Every ``probe_interval`` publish a probe on
   the replica's own channel; if no probe has come back for 1.5 intervals the connection is
   silently dead (seen after failovers): drop it and start over at 1. redis-py re-subscribing
   by itself after a dropped connection also starts over, since messages were missed.

Any Redis error ends the session; the next starts after a bounded, jittered backoff, on fresh
connections (every pooled one is closed: one idle through a Redis restart looks alive).

The same subscription carries the process's other channels (``listeners``: the identity
changes), whose messages go to their callbacks; ``on_subscribed`` runs after each session's
subscribe, so whatever was published while the subscription was down can be caught up on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Final

import redis.asyncio as aredis
from redis.exceptions import RedisError

from publisher.bus import Bus

from .frames import StreamId, format_stream_id
from .history import entry_exists, history_state, read_after
from .hub import Hub
from .watermark import Found, Known, Verdict, decide

__all__ = ["ProbeLost", "Subscriber", "SubscriptionReset"]

log = logging.getLogger(__name__)

_POLL: Final = 0.25  # longest a read waits, so probe deadlines are checked on time

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
        hub: Hub,
        *,
        replica: str,
        probe_interval: float = 5.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        listeners: Mapping[str, Callable[[bytes], None]] | None = None,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """``listeners``: more channels to subscribe, each with a callback that gets every
        message's data (called from the read loop: it must not block or raise);
        ``on_subscribed``: called once each session is subscribed and gap-filled."""
        self._redis = redis
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
        self._suspect = False
        #: the epoch this replica's watermark belongs to; unset until the first session
        self._epoch: str | None = None
        self._started = False
        #: the Redis instance's run id at the last session: another one means a restart
        self._run_id: str | None = None
        hub.on_suspect = self._on_suspect

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
                if not isinstance(exc, (RedisError, OSError, TimeoutError)):
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
        try:
            await self._redis.connection_pool.disconnect()
        except (RedisError, OSError) as exc:  # nothing to keep: they are being thrown away
            log.debug("closing the subscriber's pooled connections: %s", exc)

    async def _session(self) -> None:
        await self._sync_clock()
        await self._locate_history()
        pubsub = self._redis.pubsub()
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
        the replica ready, the restart and its lost history never noticed)."""
        run_id = await self._bus.run_id(self._redis)
        if self._run_id is not None and run_id != self._run_id:
            raise SubscriptionReset(f"redis restarted under the subscription (run id {run_id})")

    def _on_reconnect(self, connection: object) -> None:
        self._reset = True

    def _on_suspect(self) -> None:
        self._suspect = True

    async def _sync_clock(self) -> None:
        """Redis' clock against ours, for the hub's plausibility check of live ids."""
        now_ms = await self._bus.clock_ms(self._redis)
        self._hub.redis_clock_offset_ms = now_ms - self._hub.wall_clock() * 1000

    async def _locate_history(self) -> None:
        """Where the watermark stands in the history Redis holds now: the facts, then the
        decision (:func:`~.watermark.decide`, one row of ARCHITECTURE.md's rules table),
        applied to the hub before anything of this session is dispatched."""
        hub = self._hub
        bus, redis = self._bus, self._redis
        state = await history_state(redis, bus)
        run_id = await bus.run_id(redis)
        persistent = await bus.persistent(redis)
        watermark = hub.last_id
        in_history = (
            watermark is not None
            and watermark != (0, 0)
            and await entry_exists(redis, bus, watermark)
        )
        known = Known(self._started, self._epoch, watermark, hub.first_id, self._run_id)
        found = Found(state, run_id, persistent, in_history)
        decision = decide(known, found)
        self._started, self._epoch, self._run_id = True, state.epoch, found.run_id
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

    async def _gap_fill(self) -> None:
        hub = self._hub
        assert hub.last_id is not None, "the watermark is set before the first gap-fill"
        after = format_stream_id(hub.last_id)
        filled = 0
        async for batch, gap in read_after(
            self._redis, self._bus, after, max_payload=hub.max_payload
        ):
            if gap:
                # Trimming passed the watermark while this replica was away (more than MAXLEN
                # events): every open stream is told before the rest.
                log.warning("history was trimmed past the watermark %s: streams told", after)
                hub.notice_all("trimmed")
            for stream_id, payload in batch:
                hub.publish(stream_id, payload)
            filled += len(batch)
        if filled:
            log.info("gap-filled %d events from history after %s", filled, after)

    async def _read(self, pubsub: aredis.client.PubSub) -> None:
        probe_channel = self._probe_channel.encode()
        publish_message = self._hub.publish_message
        listeners = self._listeners
        interval = self._probe_interval
        # Probes go out every interval and normally return within milliseconds, so the
        # newest answer is at most one interval old; 1.5 intervals without one means the
        # connection is silently dead, found within two intervals of the fault.
        limit = 1.5 * interval
        poll = min(_POLL, interval / 5) if interval > 0 else 1.0
        answered = next_probe = self._clock()
        while True:
            now = self._clock()
            if interval > 0:
                if now - answered > limit:
                    raise ProbeLost(f"no probe came back for {now - answered:.1f}s")
                if now >= next_probe:
                    await self._bus.probe(self._redis, self._probe_channel)
                    await self._sync_clock()
                    await self._check_run_id()
                    next_probe = now + interval
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
            if self._reset:
                raise SubscriptionReset("the pub/sub connection was re-established underneath")
            while message is not None:
                if message["type"] == "message":
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
                        publish_message(message["data"])
                # drain what is already buffered without another wait
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if self._suspect:
                # A live id the hub could not trust: history holds the truth. Messages that
                # queue up meanwhile are dropped as already seen if gap-fill sent them.
                self._suspect = False
                await self._gap_fill()
            if interval <= 0:
                self.probe_ok = True
