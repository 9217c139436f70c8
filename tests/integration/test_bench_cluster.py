"""bench.cluster's partitioned topology, small: on a real 3+3 cluster in 8 partitions, the
bench's events spread over the partitions and the masters, and every stream (users' filtered
streams, each in its owner's partition, and the superadmin's broadcast spanning them all) gets
everything it is owed, once; the report's table has a column and a ratio per topology."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import redis

from bench.cluster import (
    LABEL,
    PARTITIONS,
    TOPOLOGIES,
    cluster_of_six,
    comparison_table,
    figures,
    partition_slots,
    pooled,
)
from bench.loadclient import build
from bench.procs import users
from bench.scenarios import Scenario, run_scenario
from publisher.partitions import partition_of

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="the bench's load client needs a C compiler (scripts/install --with-bench)",
)

OWNERS = 16


def _run(sc: Scenario, target: Any) -> dict[str, Any]:
    r = run_scenario(sc, log=lambda _: None, target=target)
    assert r["partitions"] == PARTITIONS and r["owners"] == OWNERS
    assert r["connected"] == sc.clients and r["failed"] == 0
    assert r["published"] > 0
    assert r["delivered"] == r["expected"] > 0, r
    assert r["duplicates"] == 0 and r["clients_short"] == 0
    return r


def test_a_partitioned_run_spreads_the_events_and_delivers_every_one() -> None:
    build()
    # the owners land in most partitions: the bench's load is a partitioned load
    assert len({partition_of(u.user_id, PARTITIONS) for u in users(OWNERS)}) >= 6
    filtered = Scenario(
        "t-cluster8-filtered", "users' filtered streams", "filtered", 32, 200,
        owners=OWNERS, warmup=0.5, measure=1.5,
    )  # fmt: skip
    broadcast = Scenario(
        "t-cluster8-broadcast", "the superadmin's broadcast", "broadcast", 8, 100,
        owners=OWNERS, warmup=0.5, measure=1.5,
    )  # fmt: skip
    with cluster_of_six(idle_s=0.5, partitions=PARTITIONS) as (target, layout):
        assert target.partitions == PARTITIONS
        masters = {n: v for n, v in layout["nodes"].items() if v["role"] == "master"}
        # every master serves a partition (the tags put them in equal windows of the slots)
        assert all(v["partitions"] for v in masters.values()), layout
        served = sorted(p for v in masters.values() for p in v["partitions"])
        assert served == list(range(PARTITIONS))
        runs = [figures(_run(sc, target)) for sc in (filtered, broadcast)]
        # what the runs put in Redis: history in most partitions, on every master
        slots = partition_slots(PARTITIONS)
        stored = []
        for p, slot in enumerate(slots):
            port = next(v["port"] for v in masters.values() if p in v["partitions"])
            with redis.Redis(host="127.0.0.1", port=port) as client:
                keys = client.keys("*{*}:events")
                stored += [(p, port, client.xlen(k)) for k in keys if _slot(client, k) == slot]
        used = [s for s in stored if s[2] > 0]
        assert len(used) >= 6, stored
        assert {port for _, port, _ in used} == {v["port"] for v in masters.values()}
        # the busiest node is named, and the CPU of every node is measured
        assert all(set(f["redis_cpu_by_node"]) == set(layout["nodes"]) for f in runs)
    every = {t: pooled(runs) for t in TOPOLOGIES}
    table = comparison_table({"t": {"title": "one run as every topology", "pooled": every}}, "t")
    head, rule, *rows = table.splitlines()
    for t in TOPOLOGIES:
        assert f" {LABEL[t]} |" in head
    assert head.count("/ single") == len(TOPOLOGIES) - 1
    assert rule.count("---:") == 2 * len(TOPOLOGIES) - 1
    assert all(row.endswith("| 1.00x | 1.00x |") for row in rows if "n/a" not in row), rows


def _slot(client: redis.Redis, key: bytes) -> int:
    return int(client.cluster("KEYSLOT", key))
