"""SSE frames, built once per event and shared by every client that receives it.

Encoding goes through sse-starlette's :class:`ServerSentEvent` (the project's SSE layer), so
line splitting and field order are the library's. It runs once per published event, never
once per client: the hub hands the same ``bytes`` object to every matching client.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from sse_starlette import ServerSentEvent

from publisher.schema import KernelEvent

__all__ = [
    "PING",
    "CloseReason",
    "StreamId",
    "event_frame",
    "notice_frame",
    "parse_stream_id",
    "retry_frame",
    "server_close_frame",
]

SEP: Final = "\n"
PING: Final = b": ping\n\n"

#: a Redis stream id, ``"<ms>-<seq>"``, as the pair of integers it orders by
StreamId = tuple[int, int]

CloseReason = Literal["slow_consumer", "write_timeout", "shutdown", "revoked", "resume_failed"]


class _Data(msgspec.Struct):
    sessionId: str
    ownerAccessKey: str
    reason: str


class _TerminatedData(msgspec.Struct):
    sessionId: str
    ownerAccessKey: str
    reason: str
    result: str


_json: Final = msgspec.json.Encoder()


def event_frame(stream_id: str, event: KernelEvent) -> bytes:
    """``id:``/``event:``/``data:`` exactly as Backend.AI's manager sends them."""
    data: _Data | _TerminatedData
    if event.name == "kernel_terminated":
        data = _TerminatedData(
            event.session_id, event.owner_access_key, event.reason, event.result or "UNDEFINED"
        )
    else:
        data = _Data(event.session_id, event.owner_access_key, event.reason)
    return ServerSentEvent(
        _json.encode(data).decode(), id=stream_id, event=event.name, sep=SEP
    ).encode()


def retry_frame(retry_ms: int) -> bytes:
    return ServerSentEvent(retry=retry_ms, sep=SEP).encode()


def server_close_frame(reason: CloseReason, retry_ms: int) -> bytes:
    """Sent before the server ends a stream on purpose; the client should reconnect with its
    last id after ``retry`` milliseconds (to any replica)."""
    body = _json.encode({"reason": reason, "retry": retry_ms}).decode()
    return ServerSentEvent(body, event="server_close", sep=SEP).encode()


def notice_frame(last_event_id: str, first_available_id: str | None) -> bytes:
    """Told before replay when history no longer holds every event after the client's id."""
    body = _json.encode(
        {"lastEventId": last_event_id, "firstAvailableId": first_available_id}
    ).decode()
    return ServerSentEvent(body, event="history_truncated", sep=SEP).encode()


def parse_stream_id(value: str | bytes) -> StreamId:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; ``ValueError`` for anything else."""
    text = value.decode("ascii") if isinstance(value, bytes) else value
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(ms) > 20 or len(seq) > 20:
        raise ValueError(f"not a stream id: {text[:64]!r}")
    return int(ms), int(seq)
