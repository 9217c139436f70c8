"""Reading the bounded history stream: where it is (:func:`history_state`), whether it can
prove it holds every event after a client's id (:func:`gap_reason`), and its entries after an
id, in chunks (:func:`read_after`: replay for a resuming client, gap-fill for the subscriber).

The epoch (:attr:`publisher.keys.Keys.epoch`) is the id of the first entry the history ever
held, set once by the publish script. Every Redis command here is the bus's
(:class:`publisher.bus.Bus`). A Redis that lost its data (restarted without
persistence, or replaced by a fresh instance) has another epoch, or none yet.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aredis

from publisher.bus import Bus

from .frames import GapReason, StreamId, format_stream_id, parse_stream_id

__all__ = [
    "HistoryState",
    "ReadFacts",
    "entry_exists",
    "gap_reason",
    "history_state",
    "read_after",
]

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


async def history_state(redis: aredis.Redis, bus: Bus) -> HistoryState:
    """Where the history is now. A stream without an epoch (written before epochs existed)
    is given one, its current first entry, so that it is compared from now on."""
    epoch_raw = await bus.epoch(redis)
    info = await bus.history_info(redis)
    if info is None:  # no stream: an empty history
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
        set_to = await bus.set_epoch(redis, format_stream_id(first_id))
        epoch = None if set_to is None else _text(set_to)
    return HistoryState(
        epoch=epoch,
        last_id=_id(info.get("last-generated-id")) or (0, 0),
        first_id=first_id,
        trimmed=trimmed,
        max_deleted=_id(info.get("max-deleted-entry-id")),
    )


async def entry_exists(redis: aredis.Redis, bus: Bus, stream_id: StreamId) -> bool:
    return await bus.entry_exists(redis, format_stream_id(stream_id))


async def gap_reason(
    redis: aredis.Redis, bus: Bus, after: StreamId
) -> tuple[GapReason | None, HistoryState]:
    """Why history cannot prove it holds every entry after ``after`` (None when it can),
    with the snapshot it judged by. ``(0, 0)`` asks for everything: a gap only if entries
    were ever removed. Otherwise ``after`` must be an entry this history holds (every id a
    client has came from one): ``ahead`` past the history's end, ``reset`` older than its
    epoch, ``trimmed`` before its oldest entry or with a deletion after it, ``unknown`` in
    range but no entry has it."""
    state = await history_state(redis, bus)
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
    if not await entry_exists(redis, bus, after):
        return "unknown", state
    return None, state


#: one history entry as read: ``(stream id, payload)``, payload None when it is over the
#: size limit (held back in Redis; the caller counts it as oversized)
Entry = tuple[bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class ReadFacts:
    """What one read saw of the history besides its entries, in the same atomic look."""

    #: the epoch key's value (None: none)
    epoch: str | None
    #: no entry ever added has a higher id ((0, 0): no stream)
    generated: StreamId
    #: the newest id ever removed by XDEL, if any
    deleted: StreamId | None
    #: the oldest entry held, None when the stream is empty
    first: StreamId | None

    def removed_after(self, start: StreamId) -> bool:
        """Whether entries after ``start`` were removed: trimmed past it (the oldest entry is
        newer), the stream emptied, or one deleted (XDEL). From ``0-0`` (everything: the
        watermark of a new history) the oldest entry is always newer; trimming shows as an
        oldest entry newer than the epoch, the first entry this history ever held (the model
        test found a restart without persistence, then more events at once than MAXLEN
        keeps, skipping the trimmed ones untold)."""
        if start == (0, 0):
            try:
                epoch = _id(self.epoch)
            except ValueError:  # an epoch key that is no id says nothing
                epoch = None
            trimmed = epoch is not None and self.first is not None and self.first > epoch
            return (
                trimmed
                or self.deleted is not None
                or (self.first is None and self.generated > start)
            )
        if self.deleted is not None and self.deleted > start:
            return True
        if self.first is None:
            return self.generated > start
        return self.first > start

    def accounted(self) -> StreamId | None:
        """After a read to the end: an id every entry at or below which was read or removed
        (the newest deleted one; the last generated one of an emptied stream), if any."""
        if self.first is None:
            return None if self.generated == (0, 0) else self.generated
        return self.deleted


async def read_after(
    redis: aredis.Redis,
    bus: Bus,
    after: str,
    *,
    max_payload: int,
    chunk: int = CHUNK,
    facts: Callable[[ReadFacts], Awaitable[None]] | None = None,
) -> AsyncGenerator[tuple[list[Entry], bool]]:
    """Yield ``(entries, gap)`` for every entry with an id after ``after``, in order, a chunk
    at a time. ``gap`` is True (once per call, before the entries it concerns) when entries
    after the read's start were removed since it was known (trimmed past it, the stream
    emptied, or deleted): entries right after it may be gone, and the caller must say so
    before the entries that follow. Payloads over ``max_payload`` bytes never leave Redis
    (None in their place). ``facts`` gets each chunk's :class:`ReadFacts` before its entries
    (it may raise: a new epoch under the reader)."""
    cursor = after
    told = False
    while True:
        reply = await bus.read_history(redis, cursor, chunk, max_payload)
        count, last, rows = int(reply[0]), reply[1], reply[2]
        seen = ReadFacts(
            epoch=(_text(reply[4]) or None) if len(reply) > 4 else None,
            generated=(_id(reply[5]) or (0, 0)) if len(reply) > 5 else (0, 0),
            deleted=_id(reply[6]) if len(reply) > 6 else None,
            first=_id(reply[3]),
        )
        if facts is not None:
            await facts(seen)
        batch: list[Entry] = [
            (sid, payload if isinstance(payload, bytes) else None) for sid, payload in rows
        ]
        gap = not told and seen.removed_after(parse_stream_id(cursor))
        told = told or gap
        if batch or gap:
            yield batch, gap
        if count < chunk:
            return
        cursor = _text(last)  # past every row read, with a payload or not
