"""What a stream may see and where the hub files it (``gateway.fanout.filters``), checked
against brute force: for random filters and events, the hub's index delivers to exactly the
filters whose every set field equals the event's attribute of that name."""

from __future__ import annotations

import uuid
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fanout.filters import INDEXES, Filter, candidate_keys
from gateway.fanout.hub import Hub
from gateway.settings import FanoutSettings
from publisher.schema import KernelEvent, SessionRef, encode_event

#: every field a stream can constrain, read off the dataclass (not off the module's table)
INIT_FIELDS = tuple(f.name for f in fields(Filter) if f.init)
#: two values per field, shared by filters and events, so that matches are common
VALUES = ("a", "b")


def test_every_filter_field_names_a_kernel_event_attribute() -> None:
    assert INIT_FIELDS  # a filter constrains something
    assert set(INIT_FIELDS) <= set(KernelEvent.__struct_fields__)
    for _, names in INDEXES:
        assert set(names) <= set(INIT_FIELDS)


def test_filters_file_under_their_most_selective_index() -> None:
    assert Filter().index_key() == ("*",)
    assert Filter(domain="d").index_key() == ("d", "d")
    assert Filter(domain="d", group="g").index_key() == ("g", "g")
    assert Filter(owner_user_id="u", group="g").index_key() == ("u", "u")
    assert Filter(owner_access_key="k", owner_user_id="u").index_key() == ("k", "k")
    assert Filter(session_id="s", owner_access_key="k").index_key() == ("s", "s", "k")
    with pytest.raises(AssertionError):
        Filter(session_id="s")


def _with_owner(chosen: dict[str, str]) -> dict[str, str]:
    """A session filter always names its owner key (as the visibility rules build it)."""
    if "session_id" in chosen and "owner_access_key" not in chosen:
        return {**chosen, "owner_access_key": VALUES[0]}
    return chosen


constraints = st.fixed_dictionaries(
    {}, optional={name: st.sampled_from(VALUES) for name in INIT_FIELDS}
).map(_with_owner)

events = st.builds(
    lambda session, key, user, domain, group, n: SessionRef(
        session_id=session,
        owner_access_key=key,
        owner_user_id=user,
        domain=domain,
        group=group,
        session_uuid=uuid.UUID(int=n),
        kernel_id=uuid.UUID(int=n + 1),
    ).started(),
    *(st.sampled_from(VALUES) for _ in range(5)),
    st.integers(0, 1000),
)


def _brute(chosen: dict[str, str], event: KernelEvent) -> bool:
    return all(getattr(event, name) == value for name, value in chosen.items())


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(constraints, min_size=1, max_size=12), st.lists(events, min_size=1, max_size=8))
def test_the_hub_delivers_to_exactly_the_filters_brute_force_matches(
    chosen: list[dict[str, str]], published: list[KernelEvent]
) -> None:
    hub = Hub(
        FanoutSettings(
            retry_jitter_ms=0,
            max_lag=0.0,
            buffer_cap=1 << 20,
            write_deadline=5.0,
            ping_interval=0.0,
        )
    )
    streams = []
    for i, fields_set in enumerate(chosen):
        connection = hub.new_connection(Filter(**fields_set), f"AK{i}")
        hub.register(connection)
        streams.append((fields_set, connection))
    for n, event in enumerate(published, start=1):
        hub.publish(b"%d-0" % n, encode_event(event))
        got = [bool(connection.take()) for _, connection in streams]
        assert got == [_brute(fields_set, event) for fields_set, _ in streams], event


@settings(max_examples=500, deadline=None, database=None)
@given(constraints, events)
def test_an_exact_filters_index_key_alone_decides(
    fields_set: dict[str, str], event: KernelEvent
) -> None:
    filter = Filter(**fields_set)
    filed = filter.index_key() in candidate_keys(event)
    expected = _brute(fields_set, event)
    assert filter.matches(event) is expected
    if expected:
        assert filed  # the index never hides a stream from an event it matches
    if filter.exact:
        assert filed is expected
    else:  # a field the index key does not hold is set: the key alone could be wrong
        held = next((names for _, names in INDEXES if set(names) <= set(fields_set)), ())
        assert set(fields_set) - set(held)
