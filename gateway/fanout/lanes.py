"""One partition's share of the hub (:class:`Lane`): its own watermark, for a deployment with
more than one partition (:mod:`publisher.partitions`).

Each partition is its own history with its own ids and epoch, so each has its own watermark
(``last_id``, ``first_id``) and its own subscriber, which treats its lane as it treats the
hub with one partition: every rule of ARCHITECTURE.md's "Watermark and epoch" applies per
lane. A lane's entries are dispatched by the one hub (:meth:`Hub.dispatch_in`), so a stream
that spans partitions gets every partition's events through one connection.

With one partition there are no lanes: the subscriber drives the hub itself, and the hot
path is what it always was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from publisher.partitions import Partitions, encode_vector
from publisher.schema import KernelEvent, SourceGap

from .frames import GapReason, StreamId, parse_stream_id
from .stats import DropKind, HubStats

__all__ = ["Lane", "vector_of"]


class Hub(Protocol):
    """What a lane needs of the hub (:class:`gateway.fanout.hub.Hub`)."""

    stats: HubStats
    max_payload: int
    partitions: Partitions | None
    wall_clock: Callable[[], float]

    def decode(self, raw_id: bytes, payload: bytes | None) -> KernelEvent | SourceGap | None: ...
    def drop(self, kind: DropKind, raw_id: bytes, exc: Exception | None = None) -> None: ...
    def notice_all(self, reason: GapReason) -> None: ...
    def notice_partition(self, lane: int, reason: GapReason) -> None: ...
    def source_gap(self, marker: SourceGap) -> None: ...
    def dispatch_in(
        self, lane: int, stream_id: StreamId, text_id: str, event: KernelEvent
    ) -> None: ...


class Lane:
    """The watermark of partition :attr:`index`, and what its subscriber asks of a hub."""

    __slots__ = (
        "first_id",
        "hub",
        "index",
        "last_id",
        "max_payload",
        "redis_clock_offset_ms",
        "wall_clock",
    )

    def __init__(self, hub: Hub, index: int) -> None:
        self.hub = hub
        self.index = index
        #: the id of the newest entry of this partition dispatched (None until located)
        self.last_id: StreamId | None = None
        #: the first id dispatched since the watermark was set or reset (epoch checks)
        self.first_id: StreamId | None = None
        self.max_payload = hub.max_payload
        self.wall_clock: Callable[[], float] = hub.wall_clock
        #: this partition's Redis clock minus ours, ms (its subscriber's TIME samples)
        self.redis_clock_offset_ms = 0.0

    def redis_now_ms(self) -> float:
        """Now on the clock of this partition's Redis (its own master on a cluster, whose
        clock may differ from another's: one offset per lane, set by its subscriber)."""
        return self.wall_clock() * 1000 + self.redis_clock_offset_ms

    def publish(self, raw_id: bytes, payload: bytes | None) -> None:
        """As :meth:`Hub.publish`, against this partition's watermark."""
        hub = self.hub
        try:
            stream_id = parse_stream_id(raw_id)
        except (ValueError, UnicodeDecodeError):
            hub.drop("bad_id", raw_id)
            return
        if self.last_id is not None and stream_id <= self.last_id:
            hub.stats.duplicates += 1
            return
        hub.stats.events_in += 1
        self.last_id = stream_id
        if self.first_id is None:
            self.first_id = stream_id
        event = hub.decode(raw_id, payload)
        if event is None:
            return
        if type(event) is SourceGap:
            hub.source_gap(event)
            return
        assert isinstance(event, KernelEvent)
        partitions = hub.partitions
        if partitions is not None and partitions.of(event.owner_user_id) != self.index:
            # Written by a publisher with another N (or a hostile one): its owner's stream
            # reads another partition, so a plain id from this one would point it elsewhere.
            hub.drop("wrong_partition", raw_id)
            return
        hub.dispatch_in(self.index, stream_id, raw_id.decode("ascii"), event)

    def notice_all(self, reason: GapReason) -> None:
        """A gap in this partition: told to the streams that can see its events only."""
        self.hub.notice_partition(self.index, reason)

    def decode(self, raw_id: bytes, payload: bytes | None) -> KernelEvent | SourceGap | None:
        return self.hub.decode(raw_id, payload)

    def drop(self, kind: DropKind, raw_id: bytes, exc: Exception | None = None) -> None:
        self.hub.drop(kind, raw_id, exc)


def vector_of(lanes: list[Lane]) -> str:
    """Where a stream that has every dispatched event stands: each lane's watermark, as a
    vector id (a lane not located yet stands at ``0-0``)."""
    return encode_vector([lane.last_id or (0, 0) for lane in lanes])
