"""The hub's counters and its throttled drop log: plain attributes, read by ``/metrics`` at
scrape time, so nothing per delivery costs more than an add."""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

__all__ = ["DISPATCH_BUCKETS", "DROP_KINDS", "DropKind", "Histogram", "HubStats", "ThrottledLog"]

log = logging.getLogger("gateway.fanout.hub")

#: why a Redis message was not dispatched: ``bad_id`` malformed or out of 64-bit range,
#: ``unproven`` a live message whose id history does not hold (forged: it delivers nothing),
#: ``decode``/``schema`` the payload, ``oversized`` over ``max_payload``, ``wrong_partition``
#: an event in a partition its owner's events are not in (a publisher with another N)
DropKind = Literal["bad_id", "unproven", "decode", "schema", "oversized", "wrong_partition"]
DROP_KINDS: Final[tuple[DropKind, ...]] = get_args(DropKind)


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
    #: source-gap markers seen (gateway.bridge: events lost before they reached history)
    source_gaps: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)
    #: seconds from a message's arrival to the last matching client's buffer
    dispatch: Histogram = field(default_factory=Histogram)


class ThrottledLog:
    """Logs the first drop of each kind at once, then at most one summary line a minute."""

    def __init__(
        self,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        logger: logging.Logger = log,
    ) -> None:
        self._period = period
        self._clock = clock
        self._log = logger
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
        self._log.warning(message + " (%d similar suppressed)", *args, suppressed)
