"""The publisher with partitions, on a real redis-server: each event in its owner's
partition, in order there; one sequence per (publisher, partition), so a retry is skipped in
every partition; events in doubt resolved per partition; one partition writes today's keys
only."""

from __future__ import annotations

import redis

from publisher import Keys, SyncPublisher, resolve_in_doubt
from publisher.buffer import Pending
from publisher.partitions import Partitions, partition_of
from publisher.report import CloseReport
from publisher.schema import SessionRef, decode_event, encode_event

N = 4
OWNERS = [f"user-{i}" for i in range(20)]


def ref(owner: str) -> SessionRef:
    return SessionRef(
        session_id="s", owner_access_key=f"AK-{owner}", owner_user_id=owner, domain="d",
        group="g",
    )  # fmt: skip


def histories(url: str, n: int = N) -> list[list[str]]:
    """The reasons each partition's history holds, oldest first."""
    with redis.Redis.from_url(url) as client:
        return [
            [decode_event(f[b"e"]).reason for _, f in client.xrange(k.history)]
            for k in Partitions(Keys(), n).keys
        ]


def test_each_event_is_in_its_owners_partition_in_order(redis_url: str) -> None:
    published = [f"{OWNERS[i % len(OWNERS)]}:{i}" for i in range(100)]
    with SyncPublisher.from_url(redis_url, partitions=N, chunk_size=4) as pub:
        ids = pub.publish_many(ref(r.split(":")[0]).started(r) for r in published)
    assert len(ids) == 100 and all(ids)
    held = histories(redis_url)
    for p in range(N):
        assert held[p] == [r for r in published if partition_of(r.split(":")[0], N) == p]
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("kev:partitions") == b"4"
        assert {k.decode() for k in client.keys("*pubseq*")} == {
            k.publisher_seq(pub._core.seq_key.rsplit(":", 1)[1]) for k in Partitions(Keys(), N).keys
        }


def test_a_retry_is_skipped_in_every_partition(redis_url: str) -> None:
    with SyncPublisher.from_url(redis_url, partitions=N) as pub:
        core = pub._core
        events = [ref(o).started(f"{o}:once") for o in OWNERS[:8]]
        core.submit(events)
        items: list[Pending] = core.take()
        first = pub._send(items)
        again = pub._send(items)  # the reply was lost: the same numbers again
        core.buffer.pop_through(items[-1].seq)
        assert all(isinstance(r, list) and all(r) for r in first)
        assert all(r == [""] * len(r) for r in again if isinstance(r, list))
        pub.publish(ref("user-0").started("user-0:next"))
    held = histories(redis_url)
    assert sorted(r for h in held for r in h) == sorted(
        [f"{o}:once" for o in OWNERS[:8]] + ["user-0:next"]
    )


def test_events_in_doubt_are_resolved_per_partition(redis_url: str) -> None:
    # user-0 (partition 1) and user-1 (partition 0): number 0 of each applied; numbers 1
    # of each in doubt, never applied: both are not written, and fenced
    assert (partition_of("user-0", N), partition_of("user-1", N)) == (1, 0)
    with SyncPublisher.from_url(redis_url, partitions=N) as pub:
        assert len(pub.publish_many([ref("user-0").started("a"), ref("user-1").started("b")])) == 2
        doubt = (ref("user-0").started("d0"), ref("user-1").started("d1"))
        keys = pub._core.seq_keys
        report = CloseReport(
            published=2, undelivered=(), in_doubt=doubt, dropped=0, rejected=0,
            last_error=None, sequence_key=keys[0], in_doubt_seqs=(1, 1),
            in_doubt_keys=(keys[1], keys[0]),
        )  # fmt: skip
        with redis.Redis.from_url(redis_url) as client:
            assert resolve_in_doubt(client, report) == doubt
            late = [
                Pending(2, encode_event(doubt[0]), None, 1, 1),
                Pending(3, encode_event(doubt[1]), None, 0, 1),
            ]
            assert pub._send(late) == [[""], [""]]  # the late writes: skipped
            assert resolve_in_doubt(client, report) == doubt
        pub._core.next_in = [2, 2, 0, 0]
        pub._core.next_seq = 4
    assert histories(redis_url)[:2] == [["b"], ["a"]]


def test_one_partition_writes_todays_keys_only(redis_url: str) -> None:
    with SyncPublisher.from_url(redis_url) as pub:
        pub.publish_many(ref(o).started(o) for o in OWNERS)
    with redis.Redis.from_url(redis_url) as client:
        names = {k.decode() for k in client.keys("*")}
    assert names == {"kev:events", "kev:epoch", "kev:partitions", pub._core.seq_key}
    assert histories(redis_url, 1) == [OWNERS]
