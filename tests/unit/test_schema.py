"""The wire schema (``publisher.schema``), pure: events refused naming the field, payloads
refused on decode, and schema evolution both ways."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from publisher import InvalidEvent, KernelEvent, decode_event, encode_event
from tests.support.events import REF, event_fields


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "kernel_exploded"}, "name"),
        ({"session_id": ""}, "session_id"),
        ({"session_id": "has space"}, "session_id"),
        ({"session_id": "x" * 65}, "session_id"),
        ({"result": "SUCCESS"}, "result"),
        ({"name": "kernel_terminated", "result": "MAYBE"}, "result"),
        ({"owner_access_key": ""}, "owner_access_key"),
        ({"domain": 7}, "domain"),
        ({"group": ""}, "group"),
        ({"reason": "r" * 2000}, "reason"),
        ({"session_uuid": "not-a-uuid"}, "session_uuid"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidEvent, match=f"^{field}:"):
        KernelEvent(**event_fields(**changes))  # type: ignore[arg-type]


def test_invalid_payloads_are_refused_on_decode() -> None:
    raw = msgspec.msgpack.encode(
        {**event_fields(result="SUCCESS"), "session_uuid": str(uuid.uuid4())}
    )
    with pytest.raises(msgspec.ValidationError, match="result"):
        decode_event(raw)
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"\xc1garbage")
    with pytest.raises(InvalidEvent, match="KernelEvent"):
        encode_event({"name": "kernel_started"})  # type: ignore[arg-type]


def test_schema_evolution_unknown_fields_are_ignored_and_terminated_has_result() -> None:
    event = REF.terminated("user-requested", result="FAILURE")
    newer = msgspec.msgpack.encode({**msgspec.structs.asdict(event), "gpu_count": 4})
    assert decode_event(newer) == event
    assert REF.terminated().result == "UNDEFINED"
    assert REF.cancelled().result is None
