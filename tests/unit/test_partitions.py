"""Partitions without Redis: the names (one partition keeps today's), the cluster tags spread
over the slots, the owner's partition, the vector id codec (property-based), the publisher's
chunks per partition, the ACL globs, and the hub's ids per stream."""

from __future__ import annotations

import fnmatch
import string
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from gateway.cli.acl import rules
from gateway.fanout.connection import Connection
from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.settings import FanoutSettings
from publisher.buffer import Pending
from publisher.keys import Keys
from publisher.partitions import (
    Partitions,
    decode_vector,
    encode_vector,
    is_vector,
    partition_of,
)
from publisher.schema import SessionRef, encode_event
from publisher.writer import Core
from tests.support.fakes import FakeClock

MAX = 2**64 - 1
ids = st.tuples(st.integers(0, MAX), st.integers(0, MAX))


def test_one_partition_keeps_every_name() -> None:
    for keys in (Keys("kev"), Keys("{kev}", cluster=True), Keys("x{dep}y", cluster=True)):
        assert Partitions(keys).keys == (keys,)
        assert Partitions(keys, 4).keys[0] == keys


def test_each_partition_has_names_of_its_own() -> None:
    names = Partitions(Keys("kev"), 3).keys
    assert [k.history for k in names] == ["kev:events", "kev.p1:events", "kev.p2:events"]
    assert [k.channel for k in names] == ["kev:live", "kev.p1:live", "kev.p2:live"]
    assert names[2].publisher_seq("a") == "kev.p2:pubseq:a"
    tagged = Partitions(Keys("x{dep}y", cluster=True), 3).keys
    assert tagged[1].history.startswith("x{dep.p1.") and tagged[1].history.endswith("}y:events")


@pytest.mark.parametrize("n", [2, 3, 8, 16, 128])
def test_cluster_tags_fall_in_n_equal_windows_from_partition_0(n: int) -> None:
    names = Partitions(Keys("{kev}", cluster=True), n).keys
    slots = [key_slot(k.history.encode()) for k in names]
    width = 16384 // n
    for p, slot in enumerate(slots):
        assert (slot - slots[0] - p * width) % 16384 < width, (p, slot)
        # every name of a partition shares its slot: one script, one SSUBSCRIBE
        assert key_slot(names[p].epoch.encode()) == slot
        assert key_slot(names[p].channel.encode()) == slot
        assert key_slot(names[p].publisher_seq("x").encode()) == slot
    assert len(set(slots)) == n


def test_eight_partitions_reach_each_of_three_even_masters() -> None:
    # redis-cli --cluster create gives 3 masters 0-5460, 5461-10922, 10923-16383
    names = Partitions(Keys("{kev}", cluster=True), 8).keys
    masters = [key_slot(k.history.encode()) * 3 // 16384 for k in names]
    assert sorted(set(masters)) == [0, 1, 2]
    assert min(masters.count(m) for m in range(3)) >= 2


def test_an_owners_partition_is_stable_and_case_blind() -> None:
    # pinned: every process, version and platform must agree
    assert [partition_of(u, 8) for u in ("alice", "bob", "carol", "dave", "root")] == [
        1,
        2,
        1,
        7,
        6,
    ]
    user = "0b7c4e8e-1f7a-4c1e-9a0e-6b1d2f3a4b5c"
    assert partition_of(user, 8) == partition_of(user.upper(), 8) == 4
    assert partition_of(user, 1) == partition_of("", 8) == 0


def test_owners_spread_over_the_partitions() -> None:
    counts = [0] * 8
    for i in range(8000):
        counts[partition_of(str(uuid.UUID(int=i * 7919)), 8)] += 1
    assert min(counts) > 800


@given(st.lists(ids, min_size=1, max_size=128))
def test_a_vector_id_round_trips_and_is_plain_ascii(positions: list[tuple[int, int]]) -> None:
    text = encode_vector(positions)
    assert decode_vector(text, len(positions)) == tuple(positions)
    assert is_vector(text)
    # what EventSource keeps and sends back unchanged: no space, no newline, no NUL, no ':'
    assert set(text) <= set(string.digits + "-_")


@given(ids)
def test_a_plain_id_is_no_vector(position: tuple[int, int]) -> None:
    assert not is_vector(f"{position[0]}-{position[1]}")


@given(st.lists(ids, min_size=1, max_size=16), st.integers(1, 128))
def test_a_vector_of_another_width_is_refused(positions: list[tuple[int, int]], n: int) -> None:
    text = encode_vector(positions)
    if n == len(positions):
        return
    with pytest.raises(ValueError, match="partitions"):
        decode_vector(text, n)


@pytest.mark.parametrize(
    "text",
    ["2_1-0", "2_1-0_2", "2_1-0_2-x", "x_1-0", "2__1-0", "2_1-0_2-0_", f"1_{2**64}-0", "1_ 1-0"],
)
def test_malformed_vectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_vector(text, int(text[0]) if text[0].isdigit() else 2)


def _core(partitions: int) -> Core:
    return Core(
        keys=Keys(), maxlen=100, exact_trim=False, chunk_size=2, timeout=1.0,
        buffer_size=100, overflow="raise", partitions=partitions,
    )  # fmt: skip


def _events(*owners: str) -> list:  # type: ignore[type-arg]
    return [
        SessionRef(
            session_id=f"s{i}", owner_access_key="AK", owner_user_id=owner, domain="d",
            group="g", session_uuid=uuid.UUID(int=i + 1), kernel_id=uuid.UUID(int=i + 100),
        ).started(f"r{i}")
        for i, owner in enumerate(owners)
    ]  # fmt: skip


def test_one_partition_chunks_as_before() -> None:
    core = _core(1)
    items = [Pending(i, encode_event(e)) for i, e in enumerate(_events(*"abcde"))]
    chunks = core.chunks(items)
    assert [c.size for c in chunks] == [2, 2, 1]
    assert [c.args[4:6] for c in chunks] == [["0", ""], ["2", "1"], ["4", "3"]]
    assert all(c.keys == ["kev:events", core.seq_key, "kev:epoch"] for c in chunks)


def test_chunks_are_runs_of_one_partition_numbered_there() -> None:
    core = _core(8)
    # alice and carol are in partition 1, bob in 2, dave in 7
    call, _ = core.submit(_events("alice", "carol", "carol", "bob", "alice", "dave", "bob"))
    items = core.take()
    assert [(i.part, i.number) for i in items] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (1, 3), (7, 0), (2, 1),
    ]  # fmt: skip
    chunks = core.chunks(items)
    heads = [(c.keys[0], c.args[4], c.args[5], c.size) for c in chunks]
    assert heads == [
        ("kev.p1:events", "0", "", 2),
        ("kev.p1:events", "2", "1", 1),
        ("kev.p2:events", "0", "", 1),
        ("kev.p1:events", "3", "2", 1),
        ("kev.p7:events", "0", "", 1),
        ("kev.p2:events", "1", "0", 1),
    ]
    assert chunks[0].keys[1] == "kev.p1:pubseq:" + core.seq_key.rsplit(":", 1)[1]
    assert call.first == 0


def test_the_acl_grants_every_partitions_names() -> None:
    for keys in (Keys("kev"), Keys("{kev}", cluster=True)):
        names = Partitions(keys, 8).keys
        for profile, member, mode in (
            ("publisher", "history", "~"),
            ("publisher", "publisher_seq", "~"),
            ("gateway", "history", "%R~"),
            ("gateway", "epoch", "~"),
        ):
            globs = [r[len(mode) :] for r in rules(keys, profile, 8) if r.startswith(mode)]
            for k in names:
                value = getattr(k, member)
                name = value("x") if callable(value) else value
                assert any(fnmatch.fnmatchcase(name, g.replace("\\", "")) for g in globs), name
        channels = [r[1:] for r in rules(keys, "gateway", 8) if r.startswith("&")]
        for k in names:
            assert any(fnmatch.fnmatchcase(k.channel, g) for g in channels)
            assert any(fnmatch.fnmatchcase(k.probe_channel("r1"), g) for g in channels)
        partition_0 = [r for r in rules(keys, "gateway") if ".p*" in r]
        assert partition_0 == []  # one partition: no more than that is granted


def _hub_with_alice_and_an_admin() -> tuple[Hub, Connection, Connection]:
    """A hub of 4 partitions with alice's stream (one partition) and an admin's (all)."""
    settings = FanoutSettings(ping_interval=15.0, retry_jitter_ms=0, max_lag=0.0)
    hub = Hub(settings, clock=FakeClock(), partitions=Partitions(Keys(), 4))
    user = hub.new_connection(Filter(owner_user_id="alice"), "AK1")
    admin = hub.new_connection(Filter(), "AK2")
    for c in (user, admin):
        hub.register(c)
    return hub, user, admin


def test_streams_of_one_user_get_plain_ids_and_spanning_ones_vectors() -> None:
    hub, user, admin = _hub_with_alice_and_an_admin()
    assert hub.lane_of(user.filter) == partition_of("alice", 4)
    assert hub.lane_of(admin.filter) is None
    for lane in hub.lanes:
        lane.last_id = (0, 0)
    [event] = _events("alice")
    p = partition_of("alice", 4)
    hub.lanes[p].publish(b"5-0", encode_event(event))
    expected = ["0-0"] * 4
    expected[p] = "5-0"
    assert user.take().startswith(b"id: 5-0\n")
    assert admin.take().startswith(f"id: 4_{'_'.join(expected)}\n".encode())
    assert hub.position(admin.filter) == "4_" + "_".join(expected)
    assert hub.position(user.filter) == "5-0"
    # a copy (an id at or below the lane's watermark) goes nowhere
    hub.lanes[p].publish(b"5-0", encode_event(event))
    assert hub.stats.duplicates == 1


def test_a_gap_in_one_partition_is_told_only_where_its_events_go() -> None:
    """A review's find: one partition's lost history told every stream of every partition
    ``history_truncated``; now its users' streams and the spanning ones, nobody else."""
    settings = FanoutSettings(ping_interval=15.0, retry_jitter_ms=0, max_lag=0.0)
    hub = Hub(settings, clock=FakeClock(), partitions=Partitions(Keys(), 4))
    owners: dict[int, str] = {}
    for i in range(64):
        owners.setdefault(partition_of(f"user-{i}", 4), f"user-{i}")
    streams = {p: hub.new_connection(Filter(owner_user_id=o), f"AK{p}") for p, o in owners.items()}
    admin = hub.new_connection(Filter(), "AKA")
    for c in (*streams.values(), admin):
        hub.register(c)
    hub.lanes[2].notice_all("reset")
    assert b"history_truncated" in admin.take()
    for p, stream in streams.items():
        told = b"history_truncated" in stream.take()
        assert told == (p == 2), p


def test_an_event_in_another_partition_than_its_owners_is_dropped() -> None:
    """Written by a publisher with another number of partitions: its owner's stream reads
    another partition, so it is counted (``wrong_partition``) and sent to nobody."""
    hub, user, admin = _hub_with_alice_and_an_admin()
    for lane in hub.lanes:
        lane.last_id = (0, 0)
    [event] = _events("alice")
    wrong = (partition_of("alice", 4) + 1) % 4
    hub.lanes[wrong].publish(b"5-0", encode_event(event))
    assert user.take() == b"" and admin.take() == b""
    assert hub.stats.dropped["wrong_partition"] == 1


def test_each_partition_keeps_its_own_redis_clock() -> None:
    """On a cluster each partition's master has its own clock: one partition's TIME samples
    must not move another's idea of Redis' now (the history watch compares each partition's
    last id with its own clock)."""
    hub = Hub(FanoutSettings(), clock=FakeClock(), partitions=Partitions(Keys(), 3))
    before = [lane.redis_now_ms() for lane in hub.lanes]
    hub.lanes[1].redis_clock_offset_ms = 900.0
    after = [lane.redis_now_ms() for lane in hub.lanes]
    assert after[1] - before[1] >= 900.0 - 50
    assert abs(after[0] - before[0]) < 50 and abs(after[2] - before[2]) < 50


@given(
    st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12),
    st.integers(2, 16),
    st.booleans(),
)
def test_no_deployment_may_take_another_ones_partition_names(
    bare: str, n: int, cluster: bool
) -> None:
    """A prefix that is another deployment's partition (``kev.p3``; on a cluster the computed
    tag, ``{kev.p3.10}``, or that tag without braces, which hashes the same) is refused: two
    deployments would read each other's events (a review's finding)."""
    after = "-prod" if n % 2 else ""  # text after the hash tag stays after every partition's
    base = Keys(("{" + bare + "}" if cluster else bare) + after, cluster=cluster)
    for keys in Partitions(base, n).keys[1:]:
        # without braces the whole prefix is the tag: the same names only with nothing after
        bare_name = keys.prefix.replace("{", "").replace("}", "")
        for taken in {keys.prefix, bare_name} if not after else {keys.prefix}:
            with pytest.raises(ValueError, match="partition of another deployment"):
                Keys(taken, cluster=cluster and taken.startswith("{"))
