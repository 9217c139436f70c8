"""The wire schema: one kernel lifecycle event, as it travels through Redis.

Publishers encode a :class:`KernelEvent` with msgspec msgpack; gateways decode it once per
message. This module is the whole contract and imports nothing from the gateway.

Schema evolution (msgspec ``docs/schema-evolution.rst``): new fields must get defaults, so an
older publisher's payload still decodes; unknown fields are ignored, so an older gateway still
decodes a newer publisher's payload.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Final, Literal, get_args

import msgspec

__all__ = [
    "EVENT_NAMES",
    "RESULTS",
    "SLUG_PATTERN",
    "EventName",
    "InvalidEvent",
    "KernelEvent",
    "Result",
    "SessionRef",
    "SourceGap",
    "decode_event",
    "decode_gap",
    "encode_event",
    "encode_gap",
]

EventName = Literal[
    # API v4 (manager 19.09) names: what the v4 stream shows
    "kernel_enqueued",
    "kernel_preparing",
    "kernel_pulling",
    "kernel_creating",
    "kernel_started",
    "kernel_terminating",
    "kernel_terminated",
    "kernel_cancelled",
    "kernel_success",
    "kernel_failure",
    # session-level events of API v5 and later (gateway.fanout.frames maps the generations)
    "session_enqueued",
    "session_scheduled",
    "session_started",
    "session_terminating",
    "session_terminated",
    "session_cancelled",
    "session_success",
    "session_failure",
    # the other session status transitions Backend.AI 25.13+ broadcasts (its ``scheduling``
    # event; manager 26.8.1 shows each as ``session_<status>``, RUNNING as session_started):
    # what a bridged Backend.AI shows on /events/session (gateway.bridge.lifecycle)
    "session_pending",
    "session_preparing",
    "session_pulling",
    "session_prepared",
    "session_creating",
    "session_restarting",
    "session_running_degraded",
    "session_deprioritizing",
    "session_reserved",
    "session_preempted",
    "session_rescheduling",
    "session_error",
]
Result = Literal["UNDEFINED", "SUCCESS", "FAILURE"]

EVENT_NAMES: Final[frozenset[str]] = frozenset(get_args(EventName))
RESULTS: Final[frozenset[str]] = frozenset(get_args(Result))

#: What a session id (Backend.AI calls it the session name) may look like, on the wire and in
#: the ``sessionId`` query parameter: a slug of word characters, dots and dashes.
#: the whole string (use with ``fullmatch``: ``$`` alone would let a trailing newline through)
SLUG_PATTERN: Final = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
_SLUG = re.compile(SLUG_PATTERN)
_MAX_TEXT = 1024  # owner keys, user ids, domain and group names, reason


class InvalidEvent(ValueError):
    """An event that breaks the schema; the message names the field and the bad value."""


class KernelEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One kernel lifecycle event.

    ``session_id`` is what the API calls ``sessionId``; ``result`` is only meaningful on
    ``kernel_terminated`` and refused anywhere else. ``timestamp`` is seconds since the epoch
    at the publisher (the benchmark measures latency from it).
    """

    name: EventName
    session_id: str
    session_uuid: uuid.UUID
    kernel_id: uuid.UUID
    owner_access_key: str
    owner_user_id: str
    domain: str
    group: str
    reason: str = ""
    result: Result | None = None
    timestamp: float = msgspec.field(default_factory=time.time)
    # Added for API v5+ (schema evolution: defaults, so older payloads decode as a session's
    # main kernel with no exit code, and older gateways ignore these fields).
    #: the kernel's role in its cluster session (``main``, ``sub``, ...) and its index
    cluster_role: str = "main"
    cluster_idx: int = 0
    #: the process exit code where known (kernel_terminating/terminated, session_success and
    #: session_failure), else None
    exit_code: int | None = None

    def __post_init__(self) -> None:
        # msgspec runs this on construction and on decode; on decode it turns the
        # InvalidEvent (a ValueError) into a msgspec.ValidationError.
        if self.name not in EVENT_NAMES:
            raise InvalidEvent(f"name: unknown event name {self.name!r}")
        if not isinstance(self.session_id, str) or not _SLUG.fullmatch(self.session_id):
            raise InvalidEvent(
                f"session_id: {self.session_id!r} is not a slug (1-64 of A-Z a-z 0-9 _ . -)"
            )
        for field in ("owner_access_key", "owner_user_id", "domain", "group"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
                raise InvalidEvent(f"{field}: must be a non-empty string, got {value!r}")
        if not isinstance(self.reason, str) or len(self.reason) > _MAX_TEXT:
            raise InvalidEvent(f"reason: must be a string of at most {_MAX_TEXT} characters")
        if self.result is not None:
            if self.name != "kernel_terminated":
                raise InvalidEvent(
                    f"result: only kernel_terminated carries a result, not {self.name}"
                )
            if self.result not in RESULTS:
                raise InvalidEvent(f"result: unknown result {self.result!r}")
        for field in ("session_uuid", "kernel_id"):
            if not isinstance(getattr(self, field), uuid.UUID):
                raise InvalidEvent(f"{field}: must be a UUID, got {getattr(self, field)!r}")
        if not isinstance(self.cluster_role, str) or not _SLUG.fullmatch(self.cluster_role):
            raise InvalidEvent(f"cluster_role: {self.cluster_role!r} is not a slug")
        if not isinstance(self.cluster_idx, int) or not 0 <= self.cluster_idx < 65536:
            raise InvalidEvent(f"cluster_idx: must be 0-65535, got {self.cluster_idx!r}")
        if self.exit_code is not None and (
            not isinstance(self.exit_code, int) or not -(2**31) <= self.exit_code < 2**31
        ):
            raise InvalidEvent(f"exit_code: must be a 32-bit integer, got {self.exit_code!r}")


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(KernelEvent)


def encode_event(event: KernelEvent) -> bytes:
    """Encode one event to its msgpack payload."""
    if not isinstance(event, KernelEvent):
        raise InvalidEvent(f"expected a KernelEvent, got {type(event).__name__}")
    return _encoder.encode(event)


def decode_event(payload: bytes | memoryview) -> KernelEvent:
    """Decode one payload; raises ``msgspec.DecodeError`` (or its ``ValidationError``)."""
    return _decoder.decode(payload)


class SourceGap(msgspec.Struct, frozen=True, kw_only=True):
    """A marker in history where the event source itself lost events, before they reached
    the gateway's Redis: a bridge that was down, or a source stream trimmed past the bridge's
    place (:mod:`gateway.bridge`). Gateways tell every open stream, and every stream resuming
    from before it, ``history_truncated`` with reason ``source``; reconciled events follow.

    Written in the place of an event (history field ``e``, live ``<id> <payload>``). It is not
    a :class:`KernelEvent` (no ``name``), so a gateway older than the marker drops it as a
    schema error (counted) and tells no one.
    """

    #: what lost events: ``source`` (the only kind so far)
    gap: Literal["source"]
    #: who noticed (a bridge's publisher id)
    source: str
    #: seconds since the epoch: the last moment the source is known to have been followed, and
    #: when following it resumed; what happened between may be missing
    since: float
    until: float


_gap_encoder: Final = msgspec.msgpack.Encoder()
_gap_decoder: Final = msgspec.msgpack.Decoder(SourceGap)


def encode_gap(marker: SourceGap) -> bytes:
    return _gap_encoder.encode(marker)


def decode_gap(payload: bytes | memoryview) -> SourceGap | None:
    """The marker in ``payload``, or None when it is not one (never raises)."""
    try:
        return _gap_decoder.decode(payload)
    except msgspec.DecodeError:  # ValidationError included
        return None


class SessionRef(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that stays the same across one session's lifecycle.

    The convenience helpers build the event for each lifecycle step, so an agent writes
    ``await publisher.publish(ref.started())``; the same helpers serve the sync and the
    async publisher.
    """

    session_id: str
    owner_access_key: str
    owner_user_id: str
    domain: str
    group: str
    session_uuid: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    kernel_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)

    def event(
        self,
        name: EventName,
        *,
        reason: str = "",
        result: Result | None = None,
        exit_code: int | None = None,
        kernel_id: uuid.UUID | None = None,
        cluster_role: str = "main",
        cluster_idx: int = 0,
    ) -> KernelEvent:
        """Any event of this session; ``kernel_id`` defaults to the session's main kernel."""
        return KernelEvent(
            name=name,
            session_id=self.session_id,
            session_uuid=self.session_uuid,
            kernel_id=self.kernel_id if kernel_id is None else kernel_id,
            owner_access_key=self.owner_access_key,
            owner_user_id=self.owner_user_id,
            domain=self.domain,
            group=self.group,
            reason=reason,
            result=result,
            exit_code=exit_code,
            cluster_role=cluster_role,
            cluster_idx=cluster_idx,
        )

    def enqueued(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_enqueued", reason=reason)

    def preparing(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_preparing", reason=reason)

    def pulling(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_pulling", reason=reason)

    def creating(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_creating", reason=reason)

    def started(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_started", reason=reason)

    def terminating(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_terminating", reason=reason)

    def terminated(self, reason: str = "", result: Result = "UNDEFINED") -> KernelEvent:
        return self.event("kernel_terminated", reason=reason, result=result)

    def cancelled(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_cancelled", reason=reason)

    def success(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_success", reason=reason)

    def failure(self, reason: str = "") -> KernelEvent:
        return self.event("kernel_failure", reason=reason)
