"""What a publisher holds while Redis is unreachable: a bounded, ordered queue of encoded
events, each with its sequence number, and an explicit overflow policy."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, get_args

__all__ = ["BufferFull", "OutageBuffer", "OverflowPolicy", "Pending"]

log = logging.getLogger(__name__)

OverflowPolicy = Literal["drop_oldest", "drop_newest", "raise"]
POLICIES: Final = frozenset(get_args(OverflowPolicy))


class BufferFull(RuntimeError):
    """Redis is unreachable and the outage buffer is full (policy ``raise``)."""


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    payload: bytes


class OutageBuffer:
    """FIFO of events not yet in Redis. ``drop_oldest`` keeps the newest ``capacity`` events
    (a live view wants the latest state), ``drop_newest`` refuses new ones, ``raise`` makes
    the publisher raise :class:`BufferFull`. Every dropped event is counted."""

    def __init__(self, capacity: int, policy: OverflowPolicy) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"overflow policy must be one of {sorted(POLICIES)}, got {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.dropped = 0
        self._items: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, items: list[Pending]) -> None:
        room = self.capacity - len(self._items)
        if len(items) > room:
            if self.policy == "raise":
                raise BufferFull(
                    f"Redis is unreachable and {len(self._items)} events already wait "
                    f"(capacity {self.capacity})"
                )
            if self.policy == "drop_newest":
                self._count_drops(len(items) - max(room, 0))
                items = items[: max(room, 0)]
            else:
                overflow = len(self._items) + len(items) - self.capacity
                for _ in range(min(overflow, len(self._items))):
                    self._items.popleft()
                if len(items) > self.capacity:
                    items = items[-self.capacity :]
                self._count_drops(overflow)
        self._items.extend(items)

    def peek(self, n: int) -> list[Pending]:
        return [self._items[i] for i in range(min(n, len(self._items)))]

    def pop(self, n: int) -> None:
        for _ in range(min(n, len(self._items))):
            self._items.popleft()

    def _count_drops(self, n: int) -> None:
        if n > 0:
            self.dropped += n
            log.warning("publisher outage buffer full: dropped %d events (%s)", n, self.policy)
