"""The gateway, the publisher and the identity store on a real Redis Cluster: six
redis-servers on loopback (3 masters, 3 replicas, no persistence, as shipped), joined by
``redis-cli --cluster create`` (:class:`devtools.rediscluster.LocalRedisCluster`).

Every name of the deployment is in one slot (the hash tag ``{kev}``), served by one master:
the topology changes below (a manual failover, a resharding, a SIGKILL) all move that slot
while a publisher publishes and a fleet of resuming consumers reads through two replicas.
The cluster's own calls block (they poll the nodes until every one agrees), so they run in a
worker thread: the publisher and the consumers keep going on the event loop meanwhile."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis

from devtools.rediscluster import LocalRedisCluster, key_slot
from gateway.consumer import StreamError
from gateway.identity.models import UnknownIdentityError, User
from gateway.identity.sessions import SESSION_COOKIE
from gateway.identity.store import IdentityStore
from publisher import AsyncPublisher, Keys, SyncPublisher
from publisher.bus import SHARDED_PUBLISH_SCRIPT
from publisher.connection import connect_async
from publisher.schema import decode_event
from tests.support.fleet import (
    Consumer,
    assert_complete,
    caught_up,
    fleet,
    kernel_events,
    publishing,
    until_streams,
)
from tests.support.gateway_server import RunningGateway, gateway_settings, run_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, ALICE_PASSWORD, ROOT, seed, session_of
from tests.support.reauth import Watch, closed_within, publish_steadily, watch
from tests.support.wait import until

pytestmark = pytest.mark.anyio

#: the deployment's names on a cluster: one hash tag, one slot
KEYS = Keys("{kev}", cluster=True)
BUS_SLOT = key_slot(KEYS.history)
#: the publish script's SHA1 (its cluster form), as EVALSHA names it
SCRIPT_SHA = hashlib.sha1(SHARDED_PUBLISH_SCRIPT.encode()).hexdigest()
#: a change reaches every open stream within this (as on a single Redis:
#: tests/system/test_reauthorization.py)
TARGET = 1.0


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    """A cluster of this test's own (its topology changes)."""
    with LocalRedisCluster() as running:
        yield running


# -- helpers ----------------------------------------------------------------------------------


def history_on(port: int) -> list[tuple[str, str]]:
    """(id, reason) of every event in the history the node on ``port`` holds, oldest first
    (read from the node itself, not through a cluster client)."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as node:
        return [
            (stream_id.decode(), decode_event(fields[b"e"]).reason)
            for stream_id, fields in node.xrange(KEYS.history)
        ]


def notices(consumer: Consumer) -> list[str]:
    """The reasons of the ``history_truncated`` notices a consumer of :func:`fleet` got."""
    found = []
    for line in consumer.log:
        if line.startswith("history_truncated "):
            # the log keeps the data's last 12 characters: '..."reason":"unknown"}'
            match = re.search(r'"(\w+)"}$', line)
            found.append(match.group(1) if match else line)
    return found


def uncache_script(port: int) -> bool:
    """Whether the node on ``port`` had the publish script cached; it has not any more."""
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as node:
        [cached] = node.script_exists(SCRIPT_SHA)
        node.script_flush()
    return bool(cached)


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking call (the cluster's topology changes, the blocking publisher) off the loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


@contextlib.contextmanager
def two_replicas(url: str, **changes: object) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    with (
        run_gateway(gateway_settings(url, **changes)) as one,
        run_gateway(gateway_settings(url, **changes)) as two,
    ):
        yield one, two


@contextlib.asynccontextmanager
async def split_fleet(
    one: RunningGateway, two: RunningGateway, n: int
) -> AsyncIterator[list[Consumer]]:
    """``n`` resuming superadmin consumers, half first on each replica (each goes round both
    on a reconnect)."""
    async with (
        fleet([one.base_url, two.base_url], n // 2) as first,
        fleet([two.base_url, one.base_url], n - n // 2) as second,
    ):
        await until_streams(one.base_url, n // 2)
        await until_streams(two.base_url, n - n // 2)
        yield first + second


async def reconnected(replicas: tuple[RunningGateway, ...], before: list[int]) -> None:
    """Every replica's subscription started over after ``before`` and is live again."""
    await until(
        lambda: all(
            gw.state.subscriber.reconnects > n and gw.state.subscriber.ready
            for gw, n in zip(replicas, before, strict=True)
        ),
        15,
        "every replica's subscriber to follow the slot and be ready again",
    )


async def move_slot_under_load(
    cluster: LocalRedisCluster, move: Callable[[], Awaitable[int]]
) -> tuple[list[Consumer], list[str], tuple[RunningGateway, RunningGateway], list[int], int]:
    """Two replicas, ten consumers, a steady publisher; ``move`` changes where the bus slot is
    (returns its new master) after the first 50 events, and the publishing goes on
    until a hundred more events went out after every replica followed. Returns the consumers,
    every reason published (the fence last), the replicas, their subscribers' reconnect
    counts before the move and the new master's port."""
    await seed(cluster.url)
    with two_replicas(cluster.url) as replicas:
        async with (
            AsyncPublisher.from_url(cluster.url) as pub,
            split_fleet(*replicas, 10) as consumers,
        ):
            async with publishing(pub) as steady:
                await until(lambda: len(steady.reasons) >= 50, 10, "50 events before the move")
                before = [gw.state.subscriber.reconnects for gw in replicas]
                new_master = await move()
                await reconnected(replicas, before)
                mark = len(steady.reasons)
                await until(lambda: len(steady.reasons) >= mark + 100, 15, "100 events after")
            assert await pub.flush(timeout=10)
            assert pub.dropped == 0 and pub.rejected == 0
            expected = await caught_up(consumers, steady, 15)
        return consumers, expected, replicas, before, new_master


# -- the tests --------------------------------------------------------------------------------


async def test_two_replicas_deliver_every_event_once_in_order_on_a_cluster(
    cluster: LocalRedisCluster,
) -> None:
    await seed(cluster.url)
    with (
        run_gateway(gateway_settings(cluster.url)) as one,
        run_gateway(gateway_settings(cluster.url)) as two,
    ):
        async with (
            AsyncPublisher.from_url(cluster.url) as pub,
            fleet([one.base_url, two.base_url], 10) as consumers,
        ):
            await until_streams(one.base_url, 10)
            async with publishing(pub) as steady:
                await pytest.importorskip("anyio").sleep(1.0)
            expected = await caught_up(consumers, steady, 15)
        assert_complete(consumers, expected)
        # every name of the deployment is in the bus' slot, on one master
        assert one.state.keys.history == "{kev}:events" and one.state.keys.cluster
        master = cluster.master_of_slot(BUS_SLOT)
        assert one.state.subscriber.ready and two.state.subscriber.ready
        assert master in cluster.masters()


async def test_a_client_resumes_on_the_other_replica_with_exactly_what_it_missed(
    cluster: LocalRedisCluster,
) -> None:
    """Read on replica one, stop; 30 more events; resume on replica two with Last-Event-ID
    while a publisher keeps going: exactly the events after the id, in order, once, the
    replay and the live events joined without a gap or a duplicate."""
    await seed(cluster.url)
    ref = session_of(ROOT, "resume-on-two")
    with two_replicas(cluster.url) as (one, two):
        async with AsyncPublisher.from_url(cluster.url) as pub:
            async with stream_as(ROOT, one.base_url) as (_, events):
                first = await pub.publish_many([ref.started(f"first-{i}") for i in range(5)])
                seen = await kernel_events(events, 5)
            assert len(first) == 5 and [e.id for e in seen] == first
            missed = await pub.publish_many([ref.started(f"missed-{i}") for i in range(30)])
            assert len(missed) == 30
            published = [*first, *missed]
            async with stream_as(ROOT, two.base_url, last_event_id=first[2]) as (_, events):
                got: list[tuple[str, str]] = []
                async with anyio.create_task_group() as tg:

                    async def more() -> None:  # live events racing the replay
                        for i in range(40):
                            stream_id = await pub.publish(ref.started(f"live-{i}"))
                            assert stream_id is not None
                            published.append(stream_id)
                            await anyio.sleep(0.005)
                        published.append(await pub.publish(ref.started("fence")) or "")

                    tg.start_soon(more)
                    with anyio.fail_after(15):
                        async for event in events:
                            if event.event.startswith("kernel_"):
                                assert event.id is not None
                                got.append((event.id, json.loads(event.data)["reason"]))
                                if got[-1][1] == "fence":
                                    break
                            else:
                                assert event.event != "history_truncated", event
    reasons = [*(f"first-{i}" for i in range(3, 5)), *(f"missed-{i}" for i in range(30))]
    reasons += [*(f"live-{i}" for i in range(40)), "fence"]
    assert [i for i, _ in got] == published[3:]
    assert [r for _, r in got] == reasons
    assert len({i for i, _ in got}) == len(got)


async def test_a_manual_failover_of_the_bus_slot_loses_nothing(
    cluster: LocalRedisCluster,
) -> None:
    """CLUSTER FAILOVER of the bus slot's master under load: the old master hands over once
    its replica has caught up, so nothing is lost: every consumer has every event exactly
    once, in order, and no stream was told ``history_truncated``. Each replica's subscription
    followed the slot to its new master (its session started over there)."""
    old_master = cluster.master_of_slot(BUS_SLOT)

    async def move() -> int:
        port: int = await in_thread(cluster.failover, BUS_SLOT)
        return port

    consumers, expected, replicas, before, new_master = await move_slot_under_load(cluster, move)
    assert new_master != old_master and cluster.master_of_slot(BUS_SLOT) == new_master
    assert_complete(consumers, expected)
    assert not [notices(c) for c in consumers if notices(c)]
    for gw, n in zip(replicas, before, strict=True):
        assert gw.state.subscriber.reconnects > n
        assert gw.state.subscriber.new_histories == 0
    assert [reason for _, reason in history_on(new_master)] == expected


async def test_resharding_the_bus_slot_loses_nothing(cluster: LocalRedisCluster) -> None:
    """The bus slot moved with its keys to another master (as ``redis-cli --cluster
    reshard`` moves it) under load: nothing lost, nothing doubled, no notice; each replica's
    subscription followed the slot, and the history is on the new master (and gone from the
    old one)."""
    old_master = cluster.master_of_slot(BUS_SLOT)
    target = next(port for port in cluster.masters() if port != old_master)

    async def move() -> int:
        await in_thread(cluster.reshard_slot, BUS_SLOT, target)
        return target

    consumers, expected, replicas, before, new_master = await move_slot_under_load(cluster, move)
    assert cluster.master_of_slot(BUS_SLOT) == new_master == target
    assert_complete(consumers, expected)
    assert not [notices(c) for c in consumers if notices(c)]
    for gw, n in zip(replicas, before, strict=True):
        assert gw.state.subscriber.reconnects > n
        assert gw.state.subscriber.new_histories == 0
    assert [reason for _, reason in history_on(target)] == expected
    with redis.Redis(host="127.0.0.1", port=old_master) as old:
        assert old.cluster("COUNTKEYSINSLOT", BUS_SLOT) == 0


def promoted(cluster: LocalRedisCluster, replica: int, timeout: float = 30.0) -> int:
    """Wait (blocking, bounded) until every live node has ``replica`` serve the bus slot."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if all(
                cluster.master_of_slot(BUS_SLOT, port=port) == replica
                for port in cluster.live_ports()
            ):
                return replica
        if time.monotonic() > deadline:
            raise AssertionError(f"the replica on {replica} was not promoted in {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("replication", ["as it runs", "cut before the kill"])
async def test_a_killed_master_loses_only_what_replication_lost_and_says_so(
    cluster: LocalRedisCluster, replication: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of the bus slot's master under load (no persistence, as shipped): the cluster
    promotes its replica, which holds what asynchronous replication had carried. ``cut
    before the kill``: the replica is stopped (SIGSTOP), its link dropped by the master,
    and about twenty more events acknowledged by the master alone before the kill, so history
    surely loses them (a lagging replica, made certain). Judged against what the promoted
    replica really holds:

    * every consumer got every event the new master's history holds, in its order, once,
      and so every event published after recovery;
    * an event no consumer got is one history lost (acknowledged by the dead master,
      never replicated); a lost event a consumer got (dispatched before the kill) came
      once, in id order;
    * a ``history_truncated`` notice came only if history really lost events, with reason
      ``unknown`` (the watermark past the new master's end), and exactly when a replica
      said it pulled its watermark back; lost nothing: no notice, every event to everyone."""
    cut = replication == "cut before the kill"
    await seed(cluster.url)
    old_master = cluster.master_of_slot(BUS_SLOT)
    [replica] = cluster.replicas_of(old_master)
    with two_replicas(cluster.url) as replicas:
        async with (
            AsyncPublisher.from_url(cluster.url, timeout=0.3) as pub,
            split_fleet(*replicas, 10) as consumers,
        ):
            async with publishing(pub) as steady:
                await until(lambda: len(steady.reasons) >= 50, 10, "50 events before the kill")
                before = [gw.state.subscriber.reconnects for gw in replicas]
                killed = time.monotonic()
                if cut:
                    proc = cluster.node(replica).proc
                    assert proc is not None
                    os.kill(proc.pid, signal.SIGSTOP)
                    try:
                        with redis.Redis(host="127.0.0.1", port=old_master) as master:
                            assert master.client_kill_filter(_type="replica") == 1
                        cut_at = len(steady.reasons)
                        await until(
                            lambda: len(steady.reasons) >= cut_at + 20, 5, "20 unreplicated"
                        )
                        cluster.kill(old_master)
                    finally:
                        os.kill(proc.pid, signal.SIGCONT)
                    new_master: int = await in_thread(promoted, cluster, replica)
                else:
                    new_master = await in_thread(cluster.kill_master, BUS_SLOT)
                await reconnected(replicas, before)
                await until(lambda: pub.buffered == 0, 15, "the publisher to flush")
                recovered_after = time.monotonic() - killed
                mark = len(steady.reasons)
                await until(lambda: len(steady.reasons) >= mark + 100, 15, "100 events after")
            assert await pub.flush(timeout=10)
            assert pub.dropped == 0 and pub.rejected == 0
            expected = await caught_up(consumers, steady, 15)
    assert new_master == replica != old_master
    held = [reason for _, reason in history_on(new_master)]
    lost = set(expected) - set(held)
    assert held == [r for r in expected if r not in lost]  # in order, the losses aside
    if cut:
        # the one in flight at the cut may have been replicated
        assert len(lost) >= 15, f"the cut lost only {sorted(lost)}"
    else:
        assert len(lost) <= 5, sorted(lost, key=lambda r: int(r.partition("=")[2]))
    pulled_back = [
        r.getMessage() for r in caplog.records if "past the end of history" in r.getMessage()
    ]
    for consumer in consumers:
        # every event history holds, in order, once; so every one after recovery
        assert [r for r in consumer.reasons if r not in lost] == held, consumer.log[-10:]
        assert consumer.reasons[-len(expected[mark:]) :] == expected[mark:]
        assert len(set(consumer.ids)) == len(consumer.ids)
        assert consumer.ids == sorted(consumer.ids, key=id_key)
        # what a consumer did not get, history lost
        assert set(expected) - set(consumer.reasons) <= lost
        told = notices(consumer)
        assert set(told) <= {"unknown"}, told
        if told:
            assert lost, f"told {told} while the new master holds every event"
    told_any = any(notices(c) for c in consumers)
    assert told_any == bool(pulled_back), (pulled_back, [notices(c) for c in consumers])
    if not lost:
        assert_complete(consumers, expected)
        assert not told_any
    assert recovered_after < 20
    delivered_lost = {r for c in consumers for r in c.reasons} & lost
    print(f"\nkilled master ({replication}): {len(lost)} events lost by replication "
          f"({len(delivered_lost)} of them delivered before the kill), recovered in "
          f"{recovered_after:.1f} s, pulled back: {pulled_back}")  # fmt: skip


IDENTITY_CHANGES: dict[str, tuple[Callable[[IdentityStore], Awaitable[None]], str]] = {
    "keypair deactivated": (
        lambda store: store.set_keypair_active(ALICE.access_key, False),
        "revoked",
    ),
    "user removed with its keypairs": (
        lambda store: store.remove_user("alice", cascade=True),
        "revoked",
    ),
}


@pytest.mark.parametrize("kind", list(IDENTITY_CHANGES))
async def test_an_identity_change_ends_open_streams_on_a_cluster(
    cluster: LocalRedisCluster, kind: str
) -> None:
    """As on a single Redis (tests/system/test_reauthorization.py): alice's open stream on
    each replica ends with ``server_close`` saying why within a second of the change (the
    identity cache lives 5 s: the change came by message, on the shard channel), nothing
    after it, and she cannot open another."""
    change, reason = IDENTITY_CHANGES[kind]
    await seed(cluster.url)
    with two_replicas(cluster.url, identity_cache_ttl=5.0) as replicas:
        stop = anyio.Event()
        watches = [Watch() for _ in replicas]
        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_steadily, cluster.url, stop)
            for gw, w in zip(replicas, watches, strict=True):
                tg.start_soon(functools.partial(watch, gw.base_url, w, person=ALICE))
            await until(
                lambda: all(w.kernel_events() for w in watches), 10, "alice's events on both"
            )
            client = connect_async(cluster.url)
            try:
                changed = time.monotonic()
                await change(IdentityStore(client, Keys.for_url(cluster.url)))
            finally:
                await client.aclose()
            with anyio.fail_after(5):  # the identity cache's backstop would take 5 to 10 s
                for w in watches:
                    await w.ended.wait()
            stop.set()
        for gw in replicas:  # and a new stream with her keypair is refused on each
            with pytest.raises(StreamError) as refused:
                async with stream_as(ALICE, gw.base_url):
                    pass
            assert refused.value.status == 401, refused.value
    figures = closed_within(watches, changed, reason)
    assert max(figures) <= TARGET, figures


async def test_the_identity_store_checks_existence_in_its_transactions_on_a_cluster(
    cluster: LocalRedisCluster,
) -> None:
    """The store's management calls on a cluster do what they do on a single Redis: a new
    user is added, an unknown keypair or user is refused (UnknownIdentityError) and leaves
    nothing behind. (redis-py 8.2's cluster pipeline, watching, splits EXISTS by slot and
    returns the pipeline itself, always true: every key looked present, and the coroutine of
    the EXISTS was dropped unawaited; the store asks TYPE since 7c021f8.)"""
    await seed(cluster.url)
    client = connect_async(cluster.url)
    try:
        keys = Keys.for_url(cluster.url)
        store = IdentityStore(client, keys)
        unknown = "AKIANOSUCHKEY0000000"
        with pytest.raises(UnknownIdentityError):
            await store.set_keypair_active(unknown, False)
        assert not await client.exists(keys.keypair(unknown))
        with pytest.raises(UnknownIdentityError):
            await store.remove_user("nobody", cascade=True)
        await store.add_user(User("zed", "user", "default"))
        assert await store.get_user("zed") == User("zed", "user", "default")
    finally:
        await client.aclose()


async def test_browser_login_and_its_throttle_on_a_cluster(cluster: LocalRedisCluster) -> None:
    """A password login on replica one gives a session cookie that opens a stream on replica
    two (the session is in the cluster); failed logins are counted in the cluster for every
    replica: past the free ones the account gets 429 with ``Retry-After`` on both, even with
    the right password; a logout on replica one ends the cookie stream on replica two."""
    await seed(cluster.url, password=True)
    throttled: dict[str, Any] = {
        "login_free_failures": 2,
        "login_free_failures_per_address": 100,
        # a block outlasts the test: no 429 may turn into a 401 on a slow machine
        "login_backoff": 60.0,
        "login_backoff_max": 60.0,
    }
    alice = {"user_id": "alice", "password": ALICE_PASSWORD}
    wrong = {"user_id": "alice", "password": "not her password at all"}
    with two_replicas(cluster.url, **throttled) as (one, two):
        async with httpx.AsyncClient(timeout=10) as http:
            logged_in = await http.post(one.base_url + "/auth/login", json=alice)
            assert logged_in.status_code == 200, logged_in.text
            cookie = logged_in.cookies[SESSION_COOKIE]
            http.cookies.clear()  # sent explicitly below
            as_alice = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
            me = await http.get(two.base_url + "/auth/me", headers=as_alice)
            assert me.status_code == 200 and me.json()["user_id"] == "alice", me.text

            stop = anyio.Event()
            on_two = Watch()
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_steadily, cluster.url, stop)
                tg.start_soon(functools.partial(watch, two.base_url, on_two, cookie=cookie))
                await until(lambda: on_two.kernel_events() > 0, 10, "alice's events by cookie")
                assert on_two.status == 200

                codes = []
                for i in range(throttled["login_free_failures"] + 1):
                    gw = (one, two)[i % 2]
                    codes.append(await http.post(gw.base_url + "/auth/login", json=wrong))
                assert [r.status_code for r in codes] == [401] * 3, [r.text for r in codes]
                for gw in (one, two):
                    for body in (wrong, alice):  # blocked: the right password too
                        refused = await http.post(gw.base_url + "/auth/login", json=body)
                        assert refused.status_code == 429, (gw.base_url, refused.text)
                        assert int(refused.headers["retry-after"]) >= 1
                master = cluster.master_of_slot(BUS_SLOT)
                with redis.Redis(host="127.0.0.1", port=master) as node:
                    assert node.exists(KEYS.login_throttle("account", "user:alice"))

                out = await http.post(
                    one.base_url + "/auth/logout",
                    headers={**as_alice, "Content-Type": "application/json"},
                    content=b"{}",
                )
                assert out.status_code == 204, out.text
                with anyio.fail_after(5):
                    await on_two.ended.wait()
                stop.set()
            close = on_two.close()
            assert close is not None and json.loads(close[1])["reason"] == "logged_out", close
            me = await http.get(two.base_url + "/auth/me", headers=as_alice)
            assert me.status_code == 401, me.text


async def test_publishers_send_many_chunks_per_call_on_a_cluster_and_after_a_failover(
    cluster: LocalRedisCluster,
) -> None:
    """More than one chunk per call is a cluster pipeline of script calls, which redis-py 8.2
    does not load by itself: both publishers return every id, in order, and every event
    reaches a stream. After a failover (the new master never ran the script: Redis 7 does not
    replicate the script cache) a many-chunk call still gets through, perhaps after the
    publisher's own retry, within a bounded wait."""
    await seed(cluster.url)
    ref = session_of(ROOT, "chunks")

    def batch(tag: str) -> list[Any]:
        return [ref.started(f"{tag}-{i}") for i in range(10)]

    with run_gateway(gateway_settings(cluster.url)) as gw:
        async with (
            AsyncPublisher.from_url(cluster.url, chunk_size=2) as apub,
            stream_as(ROOT, gw.base_url) as (_, events),
        ):
            spub = SyncPublisher.from_url(cluster.url, chunk_size=2)
            try:
                async_ids = await apub.publish_many(batch("async"))
                sync_ids: list[str] = await in_thread(spub.publish_many, batch("sync"))
                assert len(async_ids) == 10 and all(async_ids), async_ids
                assert len(sync_ids) == 10 and all(sync_ids), sync_ids
                assert async_ids + sync_ids == sorted(async_ids + sync_ids, key=id_key)
                got = await kernel_events(events, 20)
                assert [e.id for e in got] == async_ids + sync_ids

                before = gw.state.subscriber.reconnects
                new_master: int = await in_thread(cluster.failover, BUS_SLOT)
                # What the new master holds of the script: nothing on Redis 7 (its script
                # cache is not replicated). Each publisher loads it there on the NOSCRIPT and
                # sends again within the same call: the ids come back at once (they came back
                # empty, the events queued for the retry, before that); the cache is flushed
                # again, so the blocking one meets a master without it too.
                uncache_script(new_master)
                after_async = await apub.publish_many(batch("async-after"))
                assert len(after_async) == 10, "not written within the call"
                assert uncache_script(new_master), "the async publisher never loaded its script"
                after_sync = await in_thread(spub.publish_many, batch("sync-after"))
                assert len(after_sync) == 10, "not written within the call"
                assert uncache_script(new_master), "the blocking publisher never loaded it"
                assert apub.dropped == spub.dropped == 0
                assert apub.rejected == spub.rejected == 0
            finally:
                report = await in_thread(spub.close)
            assert report.ok, report
            await until(
                lambda: gw.state.subscriber.reconnects > before and gw.state.subscriber.ready,
                15,
                "the subscriber to follow the failover",
            )
            got = await kernel_events(events, 20, timeout=15)
            reasons = [json.loads(e.data)["reason"] for e in got]
            assert reasons == [*(f"async-after-{i}" for i in range(10)),
                               *(f"sync-after-{i}" for i in range(10))]  # fmt: skip
            assert len({e.id for e in got}) == 20
            assert {*after_async, *after_sync} == {e.id for e in got}
    held = [reason for _, reason in history_on(new_master)]
    assert held == [r for tag in ("async", "sync", "async-after", "sync-after")
                    for r in (f"{tag}-{i}" for i in range(10))]  # fmt: skip
