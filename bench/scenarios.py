"""The fan-out scenarios and the one routine that runs any of them.

Each run, bounded at every step: a private redis-server, the gateway process(es), the
identities; N streams opened by the C load client (its own process); RSS before and with the
streams idle; a warm-up at the scenario's rate, drained; then the measured window: client
counters and the gateways' CPU and ``/metrics`` taken at its start, events published at a fixed
rate, drained until every client has what it is owed (or progress stops), everything read
again. Raw figures only; :mod:`bench.report` turns them into the table and the targets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from devtools.localredis import PrivateRedis

from .loadclient import BUILD_DIR, LoadClient, Request, stream_request
from .procs import (
    ROOT_KEY,
    ROOT_SECRET,
    Gateway,
    cpu_by_process,
    gateways,
    others_cpu,
    pubsub_owners,
    seed,
)
from .ratepub import RatePublisher, session_name

__all__ = ["SCENARIOS", "Scenario", "run_scenario", "select"]

Kind = Literal["broadcast", "filtered", "idle"]
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
    env: dict[str, str] = field(default_factory=dict)
    pad: int = 0
    stall_every: int = 0  # every n-th client stops reading (0: none)
    stall_after: float = 2.0  # seconds into the measured window
    sample: bool = False  # sample evictions, queued bytes and RSS every 0.25 s
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


def _requests(sc: Scenario, gws: list[Gateway]) -> list[Request]:
    out: list[Request] = []
    for i in range(sc.clients):
        gw = gws[i % len(gws)]
        if sc.kind == "filtered":
            target = f"{STREAM}?sessionId={session_name(i)}&ownerAccessKey={ROOT_KEY}"
        else:
            target = f"{STREAM}?sessionId=*"
        stall = bool(sc.stall_every) and i % sc.stall_every == 0
        out.append(Request(gw.port, stall, stream_request(gw.port, target, ROOT_KEY, ROOT_SECRET)))
    return out


def _counter(metrics: list[dict[str, float]], name: str) -> float:
    return sum(m.get(name, 0.0) for m in metrics)


def _evictions(gws: list[Gateway]) -> dict[str, float]:
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

    def __init__(self, sc: Scenario, client: LoadClient, gws: list[Gateway]) -> None:
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
    sc: Scenario, *, log: Callable[[str], None], profiler: Profiler | None = None
) -> dict[str, Any]:
    """Run one scenario end to end; the raw figures as a dict (see the module docstring)."""
    workdir = BUILD_DIR / "run" / sc.name
    res: dict[str, Any] = {"name": sc.name, "title": sc.title, "kind": sc.kind}
    res.update(clients=sc.clients, rate=sc.rate, gateways=sc.gateways, measure_s=sc.measure)
    res["env"] = dict(sc.env)
    with PrivateRedis() as redis_server:
        seed(redis_server.url)
        with gateways(redis_server.url, sc.gateways, sc.env, workdir) as gws:
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
                res["pubsub"] = pubsub_owners(redis_server.url, gws)
                if sc.kind == "idle":
                    cpu0 = sum(gw.cpu() for gw in gws)
                    time.sleep(sc.measure)
                    res["idle_cpu_s"] = sum(gw.cpu() for gw in gws) - cpu0
                    res["rss_end"] = sum(gw.rss() for gw in gws)
                    data = client.dump()
                    res["client"] = {k: v for k, v in data.items() if k not in _PER_CONN}
                    return res
                assert redis_server.proc is not None
                ours = [os.getpid(), redis_server.proc.pid]
                _measure(sc, res, client, gws, redis_server.url, ours, log, profiler)
                res["pubsub_after"] = pubsub_owners(redis_server.url, gws)
    return res


def _measure(
    sc: Scenario,
    res: dict[str, Any],
    client: LoadClient,
    gws: list[Gateway],
    redis_url: str,
    ours: list[int],
    log: Callable[[str], None],
    profiler: Profiler | None,
) -> None:
    sessions = sc.clients if sc.kind == "filtered" else 1
    with RatePublisher(redis_url, sessions=sessions, pad=sc.pad) as pub:
        warm = pub.run(sc.rate, sc.warmup)
        _drain(client, warm * (1 if sc.kind == "filtered" else sc.clients), limit=10.0)
        time.sleep(0.2)
        log(f"  warm-up: {warm:,} events")
        pub.reset_counts()
        client.reset()
        before = _evictions(gws)
        cpu0 = [gw.cpu() for gw in gws]
        everyone0 = cpu_by_process()
        t0 = time.monotonic()
        stop_profile = profiler([gw.ps.pid for gw in gws], sc.measure) if profiler else None
        sampler = _Sampler(sc, client, gws) if sc.sample else None
        published = pub.run(sc.rate, sc.measure, sampler)
        if sc.kind == "filtered":
            owed = [pub.counts[i] for i in range(sc.clients)]
        else:
            owed = [published] * sc.clients
        stalls = [bool(sc.stall_every) and i % sc.stall_every == 0 for i in range(sc.clients)]
        expected = sum(o for o, s in zip(owed, stalls, strict=True) if not s)
        stalled_owed = sum(o for o, s in zip(owed, stalls, strict=True) if s)
        drained = _drain(client, expected + stalled_owed, limit=15.0)
        res["gw_cpu_s"] = sum(gw.cpu() for gw in gws) - sum(cpu0)
        res["window_s"] = time.monotonic() - t0
        mine = {*ours, client.pid, *(gw.ps.pid for gw in gws)}
        # What else ran meanwhile (this machine is shared with other people's test runs).
        res["other_cpu_cores"] = others_cpu(everyone0, cpu_by_process(), mine) / res["window_s"]
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
        f"  published {published:,}, delivered {res['delivered']:,}/{expected:,}, "
        f"gateway CPU {res['gw_cpu_s']:.2f} s over {res['window_s']:.1f} s"
    )
