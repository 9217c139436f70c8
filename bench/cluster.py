"""A Redis Cluster against one redis-server, under the same load: what each costs per delivery.

    python -m bench.cluster [--rounds 3] [--point NAME ...] [--quick] [--no-pubsub]
                            [--messages N] [--out PATH]

Each point is a fan-out scenario of :mod:`bench.scenarios` (the gateway as its own process,
the C load client holding the streams, the rate publisher), run against each topology in turn,
``--rounds`` times, alternating (single, cluster, single, cluster...), each run on a fresh one:

* ``single``: one private redis-server (as :mod:`bench.fanout` runs);
* ``cluster``: a real Redis Cluster on loopback, 3 masters and 3 replicas
  (:class:`devtools.rediscluster.LocalRedisCluster`); the gateway and the publisher on its
  ``redis+cluster://`` URL, so every name of the deployment (``{kev}:...``) is in one slot,
  on one master, and the live channel is a shard channel (SPUBLISH, SSUBSCRIBE).

Points: ``bc25`` broadcast to 1,000 streams at 25 events/s, ``f1k`` 1,000 streams of one
session each at 1,000 events/s over the sessions (each event to one stream: more events for
Redis, at the gateway's cost of a filtered run), ``f1k2`` the same on two gateway processes
(500 streams each: every replica reads each round of live messages from history, so Redis
works per replica too; a Redis pool of 1,000 per replica: :data:`POOL`). Sized so that
nothing saturates a core on a 2-core machine.

For every run: deliveries, the gateways' CPU, the CPU of every redis-server process of the
topology over the window (from ``/proc``, :func:`bench.procs.cpu_by_process`) and over 5 s
with the streams open and no events (the idle floor: a cluster's nodes ping each other),
latency as :mod:`bench.report` reads it, and the bus slot's nodes' ``INFO commandstats``.
Printed per topology: deliveries per gateway CPU-second, deliveries and events per Redis
CPU-second (all nodes, and the busiest node alone), the Redis CPU per event above the idle
floor, and the ratios cluster / single, each pooled over the rounds (the sums' quotient; the
per-round spread is printed too).

Then (``--no-pubsub`` skips it) the cost of the live channel's command itself, with no gateway:
``--messages`` messages of 300 bytes pipelined to the bus slot's master, one subscriber on that
node, as classic ``PUBLISH`` and as ``SPUBLISH``, on the cluster and on one redis-server (same
alternation, the same rounds), timing every node's CPU: a classic ``PUBLISH`` on a cluster is
forwarded to every node over the cluster bus, a ``SPUBLISH`` to the slot's replicas only.

Writes ``bench/results/cluster.json``; prints the markdown tables the README shows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import redis

from devtools.localredis import PrivateRedis
from devtools.rediscluster import LocalRedisCluster, key_slot
from publisher.keys import Keys, cluster_prefix
from publisher.partitions import Partitions

from .fanout import RESULTS, _environment
from .loadclient import build
from .procs import PREFIX, cpu_by_process, raise_nofile
from .report import percentile_ms, trim, write_json
from .scenarios import RedisTarget, Scenario, run_scenario

#: the bench's prefix on a cluster, ``{kev}``: one hash tag, so every name is in one slot
CLUSTER_PREFIX: Final = cluster_prefix(PREFIX)
BUS_SLOT: Final = key_slot(CLUSTER_PREFIX)
#: the partitioned topology's partitions (``GATEWAY_REDIS_PARTITIONS``)
PARTITIONS: Final = 8
TOPOLOGIES: Final = ("single", "cluster", "cluster8")
#: the pub/sub microbenchmark's: partitions do not change what one SPUBLISH costs
PUBSUB_TOPOLOGIES: Final = ("single", "cluster")
#: every point's events spread over this many owners (bench.procs.users), round robin, so
#: that with partitions they spread over the partitions (in every topology: the same load)
OWNERS: Final = 256
#: f1k2's gateways, on both topologies: on a cluster the gateway's Redis pool (64 by default)
#: is a hard cap per node (redis-py's RedisCluster raises MaxConnectionsError at once where the
#: single-node pool waits up to 5 s): without this, two replicas opening 500 streams each at
#: once on two cores ran past it, and 1-7% of the streams were refused (503) in every cluster
#: round; with it both topologies carry the same load
POOL: Final = {"GATEWAY_REDIS_POOL_SIZE": "1000"}
POINTS: Final = tuple(
    replace(sc, measure=20.0, quick_measure=5.0, owners=OWNERS)
    for sc in (
        Scenario("bc25", "broadcast 1,000 x 25 ev/s", "broadcast", 1000, 25),
        Scenario("f1k", "filtered 1,000 x 1,000 ev/s", "filtered", 1000, 1000),
        Scenario("f1k2", "f1k on 2 gateway replicas", "filtered", 1000, 1000, gateways=2, env=POOL),
    )
)
#: seconds of open streams and no events before each run's warm-up: the idle floor
IDLE_S: Final = 5.0
#: the pub/sub microbenchmark: payload, the channel (in the bus slot), pipeline depth
PAYLOAD: Final = b"x" * 300
CHANNEL: Final = CLUSTER_PREFIX + ":bench"
BATCH: Final = 500
MESSAGES: Final = 200_000


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the two topologies -----------------------------------------------------------------------


@contextlib.contextmanager
def single_node(idle_s: float = IDLE_S) -> Iterator[tuple[RedisTarget, dict[str, Any]]]:
    """One private redis-server; the target and what it is (for the report)."""
    with PrivateRedis() as server:
        assert server.proc is not None
        pids = {"redis": server.proc.pid}
        layout = {"nodes": {"redis": {"port": server.port, "role": "master", "bus": True}}}
        yield RedisTarget(server.url, pids, server.url, idle_s), layout


def partition_slots(n: int) -> list[int]:
    """The hash slot of each of ``n`` partitions of the bench's deployment on a cluster."""
    return [key_slot(k.history) for k in Partitions(Keys(CLUSTER_PREFIX, cluster=True), n).keys]


@contextlib.contextmanager
def cluster_of_six(
    idle_s: float = IDLE_S, partitions: int = 1
) -> Iterator[tuple[RedisTarget, dict[str, Any]]]:
    """A 3-master, 3-replica Redis Cluster on loopback; every node named by its role, the same
    in every round: ``M*`` the master of the bus slot (partition 0's), ``R*`` its replica,
    ``M1``, ``M2`` the other masters and ``R1``, ``R2`` the other replicas (in port order).
    Each node's entry lists the partitions whose slot it serves or replicates."""
    with LocalRedisCluster() as cluster:
        bus_master = cluster.master_of_slot(BUS_SLOT)
        bus_replicas = set(cluster.replicas_of(bus_master))
        masters = set(cluster.masters())
        serving: dict[int, list[int]] = {}
        for p, slot in enumerate(partition_slots(partitions)):
            master = cluster.master_of_slot(slot)
            for port in (master, *cluster.replicas_of(master)):
                serving.setdefault(port, []).append(p)
        pids: dict[str, int] = {}
        nodes: dict[str, dict[str, Any]] = {}
        others = {"M": 0, "R": 0}
        for node in sorted(cluster.nodes, key=lambda n: n.port):
            assert node.proc is not None
            on_bus = node.port == bus_master or node.port in bus_replicas
            role = "master" if node.port in masters else "replica"
            letter = role[0].upper()
            if on_bus:
                name = f"{letter}*"
            else:
                others[letter] += 1
                name = f"{letter}{others[letter]}"
            pids[name] = node.proc.pid
            nodes[name] = {
                "port": node.port,
                "role": role,
                "bus": on_bus,
                "partitions": serving.get(node.port, []),
            }
        node_url = cluster.node(bus_master).url
        target = RedisTarget(cluster.url, pids, node_url, idle_s, partitions=partitions)
        yield target, {"nodes": nodes, "partitions": partitions}


def cluster_partitioned(idle_s: float = IDLE_S) -> contextlib.AbstractContextManager[Any]:
    """:func:`cluster_of_six`, the deployment in :data:`PARTITIONS` partitions."""
    return cluster_of_six(idle_s, PARTITIONS)


TOPOLOGY: Final[
    Mapping[str, Callable[[float], contextlib.AbstractContextManager[tuple[RedisTarget, Any]]]]
] = {"single": single_node, "cluster": cluster_of_six, "cluster8": cluster_partitioned}
#: each topology's column head in the tables
LABEL: Final = {
    "single": "single",
    "cluster": "cluster 3+3",
    "cluster8": f"cluster 3+3, {PARTITIONS} partitions",
}


# -- the fan-out points -----------------------------------------------------------------------


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """One run's raw figures -> the sums the comparison pools over rounds, and its latency."""
    c = r["client"]
    cpu: dict[str, float] = r["redis_cpu_s"]
    idle: dict[str, float] = r["redis_idle_cpu_s"]
    busiest = max(cpu, key=lambda name: cpu[name])
    window = r["window_s"]
    floor = {name: idle[name] / r["idle_s"] * window for name in cpu}  # idle CPU in the window
    return {
        "published": r["published"],
        "deliveries": c["events_healthy"] + c["events_stalled"],
        "delivered": r["delivered"],
        "expected": r["expected"],
        "window_s": window,
        "gw_cpu_s": r["gw_cpu_s"],
        "gw_idle_cores": r["gw_idle_cpu_s"] / r["idle_s"],
        "driver_cpu_s": r["driver_cpu_s"],
        "redis_cpu_s": sum(cpu.values()),
        "redis_busiest": busiest,
        "redis_busiest_cpu_s": cpu[busiest],
        "redis_net_cpu_s": sum(cpu.values()) - sum(floor.values()),
        "redis_busiest_net_cpu_s": cpu[busiest] - floor[busiest],
        "redis_idle_cores": sum(idle.values()) / r["idle_s"],
        "redis_cpu_by_node": cpu,
        "redis_idle_cores_by_node": {name: idle[name] / r["idle_s"] for name in idle},
        "p50_ms": percentile_ms(c["hist_healthy"], 0.50),
        "p99_ms": percentile_ms(c["hist_healthy"], 0.99),
        "other_cpu_cores": r["other_cpu_cores"],
    }


def _quotient(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One topology's figures over its rounds: quotients of the sums, medians of latency."""

    def total(key: str) -> float:
        return float(sum(f[key] for f in runs))

    deliveries, events = total("deliveries"), total("published")
    out: dict[str, Any] = {
        "rounds": len(runs),
        "deliveries_per_round": deliveries / len(runs),
        "events_per_round": events / len(runs),
        "delivered_pct": 100.0 * total("delivered") / total("expected"),
        "gw_cpu_s_per_round": total("gw_cpu_s") / len(runs),
        "redis_cpu_s_per_round": total("redis_cpu_s") / len(runs),
        "redis_busiest_cpu_s_per_round": total("redis_busiest_cpu_s") / len(runs),
        "redis_idle_cores": total("redis_idle_cores") / len(runs),
        "gw_idle_cores": total("gw_idle_cores") / len(runs),
        "deliveries_per_gw_cpu_s": _quotient(deliveries, total("gw_cpu_s")),
        "deliveries_per_redis_cpu_s": _quotient(deliveries, total("redis_cpu_s")),
        "deliveries_per_busiest_cpu_s": _quotient(deliveries, total("redis_busiest_cpu_s")),
        "events_per_redis_cpu_s": _quotient(events, total("redis_cpu_s")),
        "events_per_busiest_cpu_s": _quotient(events, total("redis_busiest_cpu_s")),
        "redis_net_us_per_event": _quotient(total("redis_net_cpu_s") * 1e6, events),
        "busiest_net_us_per_event": _quotient(total("redis_busiest_net_cpu_s") * 1e6, events),
        "gw_us_per_event": _quotient(total("gw_cpu_s") * 1e6, events),
        "driver_us_per_event": _quotient(total("driver_cpu_s") * 1e6, events),
        "p50_ms": statistics.median(f["p50_ms"] for f in runs if f["p50_ms"] is not None),
        "p99_ms": statistics.median(f["p99_ms"] for f in runs if f["p99_ms"] is not None),
        "other_cpu_cores_max": max(f["other_cpu_cores"] for f in runs),
        "busiest_nodes": sorted({f["redis_busiest"] for f in runs}),
        "redis_cpu_s_by_node_per_round": {
            node: sum(f["redis_cpu_by_node"][node] for f in runs) / len(runs)
            for node in runs[0]["redis_cpu_by_node"]
        },
        "p50_ms_by_round": [f["p50_ms"] for f in runs],
        "p99_ms_by_round": [f["p99_ms"] for f in runs],
    }
    spread = {}
    for key, num, den in (
        ("deliveries_per_gw_cpu_s", "deliveries", "gw_cpu_s"),
        ("events_per_redis_cpu_s", "published", "redis_cpu_s"),
        ("events_per_busiest_cpu_s", "published", "redis_busiest_cpu_s"),
    ):
        values = [f[num] / f[den] for f in runs if f[den] > 0]
        spread[key] = [min(values), max(values)] if values else None
    out["spread"] = spread
    return out


def command_stats(layout: dict[str, Any], events: int) -> dict[str, dict[str, Any]]:
    """``INFO commandstats`` of the nodes that serve or replicate a partition (one partition:
    the bus slot's master and its replica) over the whole
    run (identity import, the streams' opening, idle stretch and warm-up included), per event
    published: what the Redis CPU per event is spent on. A script's time includes the commands
    it runs, which are also counted on their own."""
    out: dict[str, dict[str, Any]] = {}
    for name, node in layout["nodes"].items():
        if not (node["bus"] or node.get("partitions")):
            continue
        with redis.Redis(host="127.0.0.1", port=node["port"], socket_timeout=5) as client:
            stats = client.info("commandstats")
        per = {
            key.removeprefix("cmdstat_"): {
                "calls_per_event": v["calls"] / events,
                "us_per_event": v["usec"] / events,
            }
            for key, v in stats.items()
        }
        ranked = dict(sorted(per.items(), key=lambda kv: -kv[1]["us_per_event"]))
        out[name] = {"events": events, "commands": ranked}
    return out


def run_points(
    points: list[Scenario], rounds: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Every point, ``rounds`` times against each topology, alternating."""
    out: dict[str, dict[str, Any]] = {}
    for sc in points:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TOPOLOGIES}
        raw: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for n in range(rounds):
            for topology in TOPOLOGIES:
                log(f"{sc.name} ({sc.title}), round {n + 1}/{rounds}: {topology}")
                try:
                    with TOPOLOGY[topology](IDLE_S) as (target, layout):
                        r = run_scenario(sc, log=log, target=target)
                        events = r["published"] + round(sc.rate * sc.warmup)
                        r["commandstats"] = command_stats(layout, events)
                except Exception as exc:  # a broken run should not lose the others' figures
                    log(f"  failed: {exc!r}")
                    errors.append({"topology": topology, "round": n + 1, "error": repr(exc)})
                    continue
                f = figures(r)
                log(
                    f"  Redis CPU {f['redis_cpu_s']:.3f} s (busiest {f['redis_busiest']} "
                    f"{f['redis_busiest_cpu_s']:.3f} s; idle floor {f['redis_idle_cores']:.4f} "
                    f"cores), p50/p99 {f['p50_ms']}/{f['p99_ms']} ms, others "
                    f"{f['other_cpu_cores']:.2f} cores"
                )
                f["commandstats"] = r["commandstats"]
                runs[topology].append(f)
                raw.append({"topology": topology, "round": n + 1, **layout, **trim(r)})
        out[sc.name] = {
            "title": sc.title,
            "clients": sc.clients,
            "rate": sc.rate,
            "measure_s": sc.measure,
            "runs": runs,
            "pooled": {t: pooled(v) for t, v in runs.items() if v},
            "raw": raw,
            "errors": errors,
        }
    return out


# -- PUBLISH against SPUBLISH -----------------------------------------------------------------


def _resp(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


class _Subscriber(threading.Thread):
    """One subscriber on a raw socket (``SUBSCRIBE`` or ``SSUBSCRIBE``): reads everything,
    counts the messages (each payload's ``$300`` header), so that it never falls behind the
    way a Python client would and the node's output buffer stays small."""

    MARK: Final = b"$%d\r\n" % len(PAYLOAD)

    def __init__(self, port: int, verb: bytes, channel: bytes) -> None:
        super().__init__(daemon=True)
        self.count = 0
        self._halt = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(_resp(verb, channel))
        seen = b""
        while not seen.endswith(b":1\r\n"):  # the confirmation: subscribed to one channel
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"the node on port {port} closed the subscription")
            seen += chunk
        self.sock.settimeout(0.2)

    def run(self) -> None:
        tail = b""
        while not self._halt.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return
            buf = tail + data
            self.count += buf.count(self.MARK)
            tail = buf[-(len(self.MARK) - 1) :]

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.sock.close()


def _cpu(pids: Mapping[str, int]) -> dict[str, float]:
    by_pid = {pid: cpu for (pid, _), cpu in cpu_by_process().items()}
    return {name: by_pid.get(pid, 0.0) for name, pid in pids.items()}


def pubsub_cost(
    port: int, pids: Mapping[str, int], command: str, messages: int, idle_s: float = 2.0
) -> dict[str, Any]:
    """``messages`` of 300 bytes as ``command`` (PUBLISH or SPUBLISH), pipelined to the node on
    ``port`` with one subscriber there: every node's CPU over it, less its idle floor."""
    verb = b"SSUBSCRIBE" if command == "SPUBLISH" else b"SUBSCRIBE"
    sub = _Subscriber(port, verb, CHANNEL.encode())
    sub.start()
    try:
        idle0 = _cpu(pids)
        time.sleep(idle_s)
        idle1 = _cpu(pids)
        idle_rate = {n: (idle1[n] - idle0[n]) / idle_s for n in pids}
        cpu0, t0 = _cpu(pids), time.monotonic()
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=30) as client:
            sent = 0
            while sent < messages:
                pipe = client.pipeline(transaction=False)
                n = min(BATCH, messages - sent)
                for _ in range(n):
                    pipe.execute_command(command, CHANNEL, PAYLOAD)
                pipe.execute()
                sent += n
        deadline = time.monotonic() + 60
        while sub.count < messages and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        time.sleep(0.2)  # the other nodes' share of the last messages (the cluster bus)
        cpu1 = _cpu(pids)
        window = time.monotonic() - t0
    finally:
        sub.close()
    net = {n: cpu1[n] - cpu0[n] - idle_rate[n] * window for n in pids}
    return {
        "command": command,
        "messages": messages,
        "received": sub.count,
        "seconds": elapsed,
        "cpu_s_by_node": {n: cpu1[n] - cpu0[n] for n in pids},
        "idle_cores_by_node": idle_rate,
        "net_cpu_s_by_node": net,
    }


def run_pubsub(messages: int, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """PUBLISH and SPUBLISH on one redis-server and on the cluster, alternating, ``rounds``
    times; per row the Redis CPU per message (all nodes, the publishing node, the others)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for n in range(rounds):
        for topology in PUBSUB_TOPOLOGIES:
            with TOPOLOGY[topology](IDLE_S) as (target, layout):
                port = next(v["port"] for v in layout["nodes"].values() if v["role"] == "master"
                            and v["bus"])  # fmt: skip
                for command in ("PUBLISH", "SPUBLISH"):
                    log(f"pub/sub, round {n + 1}/{rounds}: {command} x {messages:,}, {topology}")
                    r = pubsub_cost(port, target.pids, command, messages)
                    r["publishing_node"] = next(
                        k for k, v in layout["nodes"].items() if v["port"] == port
                    )
                    r["nodes"] = layout["nodes"]
                    rows.setdefault(f"{command} {topology}", []).append(r)
    summary = {}
    for key, runs in rows.items():
        sent = sum(r["received"] for r in runs)
        node_names = list(runs[0]["net_cpu_s_by_node"])
        per_node = {
            name: sum(r["net_cpu_s_by_node"][name] for r in runs) * 1e6 / sent
            for name in node_names
        }
        publishing = runs[0]["publishing_node"]
        summary[key] = {
            "messages": sum(r["messages"] for r in runs),
            "received": sent,
            "messages_per_s": sent / sum(r["seconds"] for r in runs),
            "us_per_message_all": sum(per_node.values()),
            "us_per_message_publishing_node": per_node[publishing],
            "us_per_message_other_nodes": sum(v for k, v in per_node.items() if k != publishing),
            "us_per_message_by_node": per_node,
        }
    return {"messages_per_run": messages, "payload_bytes": len(PAYLOAD), "summary": summary,
            "runs": rows}  # fmt: skip


# -- the report -------------------------------------------------------------------------------


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _r(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


#: (label, key, format) of the comparison table's rows; a pair of keys is shown "a / b"
ROWS: Final[tuple[tuple[str, str, str], ...]] = (
    ("deliveries per round", "deliveries_per_round", ",.0f"),
    ("gateway CPU-s per round", "gw_cpu_s_per_round", ".2f"),
    ("Redis CPU-s per round, all nodes", "redis_cpu_s_per_round", ".3f"),
    ("Redis CPU-s per round, busiest node", "redis_busiest_cpu_s_per_round", ".3f"),
    ("Redis idle floor, all nodes (% of a core)", "redis_idle_pct", ".2f"),
    ("**deliveries per gateway CPU-s**", "deliveries_per_gw_cpu_s", ",.0f"),
    ("deliveries per Redis CPU-s, all nodes", "deliveries_per_redis_cpu_s", ",.0f"),
    ("deliveries per Redis CPU-s, busiest node", "deliveries_per_busiest_cpu_s", ",.0f"),
    ("**events per Redis CPU-s, all nodes**", "events_per_redis_cpu_s", ",.0f"),
    ("**events per Redis CPU-s, busiest node**", "events_per_busiest_cpu_s", ",.0f"),
    ("Redis µs per event above the idle floor, all nodes", "redis_net_us_per_event", ".1f"),
    ("Redis µs per event above the idle floor, busiest node", "busiest_net_us_per_event", ".1f"),
    ("gateway µs per event", "gw_us_per_event", ".0f"),
    ("publisher (driver process) µs per event", "driver_us_per_event", ".0f"),
    ("p50 latency, ms", "p50_ms", ".1f"),
    ("p99 latency, ms", "p99_ms", ".1f"),
)


def _figure(pooled_figs: dict[str, Any], key: str) -> float | None:
    if key == "redis_idle_pct":
        return float(pooled_figs["redis_idle_cores"]) * 100
    return pooled_figs.get(key)


def comparison_table(points: dict[str, dict[str, Any]], name: str) -> str:
    """One point's table: a column per topology that ran, then each other topology's ratio
    to ``single`` (the first)."""
    p = points[name]
    ran = [t for t in TOPOLOGIES if t in p["pooled"]]
    others = [t for t in ran[1:] if ran[0] == "single"]
    head = f"| {name}: {p['title']}, pooled over the rounds |"
    head += "".join(f" {LABEL[t]} |" for t in ran)
    head += "".join(f" {LABEL[t]} / single |" for t in others)
    lines = [head, "|---|" + "---:|" * (len(ran) + len(others))]
    for label, key, fmt in ROWS:
        values = {t: _figure(p["pooled"][t], key) for t in ran}
        line = f"| {label} |" + "".join(f" {_n(values[t], fmt)} |" for t in ran)
        line += "".join(f" {_r(values[t], values['single'])} |" for t in others)
        lines.append(line)
    return "\n".join(lines)


def pubsub_table(pubsub: dict[str, Any]) -> str:
    lines = [
        f"| {pubsub['payload_bytes']}-byte messages, one subscriber on the publishing node | "
        "messages/s | Redis µs per message, all nodes | publishing node | the other nodes |",
        "|---|---:|---:|---:|---:|",
    ]
    order = ("PUBLISH single", "SPUBLISH single", "PUBLISH cluster", "SPUBLISH cluster")
    for key in order:
        s = pubsub["summary"].get(key)
        if s is None:
            continue
        command, topology = key.split()
        where = "one redis-server" if topology == "single" else "cluster 3+3, the bus slot's master"
        lines.append(
            f"| `{command}`, {where} | {s['messages_per_s']:,.0f} | "
            f"{s['us_per_message_all']:.2f} | {s['us_per_message_publishing_node']:.2f} | "
            f"{s['us_per_message_other_nodes']:.2f} |"
        )
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(
        f"\nRedis Cluster bench: {env['cpus']} CPUs, Python {env['python']}, redis-server "
        f"{env['redis_server']}, gateway at {env['commit']}, {report['rounds']} round(s), "
        f"{'quick' if report['quick'] else 'full'} run, {report['total_s']:.0f} s; load average "
        f"{report['loadavg_start']} at the start, {report['loadavg_end']} at the end"
    )
    points = report["points"]
    for name, p in points.items():
        if p["pooled"]:
            print()
            print(comparison_table(points, name))
            for topology, f in p["pooled"].items():
                spread = ", ".join(
                    f"{k} {_n(v[0])}-{_n(v[1])}" for k, v in f["spread"].items() if v is not None
                )
                print(
                    f"  {name} {topology}: delivered {f['delivered_pct']:.3f}%, busiest node(s) "
                    f"{', '.join(f['busiest_nodes'])}, gateway idle {f['gw_idle_cores'] * 100:.2f}"
                    f"% of a core, other processes up to {f['other_cpu_cores_max']:.2f} cores; "
                    f"per-round range: {spread}; p99 by round (ms): "
                    f"{', '.join(_n(x, '.1f') for x in f['p99_ms_by_round'])}"
                )
                if len(f["redis_cpu_s_by_node_per_round"]) > 1:
                    nodes = ", ".join(
                        f"{node} {cpu:.3f}"
                        for node, cpu in f["redis_cpu_s_by_node_per_round"].items()
                    )
                    print(f"  {name} {topology}: Redis CPU-s per round by node: {nodes}")
            for topology, fs in p["runs"].items():
                if not fs:
                    continue
                for node, cs in fs[-1]["commandstats"].items():
                    top = ", ".join(
                        f"{cmd} {v['calls_per_event']:.2f} calls {v['us_per_event']:.1f} µs"
                        for cmd, v in list(cs["commands"].items())[:5]
                    )
                    print(f"  {name} {topology}, {node} (last round), per event: {top}")
        for e in p["errors"]:
            print(f"  FAILED {name} {e['topology']} round {e['round']}: {e['error']}")
    if report.get("pubsub"):
        print()
        print(pubsub_table(report["pubsub"]))
        for key, s in report["pubsub"]["summary"].items():
            nodes = ", ".join(f"{k} {v:.2f}" for k, v in s["us_per_message_by_node"].items())
            print(f"  {key}: received {s['received']:,}/{s['messages']:,}; µs by node: {nodes}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ", ".join(p.name for p in POINTS)
    parser.add_argument("--point", action="append", help=f"one of {names} (default: both)")
    parser.add_argument("--rounds", type=int, default=None, help="per topology (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="one round of 5 s windows, 20,000 pub/sub messages"
    )
    parser.add_argument("--pubsub", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--messages", type=int, default=None, help=f"default {MESSAGES:,}")
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster.json")
    args = parser.parse_args(argv)
    chosen = [p for p in POINTS if not args.point or p.name in args.point]
    if args.point and len(chosen) != len(set(args.point)):
        parser.error(f"--point takes {names}")
    rounds = args.rounds or (1 if args.quick else 3)
    messages = args.messages or (20_000 if args.quick else MESSAGES)
    if args.quick:
        chosen = [p.quick() for p in chosen]

    started = time.monotonic()
    nofile = raise_nofile()
    _log(f"building the load client: {build()} (RLIMIT_NOFILE {nofile})")
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": _environment(),
        "quick": args.quick,
        "rounds": rounds,
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    report["points"] = run_points(chosen, rounds, _log)
    write_json(report, args.out)  # the points' figures are kept if the pub/sub part fails
    report["pubsub"] = None
    if args.pubsub:
        try:
            report["pubsub"] = run_pubsub(messages, rounds, _log)
        except Exception as exc:
            _log(f"pub/sub failed: {exc!r}")
            report["pubsub_error"] = repr(exc)
    report["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["total_s"] = time.monotonic() - started
    print_report(report)
    write_json(report, args.out)
    print(f"wrote {args.out}")
    failed = any(p["errors"] for p in report["points"].values()) or "pubsub_error" in report
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
