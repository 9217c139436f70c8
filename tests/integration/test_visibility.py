"""Who sees what (docs/design.md §4), checked against an independent oracle
(tests.support.visibility_oracle).

* A matrix through the real gateway (real redis-server, real uvicorn, raw SSE clients): each
  member of the cast, plus query variants, streams a fixed mix of events; every stream must get
  exactly the events the oracle allows, in publish order, live and again on resume from
  history, and every refused request its 403 / 404.
* A property test of ``parse_query`` + ``build_filter`` + the hub, in process, on random
  identities, queries and events, against a real identity store on the real redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Final, get_args
from urllib.parse import urlencode

import anyio
import httpx
import hypothesis
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.consumer import SSEEvent, SSEParser, StreamError
from gateway.errors import GatewayError
from gateway.fanout.frames import event_frame
from gateway.fanout.hub import Hub
from gateway.http.errors import STATUS
from gateway.http.query import parse_query
from gateway.identity.store import IdentityStore
from gateway.identity.visibility import build_filter
from gateway.settings import FanoutSettings
from publisher import AsyncPublisher
from publisher.schema import EventName, KernelEvent, SessionRef, encode_event
from tests.support.gateway_server import RunningGateway
from tests.support.http import metric_value, stream_as
from tests.support.identities import (
    ALICE,
    ALICE2,
    BOB,
    BOB_OFF,
    CAROL,
    DAVE,
    ERIN,
    GROUPS,
    MONI,
    PEOPLE,
    ROOT,
    Person,
    session_of,
)
from tests.support.visibility_oracle import Ask, Caller, Seen, World, refusal, visible

#: the ten API v4 names, in lifecycle order (who sees what; how each API generation names an
#: event is tests/unit/test_frames.py's and tests/integration/test_session_events.py's)
NAMES: Final[tuple[EventName, ...]] = tuple(
    n for n in get_args(EventName) if n.startswith("kernel_")
)
SLUGS: Final = {403: "generic-forbidden", 404: "group-not-found"}


def _seen(event: KernelEvent) -> Seen:
    return Seen(
        event.session_id, event.owner_access_key, event.owner_user_id, event.domain, event.group
    )


def _named(ref: SessionRef, i: int) -> KernelEvent:
    name = NAMES[i % len(NAMES)]
    return ref.event(
        name, reason=f"r{i}", result="SUCCESS" if name == "kernel_terminated" else None
    )


# -- the matrix through the real gateway --------------------------------------------------------

#: keys nobody stored: one in a domain of the cast, one in a domain nobody administers
GHOST = Person("ghost", "user", "default", "AKIAGHOST00000000000", "unused-" + "g" * 20)
STRAY = Person("stray", "user", "elsewhere", "AKIASTRAY00000000000", "unused-" + "s" * 20)
OWNERS: Final = (*PEOPLE, ALICE2)


def _matrix_sessions() -> list[SessionRef]:
    refs = [
        session_of(owner, f"{owner.user_id}{'2' if owner is ALICE2 else ''}-{group}", group)
        for owner in OWNERS
        for domain, group in GROUPS
        if domain == owner.domain
    ]
    # one session name, several owners: sessionId alone must pick the caller's own key
    refs += [session_of(p, "shared", "ml") for p in (ALICE, ALICE2, BOB, CAROL, DAVE)]
    refs += [session_of(GHOST, "ghost-1", "default"), session_of(STRAY, "stray-1", "ml")]
    return refs


def _matrix_events() -> list[KernelEvent]:
    refs = _matrix_sessions()
    # two events per session, interleaved, names cycling so each of the ten appears often
    events = [_named(ref, i * len(refs) + j) for i in range(2) for j, ref in enumerate(refs)]
    # a session nobody has seen when the streams open: shown when it appears, not an error
    return [*events, _named(session_of(ALICE, "late", "ml"), 0)]


def q(
    sid: str | None = None,
    key: Person | None = None,
    group: str | None = None,
    group_name: str | None = None,
) -> dict[str, str]:
    """A stream query: ``sessionId``, ``ownerAccessKey`` (that person's key), ``group``,
    ``groupName``, each only when given."""
    params = {"sessionId": sid, "group": group, "groupName": group_name}
    if key is not None:
        params["ownerAccessKey"] = key.access_key
    return {name: value for name, value in params.items() if value is not None}


#: (label, who, query, the refusal expected by hand: a check of the oracle itself)
MATRIX: Final[list[tuple[str, Person, dict[str, str], int | None]]] = [
    *[(p.user_id, p, {}, None) for p in PEOPLE],
    ("alice2", ALICE2, {}, None),
    ("alice wildcards", ALICE, q(sid="*", group="*"), None),
    ("alice session", ALICE, q(sid="shared"), None),
    ("alice session own key", ALICE, q(sid="shared", key=ALICE), None),
    ("alice2 session", ALICE2, q(sid="shared"), None),
    ("alice late session", ALICE, q(sid="late"), None),
    ("alice own key", ALICE, q(key=ALICE), None),
    ("alice2 own key", ALICE2, q(key=ALICE2), None),
    ("alice group ml", ALICE, q(group="ml"), None),
    ("bob groupName default", BOB, q(group_name="default"), None),
    ("bob session in its group", BOB, q(sid="bob-ml", group="ml"), None),
    ("bob session other group", BOB, q(sid="bob-ml", group="default"), None),
    ("carol group rteam", CAROL, q(group="rteam"), None),
    ("dave session", DAVE, q(sid="shared"), None),
    ("dave session of alice", DAVE, q(sid="shared", key=ALICE), None),
    ("dave names itself", DAVE, q(key=DAVE), None),
    ("dave names bob", DAVE, q(key=BOB), None),
    ("dave names alice2", DAVE, q(key=ALICE2), None),
    ("dave group ml", DAVE, q(group="ml"), None),
    ("erin names carol", ERIN, q(key=CAROL), None),
    ("erin groupName ml", ERIN, q(group_name="ml"), None),
    ("erin session of carol", ERIN, q(sid="shared", key=CAROL), None),
    ("root session of carol", ROOT, q(sid="shared", key=CAROL), None),
    ("root own session", ROOT, q(sid="root-ml"), None),
    ("root names alice", ROOT, q(key=ALICE), None),
    ("root names ghost", ROOT, q(key=GHOST), None),
    ("root group ml", ROOT, q(group="ml"), None),
    ("moni names carol", MONI, q(key=CAROL), None),
    ("moni groupName rteam", MONI, q(group_name="rteam"), None),
    ("moni session of bob", MONI, q(sid="bob-ml", key=BOB), None),
    ("moni names stray in ml", MONI, q(key=STRAY, group="ml"), None),
    ("alice names bob", ALICE, q(key=BOB), 403),
    ("alice2 names alice", ALICE2, q(key=ALICE), 403),  # the same user's other key
    ("alice session of carol", ALICE, q(sid="shared", key=CAROL), 403),
    ("carol names erin", CAROL, q(key=ERIN), 403),
    ("dave names carol", DAVE, q(key=CAROL), 403),
    ("dave names ghost", DAVE, q(key=GHOST), 403),
    ("erin names alice", ERIN, q(key=ALICE), 403),
    ("erin session of dave", ERIN, q(sid="shared", key=DAVE), 403),
    ("alice group rteam", ALICE, q(group="rteam"), 404),  # rteam is research's
    ("carol groupName default", CAROL, q(group_name="default"), 404),
    ("dave group rteam", DAVE, q(group="rteam"), 404),
    ("erin group default", ERIN, q(group="default"), 404),
    ("root group nosuch", ROOT, q(group="nosuch"), 404),
    ("moni groupName nosuch", MONI, q(group_name="nosuch"), 404),
    ("alice names bob and no group", ALICE, q(key=BOB, group="nosuch"), 403),
]

MATRIX_WORLD: Final = World(
    key_domains={p.access_key: p.domain for p in (*OWNERS, BOB_OFF)}, groups=set(GROUPS)
)


def _caller(person: Person) -> Caller:
    return Caller(person.role, person.user_id, person.domain, person.access_key)


def _refusal(person: Person, params: dict[str, str]) -> tuple[int, str] | None:
    status = refusal(_caller(person), _ask(params), MATRIX_WORLD)
    return None if status is None else (status, SLUGS[status])


def _ask(params: dict[str, str]) -> Ask:
    session = params.get("sessionId", "*")
    group = params.get("group", params.get("groupName", "*"))
    return Ask(
        session_id=None if session == "*" else session,
        owner_access_key=params.get("ownerAccessKey"),
        group=None if group == "*" else group,
    )


@dataclass
class _Stream:
    label: str
    person: Person
    params: dict[str, str]
    events: AsyncIterator[SSEEvent]
    got: list[SSEEvent] = field(default_factory=list)

    def shown(self) -> list[tuple[str | None, str, str | None, str | None]]:
        data = [json.loads(e.data) for e in self.got]
        return [
            (e.id, e.event, d.get("sessionId"), d.get("ownerAccessKey"))
            for e, d in zip(self.got, data, strict=True)
        ]


async def _open_all(
    stack: AsyncExitStack, gw: RunningGateway, last_event_id: str | None = None
) -> tuple[list[_Stream], dict[str, tuple[int, str] | None]]:
    """Open every MATRIX stream (kept open by ``stack``); also what each refusal said."""
    streams: list[_Stream] = []
    refused: dict[str, tuple[int, str] | None] = {}
    for label, person, params, _ in MATRIX:
        try:
            _, events = await stack.enter_async_context(
                stream_as(person, gw.base_url, params=params, last_event_id=last_event_id)
            )
        except StreamError as exc:
            problem = json.loads(exc.body)
            refused[label] = (exc.status, problem["type"].rsplit("/", 1)[1])
        else:
            refused[label] = None
            streams.append(_Stream(label, person, params, events))
    return streams, refused


async def _read(stream: _Stream, count: int, timeout: float) -> None:
    with anyio.move_on_after(timeout):  # a short stream shows up in the final diff
        if len(stream.got) >= count:
            return
        async for event in stream.events:
            stream.got.append(event)
            if len(stream.got) >= count:
                return


async def _read_all(streams: list[_Stream], counts: dict[str, int], timeout: float) -> None:
    async with anyio.create_task_group() as tg:
        for s in streams:
            tg.start_soon(_read, s, counts[s.label], timeout)


async def _counters(http: httpx.AsyncClient, gw: RunningGateway) -> tuple[float, float]:
    """The hub's (events received, frames delivered) counters, from /metrics."""
    text = (await http.get(gw.base_url + "/metrics")).text
    return (
        metric_value(text, "kev_events_received_total"),
        metric_value(text, "kev_deliveries_total"),
    )


def _expected(
    streams: list[_Stream], published: list[tuple[str, KernelEvent]]
) -> dict[str, list[tuple[str | None, str, str | None, str | None]]]:
    return {
        s.label: [
            (stream_id, e.name, e.session_id, e.owner_access_key)
            for stream_id, e in published
            if visible(_caller(s.person), _ask(s.params), _seen(e))
        ]
        for s in streams
    }


def test_matrix_cases_agree_with_the_oracle() -> None:
    # the hand-written refusals of MATRIX and the oracle were written apart; they must agree
    for label, person, params, status in MATRIX:
        assert refusal(_caller(person), _ask(params), MATRIX_WORLD) == status, label


@pytest.mark.anyio
async def test_each_stream_gets_exactly_what_the_role_table_allows(
    gateway: RunningGateway, redis_url: str
) -> None:
    events = _matrix_events()
    assert {e.name for e in events} == set(NAMES)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        streams, refused = await _open_all(stack, gateway)
        assert refused == {label: _refusal(p, params) for label, p, params, _ in MATRIX}

        received_before, delivered_before = await _counters(http, gateway)
        async with AsyncPublisher.from_url(redis_url) as pub:
            ids = await pub.publish_many(events)
        published = list(zip(ids, events, strict=True))
        expected = _expected(streams, published)
        # Each stream reads as many events as the oracle allows it. The gateway keeps
        # publish order per stream, so an extra event before the last expected one shows
        # as a mismatch below; one after it would be a delivery too many: once the hub
        # has taken in every event, its delivery count must be exactly the oracle's.
        await _read_all(streams, {label: len(v) for label, v in expected.items()}, 8.0)
        with anyio.fail_after(5):
            while (await _counters(http, gateway))[0] - received_before < len(events):
                await anyio.sleep(0.02)
        delivered = (await _counters(http, gateway))[1] - delivered_before
        # and, seen from the clients, nothing more arrives for a while
        await _read_all(streams, {label: len(v) + 1 for label, v in expected.items()}, 0.3)
        live = {s.label: s.shown() for s in streams}

    # The same streams again, resuming after the first event: replay from history
    # goes through the same filter. Nothing is published meanwhile, so whatever a
    # stream gets is replay; a short quiet period after the last expected one catches
    # an extra (a late leak could only be missed, never a pass turned into a failure).
    async with AsyncExitStack() as stack:
        resumed, refused_again = await _open_all(stack, gateway, last_event_id=ids[0])
        assert refused_again == refused
        replay_expected = _expected(resumed, published[1:])
        counts = {label: len(v) for label, v in replay_expected.items()}
        await _read_all(resumed, counts, 8.0)
        await _read_all(resumed, {label: n + 1 for label, n in counts.items()}, 0.3)
        replayed = {s.label: s.shown() for s in resumed}

    assert live == expected
    assert delivered == sum(len(v) for v in expected.values())
    assert replayed == replay_expected
    # the matrix is not vacuous: most streams see something, and counts vary widely
    assert sum(1 for v in expected.values() if v) >= len(expected) - 2
    assert len({len(v) for v in expected.values()}) > 5


@pytest.mark.anyio
async def test_a_refusal_is_raised_promptly_by_open_stream(gateway: RunningGateway) -> None:
    with anyio.fail_after(2), pytest.raises(StreamError) as info:
        async with stream_as(ALICE, gateway.base_url, params=q(key=BOB)):
            pass
    assert info.value.status == 403


# -- the property test: random worlds, in process -----------------------------------------------

DOMAINS: Final = ("d1", "d2", "d3")
#: glob characters and ``:`` too: a superadmin's group lookup scans ``<domain>:<name>`` members
GROUP_NAMES: Final = ("g1", "ml", "a:b", "g*", "[g]")
NO_GROUPS: Final = ("nope", "g?", "g[1]", "*:b", "b", "G1")
SESSIONS: Final = ("s1", "s2", "s3")
ROLES: Final = ("user", "admin", "superadmin", "monitor")
UNKNOWN_KEY: Final = "AKUNKNOWN"


@dataclass(frozen=True)
class _Member:
    user_id: str
    role: str
    domain: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class _Request:
    caller_key: str
    ask: Ask
    spelled_out: bool  # "*" written instead of left out
    group_name_alias: bool


@dataclass(frozen=True)
class _Scenario:
    members: tuple[_Member, ...]
    groups: frozenset[tuple[str, str]]
    requests: tuple[_Request, ...]
    events: tuple[KernelEvent, ...]

    def member_of(self, key: str) -> _Member:
        return next(m for m in self.members if key in m.keys)

    def world(self) -> World:
        return World({k: m.domain for m in self.members for k in m.keys}, self.groups)


@st.composite
def _scenarios(draw: st.DrawFn) -> _Scenario:
    members = tuple(
        _Member(
            f"u{i}",
            draw(st.sampled_from(ROLES)),
            draw(st.sampled_from(DOMAINS)),
            tuple(f"AKU{i}K{j}" for j in range(draw(st.integers(1, 2)))),
        )
        for i in range(draw(st.integers(1, 5)))
    )
    keys = [k for m in members for k in m.keys]
    groups = draw(st.frozensets(st.tuples(st.sampled_from(DOMAINS), st.sampled_from(GROUP_NAMES))))
    requests = draw(
        st.lists(
            st.builds(
                _Request,
                caller_key=st.sampled_from(keys),
                ask=st.builds(
                    Ask,
                    session_id=st.none() | st.sampled_from(SESSIONS),
                    owner_access_key=st.none() | st.sampled_from([*keys, UNKNOWN_KEY]),
                    group=st.none() | st.sampled_from([*GROUP_NAMES, *NO_GROUPS]),
                ),
                spelled_out=st.booleans(),
                group_name_alias=st.booleans(),
            ),
            min_size=1,
            max_size=4,
        )
    )
    owned = st.sampled_from(keys).map(lambda k: (k, next(m for m in members if k in m.keys)))
    events = []
    for i in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):  # an event as a real owner would publish it
            key, member = draw(owned)
            user, domain = member.user_id, member.domain
        else:  # every field on its own, so no field can stand in for another
            key = draw(st.sampled_from([*keys, UNKNOWN_KEY]))
            user = draw(st.sampled_from([*(m.user_id for m in members), "ghost"]))
            domain = draw(st.sampled_from(DOMAINS))
        ref = SessionRef(
            session_id=draw(st.sampled_from(SESSIONS)),
            owner_access_key=key,
            owner_user_id=user,
            domain=domain,
            group=draw(st.sampled_from(GROUP_NAMES)),
            session_uuid=uuid.UUID(int=i),
            kernel_id=uuid.UUID(int=1000 + i),
        )
        events.append(_named(ref, draw(st.integers(0, len(NAMES) - 1))))
    return _Scenario(members, groups, tuple(requests), tuple(events))


def _query_string(request: _Request) -> bytes:
    ask = request.ask
    params: list[tuple[str, str]] = []
    if ask.session_id is not None or request.spelled_out:
        params.append(("sessionId", ask.session_id or "*"))
    if ask.owner_access_key is not None:
        params.append(("ownerAccessKey", ask.owner_access_key))
    if ask.group is not None or request.spelled_out:
        params.append(("groupName" if request.group_name_alias else "group", ask.group or "*"))
    return urlencode(params).encode()


def _import_doc(scenario: _Scenario) -> dict[str, object]:
    return {
        "users": [
            {"user_id": m.user_id, "role": m.role, "domain": m.domain} for m in scenario.members
        ],
        "keypairs": [
            {"access_key": k, "secret_key": "s" * 16, "user_id": m.user_id}
            for m in scenario.members
            for k in m.keys
        ],
        "groups": [{"domain": d, "name": n} for d, n in sorted(scenario.groups)],
    }


@pytest.mark.anyio
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=_scenarios())
async def test_build_filter_and_hub_deliver_what_the_oracle_allows(
    async_redis: aredis.Redis, store: IdentityStore, scenario: _Scenario
) -> None:
    await async_redis.flushdb()
    await store.import_data(_import_doc(scenario))
    world = scenario.world()
    hub = Hub(
        FanoutSettings(
            retry_jitter_ms=0,
            max_lag=0.0,
            buffer_cap=1 << 20,
            write_deadline=5.0,
            ping_interval=0.0,
        )
    )
    clients = []
    for request in scenario.requests:
        member = scenario.member_of(request.caller_key)
        caller = Caller(member.role, member.user_id, member.domain, request.caller_key)
        resolved = await store.resolve(request.caller_key)
        assert resolved is not None
        query = parse_query(_query_string(request), {})
        assert (query.session_id, query.owner_access_key, query.group) == (
            request.ask.session_id,
            request.ask.owner_access_key,
            request.ask.group,
        )
        status = refusal(caller, request.ask, world)
        hypothesis.event(f"{caller.role}: {status or 'streams'}")
        if status is not None:
            with pytest.raises(GatewayError) as info:
                await build_filter(resolved[1], query, store)
            assert (STATUS[info.value.slug], info.value.slug) == (status, SLUGS[status]), request
            continue
        client = hub.new_connection(
            await build_filter(resolved[1], query, store), caller.access_key
        )
        hub.register(client)
        clients.append((caller, request, client))

    ids = [f"{1_700_000_000_000 + i}-{i % 3}" for i in range(len(scenario.events))]
    for stream_id, event in zip(ids, scenario.events, strict=True):
        hub.publish(stream_id.encode(), encode_event(event))

    for caller, request, client in clients:
        allowed = [
            (stream_id, event)
            for stream_id, event in zip(ids, scenario.events, strict=True)
            if visible(caller, request.ask, _seen(event))
        ]
        hypothesis.event(f"sees {min(len(allowed), 3)}{'+' if len(allowed) >= 3 else ''} events")
        data = client.take()
        got = [e.id for e in SSEParser().feed(data)]
        assert got == [stream_id for stream_id, _ in allowed], (caller, request.ask)
        assert data == b"".join(event_frame(stream_id, event) for stream_id, event in allowed)
        hub.unregister(client)
        client.close("disconnect")
    assert len(hub) == 0
