"""The bridge end to end, with real parts: Backend.AI's bus written byte for byte as each
generation writes it (devtools/backendai_bus.py) on a real redis-server, its PostgreSQL
(Debian's, a temporary cluster, the schema of 23.09 or 26.8, read by a read-only role), the
bridge, and real gateway replicas serving v4 and v5 streams."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgpack
import pytest
import redis.asyncio as aredis

from devtools.postgres import BackendAIDatabase, Owner
from gateway.consumer import SSEEvent
from gateway.identity.store import IdentityStore
from publisher.keys import Keys
from tests.support.bridge import (
    SCHEMA_OF,
    Installation,
    gateway_history,
    names,
    running_bridge,
    wait_for,
)
from tests.support.gateway_server import RunningGateway
from tests.support.http import stream_as
from tests.support.identities import Person
from tests.support.redis_server import RedisServer

V4 = "/stream/kernel/_/events"
V5 = "/events/session"


def _person(owner: Owner, role: str = "user") -> Person:
    return Person(str(owner.user_uuid), role, owner.domain, owner.access_key, owner.secret_key)


async def _store_identities(redis_url: str, people: list[tuple[Owner, str]]) -> None:
    """The gateway's identity store holding Backend.AI's users (the identity sync's work,
    done by hand here): user id = the user's UUID, its keypair, its group."""
    doc = {
        "users": [
            {"user_id": str(o.user_uuid), "role": role, "domain": o.domain} for o, role in people
        ],
        "keypairs": [
            {"access_key": o.access_key, "secret_key": o.secret_key, "user_id": str(o.user_uuid)}
            for o, _ in people
        ],
        "groups": sorted(
            ({"domain": o.domain, "name": o.group_name} for o, _ in people),
            key=lambda g: (g["domain"], g["name"]),
        ),
    }
    doc["groups"] = [dict(t) for t in {tuple(g.items()) for g in doc["groups"]}]
    client = aredis.Redis.from_url(redis_url)
    try:
        await IdentityStore(client, Keys()).import_data(doc)
    finally:
        await client.aclose()


@pytest.fixture
async def installation(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    redis_url: str,
    backendai_db_factory: Callable[[str], BackendAIDatabase],
) -> AsyncIterator[Installation]:
    generation = getattr(request, "param", "23.09")
    db = backendai_db_factory(SCHEMA_OF[generation])
    # Backend.AI's Redis: the same server, its database 4 (the URL names none)
    made = await Installation.create(db, f"redis://127.0.0.1:{redis_server.port}", generation)
    yield made
    await made.close()


async def _until(events: Any, last: str, timeout: float = 15.0) -> list[SSEEvent]:
    got: list[SSEEvent] = []
    with anyio.fail_after(timeout):
        async for event in events:
            if event.event.startswith(("kernel_", "session_")):
                got.append(event)
                if event.event == last:
                    return got
    return got


@pytest.mark.anyio
@pytest.mark.parametrize("installation", ["23.09", "26.8"], indirect=True)
async def test_a_two_kernel_session_reaches_v4_and_v5_streams_as_the_manager_shows_it(
    installation: Installation,
    redis_url: str,
    start_gateway: Callable[..., RunningGateway],
) -> None:
    alice = await installation.owner("alice")
    bob = await installation.owner("bob")  # same domain and group, another user
    other = await installation.owner("olga", domain="research", group="rteam")
    admin = await installation.owner("dave")
    await _store_identities(
        redis_url, [(alice, "user"), (bob, "user"), (other, "admin"), (admin, "admin")]
    )
    gateway = start_gateway()
    life = installation.life(alice, "train-01", kernels=2)
    settings = installation.settings(redis_url)
    async with (
        running_bridge(settings),
        stream_as(_person(alice), gateway.base_url + V4) as (_, v4),
        stream_as(_person(alice), gateway.base_url + V5) as (_, v5),
        stream_as(_person(admin, "admin"), gateway.base_url + V5) as (_, v5_admin),
        stream_as(_person(bob), gateway.base_url + V5) as (_, v5_bob),
        stream_as(_person(other, "admin"), gateway.base_url + V5) as (_, v5_other),
    ):
        await life.rows()
        await life.lifecycle()
        seen5 = await _until(v5, "session_success")
        seen4 = await _until(v4, "kernel_success")
        seen_admin = await _until(v5_admin, "session_success")
        # nothing for a user who does not own it, nor for another domain's admin
        for stream in (v5_bob, v5_other):
            with anyio.move_on_after(0.5):
                async for event in stream:
                    assert not event.event.startswith(("kernel_", "session_")), event

    main, sub = life.kernels
    kernel_names = ["kernel_preparing", "kernel_pulling", "kernel_creating", "kernel_started"]
    assert [e.event for e in seen5] == [
        "session_enqueued",
        "session_scheduled",
        *[n for n in kernel_names for _ in (main, sub)],
        "session_started",
        "kernel_terminating",
        "kernel_terminating",
        "kernel_terminated",
        "kernel_terminated",
        "session_terminated",
        "session_success",
    ]
    assert [e.event for e in seen_admin] == [e.event for e in seen5]
    by_kernel = {(e.event, json.loads(e.data)["kernelId"]): json.loads(e.data) for e in seen5}
    assert by_kernel[("kernel_terminated", str(sub.id))] == {
        "reason": "task-finished",
        "sessionName": "train-01",
        "ownerAccessKey": alice.access_key,
        "sessionId": str(life.session),
        "exitCode": 0,
        "kernelId": str(sub.id),
        "clusterRole": "sub",
        "clusterIdx": 1,
    }
    assert by_kernel[("kernel_pulling", str(main.id))]["reason"] == "cr.backend.ai/python:3.11"
    assert by_kernel[("kernel_started", str(main.id))]["exitCode"] is None
    session_data = json.loads(seen5[-1].data)
    assert session_data == {
        "reason": "task-finished",
        "sessionName": "train-01",
        "ownerAccessKey": alice.access_key,
        "sessionId": str(life.session),
        "exitCode": 0,
        "kernelId": str(main.id),  # a session's kernelId: its main kernel
    }
    # v4 (manager 19.09): the main kernel only, session steps under their kernel_* names
    assert [e.event for e in seen4] == [
        "kernel_enqueued",
        "kernel_preparing",
        "kernel_pulling",
        "kernel_creating",
        "kernel_started",
        "kernel_terminating",
        "kernel_terminated",
        "kernel_success",
    ]
    assert json.loads(seen4[6].data) == {
        "sessionId": "train-01",
        "ownerAccessKey": alice.access_key,
        "reason": "task-finished",
        "result": "UNDEFINED",
    }
    # one published event, both generations: the same ids
    assert {e.id for e in seen4} <= {e.id for e in seen5}


def _sample(bridge: Any, name: str, **labels: str) -> float:
    value = bridge.metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


async def _history_names(redis: aredis.Redis) -> list[str]:
    return names(await gateway_history(redis))


@pytest.mark.anyio
async def test_an_event_before_its_row_waits_for_it_and_one_without_a_row_is_dropped(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    life = installation.life(alice, "early-1", kernels=1)
    ghost = uuid.uuid4()
    async with running_bridge(installation.settings(redis_url)) as bridge:
        # the manager's transaction not yet committed: the event is on the bus first
        await installation.bus.emit("session_enqueued", life.session, life.creation_id)
        await anyio.sleep(0.3)
        await life.rows()
        # a kernel no row will ever name: dropped after the lookup timeout, counted
        await installation.bus.emit("kernel_started", ghost, life.session, "")
        await installation.bus.emit("session_scheduled", life.session, life.creation_id)

        async def both() -> list[str] | None:
            got = await _history_names(async_redis)
            return got if len(got) == 2 else None

        assert await wait_for(both, 10, "two events") == ["session_enqueued", "session_scheduled"]
        assert _sample(bridge, "kev_bridge_events_dropped_total", reason="not_found") == 1
        assert _sample(bridge, "kev_bridge_events_published_total") == 2


@pytest.mark.anyio
async def test_a_pickle_naming_another_global_is_never_run_and_the_bridge_goes_on(
    installation: Installation, async_redis: aredis.Redis, redis_url: str, tmp_path: Any
) -> None:
    alice = await installation.owner("alice")
    life = installation.life(alice, "evil-1", kernels=1)
    await life.rows()
    witness = tmp_path / "pwned"
    command = f"touch {witness}"
    # the shape of a reason's pickle, naming os.system: what an agent could write
    evil = b"\x80\x05\x95" + (32 + len(command)).to_bytes(8, "little")
    for text in ("os", "system"):
        evil += b"\x8c" + bytes([len(text)]) + text.encode() + b"\x94"
    evil += b"\x93\x94\x8c" + bytes([len(command)]) + command.encode() + b"\x94\x85\x94R\x94."
    args = msgpack.packb(
        [str(life.main.id), str(life.session), msgpack.ExtType(6, evil), 0], use_bin_type=True
    )
    async with running_bridge(installation.settings(redis_url)) as bridge:
        for _ in range(3):
            await installation.bus.raw("kernel_terminated", args)
        await installation.bus.emit("session_enqueued", life.session, life.creation_id)

        async def published() -> list[str]:
            return await _history_names(async_redis)

        assert await wait_for(published, 10, "the next event") == ["session_enqueued"]
        assert _sample(bridge, "kev_bridge_events_dropped_total", reason="pickle") == 3
    assert not witness.exists()


@pytest.mark.anyio
async def test_postgresql_restarted_mid_run_loses_nothing(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    lives = [installation.life(alice, f"pg-{i}", kernels=1) for i in range(3)]
    server = installation.db.server
    async with running_bridge(installation.settings(redis_url)) as bridge:
        await lives[0].rows()
        await installation.bus.emit("session_enqueued", lives[0].session, "c")
        await wait_for(lambda: _history_names(async_redis), 10, "the first event")
        for life in lives[1:]:
            await life.rows()
        await anyio.to_thread.run_sync(server.stop)
        try:
            for life in lives[1:]:  # while PostgreSQL is down
                await installation.bus.emit("session_enqueued", life.session, "c")

            async def down() -> bool:
                return _sample(bridge, "kev_bridge_database_up") == 0

            await wait_for(down, 10, "the bridge to notice")
            assert len(await _history_names(async_redis)) == 1  # waiting, not dropping
        finally:
            await anyio.to_thread.run_sync(server.start)

        async def all_three() -> list[tuple[str, Any]] | None:
            got = await gateway_history(async_redis)
            return got if len(got) == 3 else None

        history = await wait_for(all_three, 20, "the events held while PostgreSQL was down")
        assert [e.session_id for _, e in history] == ["pg-0", "pg-1", "pg-2"]
        assert _sample(bridge, "kev_bridge_database_up") == 1
        assert _sample(bridge, "kev_bridge_events_dropped_total", reason="not_found") == 0


@pytest.mark.anyio
async def test_a_stream_trimmed_past_the_cursor_is_told_and_reconciled_once(
    installation: Installation,
    async_redis: aredis.Redis,
    redis_url: str,
    start_gateway: Callable[..., RunningGateway],
) -> None:
    alice = await installation.owner("alice")
    await _store_identities(redis_url, [(alice, "user")])
    gateway = start_gateway()
    first = installation.life(alice, "before-1", kernels=1)
    ended = installation.life(alice, "gone-1", kernels=2)
    cancelled = installation.life(alice, "gone-2", kernels=1)
    settings = installation.settings(redis_url)
    async with running_bridge(settings):
        await first.rows()
        await installation.bus.emit("session_enqueued", first.session, "c")
        await wait_for(lambda: _history_names(async_redis), 10, "the first event")
    # the bridge is away: two sessions live and end, and the stream is trimmed past it
    await ended.rows()
    await cancelled.rows()
    await ended.lifecycle(result="SUCCESS")
    await cancelled.transition("CANCELLED", reason="pending-timeout")
    await installation.client.xtrim("events", maxlen=0)
    async with stream_as(_person(alice), gateway.base_url + V5) as (_, v5):
        async with running_bridge(settings) as bridge:
            told: list[SSEEvent] = []
            with anyio.fail_after(15):
                async for event in v5:
                    if (
                        event.event in ("history_truncated",)
                        or event.event.startswith("session_")
                        or event.event.startswith("kernel_")
                    ):
                        told.append(event)
                    if event.event == "session_cancelled":
                        break
            assert _sample(bridge, "kev_bridge_gaps_total", why="trimmed") == 1
            assert _sample(bridge, "kev_bridge_reconciled_events_total") == 4
    assert told[0].event == "history_truncated"
    assert json.loads(told[0].data)["reason"] == "source"
    assert [e.event for e in told[1:]] == [
        "kernel_terminated",
        "session_terminated",
        "session_success",
        "session_cancelled",
    ]
    assert all(json.loads(e.data)["reason"] == "reconciled" for e in told[1:])
    assert json.loads(told[1].data)["kernelId"] == str(ended.main.id)
    before = await gateway_history(async_redis)
    assert names(before) == [
        "session_enqueued",
        "GAP",
        "kernel_terminated",
        "session_terminated",
        "session_success",
        "session_cancelled",
    ]
    # a restart finds the same gap: nothing is told or published twice
    async with running_bridge(settings):
        await anyio.sleep(1.0)
    assert await gateway_history(async_redis) == before


@pytest.mark.anyio
@pytest.mark.parametrize("installation", ["26.8"], indirect=True)
async def test_a_pubsub_span_not_followed_is_told_and_its_ends_reconciled(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    alice = await installation.owner("alice")
    seen = installation.life(alice, "seen-1", kernels=1)
    missed = installation.life(alice, "missed-1", kernels=1)
    settings = installation.settings(redis_url)
    async with running_bridge(settings):
        await seen.rows()
        await installation.bus.emit("session_enqueued", seen.session, "c")
        await wait_for(lambda: _history_names(async_redis), 10, "the first event")
    # published while no bridge subscribed: gone, as Pub/Sub goes
    await missed.rows()
    await missed.lifecycle(result="FAILURE")
    async with running_bridge(settings) as bridge:

        async def reconciled() -> list[str] | None:
            got = await _history_names(async_redis)
            return got if len(got) >= 5 else None

        assert await wait_for(reconciled, 10, "the reconciliation") == [
            "session_enqueued",
            "GAP",
            "kernel_terminated",
            "session_terminated",
            "session_failure",
        ]
        assert _sample(bridge, "kev_bridge_gaps_total", why="not_followed") == 1
        # and it follows again
        await installation.bus.emit("session_enqueued", seen.session, "c")
        await wait_for(
            lambda: _count(async_redis, 6), 10, "the next event after the reconciliation"
        )
    history = await gateway_history(async_redis)
    kernel_terminated = history[2][1]
    assert getattr(kernel_terminated, "result", None) == "FAILURE"
    assert getattr(kernel_terminated, "kernel_id", None) == missed.main.id


async def _count(redis: aredis.Redis, n: int) -> bool:
    return len(await gateway_history(redis)) >= n


@pytest.mark.anyio
async def test_the_generation_is_detected_and_said(
    redis_server: RedisServer,
    redis_url: str,
    backendai_db_factory: Callable[[str], BackendAIDatabase],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="gateway.bridge")
    for generation, expected in (("23.09", "stream"), ("26.8", "pubsub")):
        db = backendai_db_factory(SCHEMA_OF[generation])
        made = await Installation.create(db, f"redis://127.0.0.1:{redis_server.port}/4", generation)
        await made.client.flushall()
        manager = made.client.pubsub()
        try:
            if expected == "pubsub":  # a 25.11+ manager listens to the broadcast channel
                await manager.subscribe("events_all")
            else:  # a 23.09 manager's bus: the events stream
                alice = await made.owner("alice")
                await made.bus.emit("session_enqueued", made.life(alice, "x").session, "c")
            async with running_bridge(made.settings(redis_url, format="auto")) as bridge:
                assert bridge.format == expected
        finally:
            await manager.aclose()
            await made.close()
        said = [r.getMessage() for r in caplog.records if "detected" in r.getMessage()]
        assert said and f"as {expected} (detected: " in said[-1]


async def _produce(installation: Installation, lives: list[Any], n: int, rate: float) -> None:
    """``n`` lifecycle messages, each with its own reason (``r<i>``), about ``rate`` a second."""
    for i in range(n):
        life = lives[i % len(lives)]
        await installation.bus.emit("kernel_started", life.main.id, life.session, f"r{i}")
        if i % 50 == 49:
            await anyio.sleep(50 / rate)


async def _reasons(redis: aredis.Redis) -> list[str]:
    return [getattr(e, "reason", "GAP") for _, e in await gateway_history(redis)]


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_bridge_killed_at_random_points_of_5000_events_loses_and_doubles_nothing(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    import random
    import sys

    alice = await installation.owner("alice")
    lives = [installation.life(alice, f"k9-{i}", kernels=1) for i in range(20)]
    for life in lives:
        await life.rows()
    settings = installation.settings(redis_url)
    env = {**__import__("os").environ, **settings.to_env()}
    rng = random.Random(20261205)
    total = 5000
    # its first run under way: where it starts following is written (before that, a bridge
    # that never ran has no place in the bus to come back to)
    async with running_bridge(settings):
        pass
    producer = anyio.create_task_group()
    kills = 0
    async with producer:
        producer.start_soon(_produce, installation, lives, total, 600.0)
        while kills < 8:
            proc = await anyio.open_process(
                [sys.executable, "-m", "gateway.cli", "bridge"], env=env
            )
            await anyio.sleep(rng.uniform(0.4, 2.0))
            proc.kill()  # SIGKILL: no lease given back, whatever was in flight
            await proc.wait()
            kills += 1
    async with await anyio.open_process(
        [sys.executable, "-m", "gateway.cli", "bridge"], env=env
    ) as last:
        try:

            async def done() -> bool:
                return len(await gateway_history(async_redis)) >= total

            try:
                await wait_for(done, 60, f"all {total} events")
            except AssertionError:
                got = await _reasons(async_redis)
                raise AssertionError(f"{len(got)} events, last {got[-3:]}") from None
            await anyio.sleep(0.5)
        finally:
            last.terminate()
            await last.wait()
    reasons = await _reasons(async_redis)
    assert len(reasons) == total, f"{len(reasons) - total:+d} events"
    assert reasons == [f"r{i}" for i in range(total)]  # none lost, none twice, in order


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_standby_takes_over_within_seconds_of_the_active_bridge_dying(
    installation: Installation, async_redis: aredis.Redis, redis_url: str
) -> None:
    import time

    from tests.support.bridge import spawned_bridge

    alice = await installation.owner("alice")
    lives = [installation.life(alice, f"sb-{i}", kernels=1) for i in range(5)]
    for life in lives:
        await life.rows()
    total = 1500
    with spawned_bridge(installation.settings(redis_url)) as active:
        with spawned_bridge(installation.settings(redis_url), wait="standby") as standby:
            async with anyio.create_task_group() as producer:
                producer.start_soon(_produce, installation, lives, total, 500.0)
                await anyio.sleep(1.0)
                active.kill()
                died = time.monotonic()

                async def took_over() -> bool:
                    state = await anyio.to_thread.run_sync(standby.ready)
                    return bool(state and state.get("role") == "active" and state["ready"])

                await wait_for(took_over, 10, "the standby to take over")
                takeover = time.monotonic() - died

            async def done() -> bool:
                return len(await gateway_history(async_redis)) >= total

            await wait_for(done, 30, f"all {total} events")
            metrics = await anyio.to_thread.run_sync(standby.metrics)
    print(f"standby took over {takeover:.2f}s after the active bridge was killed")
    assert takeover < settings_ttl(installation) + 2.0
    assert await _reasons(async_redis) == [f"r{i}" for i in range(total)]
    assert "kev_bridge_lease_acquired_total 1.0" in metrics


def settings_ttl(installation: Installation) -> float:
    return installation.settings("redis://127.0.0.1:1/0").bridge.lease_ttl
