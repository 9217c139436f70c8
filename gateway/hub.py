"""The fan-out core: one decoded Redis message in, the same frame bytes to every matching client.

* :meth:`Hub.publish` parses the stream id and decodes the payload once, builds the SSE frame
  once, then finds candidates through six dict lookups (one per index a client can sit in), so
  a publish costs O(matching clients), not O(all clients).
* :meth:`Client.push` appends to the client's bounded buffer and wakes its writer; it never
  awaits. A client over its byte cap is evicted on the spot (``slow_consumer``).
* One timer for the whole hub sends heartbeats and evicts clients whose write has been stuck
  past the write deadline (``write_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Final, Literal, Protocol

import msgspec

from publisher.schema import KernelEvent, decode_event

from .frames import PING, CloseReason, event_frame, parse_stream_id

__all__ = ["Client", "Filter", "Hub", "HubStats", "StreamId"]

log = logging.getLogger(__name__)

StreamId = tuple[int, int]
DropKind = Literal["bad_id", "decode", "schema", "oversized"]
EvictReason = Literal["slow_consumer", "write_timeout"]
IndexKey = tuple[str, ...]
_ALL: Final[IndexKey] = ("*",)


@dataclass(frozen=True, slots=True)
class Filter:
    """What one stream may and wants to see; ``None`` means "no constraint".

    ``owner_user_id`` and ``domain`` come from the caller's role (who may see what); the rest
    from the query (what the caller asked for). Built by :mod:`gateway.visibility`.
    """

    owner_user_id: str | None = None
    domain: str | None = None
    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        assert self.session_id is None or self.owner_access_key is not None, (
            "a session filter always names its owner key"
        )

    def index_key(self) -> IndexKey:
        """The one index this filter is filed under: its most selective constraint."""
        if self.session_id is not None:
            assert self.owner_access_key is not None
            return ("s", self.session_id, self.owner_access_key)
        if self.owner_access_key is not None:
            return ("k", self.owner_access_key)
        if self.owner_user_id is not None:
            return ("u", self.owner_user_id)
        if self.group is not None:
            return ("g", self.group)
        if self.domain is not None:
            return ("d", self.domain)
        return _ALL

    def matches(self, event: KernelEvent) -> bool:
        return (
            (self.owner_user_id is None or event.owner_user_id == self.owner_user_id)
            and (self.domain is None or event.domain == self.domain)
            and (self.session_id is None or event.session_id == self.session_id)
            and (self.owner_access_key is None or event.owner_access_key == self.owner_access_key)
            and (self.group is None or event.group == self.group)
        )


def _candidate_keys(event: KernelEvent) -> tuple[IndexKey, ...]:
    return (
        ("s", event.session_id, event.owner_access_key),
        ("k", event.owner_access_key),
        ("u", event.owner_user_id),
        ("g", event.group),
        ("d", event.domain),
        _ALL,
    )


class Aborter(Protocol):
    def __call__(self) -> None: ...


class Client:
    """One SSE stream's state in the hub: its filter and its bounded outgoing buffer.

    During a resume the client is registered before history is read; live frames that arrive
    meanwhile wait in ``_held`` with their ids and are released by :meth:`end_replay`, minus
    those replay already sent. History can also be ahead of the live channel (an event is in
    the stream before its PUBLISH reaches this process), so after replay ``_floor`` drops
    live frames up to the last replayed id until a newer one passes. No gap, no duplicate.
    """

    __slots__ = (
        "_chunks",
        "_floor",
        "_held",
        "_waiter",
        "abort",
        "access_key",
        "buffered",
        "cap",
        "close_reason",
        "closed",
        "filter",
        "writing_since",
    )

    def __init__(self, filter: Filter, access_key: str, cap: int) -> None:
        self.filter = filter
        self.access_key = access_key
        self.cap = cap
        self.buffered = 0
        self.closed = False
        self.close_reason: CloseReason | Literal["disconnect"] | None = None
        #: monotonic time the current write started, or 0.0 when no write is in flight
        self.writing_since = 0.0
        #: how the hub stops a write that is stuck past the deadline (set by the stream)
        self.abort: Aborter | None = None
        self._chunks: list[bytes] = []
        self._held: list[tuple[StreamId, bytes]] | None = None
        self._floor: StreamId | None = None
        self._waiter: asyncio.Future[None] | None = None

    def push(self, frame: bytes, stream_id: StreamId | None = None) -> bool:
        """Queue ``frame``; returns True when this push evicted the client (over its cap)."""
        if self.closed:
            return False
        if stream_id is not None and self._floor is not None:
            if stream_id <= self._floor:
                return False  # replay already sent it
            self._floor = None  # ids only grow from here
        if self._held is not None and stream_id is not None:
            self._held.append((stream_id, frame))
        else:
            self._chunks.append(frame)
        self.buffered += len(frame)
        if self.buffered > self.cap:
            self.close("slow_consumer")
            return True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return False

    def take(self) -> bytes:
        """Everything queued, as one write (coalescing), or b"" when nothing is."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self.buffered -= len(data)
        return data

    async def wait(self) -> None:
        """Return once something is queued or the client is closed."""
        if self._chunks or self.closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        await waiter

    def begin_replay(self) -> None:
        self._held = []

    def end_replay(self, last_sent: StreamId) -> None:
        """Release the live frames held during replay, skipping ids replay already sent, and
        keep skipping them if they are still on their way."""
        held, self._held = self._held or [], None
        for stream_id, frame in held:
            self.buffered -= len(frame)
            if stream_id > last_sent:
                self.push(frame)
        if not held or held[-1][0] <= last_sent:
            self._floor = last_sent

    def close(self, reason: CloseReason | Literal["disconnect"]) -> None:
        """Mark the stream for closing and wake its writer. What is queued is still written
        on a deliberate close (shutdown, revoked); it is dropped for an evicted or gone
        client."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._held = None
        if reason in ("slow_consumer", "write_timeout", "disconnect"):
            self._chunks = []
            self.buffered = 0
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


#: upper bounds (seconds) of the dispatch-time histogram: 10 µs .. 100 ms
DISPATCH_BUCKETS: Final = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1)


@dataclass(slots=True)
class Histogram:
    """Fixed buckets, filled with one bisect and two adds; read at scrape time."""

    bounds: tuple[float, ...] = DISPATCH_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DISPATCH_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass(slots=True)
class HubStats:
    """Plain counters, read by /metrics at scrape time (nothing per delivery but an add)."""

    events_in: int = 0
    events_matched: int = 0
    deliveries: int = 0
    duplicates: int = 0
    connections_total: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)
    #: seconds from a message's arrival to the last matching client's buffer
    dispatch: Histogram = field(default_factory=Histogram)


class _ThrottledLog:
    """Logs the first drop of each kind at once, then at most one summary line a minute."""

    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._period:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        log.warning(message + " (%d similar suppressed)", *args, suppressed)


class Hub:
    """Holds every connected client of this process and dispatches events to them."""

    def __init__(
        self,
        *,
        buffer_cap: int,
        write_deadline: float,
        ping_interval: float,
        max_payload: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer_cap = buffer_cap
        self.write_deadline = write_deadline
        self.ping_interval = ping_interval
        self.max_payload = max_payload
        self.clock = clock
        self.stats = HubStats()
        #: id of the newest event dispatched; older or equal ids are duplicates (gap-fill)
        self.last_id: StreamId = (0, 0)
        self._index: dict[IndexKey, set[Client]] = {}
        self._clients: set[Client] = set()
        self._per_key: Counter[str] = Counter()
        self._drops = _ThrottledLog()

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def clients(self) -> frozenset[Client]:
        return frozenset(self._clients)

    def buffered_bytes(self) -> int:
        return sum(c.buffered for c in self._clients)

    def new_client(self, filter: Filter, access_key: str) -> Client:
        return Client(filter, access_key, self.buffer_cap)

    def streams_of(self, access_key: str) -> int:
        return self._per_key[access_key]

    def register(self, client: Client) -> None:
        if client in self._clients:
            return
        self._clients.add(client)
        self._per_key[client.access_key] += 1
        self._index.setdefault(client.filter.index_key(), set()).add(client)
        self.stats.connections_total += 1

    def unregister(self, client: Client) -> None:
        if client not in self._clients:
            return
        self._clients.remove(client)
        self._per_key[client.access_key] -= 1
        if not self._per_key[client.access_key]:
            del self._per_key[client.access_key]
        key = client.filter.index_key()
        members = self._index.get(key)
        if members is not None:
            members.discard(client)
            if not members:
                del self._index[key]

    def publish_message(self, data: bytes) -> None:
        """One live message from the channel: ``<stream id> <msgpack payload>``."""
        stream_id, sep, payload = data.partition(b" ")
        if not sep:
            self._drop("bad_id", data)
            return
        self.publish(stream_id, payload)

    def publish(self, raw_id: bytes, payload: bytes) -> None:
        """Dispatch one event to every matching client; never awaits, never raises on bad
        input (it is dropped, counted and logged, throttled)."""
        try:
            stream_id = parse_stream_id(raw_id)
        except (ValueError, UnicodeDecodeError):
            self._drop("bad_id", raw_id)
            return
        if stream_id <= self.last_id:
            self.stats.duplicates += 1
            return
        self.last_id = stream_id
        self.stats.events_in += 1
        if len(payload) > self.max_payload:
            self._drop("oversized", raw_id)
            return
        try:
            event = decode_event(payload)
        except msgspec.ValidationError as exc:
            self._drop("schema", raw_id, exc)
            return
        except msgspec.DecodeError as exc:
            self._drop("decode", raw_id, exc)
            return
        self.dispatch(stream_id, raw_id.decode("ascii"), event)

    def dispatch(self, stream_id: StreamId, text_id: str, event: KernelEvent) -> None:
        started = perf_counter()
        frame: bytes | None = None
        delivered = 0
        index = self._index
        for key in _candidate_keys(event):
            members = index.get(key)
            if not members:
                continue
            for client in members:
                if not client.closed and client.filter.matches(event):
                    if frame is None:
                        frame = event_frame(text_id, event)
                    delivered += 1
                    if client.push(frame, stream_id):
                        self._evicted(client)
        if frame is not None:
            self.stats.events_matched += 1
        self.stats.deliveries += delivered
        self.stats.dispatch.observe(perf_counter() - started)

    def _evicted(self, client: Client) -> None:
        if client.close_reason == "slow_consumer":
            self.stats.evictions["slow_consumer"] += 1
            log.info(
                "evicted slow consumer key=%s over its %d byte buffer",
                client.access_key,
                self.buffer_cap,
            )

    def _drop(self, kind: DropKind, raw_id: bytes, exc: Exception | None = None) -> None:
        self.stats.dropped[kind] += 1
        self._drops.warn(
            kind, "dropped a Redis message (%s) id=%r: %s", kind, raw_id[:40], exc or "-"
        )

    def tick(self, *, ping: bool) -> None:
        """The hub's one timer: heartbeats when due, and eviction of stuck writers."""
        now = self.clock()
        deadline = self.write_deadline
        for client in list(self._clients):
            since = client.writing_since
            if since and now - since > deadline:
                client.writing_since = 0.0
                if not client.closed:
                    client.close("write_timeout")
                    self.stats.evictions["write_timeout"] += 1
                    log.info(
                        "evicted key=%s: a write was stuck for over %.1fs",
                        client.access_key,
                        deadline,
                    )
                if client.abort is not None:
                    client.abort()
            elif ping and client.push(PING):
                self._evicted(client)

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
