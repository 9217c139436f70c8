"""The Redis bus the publishers and the gateways share, in one place: the key and channel
names (:class:`~publisher.keys.Keys`) and every Redis verb either side uses on them.

===============================  ===============  ================================================
verb                             who              in Redis
===============================  ===============  ================================================
publish, with history            publishers       :data:`PUBLISH_SCRIPT`: XADD to the bounded
                                                  history, PUBLISH ``<id> <payload>`` live, the
                                                  epoch (SET NX), the publisher's sequence
fence a closed publisher         publishers       :data:`FENCE_SCRIPT`
publish at source positions      bridges          :data:`PUBLISH_AT_SCRIPT`: as the publish
                                                  script, exactly once per source position,
                                                  only while the caller holds the lease
hold the lease                   bridges          SET NX PX, :data:`LEASE_SCRIPT`
subscribe                        gateways         SUBSCRIBE the live channel with the replica's
                                                  probe channel and the change feed
probe                            gateways         PUBLISH on the replica's own probe channel
announce an identity change      identity writes  PUBLISH on the change feed, inside the write's
                                                  MULTI
read history                     gateways         XINFO STREAM, the epoch (GET, SET NX), XRANGE,
                                                  :data:`READ_SCRIPT` (EVALSHA_RO)
the server                       gateways         TIME, INFO server (run id), INFO replication
                                                  (ids and offsets), INFO persistence
===============================  ===============  ================================================

On a Redis Cluster (``Keys.cluster``) the names share one hash tag (:mod:`publisher.keys`),
so each script's keys are in one slot, and every PUBLISH and SUBSCRIBE above is its sharded
form, SPUBLISH and SSUBSCRIBE, on a shard channel of that same slot: a message goes to the
master that holds the slot and its replicas, not to every node of the cluster (a classic
PUBLISH is broadcast cluster-wide), and a script may send it (it is in the slot the script
runs on). A gateway subscribes on the node that serves the slot
(:mod:`gateway.fanout.subscriber`). Nothing else in the project names a shared key or sends
one of these commands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError

from .keys import Keys

__all__ = [
    "FENCE_SCRIPT",
    "LEASE_SCRIPT",
    "PUBLISH_AT_SCRIPT",
    "PUBLISH_SCRIPT",
    "READ_SCRIPT",
    "SHARDED_PUBLISH_AT_SCRIPT",
    "SHARDED_PUBLISH_SCRIPT",
    "Bus",
    "Replication",
    "fence_keys",
    "fence_script",
]

# KEYS[1] history stream, KEYS[2] this publisher's last applied sequence number, KEYS[3] the
# history's epoch: the id of the first entry this history ever held, set once (NX). A Redis
# that lost its data has no epoch until the next publish, so gateways tell a new history from
# the old one (ARCHITECTURE.md, "Watermark and epoch").
# ARGV[1] maxlen, ARGV[2] channel, ARGV[3] "~" or "=", ARGV[4] seq key ttl,
# ARGV[5] sequence number of the first payload, ARGV[6] the last number of the chunk before
# this one in the same pipeline, or "": if that chunk did not apply (it failed), neither does
# this one, so numbers are never applied out of order. ARGV[7..] payloads.
# Per payload: the stream id, or "" when its number was already applied (a retry).
PUBLISH_SCRIPT: Final = """
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if ARGV[6] ~= '' and last < tonumber(ARGV[6]) then
  return {}
end
local seq = tonumber(ARGV[5])
local ids = {}
local marked = false
for i = 7, #ARGV do
  if seq > last then
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1], '*', 'e', ARGV[i])
    redis.call('PUBLISH', ARGV[2], id .. ' ' .. ARGV[i])
    ids[#ids + 1] = id
    if not marked then
      redis.call('SET', KEYS[3], id, 'NX')
      marked = true
    end
  else
    ids[#ids + 1] = ''
  end
  seq = seq + 1
end
if seq - 1 > last then
  redis.call('SET', KEYS[2], seq - 1, 'EX', ARGV[4])
end
return ids
"""


# The publish script of a positioned publisher (publisher.positioned: a bridge from another
# event bus). Each payload comes with its position in the source, a string of 80 digits
# (four zero-padded 20-digit numbers: the source's epoch, a stream id's two parts, and a
# place after that entry for what the bridge adds there), so string order is position order;
# compared in pieces of 10 digits, each exact as a Lua number.
# KEYS[1] history, KEYS[2] the publisher's last applied position (no TTL), KEYS[3] the epoch,
# KEYS[4] the lease. ARGV[1] maxlen, ARGV[2] channel, ARGV[3] "~" or "=", ARGV[4] the lease
# holder the caller claims to be ("" = no lease), ARGV[5..] pairs of position and payload, in
# increasing order; an empty payload only moves the position on (a source entry that
# publishes nothing). Per pair: the stream id, "" (no payload), or "skip" (the position was
# applied already: a retry). Raises NOTHOLDER when the lease names someone else (or no one):
# a bridge that lost its lease, however stale, can no longer write.
PUBLISH_AT_SCRIPT: Final = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return redis.error_reply('NOTHOLDER ' .. ARGV[4] .. ' does not hold the lease ' .. KEYS[4])
end
local function after(a, b)
  for i = 1, 80, 10 do
    local x = tonumber(string.sub(a, i, i + 9))
    local y = tonumber(string.sub(b, i, i + 9))
    if x ~= y then return x > y end
  end
  return false
end
local last = redis.call('GET', KEYS[2]) or ''
local moved = false
local ids = {}
for i = 5, #ARGV, 2 do
  local position, payload = ARGV[i], ARGV[i + 1]
  if last == '' or after(position, last) then
    if payload ~= '' then
      local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1], '*', 'e', payload)
      redis.call('PUBLISH', ARGV[2], id .. ' ' .. payload)
      redis.call('SET', KEYS[3], id, 'NX')
      ids[#ids + 1] = id
    else
      ids[#ids + 1] = ''
    end
    last = position
    moved = true
  else
    ids[#ids + 1] = 'skip'
  end
end
if moved then
  redis.call('SET', KEYS[2], last)
end
return ids
"""

# KEYS[1] a lease; ARGV[1] the holder, ARGV[2] its new lifetime in ms ("0": give it up).
# Renews (PEXPIRE) or releases (DEL) the lease only if ARGV[1] holds it; 1 if it did, else 0.
LEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


# KEYS[1] a closed publisher's sequence key, KEYS[2] its fence record; ARGV[1] the last
# number it may have sent, ARGV[2] ttl. Returns the last number the publisher applied, and
# from now on no number up to ARGV[1] can apply (the publish script skips numbers at or below
# KEYS[1]): a write still pending on some connection of the closed publisher is made
# harmless. The answer is recorded, so asking again gives the same one.
FENCE_SCRIPT: Final = """
local fenced = redis.call('GET', KEYS[2])
if fenced then
  return tonumber(fenced)
end
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if last < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('SET', KEYS[2], last, 'EX', ARGV[2])
return last
"""


#: XRANGE in Redis, payloads over the limit held back there: a history entry of any size
#: costs the gateway a few bytes, never its size (a payload of 4 MB would otherwise be read
#: whole before it could be dropped). KEYS[1] history, KEYS[2] epoch; ARGV[1] exclusive start
#: "(<id>", ARGV[2] count, ARGV[3] largest payload in bytes. Rows: {id, payload} or {id, size}
#: (an integer reply) for one over the limit; {id, ""} for an entry without the payload field
#: (read once, dropped as undecodable, never read again). Reply: {rows read, last id read,
#: rows, the oldest entry's id now, the epoch, the stream's last-generated-id, its
#: max-deleted-entry-id} ("" for what is not there), all from one atomic look: the reader
#: can tell entries removed after its cursor (trimmed, emptied, XDEL) and another history
#: under it from an end it has reached. Read-only: it runs as EVALSHA_RO (Redis >= 7.0),
#: flagged ``no-writes``, so the gateway's Redis user needs only read access to the history
#: (``gateway acl``: ``%R~<prefix>:events``) and cannot append.
READ_SCRIPT: Final = """#!lua flags=no-writes
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local limit = tonumber(ARGV[3])
local out = {}
for i = 1, #rows do
  local fields = rows[i][2]
  local payload = ''
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then
      payload = fields[j + 1]
      if #payload > limit then payload = #payload end
      break
    end
  end
  out[#out + 1] = {rows[i][1], payload}
end
local last = ''
if #rows > 0 then last = rows[#rows][1] end
local first, generated, deleted = '', '', ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #head > 0 then first = head[1][1] end
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then generated = info[i + 1] end
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
end
local epoch = redis.call('GET', KEYS[2]) or ''
return {#rows, last, out, first, epoch, generated, deleted}
"""

_READ_SHA: Final = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
#: the largest id a stream can hold: nothing follows it, and Redis refuses an exclusive
#: start there ("invalid start ID for the interval")
_LAST_POSSIBLE_ID: Final = "18446744073709551615-18446744073709551615"


def _sharded(script: str) -> str:
    """``script`` with its live PUBLISH as SPUBLISH (the cluster form: the channel is in the
    slot of the script's keys)."""
    classic = "redis.call('PUBLISH', ARGV[2], "
    assert script.count(classic) == 1, "each publish script publishes in one place"
    return script.replace(classic, "redis.call('SPUBLISH', ARGV[2], ")


#: :data:`PUBLISH_SCRIPT` and :data:`PUBLISH_AT_SCRIPT` on a Redis Cluster
SHARDED_PUBLISH_SCRIPT: Final = _sharded(PUBLISH_SCRIPT)
SHARDED_PUBLISH_AT_SCRIPT: Final = _sharded(PUBLISH_AT_SCRIPT)


def fence_keys(sequence_key: str) -> list[str]:
    """The KEYS of :data:`FENCE_SCRIPT` for a closed publisher's sequence key."""
    return [sequence_key, f"{sequence_key}:fenced"]


def fence_script(client: Any) -> Any:
    """:data:`FENCE_SCRIPT` registered on ``client`` (sync or asyncio): call it with
    ``keys=fence_keys(...)`` and ``args=[last number, ttl]``."""
    return client.register_script(FENCE_SCRIPT)


@dataclass(frozen=True, slots=True)
class Replication:
    """A node's place in Redis replication (INFO replication). ``replid`` and ``offset``: its
    replication id and how far its stream has come (``master_replid``,
    ``master_repl_offset``, bytes). ``previous`` and ``previous_until``: the id it had
    before, and the offset up to which it holds that id's stream (``master_replid2``,
    ``second_repl_offset`` - 1); None when it has none.

    Measured on redis-server 7.0.15: a replica promoted to master (a failover) gets a new id
    and names its old master's as ``previous``, up to what it had replicated. A master that
    had replicas and is restarted from an RDB file does the same, up to the offset the file
    was written at: a file older than what was last seen is data lost, not carried on. A
    restart without a file gets a new id and no previous one. A master's id also changes
    when its first replica attaches. All-zero ids (redis-py reads them as 0) are None."""

    replid: str | None
    offset: int | None
    previous: str | None
    previous_until: int | None


def _replid(value: object) -> str | None:
    return None if value is None or set(str(value)) == {"0"} else str(value)


def _offset(value: object) -> int | None:
    return value if isinstance(value, int) else None  # redis-py parses INFO's numbers


@dataclass(frozen=True, slots=True)
class Bus:
    """The bus of one key prefix (see the module docstring). Holds no connection: each verb
    takes the client (or pipeline) to run on, so a gateway's subscription and its pool each
    use their own."""

    keys: Keys

    # -- publishing -----------------------------------------------------------------------------

    def publish_script(self, client: Any) -> Any:
        """:data:`PUBLISH_SCRIPT` registered on ``client`` (sync or asyncio; a pipeline may be
        passed to each call as ``client=``); its sharded form on a cluster."""
        return client.register_script(
            SHARDED_PUBLISH_SCRIPT if self.keys.cluster else PUBLISH_SCRIPT
        )

    def publish_at_script(self, client: aredis.Redis) -> Any:
        """:data:`PUBLISH_AT_SCRIPT` registered on ``client`` (sharded on a cluster)."""
        return client.register_script(
            SHARDED_PUBLISH_AT_SCRIPT if self.keys.cluster else PUBLISH_AT_SCRIPT
        )

    def publish_head(self, maxlen: int, *, exact_trim: bool, ttl: int) -> list[str]:
        """The first ARGV of :data:`PUBLISH_SCRIPT`: the history's length bound, the live
        channel, the trim mode, the sequence key's lifetime (seconds)."""
        return [str(maxlen), self.keys.channel, "=" if exact_trim else "~", str(ttl)]

    def publish_keys(self, sequence_key: str) -> list[str]:
        """The KEYS of :data:`PUBLISH_SCRIPT`: the history, the publisher's sequence, the epoch."""
        return [self.keys.history, sequence_key, self.keys.epoch]

    def publish_at_keys(self, publisher_id: str, lease: str) -> list[str]:
        """The KEYS of :data:`PUBLISH_AT_SCRIPT`: the history, the publisher's position, the
        epoch, the lease (``lease`` names the bridge whose lease fences the writes)."""
        return [
            self.keys.history,
            self.keys.publisher_position(publisher_id),
            self.keys.epoch,
            self.keys.bridge_lease(lease),
        ]

    async def applied_position(self, redis: aredis.Redis, publisher_id: str) -> str | None:
        raw = await redis.get(self.keys.publisher_position(publisher_id))
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    # -- leases (one active bridge, one active identity syncer) ----------------------------------
    # ``key`` is one of :class:`Keys`' lease names (``bridge_lease(name)``, ``sync_lease``).

    async def acquire_lease(self, redis: aredis.Redis, key: str, holder: str, ms: int) -> bool:
        """Take the lease at ``key`` for ``ms`` milliseconds if no one holds it."""
        return bool(await redis.set(key, holder, nx=True, px=ms))

    async def renew_lease(self, redis: aredis.Redis, key: str, holder: str, ms: int) -> bool:
        """Extend the lease ``holder`` holds to ``ms`` from now; False if it does not hold it
        (expired and perhaps taken: the holder must stop at once)."""
        script = redis.register_script(LEASE_SCRIPT)
        return bool(await script(keys=[key], args=[holder, ms]))

    async def release_lease(self, redis: aredis.Redis, key: str, holder: str) -> bool:
        script = redis.register_script(LEASE_SCRIPT)
        return bool(await script(keys=[key], args=[holder, 0]))

    async def lease_holder(self, redis: aredis.Redis, key: str) -> str | None:
        raw = await redis.get(key)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    # -- live -----------------------------------------------------------------------------------

    #: the pub/sub message type of the live channels (``smessage``: a shard channel's)
    @property
    def message_type(self) -> str:
        return "smessage" if self.keys.cluster else "message"

    async def subscribe(self, pubsub: aredis.client.PubSub, *more: str | bytes) -> None:
        """Subscribe ``pubsub`` to the live channel and ``more`` channels (the replica's probe
        channel, the change feed); on a cluster, SSUBSCRIBE, on a connection to the node that
        serves their slot."""
        if self.keys.cluster:
            await pubsub.ssubscribe(self.keys.channel, *more)
        else:
            await pubsub.subscribe(self.keys.channel, *more)

    async def probe(self, redis: aredis.Redis, channel: str) -> None:
        """One probe message on a replica's own channel (it proves the subscription live)."""
        if self.keys.cluster:
            await redis.spublish(channel, b"probe")
        else:
            await redis.publish(channel, b"probe")

    def announce(self, pipe: Any, data: bytes) -> None:
        """Queue an identity change on ``pipe`` (inside the write's MULTI)."""
        if self.keys.cluster:
            pipe.spublish(self.keys.identity_changes, data)
        else:
            pipe.publish(self.keys.identity_changes, data)

    # -- history --------------------------------------------------------------------------------

    async def epoch(self, redis: aredis.Redis) -> bytes | str | None:
        return await redis.get(self.keys.epoch)

    async def set_epoch(self, redis: aredis.Redis, stream_id: str) -> bytes | str | None:
        """Give a history written before epochs existed its epoch (its first entry), unless
        one was set meanwhile; returns the epoch now."""
        await redis.set(self.keys.epoch, stream_id, nx=True)
        return await self.epoch(redis)

    async def start_new_history(self, redis: aredis.Redis) -> None:
        """Delete the history and its epoch in one transaction: the next publish begins a new
        history (a new epoch), which every replica tells its streams as ``reset``. The admin's
        way out of a history no id can follow (``gateway reset-history``)."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.history)
            pipe.delete(self.keys.epoch)
            await pipe.execute()

    async def history_info(self, redis: aredis.Redis) -> dict[Any, Any] | None:
        """XINFO STREAM of the history, or None when there is no history."""
        try:
            info: dict[Any, Any] = await redis.xinfo_stream(self.keys.history)
        except ResponseError:  # no such key: an empty history
            return None
        return info

    async def entry_exists(self, redis: aredis.Redis, stream_id: str) -> bool:
        return bool(await redis.xrange(self.keys.history, min=stream_id, max=stream_id, count=1))

    async def read_history(
        self, redis: aredis.Redis, after: str, count: int, max_payload: int
    ) -> list[Any]:
        """One run of :data:`READ_SCRIPT` after ``after`` (exclusive) by EVALSHA_RO, loading
        it first when this Redis does not have it cached (a restart, a failover, SCRIPT
        FLUSH). After the largest possible id (a hostile write can put it in history, and a
        reader's cursor follows) nothing is read, but the rest of the reply is as ever."""
        end = after == _LAST_POSSIBLE_ID
        # there: read it inclusively and leave it out (an exclusive start is an error)
        args: list[str | int] = [after if end else f"({after}", count, max_payload]
        keys = (self.keys.history, self.keys.epoch)
        try:
            reply: list[Any] = await redis.evalsha_ro(_READ_SHA, 2, *keys, *args)
        except NoScriptError:
            await redis.script_load(READ_SCRIPT)
            reply = await redis.evalsha_ro(_READ_SHA, 2, *keys, *args)
        if end:
            reply = [0, b"", [], *reply[3:]]
        return reply

    # -- the server -----------------------------------------------------------------------------

    async def clock_ms(self, redis: aredis.Redis) -> float:
        """Redis' clock, milliseconds since the epoch (TIME)."""
        seconds, micros = await redis.time()
        return float(seconds * 1000 + micros / 1000)

    async def run_id(self, redis: aredis.Redis) -> str | None:
        """The Redis instance's run id: another one means a restart."""
        run_id = (await redis.info("server")).get("run_id")
        return None if run_id is None else str(run_id)

    async def replication(self, redis: aredis.Redis) -> Replication | None:
        """The node's :class:`Replication` (INFO replication), or None where the server does
        not say (a user whose ACL lacks ``INFO replication``: no proof either way)."""
        try:
            info = await redis.info("replication")
        except ResponseError:  # NOPERM: the caller falls back to what it did without
            return None
        previous = _replid(info.get("master_replid2"))
        until = _offset(info.get("second_repl_offset"))  # the first byte it lacks; -1: none
        return Replication(
            _replid(info.get("master_replid")),
            _offset(info.get("master_repl_offset")),
            previous,
            None if previous is None or until is None or until < 1 else until - 1,
        )

    async def persistent(self, redis: aredis.Redis) -> bool:
        """Whether a restart keeps what Redis holds (its append-only file is on)."""
        return bool(int((await redis.info("persistence")).get("aof_enabled", 0)))
