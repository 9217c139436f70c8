"""Events for the publisher's tests: one session, its lifecycle, the raw fields of an event,
and what a history stream holds."""

from __future__ import annotations

import uuid

import redis

from publisher import Keys
from publisher.schema import KernelEvent, SessionRef, decode_event

__all__ = ["REF", "event_fields", "history_reasons", "lifecycle"]

REF = SessionRef(
    session_id="sess-01",
    owner_access_key="AKIAOWNER0000000001",
    owner_user_id="alice@example.com",
    domain="default",
    group="ml-team",
    session_uuid=uuid.UUID(int=1),
    kernel_id=uuid.UUID(int=2),
)


def lifecycle(ref: SessionRef) -> list[KernelEvent]:
    """A session's whole ordinary life, enqueued to terminated."""
    return [
        ref.enqueued(),
        ref.preparing(),
        ref.pulling("image not cached"),
        ref.creating(),
        ref.started(),
        ref.terminating("user-requested"),
        ref.terminated("user-requested", result="SUCCESS"),
    ]


def event_fields(**changes: object) -> dict[str, object]:
    """A valid ``kernel_started`` as keyword fields (msgspec encodes the UUIDs as text),
    with ``changes`` applied."""
    fields: dict[str, object] = {
        "name": "kernel_started",
        "session_id": "s1",
        "session_uuid": uuid.uuid4(),
        "kernel_id": uuid.uuid4(),
        "owner_access_key": "AK",
        "owner_user_id": "u",
        "domain": "d",
        "group": "g",
    }
    fields.update(changes)
    return fields


def history_reasons(redis_url: str, prefix: str = "kev") -> list[str]:
    """The ``reason`` of every event in the history stream, oldest first."""
    with redis.Redis.from_url(redis_url) as client:
        return [decode_event(f[b"e"]).reason for _, f in client.xrange(Keys(prefix).history)]
