"""``GET /events/session`` (API v5 and later) from the same published events as the v4 stream:
names, data fields and ``scope`` as manager 23.09 serves them, the same visibility, resume."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
import pytest

from gateway.consumer import SSEEvent
from gateway.identity.signing import signed_headers
from publisher import AsyncPublisher
from publisher.schema import KernelEvent, SessionRef
from tests.support.fleet import kernel_events
from tests.support.gateway_server import RunningGateway
from tests.support.http import problem, stream_as
from tests.support.identities import ALICE, BOB, ROOT, session_of

V5 = "/events/session"
V4 = "/stream/kernel/_/events"


def cluster_life(ref: SessionRef) -> list[KernelEvent]:
    """A two-kernel session's life as a v5-era scheduler and agents publish it."""
    sub = uuid.uuid4()

    def kernel(name: Any, **kw: Any) -> list[KernelEvent]:
        return [
            ref.event(name, **kw),
            ref.event(name, kernel_id=sub, cluster_role="sub", cluster_idx=1, **kw),
        ]

    return [
        ref.event("session_enqueued"),
        ref.event("session_scheduled"),
        *kernel("kernel_preparing"),
        *kernel("kernel_creating"),
        *kernel("kernel_started"),
        ref.event("session_started"),
        *kernel("kernel_terminated", reason="task-finished", exit_code=0),
        ref.event("session_terminated"),
        ref.event("session_success", reason="task-success", exit_code=0),
    ]


def _names(events: list[SSEEvent]) -> list[str]:
    return [e.event for e in events]


async def _seen(gw: RunningGateway, path: str, n: int, **params: str) -> list[SSEEvent]:
    async with stream_as(ROOT, gw.base_url + path, params=params or None) as (_, events):
        return await _collect(events, n)


async def _collect(events: Any, n: int) -> list[SSEEvent]:
    got: list[SSEEvent] = []
    async for event in events:
        if event.event.startswith(("kernel_", "session_")):
            got.append(event)
            if len(got) == n:
                return got
    return got


@pytest.mark.anyio
async def test_one_event_two_generations(gateway: RunningGateway, cast: str) -> None:
    ref = session_of(ALICE, "cluster-1")
    life = cluster_life(ref)
    async with (
        stream_as(ROOT, gateway.base_url + V4) as (_, v4),
        stream_as(ROOT, gateway.base_url + V5) as (_, v5_all),
        stream_as(ROOT, gateway.base_url + V5, params={"scope": "session"}) as (_, v5_session),
        stream_as(ROOT, gateway.base_url + V5, params={"scope": "kernel"}) as (_, v5_kernel),
    ):
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish_many(life)
        seen_v4 = await kernel_events(v4, 6)
        seen_all = await _collect(v5_all, len(life))
        seen_session = await _collect(v5_session, 5)
        seen_kernel = await _collect(v5_kernel, 8)
    # v4 (manager 19.09): the main kernel's events and the session's, under kernel_* names
    assert _names(seen_v4) == [
        "kernel_enqueued",
        "kernel_preparing",
        "kernel_creating",
        "kernel_started",
        "kernel_terminated",
        "kernel_success",
    ]
    assert _names(seen_all) == [e.name for e in life]
    assert _names(seen_session) == [e.name for e in life if e.name.startswith("session_")]
    assert _names(seen_kernel) == [e.name for e in life if e.name.startswith("kernel_")]
    # the same history entry has the same id in both generations
    by_id = {e.id: e.event for e in seen_all}
    assert {by_id[e.id] for e in seen_v4} >= {"session_enqueued", "session_success"}

    data = [json.loads(e.data) for e in seen_all]
    session_started = data[_names(seen_all).index("session_started")]
    assert session_started == {
        "reason": "",
        "sessionName": "cluster-1",
        "ownerAccessKey": ALICE.access_key,
        "sessionId": str(ref.session_uuid),
        "exitCode": None,
        "kernelId": str(ref.kernel_id),
    }
    sub_terminated = [
        d for d, e in zip(data, seen_all, strict=True) if e.event == "kernel_terminated"
    ][1]
    assert sub_terminated["clusterRole"] == "sub" and sub_terminated["clusterIdx"] == 1
    assert sub_terminated["exitCode"] == 0
    main_started = data[_names(seen_all).index("kernel_started")]
    assert main_started["clusterRole"] == "main" and "clusterIdx" not in main_started
    assert data[-1]["exitCode"] == 0 and data[-1]["reason"] == "task-success"


@pytest.mark.anyio
async def test_v4_era_payloads_show_under_v5_names(gateway: RunningGateway, cast: str) -> None:
    ref = session_of(ALICE, "legacy")
    async with stream_as(ROOT, gateway.base_url + V5) as (_, events):
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish_many([ref.enqueued(), ref.started(), ref.success("task-success")])
        seen = await _collect(events, 3)
    assert _names(seen) == ["session_enqueued", "kernel_started", "session_success"]


@pytest.mark.anyio
async def test_name_session_id_and_visibility(gateway: RunningGateway, cast: str) -> None:
    mine, bobs = session_of(ALICE, "alice-v5"), session_of(BOB, "bob-v5")
    async with (
        stream_as(ALICE, gateway.base_url + V5, params={"sessionName": "alice-v5"}) as (_, named),
        stream_as(ALICE, gateway.base_url + V5, params={"sessionId": str(mine.session_uuid)}) as (
            _,
            by_uuid,
        ),
        stream_as(ALICE, gateway.base_url + V5, params={"sessionId": str(bobs.session_uuid)}) as (
            _,
            foreign,
        ),
        stream_as(ROOT, gateway.base_url + V5, params={"name": "bob-v5"}) as (_, root_named),
    ):
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish_many(
                [bobs.event("session_started"), mine.event("session_started"), mine.started()]
            )
        assert [json.loads(e.data)["sessionName"] for e in await _collect(named, 2)] == [
            "alice-v5",
            "alice-v5",
        ]
        assert _names(await _collect(by_uuid, 2)) == ["session_started", "kernel_started"]
        # root named bob-v5 under its own key: nothing of Bob's (the owner key defaults to
        # the caller's, as in v4); Alice asking for Bob's UUID gets nothing either
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish(session_of(ALICE, "fence").event("session_started"))
            await pub.publish(session_of(ROOT, "bob-v5").event("session_started"))
        (root_seen,) = await _collect(root_named, 1)
        assert json.loads(root_seen.data)["ownerAccessKey"] == ROOT.access_key
        # Dispatch is in order and one flush writes every stream's share, so anything for
        # Alice's stream on Bob's UUID would be on its socket by now.
        with anyio.move_on_after(0.3):
            leaked = await _collect(foreign, 1)
            raise AssertionError(f"a user saw another user's session by UUID: {leaked}")


@pytest.mark.anyio
async def test_a_session_uuid_given_as_the_name_is_that_session_among_the_owner_s(
    gateway: RunningGateway, cast: str
) -> None:
    """The official CLIs from 24.09 send `backend.ai events <UUID>` as sessionName=<UUID>;
    the manager (26.8, SessionRow.match_sessions) matches it as the session's id first, among
    the owner key's sessions. Before, the stream stayed empty."""
    mine, bobs = session_of(ALICE, "alice-by-id"), session_of(BOB, "bob-by-id")
    async with (
        stream_as(ALICE, gateway.base_url + V5, params={"sessionName": str(mine.session_uuid)})
        as (_, by_name),
        stream_as(ROOT, gateway.base_url + V5, params={"sessionName": str(bobs.session_uuid)})
        as (_, root_not_own),
        stream_as(
            ROOT, gateway.base_url + V5,
            params={"name": str(bobs.session_uuid), "ownerAccessKey": BOB.access_key},
        ) as (_, root_bobs),
    ):  # fmt: skip
        async with AsyncPublisher.from_url(cast) as pub:
            await pub.publish_many(
                [bobs.event("session_started"), mine.event("session_started"), mine.started()]
            )
        assert _names(await _collect(by_name, 2)) == ["session_started", "kernel_started"]
        (bob_seen,) = await _collect(root_bobs, 1)  # the owner key named: Bob's session
        assert json.loads(bob_seen.data)["sessionId"] == str(bobs.session_uuid)
        # the owner key defaults to the caller's, as for a name: root's own sessions only
        with anyio.move_on_after(0.3):
            leaked = await _collect(root_not_own, 1)
            raise AssertionError(f"a UUID as the name crossed owner keys: {leaked}")


@pytest.mark.parametrize(
    "query",
    [
        "?scope=sessions",
        "?sessionId=not-a-uuid",
        "?name=a&sessionName=b",
        "?foo=1",
        "?name=bad%0A",
    ],
)
def test_bad_v5_parameters_are_400(gateway: RunningGateway, query: str) -> None:
    target = V5 + query
    headers = signed_headers("GET", target, gateway.host, ROOT.access_key, ROOT.secret_key)
    response = httpx.get(gateway.base_url + target, headers=headers, timeout=5)
    assert problem(response)[:2] == (400, "invalid-api-params")


@pytest.mark.anyio
async def test_resume_on_the_v5_path_replays_in_v5_names(
    gateway: RunningGateway, cast: str
) -> None:
    ref = session_of(ALICE, "resume-v5")
    async with AsyncPublisher.from_url(cast) as pub:
        ids = await pub.publish_many(cluster_life(ref))
    async with stream_as(ROOT, gateway.base_url + V5, last_event_id=ids[2]) as (_, events):
        seen = await _collect(events, len(ids) - 3)
    assert [e.id for e in seen] == ids[3:]
    assert seen[-1].event == "session_success"
