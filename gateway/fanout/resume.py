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

With more than one partition (:mod:`publisher.partitions`), :func:`resume` picks the replay:
a stream of one user replays its owner's partition as above (a plain id, or that
partition's position of a vector id). A stream that spans partitions resumes from a vector
id (:func:`replay_vector`): the hub keeps what it matches for the stream while it replays;
the replay reads each partition after its position up to that partition's watermark, then
sends what the hub kept past where it stands, and goes live with no await between its last
check and the hand-over, so the next live event of every partition follows on.

A stream a drain hands off (``Connection.handoff``: its client cannot resume by itself) has
its replay's progress kept in :attr:`Hub.replay_marks` (:class:`~.progress.ReplayTrail`):
a drain during the replay records how far it went, less what had not left the process
(:meth:`Hub.handoff_position`), not where it began, so the next replica sends nothing twice
and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aredis

from publisher.bus import Bus
from publisher.partitions import decode_vector, encode_vector, is_vector
from publisher.schema import SourceGap

from .connection import Connection
from .frames import StreamId, format_stream_id, frame_for, notice_frame, parse_stream_id
from .history import gap_reason, read_after
from .hub import CATCH_UP_EVENTS, Hub
from .lanes import Lane
from .progress import ReplayTrail

__all__ = ["replay", "replay_vector", "resume"]

log = logging.getLogger(__name__)

#: how long a spanning stream's replay waits for a lane of this replica to reach the
#: client's position (a replica behind the one the client came from), seconds
_CATCH_UP: Final = 10.0
#: seconds a spanning stream's replay may go on taking rounds of reads, each ending with
#: more live events than the hub keeps for it (:data:`~.hub.CATCH_UP_EVENTS`), before it
#: gives up: each round starts where the last one stood, so a client that reads faster than
#: events come goes live; one that cannot is told ``resume_failed`` (it resumes from its id)
_ROUNDS_FOR: Final = 120.0


def positions(last_event_id: str, n: int) -> tuple[StreamId, ...]:
    """The position in each of ``n`` partitions a ``Last-Event-ID`` names: a vector id's,
    or a plain id taken as the position in every partition (ids are times: an id of another
    partition is told ``unknown`` by the replay, then history after it follows).
    ``ValueError`` for neither, or a vector of another ``n``."""
    if is_vector(last_event_id):
        return decode_vector(last_event_id, n)
    return (parse_stream_id(last_event_id),) * n


async def resume(
    connection: Connection,
    hub: Hub,
    redis: aredis.Redis,
    buses: Sequence[Bus],
    last_event_id: str,
) -> None:
    """Replay after ``last_event_id`` the way the stream needs (see the module docstring):
    ``buses`` has each partition's bus, by partition. Never raises but ``CancelledError``."""
    marks = hub.replay_marks if connection.handoff is not None else None
    try:
        if not hub.lanes:
            await replay(connection, hub, redis, buses[0], last_event_id, marks)
            return
        lane = hub.lane_of(connection.filter)
        try:
            at = positions(last_event_id, len(hub.lanes))
        except ValueError:  # checked at the edge; a handed-off id of another N comes here
            log.warning("cannot resume after %r with %d partitions", last_event_id, len(hub.lanes))
            connection.close("resume_failed")
            return
        if lane is None:
            await replay_vector(connection, hub, redis, buses, at, last_event_id, marks)
        else:
            plain = last_event_id if not is_vector(last_event_id) else format_stream_id(at[lane])
            await replay(connection, hub.lanes[lane], redis, buses[lane], plain, marks)
    finally:
        if marks is not None and connection.closed:
            # else kept until the hub's tick finds the stream all written: the frames of
            # the replay's end may still be queued (Hub.handoff_position)
            marks.pop(connection, None)


Marks = dict[Connection, ReplayTrail]


async def replay(
    connection: Connection,
    hub: Hub | Lane,
    redis: aredis.Redis,
    bus: Bus,
    last_event_id: str,
    marks: Marks | None = None,
) -> None:
    """Send what history holds after ``last_event_id`` through the connection's filter,
    while live frames are held back; then release the held ones that replay did not cover.
    Payloads are checked as live ones are (:meth:`Hub.decode`: same limit, same counters).
    ``marks`` (:attr:`Hub.replay_marks`), when given, has the connection's progress.

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
        trail = None if marks is None else marks.setdefault(connection, ReplayTrail(cursor))
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
                    if trail is not None:  # everything up to the previous entry is handled
                        trail.passed(cursor)
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
                    if trail is not None:
                        trail.pushed_frame(len(frame), cursor)
            if trail is not None:
                trail.passed(cursor)
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


async def replay_vector(
    connection: Connection,
    hub: Hub,
    redis: aredis.Redis,
    buses: Sequence[Bus],
    start: Sequence[StreamId],
    last_event_id: str,
    marks: Marks | None = None,
) -> None:
    """Replay a stream that spans partitions from the positions ``start`` (one per
    partition), partition by partition (each in order; there is no order across them), each
    frame carrying the vector of where the replay stands, then hand over to live frames.

    The hand-over holds and releases, as the plain replay does: before the reads, the hub
    starts keeping what it matches for this stream (:meth:`Hub.begin_catch_up`); each
    partition is read up to its watermark as the read begins; then what the hub kept is sent,
    past where the replay stands, until nothing new came meanwhile, and the stream goes live
    with no await between that check and the hand-over. More than
    :data:`~.hub.CATCH_UP_EVENTS` kept: another round of reads from where it stands (for at
    most :data:`_ROUNDS_FOR` seconds). An earlier design read every partition again until
    all stood at their watermarks at once, which steady load never allowed (a review found
    a stream replaying for good, and a handoff during it sending every event again).

    Never raises but ``CancelledError``: a failed read, a lane of this replica that does not
    reach the client's position within :data:`_CATCH_UP` seconds, or rounds for more than
    :data:`_ROUNDS_FOR` seconds, closes the stream with ``server_close`` (``resume_failed``); the
    client resumes again from its last id."""
    lanes = hub.lanes
    at = list(start)
    pace = connection.cap // 2
    loop = asyncio.get_running_loop()
    try:
        for p, bus in enumerate(buses):
            reason, state = await gap_reason(redis, bus, at[p])
            if reason is not None:
                first = format_stream_id(state.first_id) if state.first_id else None
                connection.push(notice_frame(last_event_id, first, reason))
            at[p] = min(at[p], state.last_id)
        if marks is not None:
            marks.setdefault(connection, ReplayTrail(tuple(at)))
        deadline = loop.time() + _CATCH_UP
        while behind := [
            p for p, lane in enumerate(lanes) if lane.last_id is None or lane.last_id < at[p]
        ]:  # this replica has not dispatched as far as the client had
            if loop.time() > deadline:
                raise TimeoutError(f"partitions {behind} of this replica did not catch up")
            await asyncio.sleep(0.02)
        rounds_until = loop.time() + _ROUNDS_FOR
        while loop.time() < rounds_until:
            hub.begin_catch_up(connection)
            for p, bus in enumerate(buses):
                trail = None if marks is None else marks.get(connection)
                await _replay_lane(connection, hub, redis, bus, lanes[p], p, at, pace, trail)
                if connection.closed:
                    return
                if trail is not None:
                    trail.passed(tuple(at))
            if await _release(connection, hub, at, pace, marks):
                return  # live: end_replay below, no await since the release's last check
        raise TimeoutError(
            f"more than {CATCH_UP_EVENTS} events came in every round for {_ROUNDS_FOR:g} s"
        )
    except Exception:
        log.exception("replay after %s failed; closing the stream", last_event_id)
        connection.close("resume_failed")
        return
    finally:
        hub.end_catch_up(connection)
        if not connection.closed:
            # The hub held nothing in the connection (it keeps a spanning stream's live
            # events itself while it replays), so nothing is released and no floor is needed.
            connection.end_replay((0, 0))


async def _release(
    connection: Connection, hub: Hub, at: list[StreamId], pace: int, marks: Marks | None
) -> bool:
    """Send what the hub kept for the stream while it replayed, past where the replay stands
    in each partition, again and again until nothing new was kept meanwhile: True then (the
    caller goes live at once), or when the stream closed; False when more came than the hub
    keeps (another round of reads)."""
    while True:
        kept = hub.end_catch_up(connection)
        if kept is None:
            return False
        if not kept:
            return True
        hub.begin_catch_up(connection)  # what comes while these go out
        trail = None if marks is None else marks.get(connection)
        for p, stream_id, event in kept:
            if trail is not None:  # every kept event before this one is handled
                trail.passed(tuple(at))
            if stream_id <= at[p]:
                continue  # the read found it in history
            at[p] = stream_id
            frame = frame_for(connection.view, encode_vector(at), event)
            if frame is None:
                continue
            await connection.drained(pace)
            if connection.closed:
                return True
            connection.push(frame)
            if trail is not None:
                trail.pushed_frame(len(frame), tuple(at))
        if trail is not None:
            trail.passed(tuple(at))


async def _replay_lane(
    connection: Connection,
    hub: Hub,
    redis: aredis.Redis,
    bus: Bus,
    lane: Lane,
    p: int,
    at: list[StreamId],
    pace: int,
    trail: ReplayTrail | None = None,
) -> None:
    """Send partition ``p``'s entries after ``at[p]`` up to the lane's watermark as it
    stands now (``target``), then stand at ``target``: every id up to it was dispatched, so
    it was in history before this read began, and what the read did not find there is gone."""
    target = lane.last_id
    if target is None or target <= at[p]:
        return
    entries = read_after(redis, bus, format_stream_id(at[p]), max_payload=hub.max_payload)
    async with contextlib.aclosing(entries):
        async for batch, gap in entries:
            if gap:
                first = format_stream_id(parse_stream_id(batch[0][0])) if batch else None
                connection.push(notice_frame(encode_vector(at), first, "trimmed"))
            for raw_id, payload in batch:
                if trail is not None:  # everything up to the previous entry is handled
                    trail.passed(tuple(at))
                stream_id = parse_stream_id(raw_id)
                if stream_id > target:
                    at[p] = target
                    return  # past what the hub had dispatched: it comes live
                at[p] = stream_id
                event = hub.decode(raw_id, payload)
                if event is None:
                    continue
                if isinstance(event, SourceGap):
                    await connection.drained(pace)
                    connection.push(notice_frame(None, None, "source"))
                    continue
                if not connection.filter.matches(event):
                    continue
                if hub.partitions is not None and hub.partitions.of(event.owner_user_id) != p:
                    # not its owner's partition: dropped live too, and counted here as well
                    # (an old history under a new number of partitions is only ever replayed)
                    hub.drop("wrong_partition", raw_id)
                    continue
                frame = frame_for(connection.view, encode_vector(at), event)
                if frame is None:
                    continue
                await connection.drained(pace)
                if connection.closed:
                    return
                connection.push(frame)
                if trail is not None:
                    trail.pushed_frame(len(frame), tuple(at))
    at[p] = max(at[p], target)
