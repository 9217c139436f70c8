"""The fan-out scenarios and the one routine that runs any of them.

Each run, bounded at every step: a private redis-server, the gateway process(es), the
identities; N streams opened by the C load client (its own process); RSS before and with the
streams idle; a warm-up at the scenario's rate, drained; then the measured window: client
counters and the gateways' CPU and ``/metrics`` taken at its start, events published at a fixed
rate, drained until every client has what it is owed (or progress stops), everything read
again. Raw figures only; :mod:`bench.report` turns them into the table and the targets.

The server measured is the gateway, or with ``server="nchan"`` the bench's peer
(:mod:`bench.nchan`: one nginx worker with nchan, behind the same private redis-server, fed the
same events at the same rate, its streams held by the same load client); every figure is
taken the same way, the server's CPU and RSS being nginx's (master and worker). The private
redis-server's CPU over the window is in the figures either way (``redis_cpu_s``).

A caller may hand :func:`run_scenario` a Redis of its own (a :class:`RedisTarget`: a Redis
Cluster, :mod:`bench.cluster`) instead: then the figures also carry the CPU of each of its
redis-server processes over the window, and over a stretch with the streams open and no events.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from devtools.localredis import PrivateRedis

from .floor import Floor, FloorSink, floor_servers
from .floor import stream_request as floor_request
from .loadclient import BUILD_DIR, LoadClient, Request, stream_request
from .nchan import Nchan, NchanSink, nchan_servers, subscribe_request
from .procs import (
    ROOT_KEY,
    ROOT_SECRET,
    Server,
    cpu_by_process,
    gateways,
    others_cpu,
    pubsub_owners,
    seed,
    users,
)
from .ratepub import RatePublisher, session_name

__all__ = [
    "SCENARIOS",
    "RedisTarget",
    "Scenario",
    "ServerKind",
    "peer_skip_reason",
    "run_scenario",
    "select",
]

Kind = Literal["broadcast", "filtered", "idle"]
#: what :func:`run_scenario` measures: the gateway, or the peer (bench.nchan)
ServerKind = Literal["gateway", "nchan", "floor"]
STREAM: Final = "/stream/kernel/_/events"
EVICTIONS: Final = ("slow_consumer", "write_timeout")
_PER_CONN: Final = ("counts", "status", "stall")  # per-connection lists, not for the report
#: the slow-consumer runs: a short write deadline and a small socket send buffer, so a stalled
#: client is noticed soon; events padded to ~1 KiB (the schema allows 1,024 characters of
#: reason), so a stalled pipe (its receive buffer, the gateway's send buffer, uvicorn's 64 KiB
#: write buffer: ~100 KB) fills in ~10 s at 10 events/s. 10 events/s keeps the gateway well
#: below saturation, so the healthy clients' p99 shows what the stalled ones cost them rather
#: than queueing at capacity (at 25 events/s of 1 KiB the all-healthy run alone uses ~90% of a
#: core and its p99 swings by 1.5x from run to run).
SLOW_ENV: Final = {"GATEWAY_WRITE_DEADLINE": "5", "GATEWAY_SEND_BUFFER": "16384"}
SLOW_PAD: Final = 900
SLOW_RATE: Final = 10.0


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    kind: Kind
    clients: int
    rate: float = 0.0
    gateways: int = 1
    #: worker processes per gateway (``gateway serve --workers``; bench.fanout --workers)
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    pad: int = 0
    stall_every: int = 0  # every n-th client stops reading (0: none)
    stall_after: float = 2.0  # seconds into the measured window
    sample: bool = False  # sample evictions, queued bytes and RSS every 0.25 s
    #: events spread over this many bench users (bench.procs.users), each opening the
    #: filtered streams of its own sessions; 0: every event and stream the superadmin's
    owners: int = 0
    warmup: float = 3.0
    measure: float = 10.0
    quick_measure: float = 3.0

    def quick(self) -> Scenario:
        return replace(self, warmup=1.0, measure=self.quick_measure)


SCENARIOS: Final = (
    Scenario("a25", "broadcast 2,000 x 25 ev/s", "broadcast", 2000, 25),
    Scenario("a100", "broadcast 2,000 x 100 ev/s", "broadcast", 2000, 100),
    Scenario("b", "scale 10,000 x 20 ev/s", "broadcast", 10_000, 20),
    Scenario("c1k", "filtered 1,000 x 1,000 ev/s", "filtered", 1000, 1000),
    Scenario("c10k", "filtered 10,000 x 1,000 ev/s", "filtered", 10_000, 1000),
    Scenario(
        "d-healthy",
        "all healthy, 2,000 x 10 ev/s",
        "broadcast",
        2000,
        SLOW_RATE,
        env=SLOW_ENV,
        pad=SLOW_PAD,
        sample=True,
        measure=24.0,
        quick_measure=20.0,  # the stalled pipes need their time to fill and be evicted
    ),
    Scenario(
        "d-stall",
        "10% stall at 2 s, 2,000 x 10 ev/s",
        "broadcast",
        2000,
        SLOW_RATE,
        env=SLOW_ENV,
        pad=SLOW_PAD,
        stall_every=10,
        sample=True,
        measure=24.0,
        quick_measure=20.0,
    ),
    Scenario("e", "idle 10,000, no events", "idle", 10_000, measure=5.0),
    Scenario("f", "cross-replica 2 x 1,000 x 100 ev/s", "broadcast", 2000, 100, gateways=2),
)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis that a scenario runs against instead of a private redis-server of its own; the
    caller starts and stops it (and starts each run on a fresh one, as the default does)."""

    #: what the gateways, the publisher and the identity import connect to
    url: str
    #: every redis-server process of it, by a name of the caller's: each one's CPU (user +
    #: system) over the measured window is in the figures (``redis_cpu_s``)
    pids: Mapping[str, int]
    #: a plain ``redis://`` URL of the node the gateways subscribe on (CLIENT LIST TYPE pubsub)
    pubsub_url: str
    #: seconds with the streams open and no events, before the warm-up: the Redis and gateway
    #: CPU of that stretch is the floor the window's figures sit on (``redis_idle_cpu_s``)
    idle_s: float = 5.0
    #: the deployment's partitions (``GATEWAY_REDIS_PARTITIONS``, the publisher's setting)
    partitions: int = 1


def peer_skip_reason(sc: Scenario, peer: ServerKind = "nchan") -> str | None:
    """Why the peer does not run ``sc``, or None: nchan runs the plain broadcast, filtered
    and idle scenarios of one gateway process, the floor (:mod:`bench.floor`) the broadcast
    and idle ones; the others measure what only the gateway has."""
    if sc.gateways != 1:
        return "more than one gateway process (the peer is one process)"
    if sc.env or sc.stall_every or sc.sample:
        return "the gateway's write deadline and evictions (the peer has no equivalent)"
    if peer == "floor" and sc.kind == "filtered":
        return "filtered streams (the floor broadcasts every frame to every stream)"
    return None


def select(names: list[str] | None) -> list[Scenario]:
    """By exact name, else by prefix (``c`` is c1k and c10k); every scenario when empty."""
    if not names:
        return list(SCENARIOS)
    chosen: list[Scenario] = []
    for name in names:
        exact = [s for s in SCENARIOS if s.name == name]
        found = exact or [s for s in SCENARIOS if s.name.startswith(name)]
        if not found:
            known = ", ".join(s.name for s in SCENARIOS)
            raise ValueError(f"no scenario {name!r} (known: {known})")
        chosen += [s for s in found if s not in chosen]
    return [s for s in SCENARIOS if s in chosen]


def _requests(sc: Scenario, gws: Sequence[Server]) -> list[Request]:
    out: list[Request] = []
    owners = users(sc.owners)
    for i in range(sc.clients):
        gw = gws[i % len(gws)]
        stall = bool(sc.stall_every) and i % sc.stall_every == 0
        if isinstance(gw, Floor):  # one broadcast to every stream
            out.append(Request(gw.port, stall, floor_request(gw.port)))
            continue
        if isinstance(gw, Nchan):  # a channel per session: all on one, or each on its own
            channel = session_name(i if sc.kind == "filtered" else 0)
            out.append(Request(gw.port, stall, subscribe_request(gw.port, channel)))
            continue
        key, secret = ROOT_KEY, ROOT_SECRET
        if sc.kind == "filtered" and owners:  # the session's owner, a user: one partition
            owner = owners[i % len(owners)]
            key, secret = owner.access_key, owner.secret_key
            target = f"{STREAM}?sessionId={session_name(i)}"
        elif sc.kind == "filtered":
            target = f"{STREAM}?sessionId={session_name(i)}&ownerAccessKey={ROOT_KEY}"
        else:
            target = f"{STREAM}?sessionId=*"
        out.append(Request(gw.port, stall, stream_request(gw.port, target, key, secret)))
    return out


def _counter(metrics: list[dict[str, float]], name: str) -> float:
    return sum(m.get(name, 0.0) for m in metrics)


def _evictions(gws: Sequence[Server]) -> dict[str, float]:
    scraped = [gw.metrics() for gw in gws]
    out = {r: _counter(scraped, f'kev_evictions_total{{reason="{r}"}}') for r in EVICTIONS}
    out["deliveries"] = _counter(scraped, "kev_deliveries_total")
    out["buffer_bytes"] = _counter(scraped, "kev_buffer_bytes")
    return out


def _drain(client: LoadClient, expected: int, limit: float) -> float:
    """Wait until the client has ``expected`` events, or no progress for 1 s; seconds waited."""
    start = time.monotonic()
    last, last_change = -1, start
    while (now := time.monotonic()) - start < limit:
        events, _, _ = client.stat()
        if events >= expected:
            break
        if events != last:
            last, last_change = events, now
        elif now - last_change > 1.0:
            break
        time.sleep(0.05)
    return time.monotonic() - start


class _Sampler:
    """During a slow-consumer run: stall the marked clients on time, and sample the gateways'
    evictions, queued bytes and RSS every 0.25 s (what 'time to evict' and 'RSS growth' are
    read from)."""

    def __init__(self, sc: Scenario, client: LoadClient, gws: Sequence[Server]) -> None:
        self.sc, self.client, self.gws = sc, client, gws
        self.stall_at: float | None = None
        self.stalled = 0
        self.rss_at_stall = 0
        self.samples: list[dict[str, float]] = []
        self._next = 0.0

    def __call__(self, elapsed: float) -> None:
        if self.stall_at is None and elapsed >= self.sc.stall_after:
            # In a run without stalled clients this is the control: same moment, same reads.
            self.rss_at_stall = sum(gw.rss() for gw in self.gws)
            self.stalled = self.client.stall() if self.sc.stall_every else 0
            self.stall_at = elapsed
        if elapsed >= self._next:
            self._next = elapsed + 0.25
            sample = _evictions(self.gws)
            sample["t"] = elapsed
            sample["rss"] = sum(gw.rss() for gw in self.gws)
            self.samples.append(sample)


Profiler = Callable[[list[int], float], Callable[[], dict[str, Any]]]


def run_scenario(
    sc: Scenario,
    *,
    log: Callable[[str], None],
    profiler: Profiler | None = None,
    target: RedisTarget | None = None,
    server: ServerKind = "gateway",
) -> dict[str, Any]:
    """Run one scenario end to end; the raw figures as a dict (see the module docstring).
    Against a private redis-server of its own, or ``target``'s Redis; on the gateway, or on
    the peer (``server="nchan"``: a private redis-server only, no profiler)."""
    if server != "gateway" and (target is not None or profiler is not None):
        raise ValueError("the peer runs on a private redis-server, unprofiled")
    workdir = BUILD_DIR / "run" / (sc.name if server == "gateway" else f"{sc.name}-{server}")
    res: dict[str, Any] = {"name": sc.name, "title": sc.title, "kind": sc.kind, "server": server}
    res.update(clients=sc.clients, rate=sc.rate, gateways=sc.gateways, measure_s=sc.measure)
    res["workers"] = sc.workers if server == "gateway" else 1
    res["env"] = dict(sc.env)
    with contextlib.ExitStack() as stack:
        if target is None:
            redis_server = stack.enter_context(PrivateRedis())
            assert redis_server.proc is not None
            redis_url, pubsub_url = redis_server.url, redis_server.url
            redis_pids: Mapping[str, int] = {"redis": redis_server.proc.pid}
        else:
            redis_url, pubsub_url, redis_pids = target.url, target.pubsub_url, target.pids
        partitions = 1 if target is None else target.partitions
        res.update(owners=sc.owners, partitions=partitions)
        servers: contextlib.AbstractContextManager[Sequence[Server]]
        if server == "nchan":
            servers = nchan_servers(redis_url, workdir)
        elif server == "floor":
            servers = floor_servers(workdir)
        else:
            seed(redis_url, sc.owners)
            env = {**sc.env, "GATEWAY_WORKERS": str(sc.workers)} if sc.workers > 1 else sc.env
            if partitions > 1:
                env = {**env, "GATEWAY_REDIS_PARTITIONS": str(partitions)}
            servers = gateways(redis_url, sc.gateways, env, workdir)
        with servers as gws:
            _evictions(gws)  # one scrape first, so its one-off allocations are in the baseline
            res["rss_before"] = sum(gw.rss() for gw in gws)
            budget = 120.0 + sc.clients / 50 + sc.warmup + sc.measure * 2
            requests = _requests(sc, gws)
            with LoadClient(requests, workdir, max_seconds=budget, stall_rcvbuf=4096) as client:
                t0 = time.monotonic()
                connected, failed = client.wait_ready(timeout=60 + sc.clients / 100)
                res.update(connected=connected, failed=failed, connect_s=time.monotonic() - t0)
                log(f"  {connected:,} streams open ({failed} failed) in {res['connect_s']:.1f} s")
                time.sleep(2.0)  # let the allocator settle before reading RSS
                res["rss_idle"] = sum(gw.rss() for gw in gws)
                res["pubsub"] = pubsub_owners(pubsub_url, gws)
                if sc.kind == "idle":
                    cpu0 = sum(gw.cpu() for gw in gws)
                    time.sleep(sc.measure)
                    res["idle_cpu_s"] = sum(gw.cpu() for gw in gws) - cpu0
                    res["rss_end"] = sum(gw.rss() for gw in gws)
                    data = client.dump()
                    res["client"] = {k: v for k, v in data.items() if k not in _PER_CONN}
                    return res
                if target is not None:
                    _idle(res, gws, target)
                ours = [os.getpid(), *redis_pids.values()]
                sink: NchanSink | FloorSink | None = None
                if server == "nchan":
                    sink = NchanSink(gws[0].port)
                elif server == "floor":
                    assert isinstance(gws[0], Floor)
                    sink = FloorSink(gws[0].publish_port)
                _measure(
                    sc, res, client, gws, redis_url, ours, log, profiler, redis_pids, sink,
                    partitions,
                )  # fmt: skip
                res["pubsub_after"] = pubsub_owners(pubsub_url, gws)
    return res


def _cpu_of(snapshot: dict[tuple[int, float], float], pids: Mapping[str, int]) -> dict[str, float]:
    """The CPU seconds of each named pid in a :func:`~bench.procs.cpu_by_process` snapshot."""
    by_pid = {pid: cpu for (pid, _), cpu in snapshot.items()}
    return {name: by_pid.get(pid, 0.0) for name, pid in pids.items()}


def _idle(res: dict[str, Any], gws: Sequence[Server], target: RedisTarget) -> None:
    """The target's Redis and the gateways with the streams open and no events: their floor."""
    before, gw0 = _cpu_of(cpu_by_process(), target.pids), sum(gw.cpu() for gw in gws)
    t0 = time.monotonic()
    time.sleep(target.idle_s)
    after = _cpu_of(cpu_by_process(), target.pids)
    res["idle_s"] = time.monotonic() - t0
    res["gw_idle_cpu_s"] = sum(gw.cpu() for gw in gws) - gw0
    res["redis_idle_cpu_s"] = {name: after[name] - before[name] for name in target.pids}


def _measure(
    sc: Scenario,
    res: dict[str, Any],
    client: LoadClient,
    gws: Sequence[Server],
    redis_url: str,
    ours: list[int],
    log: Callable[[str], None],
    profiler: Profiler | None,
    watched: Mapping[str, int],
    sink: NchanSink | FloorSink | None,
    partitions: int = 1,
) -> None:
    sessions = sc.clients if sc.kind == "filtered" else 1
    with RatePublisher(
        redis_url, sessions=sessions, pad=sc.pad, sink=sink, owners=sc.owners,
        partitions=partitions,
    ) as pub:  # fmt: skip
        warm = pub.run(sc.rate, sc.warmup)
        _drain(client, warm * (1 if sc.kind == "filtered" else sc.clients), limit=10.0)
        time.sleep(0.2)
        log(f"  warm-up: {warm:,} events")
        pub.reset_counts()
        if sink is not None:
            sink.max_backlog = 0
        client.reset()
        before = _evictions(gws)
        cpu0 = [gw.cpu() for gw in gws]
        user0 = [gw.user_cpu() for gw in gws]
        everyone0 = cpu_by_process()
        t0 = time.monotonic()
        stop_profile = profiler([gw.ps.pid for gw in gws], sc.measure) if profiler else None
        sampler = _Sampler(sc, client, gws) if sc.sample else None
        started = time.monotonic()
        published = pub.run(sc.rate, sc.measure, sampler)
        # past sc.measure: the publisher fell behind the rate (it gives up 5 s late)
        res["publish_s"] = time.monotonic() - started
        if sink is not None:  # requests that waited for a free connection to nchan, at most
            res["publisher_backlog_max"] = sink.max_backlog
        if sc.kind == "filtered":
            owed = [pub.counts[i] for i in range(sc.clients)]
        else:
            owed = [published] * sc.clients
        stalls = [bool(sc.stall_every) and i % sc.stall_every == 0 for i in range(sc.clients)]
        expected = sum(o for o, s in zip(owed, stalls, strict=True) if not s)
        stalled_owed = sum(o for o, s in zip(owed, stalls, strict=True) if s)
        drained = _drain(client, expected + stalled_owed, limit=15.0)
        res["gw_cpu_s"] = sum(gw.cpu() for gw in gws) - sum(cpu0)
        res["gw_user_s"] = sum(gw.user_cpu() for gw in gws) - sum(user0)
        res["window_s"] = time.monotonic() - t0
        mine = {*ours, client.pid, *(pid for gw in gws for pid in gw.pids)}
        everyone1 = cpu_by_process()
        # What else ran meanwhile (this machine is shared with other people's test runs).
        res["other_cpu_cores"] = others_cpu(everyone0, everyone1, mine) / res["window_s"]
        if watched:
            cpu0_of, cpu1_of = _cpu_of(everyone0, watched), _cpu_of(everyone1, watched)
            res["redis_cpu_s"] = {name: cpu1_of[name] - cpu0_of[name] for name in watched}
            # this process: the publisher library at the scenario's rate, and the driver
            me = {"driver": os.getpid()}
            mine_after, mine_before = _cpu_of(everyone1, me), _cpu_of(everyone0, me)
            res["driver_cpu_s"] = mine_after["driver"] - mine_before["driver"]
        after = _evictions(gws)
        res["profile"] = stop_profile() if stop_profile else None
    res["rss_end"] = sum(gw.rss() for gw in gws)
    data = client.dump()
    res["client"] = {k: v for k, v in data.items() if k not in _PER_CONN}
    counts: list[int] = data["counts"]
    healthy = [i for i in range(sc.clients) if not data["stall"][i] and data["status"][i] == 200]
    res.update(published=published, expected=expected, drain_s=drained)
    res["delivered"] = sum(min(counts[i], owed[i]) for i in healthy)
    res["duplicates"] = sum(max(0, counts[i] - owed[i]) for i in range(sc.clients))
    res["clients_short"] = sum(1 for i in healthy if counts[i] < owed[i])
    res["delivered_all"] = sum(counts)
    res["metrics_deliveries"] = after["deliveries"] - before["deliveries"]
    res["evictions"] = {r: after[r] - before[r] for r in EVICTIONS}
    if sampler is not None:
        res["stall"] = {
            "stalled": sampler.stalled,
            "stall_at": sampler.stall_at,
            "rss_at_stall": sampler.rss_at_stall,
            "samples": sampler.samples,
            "bytes_per_event": data["bytes"]
            / max(1, data["events_healthy"] + data["events_stalled"]),
        }
    log(
        f"  published {published:,} in {res['publish_s']:.1f} s, delivered "
        f"{res['delivered']:,}/{expected:,}, {res['server']} CPU {res['gw_cpu_s']:.2f} s over "
        f"{res['window_s']:.1f} s"
    )
