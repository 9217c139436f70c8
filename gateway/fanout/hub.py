"""The fan-out core: one decoded Redis message in, the same frame bytes to every matching client.

* :meth:`Hub.publish` takes one history entry (the subscriber reads history whenever the live
  channel rings), checks the stream id and decodes the payload once, builds the SSE frame
  once, then finds candidates
  through six dict lookups (one per index a client can sit in), so a publish costs
  O(matching clients), not O(all clients).
* :meth:`Connection.push` appends to the client's bounded buffer; it never awaits. A client
  over its byte cap is evicted on the spot (``slow_consumer``). Clients with a direct sink are
  marked dirty, and one flush per loop iteration (:meth:`Hub.flush`) writes each one's queue
  as a single chunk: everything dispatched from one Redis read is coalesced.
* One timer for the whole hub sends heartbeats and evicts clients whose write has been stuck
  past the write deadline (``write_timeout``), or whose TCP has left written bytes
  unacknowledged for over ``max_lag`` (``slow_reader``: it reads, but too slowly to keep up).

The watermark (:attr:`Hub.last_id`, the id of the newest event dispatched) tells the
subscriber where to read history from. Only history entries move it, and only once their
payload has validated: a live message is a doorbell, never an event, so a forged one moves
nothing (ARCHITECTURE.md, "Watermark and epoch", has the whole set of rules).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable
from time import perf_counter
from typing import Final

import msgspec

from gateway.settings import FanoutSettings
from publisher.partitions import Partitions, encode_vector
from publisher.schema import KernelEvent, SourceGap, decode_event, decode_gap

from .connection import Connection, write_out
from .filters import Filter, IndexKey, candidate_keys
from .frames import (
    PING,
    CloseReason,
    GapReason,
    StreamId,
    View,
    event_frame,
    format_stream_id,
    frame_for,
    notice_frame,
    parse_stream_id,
)
from .lanes import Lane, vector_of
from .progress import Mark, ReplayTrail
from .stats import DropKind, HubStats, ThrottledLog

__all__ = ["CATCH_UP_EVENTS", "Hub"]

#: the most live events kept for one spanning stream while its replay reads history (more:
#: it reads them from history instead, another round); kept in the hub (a reference each,
#: the events shared), sent paced by the stream's buffer, so they never count against it
CATCH_UP_EVENTS: Final = 1024

log = logging.getLogger(__name__)


class Hub:
    """Holds every open stream (:class:`Connection`) of this process; dispatches events."""

    def __init__(
        self,
        settings: FanoutSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        partitions: Partitions | None = None,
    ) -> None:
        """``settings``: the fan-out section (buffer cap, write deadline, pings, payload
        limit, flush interval, reconnect hints, lag bound, id skew); ``partitions``: the
        deployment's (more than one: a :class:`~.lanes.Lane` each, see :attr:`lanes`)."""
        self.settings = settings
        self.buffer_cap = settings.buffer_cap
        self.write_deadline = settings.write_deadline
        self.ping_interval = settings.ping_interval
        self.max_payload = settings.max_payload
        self.flush_interval = settings.flush_interval
        #: the reconnect hint (ms) in every ``server_close``
        self.retry_ms = settings.retry_ms
        #: 0..this many ms at random are added to each stream's hint (a drain spreads out)
        self.retry_jitter_ms = settings.retry_jitter_ms
        #: seconds a stream's oldest unacknowledged byte may wait before it is evicted
        #: (``slow_reader``; 0: never): :meth:`Connection.lag`
        self.max_lag = settings.max_lag
        self.clock = clock
        self.wall_clock = wall_clock
        #: how far (ms) a live id may be ahead of Redis' clock and still be trusted
        self.max_id_skew_ms = settings.max_id_skew_ms
        #: Redis' clock minus ours, ms (the subscriber measures it with TIME)
        self.redis_clock_offset_ms = 0.0
        self.stats = HubStats()
        #: the watermark: id of the newest event dispatched; live ids at or below it are
        #: copies of what gap-fill sent. None until the subscriber sets the baseline.
        self.last_id: StreamId | None = None
        #: the first id dispatched since the watermark was set or reset (epoch checks)
        self.first_id: StreamId | None = None
        self._index: dict[IndexKey, set[Connection]] = {}
        self._clients: set[Connection] = set()
        self._per_key: Counter[str] = Counter()
        self._drops = ThrottledLog()
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = 0.0
        #: one object per distinct filter of the open streams (every broadcast stream of a
        #: role has the same one), by its constraints: a filter per stream was ~100 bytes
        self._filters: weakref.WeakValueDictionary[tuple[tuple[str, object], ...], Filter] = (
            weakref.WeakValueDictionary()
        )
        #: bound once: every direct stream keeps it (a bound method per stream is 64 bytes)
        self.notify: Callable[[Connection], None] = self._mark_dirty
        self.partitions = partitions
        #: spanning streams replaying (more than one partition), each with what the hub
        #: matched for it meanwhile, in dispatch order: ``(partition, id, event)``; None once
        #: more than :data:`CATCH_UP_EVENTS` came (the replay reads them from history then)
        self._catching_up: dict[Connection, list[tuple[int, StreamId, KernelEvent]] | None] = {}
        #: streams replaying that a drain hands off (``Connection.handoff``): how far each
        #: replay has gone, byte by byte (gateway.fanout.progress); kept by
        #: gateway.fanout.resume, until a tick finds the stream all written after it
        self.replay_marks: dict[Connection, ReplayTrail] = {}
        #: live streams a drain hands off: where each stood at the last tick that found
        #: nothing of it unsent (what a drain records when it finds some)
        self._safe_marks: dict[Connection, str] = {}
        #: with more than one partition, each one's watermark (its subscriber drives it;
        #: :attr:`last_id` is then unused); empty with one
        self.lanes: list[Lane] = (
            [Lane(self, p) for p in range(partitions.n)]
            if partitions is not None and partitions.n > 1
            else []
        )

    def lane_of(self, filter: Filter) -> int | None:
        """The partition every event a stream with ``filter`` can match is in (one user's
        events: their owner's), or None when they may be in any (the stream spans them, and
        resumes with a vector id). 0 with one partition."""
        if not self.lanes:
            return 0
        if filter.owner_user_id:
            assert self.partitions is not None
            return self.partitions.of(filter.owner_user_id)
        return None

    def position(self, filter: Filter) -> str | None:
        """Where a live stream with ``filter`` stands, as the id it would resume with: the
        watermark (its partition's), or for a stream spanning partitions the vector of every
        lane's. None before the first subscription located the history."""
        lane = self.lane_of(filter)
        if not self.lanes:
            return None if self.last_id is None else format_stream_id(self.last_id)
        if lane is None:
            return vector_of(self.lanes)
        last = self.lanes[lane].last_id
        return None if last is None else format_stream_id(last)

    def handoff_position(self, connection: Connection) -> str | None:
        """Where a stream a drain hands off stands, as the id its reconnect resumes from:
        every event up to it has left this process (handed to the kernel), so none is lost
        and, when nothing is left unsent, none is sent twice. While it replays: how far the
        replay went, less what is unsent (:class:`~.progress.ReplayTrail`); live with nothing
        unsent: :meth:`position`; live with some: where it stood at the last tick that found
        nothing unsent. None when none of these is known (the caller falls back to where the
        stream began)."""
        unsent = connection.unsent()
        trail = self.replay_marks.get(connection)
        if not connection.replaying and not unsent:
            return self.position(connection.filter)
        if trail is not None:  # live frames queued after the replay's only make it earlier
            mark = trail.delivered(unsent)
            return None if mark is None else _format_mark(mark)
        if connection.replaying:
            return None
        return self._safe_marks.get(connection)

    def __len__(self) -> int:
        return len(self._clients)

    def buffered_bytes(self) -> int:
        return sum(c.buffered for c in self._clients)

    def new_connection(self, filter: Filter, access_key: str, view: View = "v4") -> Connection:
        """A connection with this hub's buffer cap, clock and reconnect hint (not yet
        registered). Its filter and access key are the objects other open streams with equal
        ones hold, so that each stream holds no copy of its own."""
        return Connection(
            self._filters.setdefault(filter.constraints, filter),
            sys.intern(access_key),
            self.buffer_cap,
            clock=self.clock,
            retry_ms=self.retry_ms,
            retry_jitter_ms=self.retry_jitter_ms,
            stats=self.stats,
            view=view,
        )

    def streams_of(self, access_key: str) -> int:
        return self._per_key[access_key]

    def connections(self) -> list[Connection]:
        """Every open stream not already closing."""
        return [c for c in self._clients if not c.closed]

    def access_keys(self) -> list[str]:
        """The access keys with at least one open stream."""
        return list(self._per_key)

    def close_key(self, access_key: str, reason: CloseReason) -> int:
        """Close every stream of ``access_key`` (rare: a revoked key); returns how many."""
        closing = [c for c in self._clients if c.access_key == access_key and not c.closed]
        for client in closing:
            client.close(reason)
        return len(closing)

    def register(self, client: Connection) -> None:
        if client in self._clients:
            return
        self._clients.add(client)
        self._per_key[client.access_key] += 1
        self._index.setdefault(client.filter.index_key(), set()).add(client)
        self.stats.connections_total += 1

    def unregister(self, client: Connection) -> None:
        if client not in self._clients:
            return
        self._clients.remove(client)
        self._per_key[client.access_key] -= 1
        if not self._per_key[client.access_key]:
            del self._per_key[client.access_key]
        self._safe_marks.pop(client, None)
        self.replay_marks.pop(client, None)
        key = client.filter.index_key()
        members = self._index.get(key)
        if members is not None:
            members.discard(client)
            if not members:
                del self._index[key]

    def publish(self, raw_id: bytes, payload: bytes | None) -> None:
        """Dispatch one history entry (read by the subscriber): the id is history's own, so
        only the payload is checked. Ids at or below the watermark were dispatched already.
        Never awaits, never raises on bad input (dropped, counted, logged throttled)."""
        stream_id = self._new_id(raw_id)
        if stream_id is not None:
            self._dispatch_checked(stream_id, raw_id, payload)

    def redis_now_ms(self) -> float:
        return self.wall_clock() * 1000 + self.redis_clock_offset_ms

    def decode(self, raw_id: bytes, payload: bytes | None) -> KernelEvent | SourceGap | None:
        """The event in ``payload`` (or the source-gap marker), or None when it is over
        ``max_payload`` (None: a history read held it back as such) or does not decode or
        validate (dropped and counted). Live messages, gap-fill and replay all check here,
        with the same limit and the same counters."""
        if payload is None or len(payload) > self.max_payload:
            self.drop("oversized", raw_id)
            return None
        try:
            return decode_event(payload)
        except msgspec.ValidationError as exc:
            marker = decode_gap(payload)  # off the hot path: only what is not an event
            if marker is not None:
                return marker
            self.drop("schema", raw_id, exc)
        except msgspec.DecodeError as exc:
            self.drop("decode", raw_id, exc)
        return None

    def _new_id(self, raw_id: bytes) -> StreamId | None:
        """``raw_id`` parsed, or None when it is malformed (dropped) or at or below the
        watermark (a copy of what was dispatched: counted as a duplicate)."""
        try:
            stream_id = parse_stream_id(raw_id)
        except (ValueError, UnicodeDecodeError):
            self.drop("bad_id", raw_id)
            return None
        if self.last_id is not None and stream_id <= self.last_id:
            self.stats.duplicates += 1
            return None
        return stream_id

    def _dispatch_checked(self, stream_id: StreamId, raw_id: bytes, payload: bytes | None) -> None:
        self.stats.events_in += 1
        # History's own id: read once, whatever its payload (a bad one is dropped, counted,
        # and not read again)
        self.last_id = stream_id
        if self.first_id is None:
            self.first_id = stream_id
        event = self.decode(raw_id, payload)
        if event is None:
            return
        if type(event) is SourceGap:
            self.source_gap(event)
            return
        self.dispatch(stream_id, raw_id.decode("ascii"), event)  # type: ignore[arg-type]

    def source_gap(self, marker: SourceGap) -> None:
        """A bridge's marker: its source lost events; every open stream is told."""
        self.stats.source_gaps += 1
        log.warning("the event source lost events (%s): every open stream is told", marker)
        self.notice_all("source")

    def notice_all(self, reason: GapReason) -> None:
        """Tell every open stream ``history_truncated`` (``lastEventId`` null): what comes
        next may not follow on from what it had."""
        frame = notice_frame(None, None, reason)
        for client in list(self._clients):
            client.push(frame)

    def notice_partition(self, lane: int, reason: GapReason) -> None:
        """:meth:`notice_all` for a gap in partition ``lane`` only: the streams that span
        partitions, and those of the users whose events it holds; a user of another
        partition lost nothing and is told nothing."""
        frame = notice_frame(None, None, reason)
        for client in list(self._clients):
            if self.lane_of(client.filter) in (None, lane):
                client.push(frame)

    def dispatch(self, stream_id: StreamId, text_id: str, event: KernelEvent) -> None:
        """Hand ``event`` to every matching connection: each view's frame is built once, on
        its first match (the v4 one inline: it is most streams'), and shared."""
        started = perf_counter()
        frame: bytes | None = None  # the v4 frame
        v4_built = False
        others: dict[View, bytes | None] = {}
        delivered = 0
        index = self._index
        for key in candidate_keys(event):
            members = index.get(key)
            if not members:
                continue
            for client in members:
                filter = client.filter
                if not client.closed and (filter.exact or filter.matches(event)):
                    view = client.view
                    if view == "v4":
                        if not v4_built:
                            frame, v4_built = event_frame(text_id, event), True
                        shown = frame
                    else:
                        if view not in others:
                            others[view] = frame_for(view, text_id, event)
                        shown = others[view]
                    if shown is not None:
                        delivered += 1
                        client.push(shown, stream_id)
        if delivered:
            self.stats.events_matched += 1
        self.stats.deliveries += delivered
        self.stats.dispatch.observe(perf_counter() - started)

    def dispatch_in(self, lane: int, stream_id: StreamId, text_id: str, event: KernelEvent) -> None:
        """:meth:`dispatch` for an entry of partition ``lane`` (more than one partition): a
        stream of one user gets it with its plain id (its partition's), a stream spanning
        partitions with the vector of every lane's watermark (built once per view); one
        that replays gets nothing, and the hub keeps the event for its replay to send
        (:meth:`begin_catch_up`, :func:`~.resume.replay_vector`)."""
        started = perf_counter()
        plain: dict[View, bytes | None] = {}
        spanning: dict[View, bytes | None] = {}
        vector: str | None = None
        delivered = 0
        index = self._index
        for key in candidate_keys(event):
            members = index.get(key)
            if not members:
                continue
            for client in members:
                filter = client.filter
                if client.closed or not (filter.exact or filter.matches(event)):
                    continue
                view = client.view
                if filter.owner_user_id:
                    if view not in plain:
                        plain[view] = frame_for(view, text_id, event)
                    shown, shown_id = plain[view], stream_id
                else:
                    if client.replaying:
                        held = self._catching_up.get(client)
                        if held is not None:
                            if len(held) < CATCH_UP_EVENTS:
                                held.append((lane, stream_id, event))
                            else:
                                self._catching_up[client] = None
                        continue
                    if view not in spanning:
                        vector = vector or vector_of(self.lanes)
                        spanning[view] = frame_for(view, vector, event)
                    shown, shown_id = spanning[view], None
                if shown is not None:
                    delivered += 1
                    client.push(shown, shown_id)
        if delivered:
            self.stats.events_matched += 1
        self.stats.deliveries += delivered
        self.stats.dispatch.observe(perf_counter() - started)

    def begin_catch_up(self, client: Connection) -> None:
        """From now on, keep what :meth:`dispatch_in` matches for ``client`` (a spanning
        stream that replays) until :meth:`end_catch_up`."""
        self._catching_up[client] = []

    def end_catch_up(self, client: Connection) -> list[tuple[int, StreamId, KernelEvent]] | None:
        """What was kept for ``client`` since :meth:`begin_catch_up`, in dispatch order, or
        None when more than :data:`CATCH_UP_EVENTS` came (or it was not catching up)."""
        return self._catching_up.pop(client, None)

    def _mark_dirty(self, client: Connection) -> None:
        """:attr:`notify`: a direct client has data: write it in the next flush. That is this loop
        iteration's, or, within ``flush_interval`` of the end of the previous flush, the one
        due then: an idle hub answers at once, a busy one batches events into each write."""
        self._dirty.append(client)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = self._last_flush + self.flush_interval - loop.time()
            if delay > 0:
                self._flush_handle = loop.call_later(delay, self.flush)
            else:
                self._flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Each dirty client writes its queue as one chunk (:func:`~.connection.write_out`);
        in a broadcast most queue the very same frame object, framed once for all."""
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        write_out(dirty)
        if self.flush_interval:
            # From the end: a flush that took long is followed by a full interval of
            # gathering, so a saturated hub settles on a few events per write.
            self._last_flush = asyncio.get_running_loop().time()

    def drop(self, kind: DropKind, raw_id: bytes, exc: Exception | None = None) -> None:
        """Count and log (throttled) a Redis message that delivers nothing."""
        self.stats.dropped[kind] += 1
        self._drops.warn(
            kind, "dropped a Redis message (%s) id=%r: %s", kind, raw_id[:40], exc or "-"
        )

    def tick(self, *, ping: bool) -> None:
        """The hub's one timer: heartbeats when due, eviction of stuck writers, and the end
        of streams past their lifetime (:attr:`Connection.expires_at`)."""
        now = self.clock()
        deadline = self.write_deadline
        max_lag = self.max_lag
        failed = 0
        for client in list(self._clients):
            try:
                since = client.writing_since
                # a stream a drain hands off, written to since the last tick: its safe
                # position may move (an idle one's stays where it was: nothing new reached it)
                fresh = client.handoff is not None and client.wrote_since_probe()
                if since and now - since > deadline:
                    client.writing_since = 0.0
                    client.close("write_timeout")  # counted and logged by the connection
                    client.abort_write()
                elif max_lag and client.lag(now) > max_lag:
                    # Its backlog waits in our send queue behind a shut receive window: a
                    # goodbye would wait there too. Counted and logged by the connection.
                    client.close("slow_reader")
                    client.abort_write()
                elif client.expires_at and now >= client.expires_at:
                    client.expires_at = 0.0
                    client.close("rebalance")  # server_close + retry hint, then it resumes
                elif ping:
                    client.push(PING)
                if fresh and not client.replaying and client.settled():
                    at = self.position(client.filter)
                    if at is not None:
                        self._safe_marks[client] = at
                        self.replay_marks.pop(client, None)
            except Exception:  # one stream's failure never skips the others' round
                if not failed:
                    log.exception("the timer's round for key=%s failed", client.access_key)
                failed += 1
                client.close("write_error")
        if failed > 1:
            log.error(
                "the timer's round failed for %d streams (the first's traceback above)", failed
            )

    async def run_timer(self) -> None:
        """Ticks often enough to hold the write deadline; pings every ``ping_interval``."""
        period = max(0.05, min(self.write_deadline / 4, 1.0))
        next_ping = self.clock() + self.ping_interval
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            ping = self.ping_interval > 0 and now >= next_ping
            if ping:
                next_ping = now + self.ping_interval
            self.tick(ping=ping)

    def close_all(self, reason: CloseReason) -> None:
        for client in list(self._clients):
            client.close(reason)

    async def drained(self, timeout: float, *, poll: float = 0.02) -> bool:
        """Wait until every stream has gone (each ends itself after ``close_all``), at most
        ``timeout`` seconds; True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._clients and loop.time() < deadline:
            await asyncio.sleep(poll)
        return not self._clients


def _format_mark(mark: Mark) -> str:
    """A plain position as a stream id, one per partition as a vector id."""
    if isinstance(mark[0], int):
        return format_stream_id(mark)
    return encode_vector(mark)
