"""The publisher library: the wire schema and the publishers that agents embed.

Depends only on redis and msgspec; never imports the gateway.
"""

from .client import DEFAULT_MAXLEN, AsyncPublisher, SyncPublisher
from .connection import RedisURLError, connect_async, connect_sync
from .keys import DEFAULT_PREFIX, Keys
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

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_PREFIX",
    "EVENT_NAMES",
    "RESULTS",
    "AsyncPublisher",
    "EventName",
    "InvalidEvent",
    "KernelEvent",
    "Keys",
    "RedisURLError",
    "Result",
    "SessionRef",
    "SyncPublisher",
    "connect_async",
    "connect_sync",
    "decode_event",
    "encode_event",
]
