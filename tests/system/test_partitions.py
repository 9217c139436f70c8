"""Partitions through real gateways and a real redis-server (and a real Redis Cluster): a
stream that spans partitions gets every event once, each owner's in order, across reconnects
to other replicas (vector ids); a user's stream resumes with a plain id on another replica;
an admin's with a vector id; a model of "events of N partitions, reconnect anywhere"; a
mismatch of N refused with both numbers named; 8 partitions over the 3 masters of a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.rediscluster import HOST as CLUSTER_HOST
from devtools.rediscluster import LocalRedisCluster, key_slot
from gateway.cli import main as gateway_main
from gateway.consumer import SSEEvent, StreamError
from gateway.replica.lifespan import running_replica
from publisher import AsyncPublisher, Keys
from publisher.errors import PublishRejected
from publisher.partitions import PartitionMismatch, Partitions, is_vector, partition_of
from publisher.schema import SessionRef
from tests.support.fleet import fleet, until_streams
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, BOB, ROOT, seed
from tests.support.redis_server import RedisServer
from tests.support.wait import until

pytestmark = pytest.mark.anyio

N = 4
#: owners whose events land in every partition of N (and alice, who has a stream)
OWNERS = ["alice", *(f"user-{i}" for i in range(20))]


def test_the_owners_cover_every_partition() -> None:
    assert {partition_of(o, N) for o in OWNERS} == set(range(N))


def ref(owner: str, session: str) -> SessionRef:
    key = ALICE.access_key if owner == "alice" else f"AK-{owner}"
    return SessionRef(
        session_id=session, owner_access_key=key, owner_user_id=owner, domain="default",
        group="default",
    )  # fmt: skip


@contextlib.contextmanager
def replicas(url: str, n: int = 2, **changes: object) -> Iterator[list[RunningGateway]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(run_gateway(gateway_settings(url, redis_partitions=N, **changes)))
            for _ in range(n)
        ]


def publisher(url: str, partitions: int = N) -> AsyncPublisher:
    return AsyncPublisher.from_url(url, partitions=partitions)


async def kernel_events(events: object, n: int, timeout: float = 10) -> list[SSEEvent]:
    got: list[SSEEvent] = []
    with anyio.fail_after(timeout):
        async for event in events:  # type: ignore[attr-defined]
            if event.event.startswith("kernel_"):
                got.append(event)
                if len(got) == n:
                    break
    return got


def reasons(events: list[SSEEvent]) -> list[str]:
    return [json.loads(e.data)["reason"] for e in events]


def assert_each_owner_in_order(got: list[str], published: list[str]) -> None:
    """Every published reason once, and each owner's (``<owner>:<i>``) in publishing order
    (there is no order across partitions)."""
    assert sorted(got) == sorted(published), (len(got), len(published))
    for owner in {r.split(":")[0] for r in published}:
        mine = [r for r in got if r.split(":")[0] == owner]
        assert mine == [r for r in published if r.split(":")[0] == owner], owner


async def test_a_stream_spanning_partitions_gets_every_event_once_across_reconnects(
    redis_url: str,
) -> None:
    await seed(redis_url)
    # each resuming stream is ended (rebalance) every ~1 s and resumes on the other replica
    # with its vector id
    with replicas(redis_url, stream_max_lifetime=1, retry_ms=50, retry_jitter_ms=0) as (
        one,
        two,
    ):
        async with (
            publisher(redis_url) as pub,
            fleet([one.base_url, two.base_url], 3) as first,
            fleet([two.base_url, one.base_url], 3) as second,
        ):
            await until_streams(one.base_url, 3)
            await until_streams(two.base_url, 3)
            published = []
            for i in range(400):
                owner = OWNERS[i % len(OWNERS)]
                published.append(f"{owner}:{i}")
                await pub.publish(ref(owner, f"s{i % 7}").started(published[-1]))
                await anyio.sleep(0.008)
            consumers = first + second
            await until(
                lambda: all(len(c.reasons) >= len(published) for c in consumers),
                20,
                "every consumer to have every event",
            )
            await anyio.sleep(0.3)  # a duplicate would show by now
        for consumer in consumers:
            assert consumer.rounds[-1] >= 1, "it never reconnected"
            assert all(is_vector(i) for i in consumer.ids)
            assert len(set(consumer.ids)) == len(consumer.ids)
            assert_each_owner_in_order(consumer.reasons, published)


async def test_a_users_stream_resumes_with_a_plain_id_on_another_replica(
    redis_url: str,
) -> None:
    await seed(redis_url)
    with replicas(redis_url) as (one, two):
        async with publisher(redis_url) as pub:
            async with stream_as(ALICE, one.base_url) as (_, events):
                for i in range(3):
                    await pub.publish(ref("alice", "mine").started(f"alice:{i}"))
                    await pub.publish(ref("user-1", "other").started(f"user-1:{i}"))
                got = await kernel_events(events, 3)
            assert reasons(got) == ["alice:0", "alice:1", "alice:2"]
            last = got[1].id
            assert last is not None and not is_vector(last)
            for i in range(3, 5):
                await pub.publish(ref("alice", "mine").started(f"alice:{i}"))
            async with stream_as(ALICE, two.base_url, last_event_id=last) as (_, events):
                again = await kernel_events(events, 3)
    assert reasons(again) == ["alice:2", "alice:3", "alice:4"]
    assert again[0].id == got[2].id  # the same history, the same id


async def test_an_admins_stream_resumes_with_a_vector_id_on_another_replica(
    redis_url: str,
) -> None:
    await seed(redis_url)
    with replicas(redis_url) as (one, two):
        async with publisher(redis_url) as pub:
            published = [f"{o}:{i}" for i, o in enumerate(OWNERS)]
            async with stream_as(ROOT, one.base_url) as (_, events):
                for reason in published:
                    await pub.publish(ref(reason.split(":")[0], "s").started(reason))
                got = await kernel_events(events, len(published))
            assert_each_owner_in_order(reasons(got), published)
            at = 5
            vector = got[at].id
            assert vector is not None and is_vector(vector) and vector.startswith(f"{N}_")
            more = [f"{o}:{i}" for i, o in enumerate(OWNERS, start=100)]
            for reason in more:
                await pub.publish(ref(reason.split(":")[0], "s").started(reason))
            expected = reasons(got)[at + 1 :] + more
            async with stream_as(ROOT, two.base_url, last_event_id=vector) as (_, events):
                again = await kernel_events(events, len(expected))
                await pub.publish(ref("user-3", "s").started("user-3:live"))
                [live] = await kernel_events(events, 1)
    assert sorted(reasons(again)) == sorted(expected)
    assert_each_owner_in_order(reasons(again), expected)
    assert reasons([live]) == ["user-3:live"] and live.id is not None and is_vector(live.id)


async def test_a_vector_id_of_another_width_is_a_400(redis_url: str) -> None:
    await seed(redis_url)
    with replicas(redis_url, n=1) as (one,):
        with pytest.raises(StreamError) as refused:
            async with stream_as(ROOT, one.base_url, last_event_id="2_1-0_1-0"):
                pass
    assert refused.value.status == 400
    assert b"a vector id of 2 partitions; this deployment has 4" in refused.value.body


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """A redis-server of the model test's own: its examples share it (each one's events are
    told apart by a tag), with two replicas on it for all of them."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


#: what a consumer does between two publishes: read on, or reconnect to a replica
steps = st.lists(
    st.tuples(
        st.lists(st.sampled_from(OWNERS), min_size=0, max_size=6),  # events published
        st.one_of(st.none(), st.integers(0, 1)),  # then reconnect to replica 0/1, or not
    ),
    min_size=1,
    max_size=6,
)


def test_events_of_n_partitions_reconnect_anywhere_nothing_lost_or_doubled(
    model_url: str,
) -> None:
    anyio.run(seed, model_url)
    with replicas(model_url) as fleet_of_two:
        urls = [g.base_url for g in fleet_of_two]

        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(steps)
        def model(plan: list[tuple[list[str], int | None]]) -> None:
            anyio.run(_run_model, urls, model_url, plan)

        model()


async def _run_model(urls: list[str], url: str, plan: list[tuple[list[str], int | None]]) -> None:
    tag = uuid.uuid4().hex[:8]
    published: list[str] = []
    got: list[SSEEvent] = []
    last: str | None = None
    where = 0
    async with publisher(url) as pub:
        stack = contextlib.AsyncExitStack()
        _, events = await stack.enter_async_context(
            stream_as(ROOT, urls[where], last_event_id=last)
        )
        try:
            for owners, reconnect in plan:
                for owner in owners:
                    reason = f"{owner}:{tag}-{len(published)}"
                    published.append(reason)
                    await pub.publish(ref(owner, tag).started(reason))
                if reconnect is not None:
                    # read a part of what is due, then go (the rest waits in history)
                    mine = [r for r in reasons(got) if tag in r]
                    due = len(published) - len(mine)
                    if due:
                        part = await kernel_events(events, (due + 1) // 2)
                        got += part
                    last = got[-1].id if got else None
                    await stack.aclose()
                    stack = contextlib.AsyncExitStack()
                    where = reconnect
                    _, events = await stack.enter_async_context(
                        stream_as(ROOT, urls[where], last_event_id=last)
                    )
            due = len(published) - len([r for r in reasons(got) if tag in r])
            if due:
                got += await kernel_events(events, due)
            await pub.publish(ref("user-0", tag).started(f"user-0:{tag}-fence"))
            got += await kernel_events(events, 1)
        finally:
            await stack.aclose()
    seen = [r for r in reasons(got) if tag in r]
    assert seen[-1] == f"user-0:{tag}-fence"
    assert_each_owner_in_order(seen[:-1], published)


async def test_another_number_of_partitions_is_refused_naming_both(redis_url: str) -> None:
    async with publisher(redis_url, partitions=4) as pub:
        assert await pub.publish(ref("alice", "s").started("first"))
    # a replica
    settings = gateway_settings(redis_url, redis_partitions=2)
    with pytest.raises(PartitionMismatch, match=r"has 2 partition\(s\) but Redis records 4"):
        async with running_replica(settings):
            pass
    # a publisher: its events are rejected, the error names both
    async with publisher(redis_url, partitions=1) as one:
        with pytest.raises(PublishRejected, match=r"has 1 partition\(s\) but Redis records 4"):
            await one.publish(ref("alice", "s").started("refused"))
        await one.aclose()
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("kev:partitions") == b"4"
        assert (
            client.xlen("kev:events")
            + sum(client.xlen(k.history) for k in Partitions(Keys(), 4).keys[1:])
            == 1
        )


async def test_eight_partitions_spread_over_every_master_of_a_cluster(
    redis_cluster: LocalRedisCluster,
) -> None:
    url = redis_cluster.url
    await seed(url)
    names = Partitions(Keys("{kev}", cluster=True), 8).keys
    owners = ["alice", *(f"user-{i}" for i in range(40))]
    assert {partition_of(o, 8) for o in owners} == set(range(8))
    with contextlib.ExitStack() as stack:
        one, two = (
            stack.enter_context(run_gateway(gateway_settings(url, redis_partitions=8)))
            for _ in range(2)
        )
        async with AsyncPublisher.from_url(url, partitions=8) as pub:
            published = [f"{o}:{i}" for i, o in enumerate(owners)]
            async with (
                stream_as(ROOT, one.base_url) as (_, events),
                stream_as(ALICE, one.base_url) as (_, alices),
            ):
                for reason in published:
                    await pub.publish(ref(reason.split(":")[0], "c").started(reason))
                got = await kernel_events(events, len(published), timeout=20)
                [alice] = await kernel_events(alices, 1)
            more = [f"{o}:{i}" for i, o in enumerate(owners, start=100)]
            for reason in more:
                await pub.publish(ref(reason.split(":")[0], "c").started(reason))
            # resumed on the other replica: the admin's by its vector, alice's by a plain id
            vector, plain = got[9].id, alice.id
            assert vector is not None and is_vector(vector)
            assert plain is not None and not is_vector(plain)
            expected = reasons(got)[10:] + more
            async with (
                stream_as(ROOT, two.base_url, last_event_id=vector) as (_, events),
                stream_as(ALICE, two.base_url, last_event_id=plain) as (_, alices),
            ):
                again = await kernel_events(events, len(expected), timeout=20)
                [alice_again] = await kernel_events(alices, 1)
    assert_each_owner_in_order(reasons(got), published)
    assert_each_owner_in_order(reasons(again), expected)
    assert reasons([alice, alice_again]) == ["alice:0", "alice:100"]
    # each partition's history is on the master of its slot, and every master has some
    held: dict[int, int] = {}
    for port in redis_cluster.masters():
        with redis.Redis(host=CLUSTER_HOST, port=port) as node:
            for k in names:
                with contextlib.suppress(redis.ResponseError):  # MOVED: another master's
                    if node.xlen(k.history):
                        held[port] = held.get(port, 0) + 1
    assert sorted(held) == sorted(redis_cluster.masters()), held
    assert sum(held.values()) == 8
    assert len({key_slot(k.history) for k in names}) == 8


async def test_a_lost_record_of_the_number_is_made_again_and_another_one_is_named(
    redis_url: str,
) -> None:
    """Redis lost the record (``<prefix>:partitions``) while replicas run: the next look of
    the history watch records the replicas' number again, so a publisher with another number
    is refused as at any time; a record of another number is named (``/ready``, the gauge)
    while the replica goes on serving."""
    await seed(redis_url)
    with replicas(redis_url, n=1) as (one,):

        def mismatch() -> float:
            text = httpx.get(f"{one.base_url}/metrics", timeout=5).text
            [line] = [x for x in text.splitlines() if x.startswith("kev_partitions_mismatch")]
            return float(line.split()[1])

        with redis.Redis.from_url(redis_url) as client:
            assert client.get("kev:partitions") == str(N).encode()
            client.delete("kev:partitions")  # as a Redis without persistence after a restart
            await until(lambda: client.get("kev:partitions") == str(N).encode(), 10, "recorded")
            async with publisher(redis_url, partitions=2) as wrong:
                with pytest.raises(
                    PublishRejected, match=rf"has 2 partition\(s\) but Redis records {N}"
                ):
                    await wrong.publish(ref("alice", "s").started("refused"))
                await wrong.aclose()
            client.set("kev:partitions", "2")  # another process recorded its number first
            await until(lambda: mismatch() == 1, 10, "the mismatch named")
            answer = httpx.get(f"{one.base_url}/ready", timeout=5)
            assert answer.status_code == 200, answer.text  # it still serves what it knows
            assert f"has {N} partition(s) but Redis records 2" in answer.json()["partitions"]
            async with stream_as(ALICE, one.base_url) as (_, events):
                client.set("kev:partitions", str(N))
                await until(lambda: mismatch() == 0, 10, "the record fixed")
                assert "partitions" not in httpx.get(f"{one.base_url}/ready", timeout=5).json()
                async with publisher(redis_url) as pub:
                    await pub.publish(ref("alice", "s").started("after"))
                got = reasons(await kernel_events(events, 1))
    assert got[-1] == "after"


async def admin(argv: list[str]) -> int:
    """A ``gateway`` admin command (its own event loop, in a thread)."""
    return int(await anyio.to_thread.run_sync(gateway_main, argv))


async def test_a_future_id_in_one_partition_fails_ready_until_reset_history_of_all(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(redis_url)
    names = Partitions(Keys(), N).keys
    with replicas(redis_url, n=1) as (one,):
        async with publisher(redis_url) as pub, stream_as(ROOT, one.base_url) as (_, events):
            for owner in OWNERS:
                await pub.publish(ref(owner, "f").started(f"{owner}:before"))
            await kernel_events(events, len(OWNERS))
            with redis.Redis.from_url(redis_url) as client:
                client.xadd(names[2].history, {"e": b"x"}, id="99999999999999-0")

            def ready() -> dict[str, object]:
                return dict(httpx.get(f"{one.base_url}/ready", timeout=5).json())

            await until(lambda: not ready()["ready"], 10, "/ready 503")
            body = ready()
            assert "partition 2's history" in str(body["history"]), body
            assert body["partitions_ready"] == [True] * N, body  # only the history
            # the admin's way out, with the deployment's number of partitions: every
            # partition's history starts anew, and every stream is told
            monkeypatch.setenv("GATEWAY_REDIS_PARTITIONS", str(N))
            assert await admin(["reset-history", "--yes", "--redis-url", redis_url]) == 0
            await until(lambda: bool(ready()["ready"]), 15, "/ready 200 again")
            with anyio.fail_after(10):
                async for event in events:
                    if event.event == "history_truncated" and '"reset"' in event.data:
                        break
            await pub.publish(ref("user-9", "f").started("user-9:after"))
            [after] = await kernel_events(events, 1)
    assert reasons([after]) == ["user-9:after"]
    monkeypatch.setenv("GATEWAY_REDIS_PARTITIONS", "2")
    assert await admin(["reset-history", "--yes", "--redis-url", redis_url]) == 2


async def test_a_replica_subscribes_only_to_the_partitions_its_streams_need(
    redis_url: str,
) -> None:
    await seed(redis_url)
    mine = partition_of("alice", N)
    assert mine != 0
    names = Partitions(Keys(), N).keys
    with replicas(redis_url, n=1, redis_partition_linger=1) as (one,):

        def states() -> list[bool | None]:
            return list(httpx.get(f"{one.base_url}/ready", timeout=5).json()["partitions_ready"])

        def subscribers() -> list[int]:
            with redis.Redis.from_url(redis_url) as client:
                return [int(n) for _, n in client.pubsub_numsub(*(k.channel for k in names))]

        only_0 = [1] + [0] * (N - 1)
        assert states() == [True] + [None] * (N - 1)
        assert subscribers() == only_0
        async with publisher(redis_url) as pub:
            async with stream_as(ALICE, one.base_url) as (_, events):
                assert [s is not None for s in states()] == [p in (0, mine) for p in range(N)]
                assert subscribers() == [int(p in (0, mine)) for p in range(N)]
                await pub.publish(ref("alice", "k").started("alice:0"))
                [first] = await kernel_events(events, 1)
            # a second later no stream needs it: unsubscribed, its watermark forgotten
            await until(lambda: states()[mine] is None, 10, "partition unsubscribed")
            assert subscribers() == only_0
            for i in (1, 2):  # while no replica follows alice's partition
                await pub.publish(ref("alice", "k").started(f"alice:{i}"))
            # her resuming stream subscribes to it again, replays, then goes live
            async with stream_as(ALICE, one.base_url, last_event_id=first.id) as (_, events):
                got = await kernel_events(events, 2)
                await pub.publish(ref("alice", "k").started("alice:3"))
                got += await kernel_events(events, 1)
            assert reasons(got) == ["alice:1", "alice:2", "alice:3"]
            # an admin's stream needs every partition
            async with stream_as(ROOT, one.base_url):
                assert states() == [True] * N
                assert subscribers() == [1] * N
        await until(lambda: states() == [True] + [None] * (N - 1), 10, "back to partition 0")


@pytest.mark.parametrize("move", ["failover", "reshard"])
async def test_moving_one_partitions_slot_loses_nothing(move: str) -> None:
    """CLUSTER FAILOVER of the master of partition 3's slot, or its slot resharded to another
    master with its keys, while events of every partition are published and spanning streams
    read through two replicas: every consumer gets every event once, each owner's in order,
    no notice; partition 3's subscription followed its slot (its session started over on the
    new master and gap-filled)."""
    names = Partitions(Keys("{kev}", cluster=True), 8).keys
    slot = key_slot(names[3].history)
    owners = [f"user-{i}" for i in range(40)]
    with LocalRedisCluster() as cluster:
        url = cluster.url
        await seed(url)
        old_master = cluster.master_of_slot(slot)
        with contextlib.ExitStack() as stack:
            one, two = (
                stack.enter_context(run_gateway(gateway_settings(url, redis_partitions=8)))
                for _ in range(2)
            )
            published: list[str] = []
            async with (
                AsyncPublisher.from_url(url, partitions=8) as pub,
                fleet([one.base_url, two.base_url], 2) as first,
                fleet([two.base_url, one.base_url], 2) as second,
            ):
                await until_streams(one.base_url, 2)
                await until_streams(two.base_url, 2)
                before = [gw.state.keeper.subscribers[3].reconnects for gw in (one, two)]  # type: ignore[union-attr]

                async def publish(n: int) -> None:
                    for _ in range(n):
                        i = len(published)
                        reason = f"{owners[i % len(owners)]}:{i}"
                        published.append(reason)
                        await pub.publish(ref(owners[i % len(owners)], "fo").started(reason))
                        await anyio.sleep(0.005)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(publish, 400)
                    await anyio.sleep(0.5)
                    # Mid-stream: both replicas have followed partition 3's history (one that
                    # saw none there is told of a reshard: test_node_changes.py).
                    await until(
                        lambda: all(gw.state.keeper.subscribers[3].epoch for gw in (one, two)),  # type: ignore[union-attr]
                        20,
                        "partition 3's first event at both replicas",
                    )
                    if move == "failover":
                        new_master = await anyio.to_thread.run_sync(cluster.failover, slot)
                    else:
                        new_master = next(p for p in cluster.masters() if p != old_master)
                        await anyio.to_thread.run_sync(cluster.reshard_slot, slot, new_master)
                consumers = first + second
                await until(
                    lambda: all(len(c.reasons) >= len(published) for c in consumers),
                    30,
                    "every consumer to have every event",
                )
                await anyio.sleep(0.3)
                after = [gw.state.keeper.subscribers[3].reconnects for gw in (one, two)]  # type: ignore[union-attr]
        assert cluster.master_of_slot(slot) == new_master
    assert new_master != old_master
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    for consumer in consumers:
        assert not [line for line in consumer.log if line.startswith("history_truncated")]
        assert len(set(consumer.ids)) == len(consumer.ids)
        assert_each_owner_in_order(consumer.reasons, published)


def copy_keys(source: str, *args: str, partitions: int) -> subprocess.CompletedProcess[str]:
    """``gateway copy-keys ARGS`` from ``source``, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    env.update({"GATEWAY_REDIS_URL": source, "GATEWAY_REDIS_PARTITIONS": str(partitions)})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "copy-keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_copy_keys_moves_every_partition_and_vector_ids_resume_there(
    redis_url: str, redis_cluster: LocalRedisCluster
) -> None:
    """A deployment of 4 partitions copied from a redis-server onto a cluster: every
    partition's history under the cluster's names, the record of N with it; a vector id
    from the old Redis resumes on the cluster. Another N is refused, naming both."""
    await seed(redis_url)
    published = [f"{o}:{i}" for i, o in enumerate(OWNERS)]
    with replicas(redis_url, n=1) as (one,):
        async with publisher(redis_url) as pub, stream_as(ROOT, one.base_url) as (_, events):
            for reason in published:
                await pub.publish(ref(reason.split(":")[0], "cp").started(reason))
            got = await kernel_events(events, len(published))
    vector = got[4].id
    assert vector is not None and is_vector(vector)
    refused = copy_keys(redis_url, "--to", redis_cluster.url, partitions=2)
    assert refused.returncode == 2, refused
    assert "records 4 partitions" in refused.stderr and "has 2" in refused.stderr
    done = copy_keys(redis_url, "--to", redis_cluster.url, partitions=N)
    assert done.returncode == 0, done.stderr
    assert f"history: {N} keys ({len(published)} entries)" in done.stdout, done.stdout
    with redis.RedisCluster(host=CLUSTER_HOST, port=redis_cluster.masters()[0]) as client:
        names = Partitions(Keys("{kev}", cluster=True), N).keys
        assert sum(client.xlen(k.history) for k in names) == len(published)
        assert client.get("{kev}:partitions") == b"4"
    with contextlib.ExitStack() as stack:
        there = stack.enter_context(
            run_gateway(gateway_settings(redis_cluster.url, redis_partitions=N))
        )
        async with stream_as(ROOT, there.base_url, last_event_id=vector) as (_, events):
            again = await kernel_events(events, len(published) - 5)
    assert sorted(reasons(again)) == sorted(reasons(got)[5:])


async def test_a_history_of_one_partition_cannot_become_several(
    redis_url: str, private_redis: RedisServer
) -> None:
    """A deployment that predates the record of N (or whose ACL kept it from writing one)
    has history and no record: a replica with N>1 is refused, naming why, and so is a copy
    into N>1 partitions; a copy with one partition records it on the target (a review's
    finding: the switch was accepted, and 18 of 20 events vanished from a resume)."""
    async with publisher(redis_url, partitions=1) as pub:
        for i in range(20):
            await pub.publish(ref(OWNERS[i % len(OWNERS)], "old").started(f"old:{i}"))
    with redis.Redis.from_url(redis_url) as client:
        client.delete("kev:partitions")  # as an install from before the record
    settings = gateway_settings(redis_url, redis_partitions=N)
    with pytest.raises(PartitionMismatch, match="holds a history of 20 events and no recorded"):
        async with running_replica(settings):
            pass
    refused = copy_keys(redis_url, "--to", private_redis.url, partitions=N)
    assert refused.returncode == 2 and "no recorded number of partitions" in refused.stderr
    done = copy_keys(redis_url, "--to", private_redis.url, partitions=1)
    assert done.returncode == 0, done.stderr
    with redis.Redis.from_url(private_redis.url) as target:
        assert target.get("kev:partitions") == b"1" and target.xlen("kev:events") == 20
    async with running_replica(gateway_settings(redis_url, redis_partitions=1)):
        pass  # one partition: as it always was
    # the copy with --replace onto a target that records another number: refused too
    with redis.Redis.from_url(private_redis.url) as target:
        target.set("kev:partitions", str(N))
    clash = copy_keys(redis_url, "--to", private_redis.url, "--replace", partitions=1)
    assert clash.returncode == 2 and f"target records {N} partitions" in clash.stderr
    # a publisher with N recorded it first (the usual order of an upgrade): the replica
    # finds partition 0's history holding other partitions' owners and names it (not a
    # refusal: a stolen publisher credential could put such events there too)
    with redis.Redis.from_url(redis_url) as client:
        client.delete("kev:partitions")
    async with publisher(redis_url, partitions=N) as pub:
        await pub.publish(ref(OWNERS[0], "new").started("new"))
    with replicas(redis_url, n=1) as (one,):
        body = httpx.get(f"{one.base_url}/ready", timeout=5).json()
        assert "belong to owners of other partitions" in body["partitions"], body
        text = httpx.get(f"{one.base_url}/metrics", timeout=5).text
        assert "kev_partitions_mismatch 1.0" in text


async def test_one_partitions_outage_leaves_the_others_served() -> None:
    """The master of one partition's slot and its replica frozen (SIGSTOP; the cluster set to
    serve the slots it still covers): the replica stays ready and live past
    ``liveness_timeout``, names the partition in ``/ready`` and ``/metrics``, a user's stream
    of another partition and an admin's spanning stream go on getting their events, and once
    the nodes wake every event of the frozen partition, published meanwhile, follows, once."""
    parts = Partitions(Keys("{kev}", cluster=True), 8)
    with LocalRedisCluster() as cluster:
        for port in cluster.ports:
            with redis.Redis(host=CLUSTER_HOST, port=port) as node:
                node.config_set("cluster-require-full-coverage", "no")
        url = cluster.url
        await seed(url)
        master = [cluster.master_of_slot(key_slot(k.history)) for k in parts.keys]
        # a user whose partition lives elsewhere than a partition p (not 0) that will freeze
        user, p = next(
            (u, p)
            for u in (ALICE, BOB)
            for p in range(1, 8)
            if master[p] not in (master[0], master[partition_of(u.user_id, 8)])
        )
        frozen = [master[p], *cluster.replicas_of(master[p])]
        down = [q for q in range(8) if master[q] == master[p]]  # every partition it holds
        owners = [o for o in OWNERS if master[partition_of(o, 8)] != master[p]]
        in_p = [o for o in (f"user-{i}" for i in range(200)) if partition_of(o, 8) == p][:3]
        settings = gateway_settings(url, redis_partitions=8, liveness_timeout=2.0)
        with run_gateway(settings) as one:

            def ready() -> tuple[int, dict[str, object]]:
                answer = httpx.get(f"{one.base_url}/ready", timeout=5)
                return answer.status_code, dict(answer.json())

            def gauge() -> float:
                text = httpx.get(f"{one.base_url}/metrics", timeout=5).text
                [line] = [x for x in text.splitlines() if x.startswith("kev_partitions_not_live")]
                return float(line.split()[1])

            async with (
                AsyncPublisher.from_url(url, partitions=8) as pub,
                AsyncPublisher.from_url(url, partitions=8, timeout=0.5) as pub_p,
                stream_as(ROOT, one.base_url) as (_, spanning),
                stream_as(user, one.base_url) as (_, users),
            ):
                mine = ref(user.user_id, "u")
                await pub.publish(mine.started(f"{user.user_id}:0"))
                await pub.publish(ref(in_p[0], "p").started(f"{in_p[0]}:0"))
                got = reasons(await kernel_events(spanning, 2))
                got_user = reasons(await kernel_events(users, 1))
                pids = [cluster.node(port).proc.pid for port in frozen]  # type: ignore[union-attr]
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                try:
                    during_p = [f"{o}:1" for o in in_p]
                    for reason in during_p:  # queued by their publisher until the node wakes
                        await pub_p.publish(ref(reason.split(":")[0], "p").started(reason))
                    await anyio.sleep(12)  # past START_TIMEOUT and liveness_timeout
                    status, body = ready()
                    assert status == 200 and body["partitions_down"] == down, body
                    health = httpx.get(f"{one.base_url}/health", timeout=5)
                    assert health.status_code == 200, health.text
                    assert gauge() == len(down)
                    during = [f"{o}:1" for o in owners] + [f"{user.user_id}:1"]
                    for reason in during:
                        owner = reason.split(":")[0]
                        await pub.publish(
                            ref(owner, "u" if owner == user.user_id else "c").started(reason)
                        )
                    got += reasons(await kernel_events(spanning, len(during), timeout=20))
                    got_user += reasons(await kernel_events(users, 1))
                finally:
                    for pid in pids:
                        os.kill(pid, signal.SIGCONT)
                await until(lambda: ready()[1]["partitions_down"] == [], 30, "partition back")
                got += reasons(await kernel_events(spanning, len(during_p), timeout=30))
                after = [f"{o}:2" for o in (*in_p[:1], *owners[:3])]
                for reason in after:
                    await pub.publish(ref(reason.split(":")[0], "c").started(reason))
                got += reasons(await kernel_events(spanning, len(after), timeout=20))
                assert gauge() == 0
    published = [f"{user.user_id}:0", f"{in_p[0]}:0", *during_p, *during, *after]
    assert_each_owner_in_order(got, published)
    assert got_user == [f"{user.user_id}:0", f"{user.user_id}:1"]
