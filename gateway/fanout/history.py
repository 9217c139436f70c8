"""Reading the bounded history stream: replay for a resuming client, gap-fill for the
subscriber after a reconnect. Both read strictly after a given id, in chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import redis.asyncio as aredis

from .frames import parse_stream_id

__all__ = ["first_available", "read_after", "was_trimmed"]

CHUNK: Final = 512


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_after(  # rows are (bytes id, {bytes: bytes}): decode_responses is off
    redis: aredis.Redis, history: str, after: str, *, chunk: int = CHUNK
) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """Yield ``[(stream id, payload), ...]`` chunks for every entry with an id after ``after``.

    Entries without the payload field are skipped (nothing else writes there, but a stray
    XADD must not stop a replay)."""
    cursor = after
    while True:
        rows: list[Any] = list(
            await redis.xrange(history, min=f"({cursor}", max="+", count=chunk) or ()
        )
        if not rows:
            return
        batch: list[tuple[bytes, bytes]] = [
            (sid, fields[b"e"]) for sid, fields in rows if fields and b"e" in fields
        ]
        cursor = _text(rows[-1][0])
        if batch:
            yield batch
        if len(rows) < chunk:
            return


async def first_available(redis: aredis.Redis, history: str) -> str | None:
    rows = await redis.xrange(history, min="-", max="+", count=1)
    return _text(rows[0][0]) if rows else None


async def was_trimmed(redis: aredis.Redis, history: str, after: str) -> bool:
    """True when history may have lost entries newer than ``after``, so a resume from it
    has a hole: entries were trimmed and the oldest one left is newer than ``after`` (it may
    say so once too often, when ``after`` was the very last entry trimmed), or an entry newer
    than ``after`` was deleted (XINFO's ``max-deleted-entry-id``, Redis 7+)."""
    try:
        info: dict[Any, Any] = await redis.xinfo_stream(history)
    except aredis.ResponseError:  # no such key: nothing to compare with
        return False
    info = {_text(k): v for k, v in info.items()}
    after_id = parse_stream_id(after)
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None and parse_stream_id(_text(deleted)) > after_id:
        return True
    added, length = info.get("entries-added"), info.get("length")
    if added is not None and length is not None and int(added) <= int(length):
        return False  # nothing was ever removed
    first = info.get("recorded-first-entry-id")
    if first is None:
        entry = info.get("first-entry")
        first = entry[0] if entry else None
    return first is not None and parse_stream_id(_text(first)) > after_id
