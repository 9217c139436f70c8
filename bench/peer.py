"""The gateway against its peer in one bench run: each figure as a ratio gateway / peer.

    python -m bench.fanout --peer nchan [--rounds N] [--scenario NAME ...] [--quick]

For each chosen scenario the peer can run (:func:`bench.scenarios.peer_skip_reason`), the
gateway and the peer (:mod:`bench.nchan`) run one after the other, ``N`` rounds (gateway, peer,
gateway, peer, ...), each on a fresh private redis-server, with the same load client, client
count and publisher rate. The first round's gateway runs are the bench's usual table and
targets; this module turns every run of both into the comparison: per scenario and figure
(:data:`FIGURES`) each round's value for both, the ratio of each round, and the ratio of the
medians over the rounds; plus the RSS per stream from the slope between a 2,000- and a
10,000-stream scenario of each round, when both ran (:func:`bench.report.marginal_rss_kb`).
A ratio below 1 means the gateway needs less (CPU, latency, memory); for delivered, above 1
means it delivered more.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Final

from .report import HEADER, UNITS, marginal_rss_kb, row_text

__all__ = ["FIGURES", "compare", "print_peer", "ratio"]

#: derived figure -> (label, format, only for idle scenarios)
FIGURES: Final[dict[str, tuple[str, str, bool]]] = {
    "gw_cpu_per_1k_ms": ("CPU ms / 1k deliveries", ".2f", False),
    "gw_user_per_1k_ms": ("of which user CPU ms", ".2f", False),
    "gw_user_per_write_us": ("user CPU us / write", ".2f", False),
    "redis_cpu_per_1k_ms": ("Redis CPU ms / 1k deliveries", ".2f", False),
    "p99_ms": ("p99 latency ms", ".1f", False),
    "delivered_pct": ("delivered %", ".1f", False),
    "rss_per_conn_kb": ("RSS KB / idle stream", ".1f", True),
    "idle_cpu_pct": ("idle CPU % of a core", ".2f", True),
}
#: the RSS slope row (not a figure of one scenario)
SLOPE: Final = "rss_slope_kb"


def ratio(gateway: float | None, peer: float | None) -> float | None:
    """gateway / peer; None without both, or when the peer's is 0."""
    if gateway is None or peer is None or peer == 0:
        return None
    return gateway / peer


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _values(
    runs: Sequence[dict[str, Any]], server: str, scenario: str, figure: str, rounds: int
) -> list[float | None]:
    out: list[float | None] = [None] * rounds
    for run in runs:
        if run["server"] == server and run["scenario"] == scenario:
            value = run["derived"].get(figure)
            out[run["round"]] = float(value) if isinstance(value, int | float) else None
    return out


def _row(
    scenario: str, figure: str, gw: list[float | None], peer: list[float | None]
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "figure": figure,
        "gateway": gw,
        "peer": peer,
        "ratios": [ratio(g, p) for g, p in zip(gw, peer, strict=True)],
        "ratio": ratio(_median(gw), _median(peer)),
    }


def compare(runs: Sequence[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    """The comparison rows from ``runs``: each ``{"scenario", "round", "server", "derived"}``,
    ``server`` being ``"gateway"`` or ``peer``, ``derived`` :func:`bench.report.derive`'s
    figures. One row per scenario both ran and figure either has, in the order the scenarios
    ran, then the RSS slope row when both have one."""
    rounds = 1 + max((run["round"] for run in runs), default=-1)
    scenarios = list(dict.fromkeys(run["scenario"] for run in runs))
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        sides = {run["server"] for run in runs if run["scenario"] == scenario}
        if sides != {"gateway", peer}:
            continue
        idle = any("idle_cpu_pct" in run["derived"] for run in runs if run["scenario"] == scenario)
        for figure, (_, _, idle_only) in FIGURES.items():
            if idle_only and not idle:
                continue
            gw = _values(runs, "gateway", scenario, figure, rounds)
            other = _values(runs, peer, scenario, figure, rounds)
            if any(v is not None for v in gw + other):
                rows.append(_row(scenario, figure, gw, other))
    slopes: dict[str, list[float | None]] = {}
    for server in ("gateway", peer):
        slopes[server] = []
        for n in range(rounds):
            derived = {
                run["scenario"]: run["derived"]
                for run in runs
                if run["server"] == server and run["round"] == n and "connected" in run["derived"]
            }
            slopes[server].append(marginal_rss_kb(derived))
    if any(v is not None for v in slopes["gateway"]) and any(v is not None for v in slopes[peer]):
        rows.append(_row("2k->10k", SLOPE, slopes["gateway"], slopes[peer]))
    return rows


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def print_peer(peer: dict[str, Any], floor_ms_per_1k: float | None) -> None:
    """The comparison section of the bench's report (``report["peer"]``)."""
    name = peer["name"]
    if "unavailable" in peer:
        print(f"peer {name}: not run: {peer['unavailable']}")
        return
    print(
        f"gateway / {name} {peer['version']} ({peer['setup']}): the same load client, "
        f"clients and publish rate, {peer['rounds']} round(s) of gateway then {name}, each on "
        "a fresh redis-server; per round, and the ratio of the medians (< 1: the gateway needs "
        "less; delivered: > 1 it delivered more):"
    )
    rows = peer["ratios"]
    labels = {**{k: v[0] for k, v in FIGURES.items()}, SLOPE: "RSS KB / stream, slope"}
    formats = {**{k: v[1] for k, v in FIGURES.items()}, SLOPE: ".1f"}
    head = f"  {'scenario':<9} {'figure':<29} {'gateway':>17} {name:>17} {'ratio':>17}"
    print(f"{head} {'median':>7}")
    for row in rows:
        fmt = formats[row["figure"]]
        gw = " ".join(_f(v, fmt) for v in row["gateway"])
        other = " ".join(_f(v, fmt) for v in row["peer"])
        each = " ".join(_ratio_text(v) for v in row["ratios"])
        print(
            f"  {row['scenario']:<9} {labels[row['figure']]:<29} {gw:>17} {other:>17} "
            f"{each:>17} {_ratio_text(row['ratio']):>7}"
        )
    if floor_ms_per_1k:
        over = []
        for row in rows:
            if row["figure"] == "gw_cpu_per_1k_ms":
                ours, theirs = _median(row["gateway"]), _median(row["peer"])
                over.append(
                    f"{row['scenario']} gateway {_ratio_text(ratio(ours, floor_ms_per_1k))}, "
                    f"{name} {_ratio_text(ratio(theirs, floor_ms_per_1k))}"
                )
        if over:
            print(
                f"  CPU per 1k deliveries over the floor (uvloop transport.write, "
                f"{floor_ms_per_1k:.2f} ms/1k, this run): " + "; ".join(over)
            )
    busy = [
        f"{run['scenario']} {run['server']} {run['derived']['other_cpu_cores']:.2f}"
        for run in peer.get("runs", [])
        if run["derived"].get("other_cpu_cores") is not None
    ]
    if busy:
        print("  other processes on the machine during each window, cores: " + ", ".join(busy))
    offered = [
        f"{run['scenario']} {run['raw']['publisher_backlog_max']}/{run['raw']['publish_s']:.1f}"
        for run in peer.get("runs", [])
        if run["server"] == name and "publisher_backlog_max" in run.get("raw", {})
    ]
    if offered:
        print(
            f"  publishing to {name}, the most POSTs waiting for a connection / seconds to "
            "publish the window (its length: every event sent when due): " + ", ".join(offered)
        )
    for scenario, why in peer.get("skipped", {}).items():
        print(f"  {scenario}: not run on {name}: {why}")
    if peer.get("failed"):
        for failure in peer["failed"]:
            print(f"  FAILED  {failure['scenario']} on {failure['server']}: {failure['error']}")
    runs = [run for run in peer.get("runs", []) if run["server"] == name]
    if runs:
        who = "nginx, master and worker" if name == "nchan" else "its one process"
        print(f"{name}'s runs (the table's columns; GW = {who}):")
        print(HEADER)
        print(UNITS)
        for run in runs:
            print(row_text(run["derived"]))
