"""Resume by ``Last-Event-ID``: replay what history holds after the client's id, through its
filter, then hand over to live frames with no gap and no duplicate.

The order (ARCHITECTURE.md, "Resume"):

1. the HTTP edge calls :meth:`Connection.begin_replay` *before* registering the connection
   with the hub, so every live frame from then on is held with its id;
2. :func:`replay` first tells the client with ``history_truncated`` (and why) when history
   cannot prove it holds everything after its id (:func:`~gateway.fanout.history.gap_reason`),
   then sends history after that id, paced by the client's real reading: before each frame
   it waits (:meth:`Connection.drained`) while more than half the cap is queued. Held live
   frames do not count: past their own share they are dropped and read from history instead;
3. :meth:`Connection.end_replay` releases the held frames newer than the last replayed id.
"""

from __future__ import annotations

import logging

import redis.asyncio as aredis

from publisher.bus import Bus
from publisher.schema import SourceGap

from .connection import Connection
from .frames import StreamId, format_stream_id, frame_for, notice_frame, parse_stream_id
from .history import gap_reason, read_after
from .hub import Hub

__all__ = ["replay"]

log = logging.getLogger(__name__)


async def replay(
    connection: Connection, hub: Hub, redis: aredis.Redis, bus: Bus, last_event_id: str
) -> None:
    """Send what history holds after ``last_event_id`` through the connection's filter,
    while live frames are held back; then release the held ones that replay did not cover.
    Payloads are checked as live ones are (:meth:`Hub.decode`: same limit, same counters).

    Never raises but ``CancelledError``: a failed read closes the stream with
    ``server_close`` (``resume_failed``), and the client resumes again from its last id."""
    last: StreamId = parse_stream_id(last_event_id)
    pace = connection.cap // 2
    try:
        reason, state = await gap_reason(redis, bus, last)
        told = reason is not None
        if told:
            first = format_stream_id(state.first_id) if state.first_id else None
            connection.push(notice_frame(last_event_id, first, reason or "trimmed"))
        # An id ahead of history covers nothing: live frames past history's end must pass,
        # and the read starts at history's end (an id past anything Redis can make, say
        # 18446744073709551615-18446744073709551615, has no successor to read from).
        last = cursor = min(last, state.last_id)
        while True:
            after = format_stream_id(cursor)
            async for batch, gap in read_after(redis, bus, after, max_payload=hub.max_payload):
                if gap and not told:
                    # MAXLEN trimmed past the replay's cursor while it waited for the reader:
                    # what came right after may be gone. Say so before what follows.
                    first = format_stream_id(parse_stream_id(batch[0][0])) if batch else None
                    connection.push(notice_frame(format_stream_id(cursor), first, "trimmed"))
                told = False
                for raw_id, payload in batch:
                    last = cursor = parse_stream_id(raw_id)
                    event = hub.decode(raw_id, payload)
                    if event is None:
                        continue
                    if isinstance(event, SourceGap):  # told to every stream, as live
                        await connection.drained(pace)
                        connection.push(notice_frame(None, None, "source"))
                        continue
                    if not connection.filter.matches(event):
                        continue
                    frame = frame_for(connection.view, raw_id.decode(), event)
                    if frame is None:
                        continue  # not shown in this stream's API generation
                    await connection.drained(pace)
                    if connection.closed:
                        return
                    connection.push(frame)
            overflow = connection.held_overflow
            if overflow is None or overflow <= cursor:
                break
            # Live frames were dropped from the hold while replay ran; every one of them was
            # in history before it went live, so reading on from ``last`` finds them.
    except Exception:
        log.exception("replay after %s failed; closing the stream", last_event_id)
        connection.close("resume_failed")
        return
    finally:
        if not connection.closed:
            connection.end_replay(last)
