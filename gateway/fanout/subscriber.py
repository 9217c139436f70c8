"""The process's one Redis subscription, kept alive and proven live.

Flow of one subscription session (see ARCHITECTURE.md):

1. ``SUBSCRIBE <live channel> <own probe channel>`` on a fresh pub/sub connection.
2. Gap-fill: read history after the hub's last id and dispatch it (the hub drops ids it has
   already seen, so live messages that queued up meanwhile are not delivered twice).
3. Read live messages and hand each to the hub. Every ``probe_interval`` publish a probe on
   the replica's own channel; if no probe has come back for 1.5 intervals the connection is
   silently dead (seen after failovers): drop it and start over at 1. redis-py re-subscribing
   by itself after a dropped connection also starts over, since messages were missed.

Any Redis error ends the session; the next starts after a bounded, jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Final

import redis.asyncio as aredis
from redis.exceptions import RedisError

from publisher.keys import Keys

from .history import read_after
from .hub import Hub

__all__ = ["ProbeLost", "Subscriber", "SubscriptionReset"]

log = logging.getLogger(__name__)

_POLL: Final = 0.25  # longest a read waits, so probe deadlines are checked on time


class ProbeLost(RedisError):
    """The subscription looked open but its probe did not come back in time."""


class SubscriptionReset(RedisError):
    """redis-py re-established the pub/sub connection by itself: what was published while it
    was down never arrived, so the session starts over (and gap-fills)."""


class Subscriber:
    def __init__(
        self,
        redis: aredis.Redis,
        keys: Keys,
        hub: Hub,
        *,
        replica: str,
        probe_interval: float = 5.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._probe_channel = keys.probe_channel(replica)
        self._probe_interval = probe_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._rng = rng or random.Random()
        self.subscribed = False
        self.probe_ok = False
        self.reconnects = 0
        self.probe_failures = 0
        self._reset = False

    @property
    def ready(self) -> bool:
        """Subscribed, and a probe has made the round trip on this subscription."""
        return self.subscribed and self.probe_ok

    async def run(self) -> None:
        """Subscribe and dispatch until cancelled; reconnects forever on Redis errors."""
        failures = 0
        while True:
            try:
                await self._session()
            except Exception as exc:  # never let the process's only subscription die
                if not isinstance(exc, (RedisError, OSError, TimeoutError)):
                    log.exception("unexpected error in the subscriber; starting over")
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
                await asyncio.sleep(delay)
            else:  # pragma: no cover - _session only returns by raising
                failures = 0
            if self.probe_ok:
                failures = 0

    async def _session(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._keys.channel, self._probe_channel)
            self._reset = False
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_reconnect)
            await self._gap_fill()
            self.subscribed = True
            log.info("subscribed to %s", self._keys.channel)
            await self._read(pubsub)
        finally:
            self.subscribed = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _on_reconnect(self, connection: object) -> None:
        self._reset = True

    async def _gap_fill(self) -> None:
        hub = self._hub
        if hub.last_id == (0, 0):
            return  # first start: live from now on; clients resume through their own ids
        after = f"{hub.last_id[0]}-{hub.last_id[1]}"
        filled = 0
        async for batch in read_after(self._redis, self._keys.history, after):
            for stream_id, payload in batch:
                hub.publish(stream_id, payload)
            filled += len(batch)
        if filled:
            log.info("gap-filled %d events from history after %s", filled, after)

    async def _read(self, pubsub: aredis.client.PubSub) -> None:
        probe_channel = self._probe_channel.encode()
        publish_message = self._hub.publish_message
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
                    await self._redis.publish(self._probe_channel, b"probe")
                    next_probe = now + interval
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
            if self._reset:
                raise SubscriptionReset("the pub/sub connection was re-established underneath")
            while message is not None:
                if message["type"] == "message":
                    if message["channel"] == probe_channel:
                        answered = self._clock()
                        self.probe_ok = True
                    else:
                        publish_message(message["data"])
                # drain what is already buffered without another wait
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if interval <= 0:
                self.probe_ok = True
