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
  (``<prefix>:streams:<key>``, field = replica, value ``"<count>:<expiry ms>:<seq>"``),
  renewed every third of ``stream_lease``; a replica that dies stops renewing and its counts
  stop counting when the lease runs out. Admission takes the count and reserves the slot in
  one step (:meth:`KeyLeases.reserve`): the replica counts the new stream at once, before any
  await, as a :class:`Slot` (so its own concurrent requests see it), and one script in Redis
  adds the other replicas' live counts to this one's, refuses (429) past the limit, else
  records this one's at once (so two replicas admitting together both see it). The slot holds
  until the hub counts the stream, or it is released where the stream never starts; the hub's
  count goes down when the stream ends. Every count written carries a sequence number taken
  when it was counted, and Redis keeps the newest: writes from one replica may arrive out of
  order over the pool's connections, and an older, smaller count must not hide newer streams.
  A draining replica withdraws its counts as it starts to drain: its clients, reconnecting
  elsewhere, are the same streams moving, not more. While Redis is unreachable the key is
  judged by this replica's own count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from collections import Counter
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import NoScriptError, RedisError

from gateway.fanout.hub import Hub
from gateway.fanout.stats import ThrottledLog
from gateway.settings import Settings
from publisher.connection import is_cluster
from publisher.keys import Keys

__all__ = ["KeyLeases", "Slot", "fd_stream_limit"]

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


#: a stored count: ``<count>:<expiry ms>:<seq>`` (replicas before the sequence numbers wrote
#: no ``:<seq>``, read as 0)
_PARSE: Final = """
local function parse(value)
  local n, expiry, seq = string.match(value, '^(%d+):(%d+):?(%d*)$')
  if not n then
    return nil
  end
  return tonumber(n), tonumber(expiry), tonumber(seq) or 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
"""

#: KEYS[1] the key's hash; ARGV replica, limit, lease ms, this replica's streams of the key
#: counting the one asked for, its sequence number. Counts the other replicas' unexpired
#: counts (removing expired ones); past the limit returns 0; else records this replica's
#: count (unless a newer one is stored) and returns 1.
_ADMIT: Final = (
    _PARSE
    + """
local others = 0
local stored = nil
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local n, expiry, seq = parse(fields[i + 1])
  if fields[i] == ARGV[1] then
    if n and expiry > now then
      stored = seq
    end
  elseif n and expiry > now then
    others = others + n
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if others + tonumber(ARGV[4]) > tonumber(ARGV[2]) then
  return 0
end
if stored == nil or stored < tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4] .. ':' .. (now + lease) .. ':' .. ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
)

#: KEYS[1] the key's hash; ARGV replica, count, lease ms, sequence number: renew (or, at 0,
#: remove) this replica's count, unless a newer one is stored. The hash lives as long as
#: its newest lease.
_RENEW: Final = (
    _PARSE
    + """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local n, expiry, seq = parse(current)
  if n and seq > tonumber(ARGV[4]) then
    return 0
  end
end
if tonumber(ARGV[2]) == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + lease) .. ':' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
)


class Slot:
    """One stream's place under its access key's limit, reserved by :meth:`KeyLeases.reserve`
    and held until :meth:`release`: once the hub counts the stream (it registered), or
    where the stream never starts. Releasing twice is harmless."""

    __slots__ = ("_reserved", "access_key")

    def __init__(self, reserved: Counter[str], access_key: str) -> None:
        #: the replica's reserved slots by key (KeyLeases), None once released
        self._reserved: Counter[str] | None = reserved
        self.access_key = access_key

    def release(self) -> None:
        reserved, self._reserved = self._reserved, None
        if reserved is not None:
            reserved[self.access_key] -= 1
            if reserved[self.access_key] <= 0:
                del reserved[self.access_key]


class KeyLeases:
    """This replica's per-key stream counts in Redis, and the fleet-wide admission check.
    ``limit`` streams per key across the fleet; ``lease`` seconds a count lives unrenewed.
    This replica's count of a key is the hub's streams of it plus the slots reserved and
    not yet released."""

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
        #: load the renewal script before the next pipeline (on a cluster, whose pipeline
        #: does not load the scripts it runs, redis-py 8.2)
        self._load_first = is_cluster(redis)
        #: slots reserved whose streams the hub does not count (yet), by key
        self._reserved: Counter[str] = Counter()
        #: the order of this replica's counts: Redis keeps the newest. From the clock, so
        #: a replica restarted under the same name counts after its predecessor.
        self._seq = time.time_ns() // 1000
        #: the keys whose count this replica last wrote (to remove them once at zero)
        self._written: set[str] = set()
        self._withdrawn = False
        self._errors = ThrottledLog(logger=log)

    def count(self, access_key: str) -> int:
        """This replica's streams of ``access_key``: open ones and reserved slots."""
        return self._hub.streams_of(access_key) + self._reserved[access_key]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def reserve(self, access_key: str) -> Slot | None:
        """A slot for one more stream of ``access_key`` under the fleet-wide limit, or None
        past it: the count taken and the slot reserved in one step. The slot counts here
        before the one round trip to Redis, whose script checks it against the other
        replicas' counts and records it in one step. Without Redis (or once withdrawn),
        this replica's own count decides. The caller releases the slot (:class:`Slot`)."""
        self._reserved[access_key] += 1
        slot = Slot(self._reserved, access_key)
        try:
            admitted = await self._admits(access_key, self.count(access_key))
        except BaseException:  # cancelled (the server stopping) or a bug: nothing holds it
            slot.release()
            raise
        if not admitted:
            slot.release()
            return None
        return slot

    async def _admits(self, access_key: str, own: int) -> bool:
        """Whether ``own`` streams of ``access_key`` here (the new one counted) fit beside
        the other replicas' live counts; if so, ``own`` is recorded as this replica's."""
        if self._withdrawn:
            return own <= self.limit
        try:
            reply: Any = await self._admit(
                keys=[self._keys.key_streams(access_key)],
                args=[self._replica, self.limit, self._lease_ms, own, self._next_seq()],
            )
        except RedisError as exc:
            self._errors.warn("admit", "fleet-wide stream count unavailable (%s)", exc)
            return own <= self.limit
        self._written.add(access_key)
        return bool(int(reply))

    async def renew(self) -> None:
        """Write this replica's current count of every key it has streams of, and remove
        the counts of keys it has none of any more: one pipeline."""
        if self._withdrawn:
            return
        keys = {*self._hub.access_keys(), *self._reserved}
        counts = {key: self.count(key) for key in keys}
        gone = self._written - counts.keys()
        seq = self._next_seq()  # counted now: a newer count that overtakes this one stays
        # Before the await: keys admitted meanwhile add themselves to the new set.
        self._written = set(counts)
        try:
            if self._load_first:  # a cluster's pipeline does not load its scripts itself
                await self._redis.script_load(self._renew.script)
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, count in (*counts.items(), *((key, 0) for key in gone)):
                    await self._renew(
                        keys=[self._keys.key_streams(key)],
                        args=[self._replica, count, self._lease_ms, seq],
                        client=pipe,
                    )
                await pipe.execute()
            self._load_first = False
        except NoScriptError:
            self._load_first = True  # a failover to a master that never ran it: load it
            self._written |= gone
            raise
        except BaseException:
            self._written |= gone  # not removed: the next renewal tries again
            raise

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
        here = {*self._hub.access_keys(), *self._reserved}
        written, self._written = self._written | here, set()
        if not written:
            return
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(1.0), self._redis.pipeline(transaction=False) as pipe:
                for key in written:
                    pipe.hdel(self._keys.key_streams(key), self._replica)
                await pipe.execute()
