"""Reading the bounded history stream: where it is (:func:`history_state`), whether it can
prove it holds every event after a client's id (:func:`gap_reason`), and its entries after an
id, in chunks (:func:`read_after`: replay for a resuming client, gap-fill for the subscriber).

The epoch (:attr:`publisher.keys.Keys.epoch`) is the id of the first entry the history ever
held, set once by the publish script. A Redis that lost its data (restarted without
persistence, or replaced by a fresh instance) has another epoch, or none yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from publisher.keys import Keys

from .frames import GapReason, StreamId, format_stream_id, parse_stream_id

__all__ = ["HistoryState", "entry_exists", "gap_reason", "history_state", "read_after"]

CHUNK: Final = 512


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(value: Any) -> StreamId | None:
    if value is None:
        return None
    text = _text(value)
    return None if text in ("", "0-0") else parse_stream_id(text)


@dataclass(frozen=True, slots=True)
class HistoryState:
    """A snapshot of the history stream (XINFO STREAM) and its epoch."""

    #: the epoch key's value, or None while this Redis has none (nothing published since it
    #: lost its data, or ever)
    epoch: str | None
    #: ``last-generated-id``: no entry ever added has a higher id; (0, 0) with no stream
    last_id: StreamId
    #: the oldest entry held now, None when the stream is empty
    first_id: StreamId | None
    #: True when entries were ever removed (MAXLEN trimming or XDEL)
    trimmed: bool
    #: the newest id ever deleted by XDEL (Redis 7), if any
    max_deleted: StreamId | None


async def history_state(redis: aredis.Redis, keys: Keys) -> HistoryState:
    """Where the history is now. A stream without an epoch (written before epochs existed)
    is given one, its current first entry, so that it is compared from now on."""
    epoch_raw = await redis.get(keys.epoch)
    try:
        info: dict[Any, Any] = await redis.xinfo_stream(keys.history)
    except aredis.ResponseError:  # no such key: an empty history
        return HistoryState(
            epoch=None if epoch_raw is None else _text(epoch_raw),
            last_id=(0, 0),
            first_id=None,
            trimmed=False,
            max_deleted=None,
        )
    info = {_text(k): v for k, v in info.items()}
    first = info.get("first-entry")
    first_id = _id(first[0]) if first else None
    added, length = info.get("entries-added"), info.get("length")
    trimmed = added is not None and length is not None and int(added) > int(length)
    epoch = None if epoch_raw is None else _text(epoch_raw)
    if epoch is None and first_id is not None:
        await redis.set(keys.epoch, format_stream_id(first_id), nx=True)
        epoch = _text(await redis.get(keys.epoch))
    return HistoryState(
        epoch=epoch,
        last_id=_id(info.get("last-generated-id")) or (0, 0),
        first_id=first_id,
        trimmed=trimmed,
        max_deleted=_id(info.get("max-deleted-entry-id")),
    )


async def entry_exists(redis: aredis.Redis, keys: Keys, stream_id: StreamId) -> bool:
    text = format_stream_id(stream_id)
    return bool(await redis.xrange(keys.history, min=text, max=text, count=1))


async def gap_reason(
    redis: aredis.Redis, keys: Keys, after: StreamId
) -> tuple[GapReason | None, HistoryState]:
    """Why history cannot prove it holds every entry after ``after`` (None when it can),
    with the snapshot it judged by. ``(0, 0)`` asks for everything: a gap only if entries
    were ever removed. Otherwise ``after`` must be an entry this history holds (every id a
    client has came from one): ``ahead`` past the history's end, ``reset`` older than its
    epoch, ``trimmed`` before its oldest entry or with a deletion after it, ``unknown`` in
    range but no entry has it."""
    state = await history_state(redis, keys)
    if after == (0, 0):
        return ("trimmed" if state.trimmed else None), state
    if after > state.last_id:
        return "ahead", state
    epoch = _id(state.epoch) if state.epoch is not None else None
    if epoch is not None and after < epoch:
        return "reset", state
    if state.max_deleted is not None and state.max_deleted > after:
        return "trimmed", state
    if state.first_id is None or after < state.first_id:
        return "trimmed", state
    if not await entry_exists(redis, keys, after):
        return "unknown", state
    return None, state


#: XRANGE in Redis, payloads over the limit held back there: a history entry of any size
#: costs the gateway a few bytes, never its size (a payload of 4 MB would otherwise be read
#: whole before it could be dropped). KEYS[1] history; ARGV[1] exclusive start "(<id>",
#: ARGV[2] count, ARGV[3] largest payload in bytes. Rows: {id, payload} or {id, size} (an
#: integer reply) for one over the limit; entries without the payload field are skipped.
#: Reply: {rows read, last id read, rows, the oldest entry's id now}. Read-only: it runs as
#: EVALSHA_RO (Redis >= 7.0), flagged ``no-writes``, so the gateway's Redis user needs only
#: read access to the history (``gateway acl``: ``%R~<prefix>:events``) and cannot append.
_READ_SCRIPT: Final = """#!lua flags=no-writes
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local limit = tonumber(ARGV[3])
local out = {}
for i = 1, #rows do
  local fields = rows[i][2]
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then
      local payload = fields[j + 1]
      if #payload > limit then payload = #payload end
      out[#out + 1] = {rows[i][1], payload}
      break
    end
  end
end
local last = ''
if #rows > 0 then last = rows[#rows][1] end
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = ''
if #head > 0 then first = head[1][1] end
return {#rows, last, out, first}
"""

_READ_SHA: Final = hashlib.sha1(_READ_SCRIPT.encode()).hexdigest()


async def _read_chunk(redis: aredis.Redis, history: str, args: list[Any]) -> list[Any]:
    """One run of :data:`_READ_SCRIPT` by EVALSHA_RO, loading it first when this Redis does
    not have it cached (a restart, a failover, SCRIPT FLUSH)."""
    try:
        reply: list[Any] = await redis.evalsha_ro(_READ_SHA, 1, history, *args)
    except NoScriptError:
        await redis.script_load(_READ_SCRIPT)
        reply = await redis.evalsha_ro(_READ_SHA, 1, history, *args)
    return reply


#: one history entry as read: ``(stream id, payload)``, payload None when it is over the
#: size limit (held back in Redis; the caller counts it as oversized)
Entry = tuple[bytes, bytes | None]


async def read_after(
    redis: aredis.Redis, history: str, after: str, *, max_payload: int, chunk: int = CHUNK
) -> AsyncIterator[tuple[list[Entry], bool]]:
    """Yield ``(entries, gap)`` for every entry with an id after ``after``, in order, a chunk
    at a time. ``gap`` is True when trimming has passed the read's start since it was known
    (the oldest entry is newer than it): entries right after it may be gone, and the caller
    must say so before the entries that follow. Payloads over ``max_payload`` bytes never
    leave Redis (None in their place)."""
    cursor = after
    while True:
        reply = await _read_chunk(redis, history, [f"({cursor}", chunk, max_payload])
        count, last, rows, first = int(reply[0]), reply[1], reply[2], _id(reply[3])
        batch: list[Entry] = [
            (sid, payload if isinstance(payload, bytes) else None) for sid, payload in rows
        ]
        start = parse_stream_id(cursor)
        gap = start != (0, 0) and first is not None and first > start
        if batch or gap:
            yield batch, gap
        if count < chunk:
            return
        cursor = _text(last)  # past every row read, with a payload or not
