"""SSE frames, built once per event and shared by every client that receives it.

Encoding goes through sse-starlette's :class:`ServerSentEvent` (the project's SSE layer), so
line splitting and field order are the library's. It runs once per published event, never
once per client: the hub hands the same ``bytes`` object to every matching client.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec
from sse_starlette import ServerSentEvent

from publisher.schema import KernelEvent

__all__ = [
    "EVICTIONS",
    "MAX_ID_PART",
    "PING",
    "CloseReason",
    "GapReason",
    "StreamId",
    "View",
    "event_frame",
    "format_stream_id",
    "frame_for",
    "notice_frame",
    "parse_stream_id",
    "retry_frame",
    "server_close_frame",
]

SEP: Final = "\n"
PING: Final = b": ping\n\n"

#: a Redis stream id, ``"<ms>-<seq>"``, as the pair of integers it orders by
StreamId = tuple[int, int]

CloseReason = Literal[
    "slow_consumer",
    "write_timeout",
    "write_error",
    "slow_reader",
    "shutdown",
    "resume_failed",
    # the stream reached its maximum lifetime (stream_max_lifetime): its client resumes,
    # perhaps on a newer pod, so streams spread over a scaled-out fleet
    "rebalance",
    # the caller's rights changed (gateway.replica.reauthorize): its keypair was removed,
    # deactivated or given a new secret; what it may see changed; its browser session ended
    "revoked",
    "rights_changed",
    "logged_out",
    "session_expired",
]
#: the close reasons that are evictions, counted in ``kev_evictions_total{reason}``;
#: ``slow_reader``: the client's TCP left written bytes unacknowledged past ``max_lag``
EVICTIONS: Final[tuple[CloseReason, ...]] = (
    "slow_consumer",
    "write_timeout",
    "write_error",
    "slow_reader",
)


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

#: which API generation, and which part of it, a stream shows: ``v4`` is
#: ``/stream/kernel/_/events`` (manager 19.09); the others are ``/events/session`` (API v5
#: and later) with its ``scope`` parameter (``*``, ``session``, ``kernel``)
View = Literal["v4", "all", "session", "kernel"]

#: how one published event shows in each generation (ARCHITECTURE.md, "Two API generations,
#: one event"): the v4 names of session-level events, and the v5 names of v4-only ones
_V4_NAME: Final[dict[str, str]] = {
    "session_enqueued": "kernel_enqueued",
    "session_cancelled": "kernel_cancelled",
    "session_success": "kernel_success",
    "session_failure": "kernel_failure",
}
_V5_NAME: Final[dict[str, str]] = {
    "kernel_enqueued": "session_enqueued",
    "kernel_success": "session_success",
    "kernel_failure": "session_failure",
}


def v4_name(event: KernelEvent) -> str | None:
    """The event's name on the v4 stream, or None when v4 did not show it: the session-level
    events it had no name for (scheduled, started, terminating, terminated: v4 showed the
    main kernel's), and the events of a cluster's other kernels (any role but ``main``:
    manager 19.09 showed the master kernel only; Backend.AI numbers its main kernel 1)."""
    name = event.name
    if name.startswith("session_"):
        return _V4_NAME.get(name)
    return name if event.cluster_role == "main" else None


def v5_name(event: KernelEvent) -> str:
    return _V5_NAME.get(event.name, event.name)


class _SessionData(msgspec.Struct):
    reason: str
    sessionName: str
    ownerAccessKey: str
    sessionId: str
    exitCode: int | None
    kernelId: str


class _KernelData(_SessionData, omit_defaults=True):
    clusterRole: str
    clusterIdx: int = 0  # omitted when 0, as the manager does


def frame_for(view: View, stream_id: str, event: KernelEvent) -> bytes | None:
    """The event as a stream of ``view`` shows it, or None when that view does not show it.
    ``v4`` is :func:`event_frame`'s; the v5 views carry the manager 23.09 data fields."""
    if view == "v4":
        return event_frame(stream_id, event)
    name = v5_name(event)
    session_level = name.startswith("session_")
    if view == ("kernel" if session_level else "session"):
        return None
    common = (
        event.reason,
        event.session_id,
        event.owner_access_key,
        str(event.session_uuid),
        event.exit_code,
        str(event.kernel_id),
    )
    data: _SessionData | _KernelData
    if session_level:
        data = _SessionData(*common)
    else:
        data = _KernelData(*common, event.cluster_role, event.cluster_idx)
    return ServerSentEvent(_json.encode(data).decode(), id=stream_id, event=name, sep=SEP).encode()


def event_frame(stream_id: str, event: KernelEvent) -> bytes | None:
    """``id:``/``event:``/``data:`` exactly as Backend.AI's manager (API v4) sends them, or
    None for an event the v4 stream did not show (:func:`v4_name`)."""
    name = v4_name(event)
    if name is None:
        return None
    data: _Data | _TerminatedData
    if name == "kernel_terminated":
        data = _TerminatedData(
            event.session_id, event.owner_access_key, event.reason, event.result or "UNDEFINED"
        )
    else:
        data = _Data(event.session_id, event.owner_access_key, event.reason)
    return ServerSentEvent(_json.encode(data).decode(), id=stream_id, event=name, sep=SEP).encode()


def retry_frame(retry_ms: int) -> bytes:
    return ServerSentEvent(retry=retry_ms, sep=SEP).encode()


def server_close_frame(reason: CloseReason, retry_ms: int, *, field: bool = False) -> bytes:
    """Sent before the server ends a stream on purpose; the client should reconnect with its
    last id after ``retry`` milliseconds (to any replica). ``field`` adds the same hint as
    the SSE ``retry:`` field, which is all EventSource reads."""
    body = _json.encode({"reason": reason, "retry": retry_ms}).decode()
    retry = retry_ms if field else None
    return ServerSentEvent(body, event="server_close", retry=retry, sep=SEP).encode()


#: why history cannot prove it holds every event after a client's id (``history_truncated``):
#: ``trimmed`` MAXLEN or a deletion removed entries after it; ``reset`` it is older than this
#: history (Redis lost its data, or a fresh instance); ``ahead`` it is newer than anything in
#: history; ``unknown`` it is in range but no entry has it; ``source`` the event source lost
#: events before they reached history (a bridge that was away, see
#: :class:`publisher.schema.SourceGap`): what could be reconstructed follows
GapReason = Literal["trimmed", "reset", "ahead", "unknown", "source"]


def notice_frame(
    last_event_id: str | None, first_available_id: str | None, reason: GapReason = "trimmed"
) -> bytes:
    """Told before the events that follow a gap history cannot fill: before a replay, or to
    every open stream when this replica finds that Redis holds a new history."""
    body = _json.encode(
        {"lastEventId": last_event_id, "firstAvailableId": first_available_id, "reason": reason}
    ).decode()
    return ServerSentEvent(body, event="history_truncated", sep=SEP).encode()


#: both parts of a Redis stream id are unsigned 64-bit integers
MAX_ID_PART: Final = 2**64 - 1


def parse_stream_id(value: str | bytes) -> StreamId:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``: ASCII digits, each part within 64 bits,
    the whole string. ``ValueError`` (or ``UnicodeDecodeError`` for non-ASCII bytes) for
    anything else."""
    text = value.decode("ascii") if isinstance(value, bytes) else value
    ms, sep, seq = text.partition("-")
    if not (sep and _DIGITS.fullmatch(ms) and _DIGITS.fullmatch(seq)):
        raise ValueError(f"not a stream id: {text[:64]!r}")
    parsed = int(ms), int(seq)
    if parsed[0] > MAX_ID_PART or parsed[1] > MAX_ID_PART:
        raise ValueError(f"stream id out of range: {text[:64]!r}")
    return parsed


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


_DIGITS: Final = re.compile(r"[0-9]{1,20}")
