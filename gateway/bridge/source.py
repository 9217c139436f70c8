"""Reading Backend.AI's bus without disturbing it: which generation it is, the ``events``
stream by a cursor of our own, the ``events_all`` channel.

Never a consumer group: the manager's group ``manager`` does the database updates (a second
reader in it would take their messages away), and a group of our own would only grow the
stream's pending lists, since the managers trim the stream to about 128 entries whatever is
pending (``read_stream`` in ``src/ai/backend/common/redis_helper.py`` 23.09.0 L304-341;
``_DEFAULT_QUEUE_MAX_LEN = 128`` in ``common/message_queue/redis_queue.py`` 25.6.0). The
stream is read with plain ``XRANGE`` after the bridge's own cursor, kept in the gateway's
Redis (:mod:`publisher.positioned`).

Every read of the stream is one ``MULTI``: whether the cursor's entry is still there, the
entries after it, and the oldest and newest ids. MAXLEN trimming removes the oldest entries
first, so while the cursor's entry is there nothing after it was trimmed; once it is gone and
the oldest entry is newer than it, entries may have been lost (a gap); a newest entry older
than the cursor means the stream was made anew (Backend.AI's Redis lost its data), and its
ids count from the start again. A reader with read-only rights on the key ``events`` (and the
channel ``events_all``) is enough.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aredis

from gateway.fanout.frames import StreamId, format_stream_id, parse_stream_id

__all__ = [
    "BROADCAST_CHANNEL",
    "EVENTS_STREAM",
    "Format",
    "PubSubSource",
    "Snapshot",
    "SourceLost",
    "StreamSource",
    "detect_format",
]

log = logging.getLogger(__name__)

#: Backend.AI's names: the stream (``XADD events``, every generation) and the broadcast
#: channel (25.11+: ``broadcast_channel="events_all"`` in
#: ``src/ai/backend/manager/dependencies/messaging/message_queue.py`` 26.8.1)
EVENTS_STREAM: Final = "events"
BROADCAST_CHANNEL: Final = "events_all"

Format = Literal["stream", "pubsub"]


class SourceLost(ConnectionError):
    """The connection to Backend.AI's Redis failed or was re-made underneath: what was
    published meanwhile on its channel never arrived."""


async def detect_format(redis: aredis.Redis) -> tuple[Format | None, str]:
    """Which generation Backend.AI's bus is, and why: ``pubsub`` when someone (the managers,
    25.11+) subscribes ``events_all``; else ``stream`` when the ``events`` stream exists;
    None (with the reason) when neither is seen yet."""
    numsub = await redis.pubsub_numsub(BROADCAST_CHANNEL)
    subscribers = int(numsub[0][1]) if numsub else 0
    if subscribers:
        return "pubsub", (
            f"{subscribers} subscriber(s) on {BROADCAST_CHANNEL} (Backend.AI 25.11+ broadcasts "
            "its lifecycle events there)"
        )
    kind = await redis.type(EVENTS_STREAM)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "stream":
        return "stream", (
            f"the {EVENTS_STREAM} stream exists and no one subscribes {BROADCAST_CHANNEL} "
            "(Backend.AI 22.09-25.10)"
        )
    return None, (
        f"neither a subscriber on {BROADCAST_CHANNEL} nor an {EVENTS_STREAM} stream "
        "(no manager running yet, or another Redis database)"
    )


def _id(raw: Any) -> StreamId:
    return parse_stream_id(raw.decode() if isinstance(raw, bytes) else str(raw))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One atomic look at the stream after a cursor."""

    #: whether the cursor's own entry is still in the stream
    cursor_present: bool
    #: up to ``count`` entries after the cursor: ``(id, fields)``
    entries: list[tuple[StreamId, dict[Any, Any]]]
    oldest: StreamId | None
    newest: StreamId | None

    def lost_after(self, cursor: StreamId) -> bool:
        """Entries after ``cursor`` may have been trimmed away: its entry is gone and the
        oldest one left is newer (or none is left). ``(0, 0)`` (read everything) loses
        nothing."""
        if cursor == (0, 0) or self.cursor_present:
            return False
        return self.oldest is None or self.oldest > cursor

    def reset(self, cursor: StreamId) -> bool:
        """The stream holds only entries older than ``cursor``: it was made anew and counts
        from the start again (a source Redis that lost its data)."""
        return self.newest is not None and self.newest < cursor


class StreamSource:
    """The ``events`` stream of Backend.AI's Redis (22.09-25.10)."""

    def __init__(self, redis: aredis.Redis, *, count: int) -> None:
        self._redis = redis
        self._count = count

    async def snapshot(self, cursor: StreamId) -> Snapshot:
        """Entries after ``cursor`` and what tells a gap from none, in one MULTI."""
        text = format_stream_id(cursor)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xrange(EVENTS_STREAM, text, text, count=1)
            pipe.xrange(EVENTS_STREAM, f"({text}", "+", count=self._count)
            pipe.xrange(EVENTS_STREAM, "-", "+", count=1)
            pipe.xrevrange(EVENTS_STREAM, "+", "-", count=1)
            here, after, oldest, newest = await pipe.execute()
        return Snapshot(
            cursor_present=bool(here) and cursor != (0, 0),
            entries=[(_id(raw), fields) for raw, fields in after],
            oldest=_id(oldest[0][0]) if oldest else None,
            newest=_id(newest[0][0]) if newest else None,
        )

    async def newest(self) -> StreamId:
        """The newest entry's id ((0, 0) for an empty or missing stream)."""
        rows = await self._redis.xrevrange(EVENTS_STREAM, "+", "-", count=1)
        return _id(rows[0][0]) if rows else (0, 0)

    async def wait(self, timeout: float) -> None:
        """Until an entry is added after this call, or ``timeout`` seconds. Waits on ``$``,
        not on the cursor: a stream made anew has ids below the cursor, and must wake it."""
        await self._redis.xread({EVENTS_STREAM: "$"}, count=1, block=int(timeout * 1000))


class PubSubSource:
    """The ``events_all`` channel of Backend.AI's Redis (25.11+). A message published while
    this subscription is not established is lost: :meth:`messages` raises
    :class:`SourceLost` whenever the connection failed or was silently re-made, so the caller
    knows the span it did not follow."""

    def __init__(self, redis: aredis.Redis, *, ping_interval: float = 5.0) -> None:
        self._redis = redis
        self._ping_interval = ping_interval
        self._reset = False

    def _on_connect(self, connection: object) -> None:
        self._reset = True

    async def messages(self, poll: float = 0.25) -> AsyncIterator[bytes | None]:
        """Each message's data, and None at least every ``poll`` seconds (so the caller can
        keep time); subscribed before the first item is yielded."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(BROADCAST_CHANNEL)
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_connect)
            self._reset = False
            loop = asyncio.get_running_loop()
            next_ping = answered = loop.time()
            yield None
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
                if self._reset:
                    raise SourceLost("the subscription to events_all was re-made underneath")
                while message is not None:
                    kind = message.get("type")
                    if kind == "message":
                        data = message["data"]
                        yield data if isinstance(data, bytes) else str(data).encode()
                    elif kind == "pong":
                        answered = loop.time()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                now = loop.time()
                if self._ping_interval > 0:
                    # a connection that died silently shows here, not in get_message
                    if now - answered > 2.5 * self._ping_interval:
                        raise SourceLost(f"no answer to a ping for {now - answered:.1f}s")
                    if now >= next_ping:
                        await pubsub.ping()
                        next_ping = now + self._ping_interval
                yield None
        finally:
            await pubsub.aclose()
