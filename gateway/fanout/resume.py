"""Resume by ``Last-Event-ID``: replay what history holds after the client's id, through its
filter, then hand over to live frames with no gap and no duplicate.

The order (ARCHITECTURE.md, "Resume"):

1. the HTTP edge calls :meth:`Connection.begin_replay` *before* registering the connection
   with the hub, so every live frame from then on is held with its id;
2. :func:`replay` tells the client with ``history_truncated`` when history cannot prove it
   holds everything after its id, then sends history after that id in chunks, pulled at the
   client's pace (it waits while the buffer is over half its cap instead of evicting);
3. :meth:`Connection.end_replay` releases the held frames newer than the last replayed id.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import redis.asyncio as aredis

from publisher.schema import decode_event

from .connection import Connection
from .frames import StreamId, event_frame, notice_frame, parse_stream_id
from .history import first_available, read_after, was_trimmed

__all__ = ["replay"]

log = logging.getLogger(__name__)


async def replay(
    connection: Connection, redis: aredis.Redis, history: str, last_event_id: str
) -> None:
    """Send what ``history`` holds after ``last_event_id`` through the connection's filter,
    while live frames are held back; then release the held ones that replay did not cover.

    Never raises but ``CancelledError``: a failed read closes the stream with
    ``server_close`` (``resume_failed``), and the client resumes again from its last id."""
    last: StreamId = parse_stream_id(last_event_id)
    try:
        if await was_trimmed(redis, history, last_event_id):
            connection.push(notice_frame(last_event_id, await first_available(redis, history)))
        async for batch in read_after(redis, history, last_event_id):
            for raw_id, payload in batch:
                last = parse_stream_id(raw_id)
                try:
                    event = decode_event(payload)
                except msgspec.DecodeError:
                    continue  # the hub counted it when it went live
                if connection.filter.matches(event):
                    connection.push(event_frame(raw_id.decode(), event))
            # Replay is pulled, so it waits for the client instead of evicting it.
            while connection.buffered > connection.cap // 2 and not connection.closed:
                await asyncio.sleep(0.005)
            if connection.closed:
                return
    except Exception:
        log.exception("replay after %s failed; closing the stream", last_event_id)
        connection.close("resume_failed")
        return
    finally:
        if not connection.closed:
            connection.end_replay(last)
