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
        ({"session_id": "s1\n"}, "session_id"),  # the whole string, no trailing newline
        ({"cluster_role": "has space"}, "cluster_role"),
        ({"cluster_idx": -1}, "cluster_idx"),
        ({"exit_code": 2**40}, "exit_code"),
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


def test_payloads_from_before_api_v5_fields_decode_as_a_main_kernel() -> None:
    # what a publisher of the v4 era wrote: none of cluster_role, cluster_idx, exit_code
    old = msgspec.msgpack.encode(
        {**event_fields(), "session_uuid": str(uuid.uuid4()), "kernel_id": str(uuid.uuid4())}
    )
    event = decode_event(old)
    assert (event.cluster_role, event.cluster_idx, event.exit_code) == ("main", 0, None)
    # and a v5-era event with its defaults writes none of them (older gateways see no change)
    assert b"cluster_role" not in encode_event(event)
    session_level = REF.event("session_success", exit_code=0)
    assert decode_event(encode_event(session_level)).exit_code == 0
