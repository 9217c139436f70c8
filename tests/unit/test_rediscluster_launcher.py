"""The loopback Redis Cluster of :mod:`devtools.rediscluster`: it forms (six nodes, three
masters, every slot served), and each topology change it drives does what it says, checked by
asking the nodes themselves with one-node clients. Also pinned: what redis does to sharded
pub/sub subscribers when their node stops serving the slot (it ends their subscription)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.rediscluster import SLOTS, LocalRedisCluster, key_slot

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are needed for a local Redis Cluster",
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    """One 3x1 cluster for the module: every test leaves it with six live nodes, three
    masters with one replica each (a test that kills a node restarts it)."""
    with LocalRedisCluster(masters=3, replicas_per_master=1) as started:
        yield started


def _client(port: int) -> redis.Redis:
    # no retries with backoff (redis-py's default): a killed node must fail the call at once
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))


def _served_slots(cluster: LocalRedisCluster, port: int) -> set[int]:
    return {
        slot
        for first, last, master, _ in cluster.slot_map()
        for slot in range(first, last + 1)
        if master == port
    }


def _shard_subscriber(port: int, channel: str) -> tuple[redis.Redis, redis.client.PubSub]:
    client = _client(port)
    pubsub = client.pubsub()
    pubsub.ssubscribe(channel)
    confirmed = pubsub.get_message(timeout=5)
    assert confirmed is not None and confirmed["type"] == "ssubscribe", confirmed
    return client, pubsub


def _next_push(pubsub: redis.client.PubSub) -> dict[str, object] | None:
    message: dict[str, object] | None = pubsub.get_message(timeout=3)
    return message


def test_the_cluster_forms_with_every_slot_served(cluster: LocalRedisCluster) -> None:
    assert len(cluster.nodes) == 6 and len(set(cluster.ports)) == 6
    assert all(node.proc is not None and node.proc.poll() is None for node in cluster.nodes)
    masters = cluster.masters()
    assert len(masters) == 3
    for master in masters:
        assert len(cluster.replicas_of(master)) == 1
    replicas = {r for m in masters for r in cluster.replicas_of(m)}
    assert replicas | set(masters) == set(cluster.ports)
    # every node says the cluster is ok, and the masters serve the 16384 slots between them
    for port in cluster.ports:
        with _client(port) as client:
            info = client.cluster("INFO")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == SLOTS
        assert int(info["cluster_known_nodes"]) == 6
    served = [_served_slots(cluster, master) for master in masters]
    assert sum(len(slots) for slots in served) == SLOTS
    assert set().union(*served) == set(range(SLOTS))
    assert {cluster.master_of_slot(slot) for slot in (0, SLOTS // 2, SLOTS - 1)} == set(masters)


def test_the_urls_name_the_seed_nodes(cluster: LocalRedisCluster) -> None:
    p1, p2, p3 = cluster.ports[:3]
    assert cluster.url == f"redis+cluster://127.0.0.1:{p1},127.0.0.1:{p2},127.0.0.1:{p3}"
    for node in cluster.nodes:
        assert node.url == f"redis://127.0.0.1:{node.port}/0"
        assert node.dir.is_dir() and (node.dir / "nodes.conf").is_file()


def test_key_slot_follows_the_hash_tag() -> None:
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo") == 12182  # the cluster specification's example
    assert LocalRedisCluster.key_slot("{foo}bar") == 12182


def test_reshard_moves_one_slot_with_its_keys(cluster: LocalRedisCluster) -> None:
    key, channel = "{reshard-me}:value", "{reshard-me}:events"
    slot = key_slot(key)
    source = cluster.master_of_slot(slot)
    replica = cluster.replicas_of(source)[0]
    target = next(m for m in cluster.masters() if m != source)
    with _client(source) as client:
        client.set(key, b"moved")
        client.set("{reshard-me}:other", b"too")
    subscribers = [_shard_subscriber(port, channel) for port in (source, replica)]
    before_source, before_target = _served_slots(cluster, source), _served_slots(cluster, target)
    try:
        cluster.reshard_slot(slot, target)

        assert cluster.master_of_slot(slot) == target
        for port in cluster.ports:  # every node agrees
            assert cluster.master_of_slot(slot, port=port) == target
        # exactly that slot moved
        assert _served_slots(cluster, source) == before_source - {slot}
        assert _served_slots(cluster, target) == before_target | {slot}
        with _client(target) as client:
            assert client.get(key) == b"moved"
            assert client.get("{reshard-me}:other") == b"too"
            assert client.cluster("COUNTKEYSINSLOT", slot) == 2
        # the old owner redirects (redis-py raises a MOVED reply as MovedError)
        with _client(source) as client, pytest.raises(redis.exceptions.MovedError) as moved:
            client.get(key)
        assert (moved.value.slot_id, moved.value.port) == (slot, target)
        # redis 7.0 ends the sharded subscriptions of the slot on the nodes that stopped
        # serving it, the master and its replica alike: a `sunsubscribe` push, count 0
        for _, pubsub in subscribers:
            push = _next_push(pubsub)
            assert push is not None, "no sunsubscribe after the slot moved"
            assert (push["type"], push["channel"], push["data"]) == (
                "sunsubscribe",
                channel.encode(),
                0,
            )
    finally:
        for client, pubsub in subscribers:
            pubsub.close()
            client.close()


def test_failover_makes_the_replica_the_master(cluster: LocalRedisCluster) -> None:
    key, channel = "{fail-me-over}:value", "{fail-me-over}:events"
    slot = key_slot(key)
    master = cluster.master_of_slot(slot)
    (replica,) = cluster.replicas_of(master)
    with _client(master) as client:
        client.set(key, b"kept")
        client.wait(1, 5000)  # the replica has it before it takes over
    subscribers = [_shard_subscriber(port, channel) for port in (master, replica)]
    try:
        assert cluster.failover(slot) == replica

        for port in cluster.ports:
            assert cluster.master_of_slot(slot, port=port) == replica
        assert replica in cluster.masters() and master not in cluster.masters()
        assert cluster.replicas_of(replica) == [master]  # the old master follows it
        with _client(replica) as client:
            assert client.get(key) == b"kept"
            assert client.info("replication")["role"] == "master"
        # the demoted master drops the slot's sharded subscriptions; the promoted replica
        # keeps its own, and they receive what is published there now
        (_, old_pubsub), (_, new_pubsub) = subscribers
        push = _next_push(old_pubsub)
        assert push is not None and push["type"] == "sunsubscribe", push
        with _client(replica) as client:
            assert client.spublish(channel, b"after failover") == 1
        message = _next_push(new_pubsub)
        assert message is not None, "the promoted replica's subscriber got nothing"
        assert (message["type"], message["data"]) == ("smessage", b"after failover")
    finally:
        for client, pubsub in subscribers:
            pubsub.close()
            client.close()


def test_kill_master_promotes_a_replica_and_restart_rejoins(cluster: LocalRedisCluster) -> None:
    key = "{kill-me}:value"
    slot = key_slot(key)
    master = cluster.master_of_slot(slot)
    (replica,) = cluster.replicas_of(master)
    killed = cluster.node(master)
    assert killed.proc is not None
    pid = killed.proc.pid
    with _client(master) as client:
        client.set(key, b"survives")
        client.wait(1, 5000)

    promoted = cluster.kill_master(slot)

    assert promoted == replica
    assert killed.proc is None and master not in cluster.live_ports()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process is gone (and reaped)
    with _client(master) as client, pytest.raises(redis.ConnectionError):
        client.ping()
    for port in cluster.live_ports():
        assert cluster.master_of_slot(slot, port=port) == promoted
        with _client(port) as client:
            assert client.cluster("INFO")["cluster_state"] == "ok"
    assert len(cluster.masters()) == 3 and promoted in cluster.masters()
    with _client(promoted) as client:
        assert client.get(key) == b"survives"

    cluster.restart(master)  # back on its port, from its nodes.conf: a replica now

    assert killed.proc is not None and killed.proc.poll() is None
    assert cluster.replicas_of(promoted) == [master]
    assert cluster.master_of_slot(slot) == promoted
    assert sorted(cluster.live_ports()) == sorted(cluster.ports)
    with _client(master) as client:
        assert client.info("replication")["role"] == "slave"


def test_close_kills_its_processes_and_removes_its_directories() -> None:
    small = LocalRedisCluster(masters=3, replicas_per_master=0)
    with small:
        assert len(small.nodes) == 3 and len(small.masters()) == 3
        procs = [node.proc for node in small.nodes]
        dirs = [node.dir for node in small.nodes]
        assert all(proc is not None for proc in procs)
    assert all(proc is not None and proc.returncode is not None for proc in procs)
    assert not any(directory.exists() for directory in dirs)
    small.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        small.start()


def test_a_cluster_needs_three_masters() -> None:
    with pytest.raises(ValueError, match="3 masters"):
        LocalRedisCluster(masters=2)
    with pytest.raises(ValueError, match="negative"):
        LocalRedisCluster(replicas_per_master=-1)


def test_a_port_taken_before_its_node_starts_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free ports are found by binding and releasing them; another process may take one
    first (seen under pytest -n 2). The launcher starts again on fresh ports."""
    import socket

    import devtools.rediscluster as launcher

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken_port = squatter.getsockname()[1]
    fresh = launcher.LocalRedisCluster.fresh_port
    handed = []

    def first_the_taken_one(taken: set[int]) -> int:
        port = taken_port if not handed else fresh(taken)
        handed.append(port)
        return port

    monkeypatch.setattr(launcher.LocalRedisCluster, "fresh_port", staticmethod(first_the_taken_one))
    try:
        with LocalRedisCluster() as cluster:
            assert taken_port not in cluster.ports
            assert len(cluster.masters()) == 3
    finally:
        squatter.close()
    assert handed[0] == taken_port
