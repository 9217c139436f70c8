"""The publisher's queue: every event handed to a publisher and not yet confirmed in Redis,
in sequence-number order, bounded, with an explicit overflow policy.

Events wait here while their write is in flight (their caller waits, up to the publisher's
``timeout``) and while Redis is unreachable or refusing writes (the caller got ``None``).
The head of the queue may be *in flight*: taken by the writer for the current attempt, or
carried by an earlier attempt whose outcome is unknown (the connection failed or timed out
after the request may have been sent: a frozen Redis runs it when it resumes). Such an event
may be in Redis; overflow never drops one, so a dropped event is never in Redis, and a close
reports them apart (*in doubt*) from the events certainly not written.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["BufferFull", "Call", "OutageBuffer", "OverflowPolicy", "Pending"]

log = logging.getLogger(__name__)

OverflowPolicy = Literal["drop_oldest", "drop_newest", "raise"]
POLICIES: Final = frozenset(get_args(OverflowPolicy))
_LOG_EVERY: Final = 30.0  # seconds between two warnings about drops


class BufferFull(RuntimeError):
    """The publisher's queue is full (policy ``raise``): nothing of the call was queued or
    written."""


class Call:
    """One publish call: the stream ids of its events as they are confirmed, the error that
    ended it, and how to wake the caller waiting for it."""

    __slots__ = ("error", "first", "ids", "unsettled", "wake")

    def __init__(self, first: int, n: int) -> None:
        self.first = first
        #: per event: its stream id; ``""`` written by an earlier, unconfirmed attempt (id
        #: unknown); ``None`` not written (yet), or dropped
        self.ids: list[str | None] = [None] * n
        self.unsettled = n
        self.error: BaseException | None = None
        self.wake: Callable[[], None] | None = None

    def settle(self, seq: int, stream_id: str | None) -> None:
        self.ids[seq - self.first] = stream_id
        self.unsettled -= 1
        if self.unsettled == 0 and self.wake is not None:
            self.wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        if self.wake is not None:
            self.wake()

    @property
    def written(self) -> list[str]:
        """Every id when every event is confirmed with its id, else ``[]``."""
        if self.unsettled or not all(self.ids):
            return []
        return [i for i in self.ids if i]


@dataclass(frozen=True, slots=True)
class Pending:
    #: the queue's order: numbered across the publisher's partitions
    seq: int
    payload: bytes
    call: Call | None = None
    #: the event's partition (:mod:`publisher.partitions`), and its number there (what the
    #: publish script checks; -1: ``seq``, the publisher has one partition)
    part: int = 0
    number: int = -1


class OutageBuffer:
    """FIFO of events not yet confirmed in Redis. ``drop_oldest`` keeps the newest
    ``capacity`` events (a live view wants the latest state), ``drop_newest`` refuses new
    ones, ``raise`` makes the publisher raise :class:`BufferFull`. Every dropped event is
    counted, and settled as not written on its call."""

    def __init__(self, capacity: int, policy: OverflowPolicy) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"overflow policy must be one of {sorted(POLICIES)}, got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.dropped = 0
        #: how many events at the head may be in Redis: the writer's current attempt, or the
        #: leading events numbered up to :attr:`doubt_through`
        self.in_flight = 0
        #: the last sequence number an attempt with an unknown outcome carried (-1: none)
        self.doubt_through = -1
        self._items: deque[Pending] = deque()
        self._last_log = -_LOG_EVERY

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, items: list[Pending]) -> None:
        """Queue ``items`` (in order, after everything queued) under the overflow policy;
        the queue may exceed ``capacity`` by at most the events in flight."""
        room = self.capacity - len(self._items)
        if len(items) > room:
            if self.policy == "raise":
                raise BufferFull(
                    f"{len(self._items)} events already wait for Redis "
                    f"(capacity {self.capacity}); {len(items)} more refused"
                )
            if self.policy == "drop_newest":
                keep = max(room, 0)
                self._drop(items[keep:])
                items = items[:keep]
            else:
                overflow = len(self._items) + len(items) - self.capacity
                droppable = len(self._items) - self.in_flight
                old = min(overflow, droppable)
                head = [self._items.popleft() for _ in range(self.in_flight)]
                self._drop([self._items.popleft() for _ in range(old)])
                self._items.extendleft(reversed(head))
                if overflow > old:  # everything queued is in flight: drop the oldest new ones
                    self._drop(items[: overflow - old])
                    items = items[overflow - old :]
        self._items.extend(items)

    def extend(self, items: list[Pending]) -> None:
        """Queue ``items`` whatever the capacity: a call that waits for them (Redis takes
        writes) holds them anyway; :meth:`trim` applies the policy once it gives up."""
        self._items.extend(items)

    def trim(self) -> None:
        """Back to ``capacity`` under a drop policy (``raise`` refuses new calls instead):
        ``drop_oldest`` the oldest not in flight, ``drop_newest`` the newest."""
        over = len(self._items) - self.capacity
        if over <= 0 or self.policy == "raise":
            return
        if self.policy == "drop_newest":
            over = min(over, len(self._items) - self.in_flight)
            self._drop([self._items.pop() for _ in range(over)][::-1])
            return
        over = min(over, len(self._items) - self.in_flight)
        head = [self._items.popleft() for _ in range(self.in_flight)]
        self._drop([self._items.popleft() for _ in range(over)])
        self._items.extendleft(reversed(head))

    def take(self, n: int) -> list[Pending]:
        """The first ``n`` events, marked in flight until :meth:`pop_through` or
        :meth:`release`."""
        items = self.peek(n)
        self.in_flight = len(items)
        return items

    def peek(self, n: int) -> list[Pending]:
        return [self._items[i] for i in range(min(n, len(self._items)))]

    def pop(self, n: int) -> None:
        for _ in range(min(n, len(self._items))):
            self._items.popleft()
        self.in_flight = max(0, self.in_flight - n)

    def pop_through(self, seq: int) -> list[Pending]:
        """Remove (and return) the leading events numbered ``seq`` or less."""
        gone: list[Pending] = []
        while self._items and self._items[0].seq <= seq:
            gone.append(self._items.popleft())
        self.in_flight = max(0, self.in_flight - len(gone))
        return gone

    def doubt(self, seq: int) -> None:
        """An attempt carrying the events up to ``seq`` ended without an answer: they may
        be in Redis (until a later attempt confirms them)."""
        self.doubt_through = max(self.doubt_through, seq)

    def release(self) -> None:
        """The current attempt is over; what stays in flight is the leading events an
        attempt with an unknown outcome carried (at most one attempt's worth: every attempt
        starts at the head)."""
        n = 0
        for item in self._items:
            if item.seq > self.doubt_through:
                break
            n += 1
        self.in_flight = n

    def drain(self) -> tuple[list[Pending], list[Pending]]:
        """Remove everything (at close): the events that may be in Redis (in flight, see
        :attr:`in_flight`), and the rest, certainly not written."""
        items = list(self._items)
        self._items.clear()
        n, self.in_flight = self.in_flight, 0
        return items[:n], items[n:]

    def _drop(self, items: list[Pending]) -> None:
        if not items:
            return
        self.dropped += len(items)
        for item in items:
            if item.call is not None:
                item.call.settle(item.seq, None)
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:  # once per burst, not once per event
            self._last_log = now
            log.warning(
                "publisher queue full (%s, capacity %d): %d events dropped so far",
                self.policy,
                self.capacity,
                self.dropped,
            )
