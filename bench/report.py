"""From raw scenario figures to what the issue asks for: the derived figures, the targets with
PASS/MISS, the terminal table and the JSON report (the plot: :mod:`bench.plot`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

__all__ = [
    "HEADER",
    "UNITS",
    "derive",
    "marginal_rss_kb",
    "print_report",
    "row_text",
    "targets",
    "trim",
    "write_json",
]

BUFFER_CAP: Final = 256 * 1024  # the gateway's default GATEWAY_BUFFER_CAP (not overridden)
KB: Final = 1000.0


def percentile_ms(hist: list[list[int]], q: float) -> float | None:
    """Upper edge of the histogram bucket holding quantile ``q`` ([lo_us, hi_us, count])."""
    total = sum(b[2] for b in hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for _lo, hi, count in hist:
        seen += count
        if seen >= rank:
            return hi / 1000.0
    return hist[-1][1] / 1000.0


def _per(value: float | None, count: float, scale: float) -> float | None:
    return value * scale / count if count and value is not None else None


def _stall(r: dict[str, Any]) -> dict[str, Any]:
    st = r["stall"]
    samples, stall_at, stalled = st["samples"], st["stall_at"] or 0.0, st["stalled"]
    after = [s["rss"] for s in samples if s["t"] >= stall_at]
    rss_growth = max(after) - st["rss_at_stall"] if after else None
    if not stalled:  # the all-healthy control: RSS growth over the same stretch only
        return {"stalled": 0, "rss_growth": rss_growth}
    ev = [s["slow_consumer"] + s["write_timeout"] for s in samples]
    before = [i for i, s in enumerate(samples) if s["t"] <= stall_at]
    base = ev[before[-1]] if before else 0.0
    first = next((i for i, e in enumerate(ev) if e - base > 0), None)
    every = next((i for i, e in enumerate(ev) if e - base >= stalled), None)
    deadline = float(r.get("env", {}).get("GATEWAY_WRITE_DEADLINE", 10.0))
    period = max(
        0.05, min(deadline / 4, 1.0)
    )  # the hub timer's tick (gateway.fanout.hub.Hub.run_timer)
    out: dict[str, Any] = {
        "stalled": stalled,
        "evicted": sum(r["evictions"].values()),
        "write_deadline_s": deadline,
        "timer_period_s": period,
        "first_evicted_s": samples[first]["t"] - stall_at if first is not None else None,
        "all_evicted_s": samples[every]["t"] - stall_at if every is not None else None,
        "client_saw_close": len(r["client"]["stall_closed_s"]),
        "stuck_s": None,
    }
    # Until a stalled client's pipe is full its writes complete; then its hub buffer grows at
    # rate x frame bytes. The queued bytes just before the first eviction, over that growth,
    # date the moment the writes got stuck: the write deadline counts from there.
    if first is not None and first > 0:
        queued = samples[first - 1]["buffer_bytes"]
        growth = stalled * r["rate"] * st["bytes_per_event"]
        if queued > 0 and growth > 0:
            out["stuck_s"] = samples[first - 1]["t"] - queued / growth - stall_at
    out["rss_growth"] = rss_growth
    out["rss_bound"] = BUFFER_CAP * stalled
    return out


def derive(r: dict[str, Any]) -> dict[str, Any]:
    """The per-scenario figures of the table, from one run's raw figures."""
    c = r["client"]
    d: dict[str, Any] = {"name": r["name"], "title": r["title"], "clients": r["clients"]}
    d["rate"], d["connected"], d["failed"] = r["rate"], r["connected"], r["failed"]
    d["rss_mb"] = r["rss_idle"] / 1e6
    d["rss_per_conn_kb"] = _per(r["rss_idle"] - r["rss_before"], r["connected"], 1 / KB)
    d["pubsub"] = r["pubsub"]
    if r["kind"] == "idle":
        d["idle_cpu_pct"] = 100.0 * r["idle_cpu_s"] / r["measure_s"]
        return d
    deliveries = c["events_healthy"] + c["events_stalled"]
    hist = c["hist_healthy"]
    d.update(
        published=r["published"],
        expected=r["expected"],
        delivered=r["delivered"],
        delivered_pct=_per(r["delivered"], r["expected"], 100.0),
        p50_ms=percentile_ms(hist, 0.50),
        p90_ms=percentile_ms(hist, 0.90),
        p99_ms=percentile_ms(hist, 0.99),
        max_ms=c["lat_max_us"][0] / 1000.0,
        gw_cpu_per_1k_ms=_per(r["gw_cpu_s"], deliveries, 1e6),
        gw_cpu_per_event_us=_per(r["gw_cpu_s"], r["published"], 1e6),
        client_cpu_per_1k_ms=_per(c["cpu_user_s"] + c["cpu_sys_s"], deliveries, 1e6),
        events_per_write=_per(deliveries, c.get("chunks", 0), 1.0),
        gw_cpu_per_write_us=_per(r["gw_cpu_s"], c.get("chunks", 0), 1e6),
        gw_user_per_write_us=_per(r.get("gw_user_s"), c.get("chunks", 0), 1e6),
        # the process's own code; the rest of gw_cpu_per_1k_ms is the kernel's, which one
        # write per delivery costs any server alike (bench.peer)
        gw_user_per_1k_ms=_per(r.get("gw_user_s"), deliveries, 1e6),
        evictions=r["evictions"],
        other_cpu_cores=r.get("other_cpu_cores"),
    )
    if "redis_cpu_s" in r:  # every redis-server of the run, over the window
        d["redis_cpu_per_1k_ms"] = _per(sum(r["redis_cpu_s"].values()), deliveries, 1e6)
    if "stall" in r:
        d["stall"] = _stall(r)
    return d


def marginal_rss_kb(rows: dict[str, dict[str, Any]]) -> float | None:
    """RSS per stream from the slope between a 2,000- and a 10,000-stream run: the cost of
    one more connection, free of one-off allocations."""
    small = next((d for d in rows.values() if d["connected"] == 2000), None)
    big = next((d for d in rows.values() if d["connected"] == 10_000), None)
    if small is None or big is None:
        return None
    growth: float = big["rss_mb"] - small["rss_mb"]
    return growth * 1e6 / 8000 / KB


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _at_most(value: float | None, limit: float) -> bool | None:
    """PASS/MISS, or None (n/a) when there is no figure."""
    return None if value is None else value <= limit


def targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(target: str, value: str, ok: bool | None) -> None:
        out.append({"target": target, "value": value, "pass": ok})

    def delivered(name: str, d: dict[str, Any]) -> None:
        pct = d["delivered_pct"]
        add(f"{name}: 100% delivered", f"{_f(pct, '.3f')}%", None if pct is None else pct >= 100)

    def p99(name: str, d: dict[str, Any], limit: float) -> None:
        add(f"{name}: p99 <= {limit:g} ms", f"{_f(d['p99_ms'])} ms", _at_most(d["p99_ms"], limit))

    if a100 := rows.get("a100"):
        delivered("(a) 100 ev/s x 2,000", a100)
        cpu = a100["gw_cpu_per_1k_ms"]
        add(
            "(a) 100 ev/s: gateway CPU <= 4 ms per 1,000 deliveries",
            f"{_f(cpu, '.2f')} ms",
            _at_most(cpu, 4.0),
        )
        p99("(a) 100 ev/s", a100, 100)
    if a25 := rows.get("a25"):
        p99("(a) 25 ev/s x 2,000", a25, 50)
    if b := rows.get("b"):
        delivered("(b) 10,000 x 20 ev/s", b)
        p99("(b) 10,000 x 20 ev/s", b, 250)
    c1, c10 = rows.get("c1k"), rows.get("c10k")
    if c1 and c10:
        x, y = c10["gw_cpu_per_event_us"], c1["gw_cpu_per_event_us"]
        ratio = _ratio(x, y)
        add(
            "(c) gateway CPU per published event, 10,000 clients <= 1.3x 1,000 clients",
            f"{_f(x)} / {_f(y)} us = {_f(ratio, '.2f')}x",
            _at_most(ratio, 1.3),
        )
    d0, d1 = rows.get("d-healthy"), rows.get("d-stall")
    if d0 and d1:
        ratio = _ratio(d1["p99_ms"], d0["p99_ms"])
        add(
            "(d) healthy clients' p99 within 1.2x of the all-healthy run",
            f"{_f(d1['p99_ms'])} / {_f(d0['p99_ms'])} ms = {_f(ratio, '.2f')}x",
            _at_most(ratio, 1.2),
        )
    if d1:
        s = d1["stall"]
        limit = s["write_deadline_s"] + s["timer_period_s"] + 0.25
        took = None
        if s["all_evicted_s"] is not None:
            took = s["all_evicted_s"] - (s["stuck_s"] or 0.0)
        ok = _at_most(took, limit) if s["evicted"] >= s["stalled"] else False
        add(
            f"(d) every stalled client evicted within the write deadline of its write getting "
            f"stuck ({s['write_deadline_s']:g} s + {s['timer_period_s']:g} s timer tick + 0.25 s "
            "sampling)",
            f"{s['evicted']:.0f}/{s['stalled']} evicted, {_f(took, '.2f')} s after stuck (stuck "
            f"{_f(s['stuck_s'], '.2f')} s, all evicted {_f(s['all_evicted_s'], '.2f')} s after "
            "the stall)",
            ok,
        )
        growth = s["rss_growth"] / 1e6 if s["rss_growth"] is not None else None
        add(
            "(d) RSS growth <= buffer_cap x stalled clients",
            f"{_f(growth)} MB <= {s['rss_bound'] / 1e6:.1f} MB",
            _at_most(growth, s["rss_bound"] / 1e6),
        )
    if e := rows.get("e"):
        per = e["rss_per_conn_kb"]
        add(
            "(e) RSS per idle connection <= 10 KB (1 KB = 1,000 B)",
            f"{_f(per)} KB",
            _at_most(per, 10.0),
        )
    if f := rows.get("f"):
        pubsub = f["pubsub"]
        ok = pubsub.get("other", 0) == 0 and all(v == 1 for k, v in pubsub.items() if k != "other")
        add(
            "(f) exactly one pub/sub connection per gateway process (CLIENT LIST TYPE pubsub)",
            ", ".join(f"{k}: {v}" for k, v in pubsub.items()),
            ok,
        )
        if a100:
            x, y = f["gw_cpu_per_1k_ms"], a100["gw_cpu_per_1k_ms"]
            ratio = _ratio(x, y)
            add(
                "(f) per-delivery CPU within 10% of (a) 100 ev/s",
                f"{_f(x, '.2f')} vs {_f(y, '.2f')} ms = {_f(ratio, '.2f')}x",
                None if ratio is None else abs(ratio - 1.0) <= 0.10,
            )
    return out


HEADER: Final = (
    f"{'scenario':<42} {'clients':>7} {'ev/s':>5} {'delivered/expected':>21} "
    f"{'p50':>6} {'p90':>6} {'p99':>7} {'max':>7} {'GW ms':>6} {'GW us':>6} {'ev/':>5} "
    f"{'LC ms':>5} {'RSS':>5} {'KB/':>5} {'evict':>5} {'pub/':>4}"
)
UNITS: Final = (
    f"{'':<42} {'':>7} {'':>5} {'':>21} {'ms':>6} {'ms':>6} {'ms':>7} {'ms':>7} "
    f"{'/1k':>6} {'/ev':>6} {'write':>5} {'/1k':>5} {'MB':>5} {'conn':>5} {'':>5} {'sub':>4}"
)


def row_text(d: dict[str, Any]) -> str:
    """One scenario's line of the table, from its :func:`derive` figures."""
    pubsub = "/".join(str(v) for k, v in d["pubsub"].items() if k != "other")
    head = f"{d['name'] + ' ' + d['title']:<42.42} {d['clients']:>7,} {d['rate']:>5g} "
    tail = f"{d['rss_mb']:>5.0f} {_f(d['rss_per_conn_kb']):>5} "
    if "delivered" not in d:
        return head + f"{'(idle)':>21} " + " " * 58 + tail + f"{'-':>5} {pubsub:>4}"
    evicted = sum(d["evictions"].values())
    return (
        head + f"{d['delivered']:>10,}/{d['expected']:<10,} "
        f"{_f(d['p50_ms']):>6} {_f(d['p90_ms']):>6} {_f(d['p99_ms']):>7} {_f(d['max_ms']):>7} "
        f"{_f(d['gw_cpu_per_1k_ms'], '.2f'):>6} {_f(d['gw_cpu_per_event_us'], '.0f'):>6} "
        f"{_f(d['events_per_write'], '.2f'):>5} {_f(d['client_cpu_per_1k_ms'], '.2f'):>5} "
        + tail
        + f"{evicted:>5.0f} {pubsub:>4}"
    )


def print_report(report: dict[str, Any]) -> None:
    rows = report["derived"]
    env = report["environment"]
    print(
        f"\nfan-out bench: {env['cpus']} CPUs, Python {env['python']}, redis-server "
        f"{env['redis_server']}, gateway at {env.get('commit', '?')}, "
        f"{'quick' if report['quick'] else 'full'} run, "
        f"{report['total_s']:.0f} s"
    )
    print(HEADER)
    print(UNITS)
    for d in rows:
        print(row_text(d))
    print(
        "GW ms/1k: gateway CPU (user+sys) per 1,000 deliveries; GW us/ev: per published event; "
        "ev/write: deliveries per HTTP chunk\n(one chunk = one write by the gateway: its "
        "coalescing); LC ms/1k: load client CPU per 1,000 deliveries; KB/conn: (RSS with the "
        "streams idle - RSS before) / streams;\nlatency: publish -> client read, healthy clients."
    )
    base = report.get("baseline")
    if base:
        print(
            f"baseline (floor for one write per delivery, {base['clients']:,} loopback "
            f"clients): Python sock.send {base['sock_send_ms_per_1k']:.2f} ms/1k, uvloop "
            f"transport.write {base['uvloop_write_ms_per_1k']:.2f} ms/1k"
        )
    hot = report.get("hotpath")
    if hot:
        print(
            f"gateway hot path in process (bench.hotpath: dispatch + flush, {hot['streams']:,} "
            f"direct streams, no kernel): {hot['ns_per_delivery']:.0f} ns per delivery"
        )
    per_write = [
        f"{d['name']} {d['gw_cpu_per_write_us']:.1f}"
        for d in rows
        if d.get("gw_cpu_per_write_us") is not None
    ]
    print("gateway CPU per write (one HTTP chunk), us: " + ", ".join(per_write))
    if "peer" in report:
        from .peer import print_peer  # here: bench.peer formats its rows with this module

        print_peer(report["peer"], base["uvloop_write_ms_per_1k"] if base else None)
    busy = [
        f"{d['name']} {d['other_cpu_cores']:.2f}"
        for d in rows
        if d.get("other_cpu_cores") is not None
    ]
    print("other processes on the machine during each window, cores: " + ", ".join(busy))
    for d in rows:
        if "idle_cpu_pct" in d:
            print(
                f"{d['name']}: gateway CPU with {d['connected']:,} idle streams "
                f"{d['idle_cpu_pct']:.1f}% of a core (pings off)"
            )
    marginal = report.get("marginal_rss_kb")
    if marginal is not None:
        print(f"RSS per stream from the slope between 2,000 and 10,000 streams: {marginal:.1f} KB")
    for d in rows:
        if "stall" in d and not d["stall"]["stalled"]:
            growth = d["stall"]["rss_growth"]
            print(
                f"{d['name']} (control, nobody stalls): RSS growth from 2 s in to the end "
                f"{_f(growth / 1e6 if growth is not None else None)} MB"
            )
        elif "stall" in d:
            s = d["stall"]
            print(
                f"{d['name']}: {s['stalled']} stalled, {s['evicted']:.0f} evicted "
                f"({d['evictions']}); after the stall: writes stuck ~{_f(s['stuck_s'], '.2f')} s, "
                f"first eviction {_f(s['first_evicted_s'], '.2f')} s, all "
                f"{_f(s['all_evicted_s'], '.2f')} s; {s['client_saw_close']} closes seen by "
                f"the stalled clients; RSS growth "
                f"{_f(s['rss_growth'] / 1e6 if s['rss_growth'] is not None else None)} MB"
            )
    print("targets (2-core machine):")
    for t in report["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[t["pass"]]
        print(f"  {verdict}  {t['target']}: {t['value']}")
    for prof in report.get("profiles", []):
        _print_profile(prof)


def _print_profile(prof: dict[str, Any]) -> None:
    if "top_own" in prof:
        print(
            f"profile of {prof['scenario']} (py-spy, {prof['samples']} on-CPU samples at "
            f"{prof['rate_hz']} Hz), top functions by own time:"
        )
        for i, row in enumerate(prof["top_own"], 1):
            print(f"  {i:>2}. {row['share'] * 100:5.1f}%  {row['function']}")
        print("  the same, native time charged to the Python frame that called into it:")
        for i, row in enumerate(prof["top_own_python"], 1):
            print(f"  {i:>2}. {row['share'] * 100:5.1f}%  {row['function']}")
    else:
        print(f"profile of {prof['scenario']}: {prof.get('error', 'not taken')}")


def trim(raw: dict[str, Any]) -> dict[str, Any]:
    """A scenario's raw figures for the JSON report: the latency histograms (thousands of
    buckets) become percentiles."""
    out = dict(raw)
    client = out.get("client")
    if client:
        client = dict(client)
        for group in ("healthy", "stalled"):
            hist = client.pop(f"hist_{group}", [])
            client[f"latency_ms_{group}"] = {
                f"p{q * 100:g}": percentile_ms(hist, q) for q in (0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
            }
        out["client"] = client
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
