"""How many streams a replica may open: its file descriptors, and each access key's share of
the whole fleet.

* **File descriptors.** Every stream holds one. A process out of them cannot accept a
  connection, so a request gets no HTTP answer at all (uvloop's libuv closes what it cannot
  accept) and ``/health`` goes silent. :func:`fd_stream_limit` caps streams at the process's
  ``RLIMIT_NOFILE`` minus what it already had open, the Redis pool, the subscription and
  ``fd_reserve`` (health checks, connections not yet answered); past it a stream request is
  answered 503 with ``Retry-After`` while there is still a descriptor to answer with.
* **Per access key, fleet-wide.** ``max_streams_per_key`` counts a key's streams on every
  replica. Each replica keeps its own counts in Redis, one hash per key
  (``<prefix>:streams:<key>``, field = replica, value ``"<count>:<expiry ms>"``), renewed every
  third of ``stream_lease``; a replica that dies stops renewing and its counts stop counting
  when the lease runs out. Admission is one script: the other replicas' live counts plus this
  one's, refused (429) at the limit, else this replica's count goes up at once, so two
  replicas admitting together both see it. A draining replica withdraws its counts as it
  starts to drain: its clients, reconnecting elsewhere, are the same streams moving, not more.
  While Redis is unreachable the key is judged by this replica's own count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import RedisError

from gateway.fanout.hub import Hub
from gateway.fanout.stats import ThrottledLog
from gateway.settings import Settings
from publisher.keys import Keys

__all__ = ["KeyLeases", "fd_stream_limit"]

log = logging.getLogger(__name__)

#: descriptors besides the Redis pool that a serving replica holds from its start: the
#: listening socket and the subscription's two connections, and one to spare
_FIXED: Final = 4


def fd_stream_limit(settings: Settings, *, in_use: int | None = None) -> int:
    """Streams this process can hold and still answer every request: the soft
    ``RLIMIT_NOFILE`` minus the descriptors open now (``in_use``, counted in /proc/self/fd
    when not given), the Redis pool, a few fixed ones and ``fd_reserve``. At least 0; the
    smaller of this and ``max_streams`` is the replica's stream limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.limits.max_streams
    if in_use is None:
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:  # no procfs: assume a modest start-up set
            in_use = 32
    spare = soft - in_use - settings.redis.pool_size - _FIXED - settings.limits.fd_reserve
    return max(0, min(settings.limits.max_streams, spare))


#: KEYS[1] the key's hash; ARGV replica, limit, lease ms, this replica's open streams of the
#: key. Counts the other replicas' unexpired counts (removing expired ones); at the limit
#: returns {0, others}; else records this replica's count + 1 and returns {1, others}.
_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local others = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] then
    local n, expiry = string.match(fields[i + 1], '^(%d+):(%d+)$')
    if n and tonumber(expiry) > now then
      others = others + tonumber(n)
    else
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
end
local own = tonumber(ARGV[4])
if others + own >= tonumber(ARGV[2]) then
  return {0, others}
end
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], (own + 1) .. ':' .. (now + lease))
redis.call('PEXPIRE', KEYS[1], lease)
return {1, others}
"""

#: KEYS[1] the key's hash; ARGV replica, count, lease ms: renew (or, at 0, remove) this
#: replica's count. The hash lives as long as its newest lease.
_RENEW: Final = """
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + lease))
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""


class KeyLeases:
    """This replica's per-key stream counts in Redis, and the fleet-wide admission check.
    ``limit`` streams per key across the fleet; ``lease`` seconds a count lives unrenewed."""

    def __init__(
        self,
        redis: aredis.Redis,
        keys: Keys,
        hub: Hub,
        *,
        replica: str,
        limit: int,
        lease: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._hub = hub
        self._replica = replica
        self.limit = limit
        self._lease_ms = int(lease * 1000)
        self._period = lease / 3
        self._admit = redis.register_script(_ADMIT)
        self._renew = redis.register_script(_RENEW)
        #: the keys whose count this replica last wrote (to remove them once at zero)
        self._written: set[str] = set()
        self._withdrawn = False
        self._errors = ThrottledLog(logger=log)

    async def admit(self, access_key: str) -> tuple[bool, int]:
        """Whether one more stream of ``access_key`` fits under the fleet-wide limit, and
        how many the other replicas hold. Admitted counts are recorded at once. Without
        Redis (or once withdrawn), this replica's own count decides."""
        own = self._hub.streams_of(access_key)
        if self._withdrawn:
            return own < self.limit, 0
        try:
            reply: Any = await self._admit(
                keys=[self._keys.key_streams(access_key)],
                args=[self._replica, self.limit, self._lease_ms, own],
            )
        except RedisError as exc:
            self._errors.warn("admit", "fleet-wide stream count unavailable (%s)", exc)
            return own < self.limit, 0
        self._written.add(access_key)
        return bool(int(reply[0])), int(reply[1])

    async def renew(self) -> None:
        """Write this replica's current count of every key it has streams of, and remove
        the counts of keys it has none of any more: one pipeline."""
        if self._withdrawn:
            return
        counts = {key: self._hub.streams_of(key) for key in self._hub.access_keys()}
        gone = self._written - counts.keys()
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, count in (*counts.items(), *((key, 0) for key in gone)):
                await self._renew(
                    keys=[self._keys.key_streams(key)],
                    args=[self._replica, count, self._lease_ms],
                    client=pipe,
                )
            await pipe.execute()
        self._written = set(counts)

    async def run(self) -> None:
        """Renew every third of the lease until cancelled (a supervised task)."""
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.renew()
            except RedisError as exc:
                self._errors.warn("renew", "could not renew fleet-wide stream counts (%s)", exc)

    async def withdraw(self) -> None:
        """Remove every count of this replica (it is draining: its streams are moving to
        other replicas, which must not count them twice). Best effort, bounded."""
        self._withdrawn = True
        written, self._written = self._written | set(self._hub.access_keys()), set()
        if not written:
            return
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(1.0), self._redis.pipeline(transaction=False) as pipe:
                for key in written:
                    pipe.hdel(self._keys.key_streams(key), self._replica)
                await pipe.execute()
