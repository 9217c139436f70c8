"""A small TTL cache with negative entries, bounded in size (oldest evicted first)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import Generic, Literal, TypeVar

__all__ = ["MISS", "TTLCache"]

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Miss(Enum):
    MISS = 0


class TTLCache(Generic[_K, _V]):
    """Hits and misses (None) for ``ttl`` seconds; at most ``size`` entries, oldest out first."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[_K, tuple[float, _V | None]] = OrderedDict()

    def get(self, key: _K) -> _V | Literal[_Miss.MISS] | None:
        entry = self._entries.get(key)
        if entry is None:
            return _Miss.MISS
        if self._clock() >= entry[0]:
            del self._entries[key]
            return _Miss.MISS
        return entry[1]

    def put(self, key: _K, value: _V | None) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl, value)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def discard(self, key: _K) -> None:
        """Forget ``key`` (a hit or a miss), if cached."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


MISS: Literal[_Miss.MISS] = _Miss.MISS
