"""The fan-out core: one Redis subscription in, the same frame bytes out to every matching
stream, each through its own bounded write machine.

No HTTP framework here (ASGI ``send``/``receive`` are plain callables), no identity: this is
the bottom layer, imported by :mod:`gateway.identity` (filters) and :mod:`gateway.http`.

* :mod:`.hub` dispatch, indexes, the one flush per loop iteration, the one timer
* :mod:`.connection` one stream's buffer, sink, writer task, pacing and eviction
* :mod:`.resume` replay after ``Last-Event-ID``; :mod:`.history` reads the history stream
* :mod:`.subscriber` the process's pub/sub connection (one per partition subscribed to),
  probed, gap-filled on reconnect; :mod:`.lanes` a partition's watermark
* :mod:`.filters`, :mod:`.frames`, :mod:`.stats`
"""

from .connection import Connection, DirectPath, Sink
from .filters import Filter
from .frames import CloseReason, StreamId
from .hub import Hub
from .lanes import Lane
from .stats import HubStats
from .subscriber import ProbeLost, Subscriber, SubscriptionReset

__all__ = [
    "CloseReason",
    "Connection",
    "DirectPath",
    "Filter",
    "Hub",
    "HubStats",
    "Lane",
    "ProbeLost",
    "Sink",
    "StreamId",
    "Subscriber",
    "SubscriptionReset",
]
