"""The publisher library: the wire schema and the publishers that agents embed.

Depends only on redis and msgspec; never imports the gateway.
"""

from .buffer import BufferFull
from .client import (
    DEFAULT_MAXLEN,
    AsyncPublisher,
    SyncPublisher,
    aresolve_in_doubt,
    resolve_in_doubt,
)
from .connection import RedisURLError, connect_async, connect_sync
from .errors import PublisherClosed, PublishError, PublishRejected, UndeliveredEvents
from .keys import DEFAULT_PREFIX, Keys
from .partitions import PartitionMismatch, Partitions
from .schema import (
    EVENT_NAMES,
    RESULTS,
    EventName,
    InvalidEvent,
    KernelEvent,
    Result,
    SessionRef,
    decode_event,
    encode_event,
)
from .writer import CloseReport, Health

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_PREFIX",
    "EVENT_NAMES",
    "RESULTS",
    "AsyncPublisher",
    "BufferFull",
    "CloseReport",
    "EventName",
    "Health",
    "InvalidEvent",
    "KernelEvent",
    "Keys",
    "PartitionMismatch",
    "Partitions",
    "PublishError",
    "PublishRejected",
    "PublisherClosed",
    "RedisURLError",
    "Result",
    "SessionRef",
    "SyncPublisher",
    "UndeliveredEvents",
    "aresolve_in_doubt",
    "connect_async",
    "connect_sync",
    "decode_event",
    "encode_event",
    "resolve_in_doubt",
]
