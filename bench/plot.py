"""The report's figure: latency (p50, p99) and CPU per 1,000 deliveries against the number of
clients, one point per scenario (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency (p50, p99) and CPU per 1,000 deliveries against the number of clients; no
    figure when no scenario delivered events (only idle ones: log axes need a point)."""
    if not any(d.get("p99_ms") is not None for d in report["derived"]):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [d for d in report["derived"] if d.get("p99_ms") is not None]
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(14, 6))
    same: dict[int, int] = {}
    for d in rows:
        # runs with the same number of clients side by side, not on top of each other
        k = same[d["clients"]] = same.get(d["clients"], -1) + 1
        x = d["clients"] * 1.06**k
        lat.plot([x, x], [d["p50_ms"], d["p99_ms"]], color="lightgray", zorder=1)
        lat.scatter([x], [d["p50_ms"]], marker="o", color="tab:blue", zorder=2)
        lat.scatter([x], [d["p99_ms"]], marker="^", color="tab:red", zorder=2)
        lat.annotate(
            d["name"],
            (x, d["p99_ms"]),
            textcoords="offset points",
            xytext=(0, 6),
            rotation=60,
            fontsize=8,
        )
        cpu.scatter([x], [d["gw_cpu_per_1k_ms"]], marker="s", color="tab:green")
        cpu.scatter([x], [d["client_cpu_per_1k_ms"]], marker="x", color="tab:gray")
        cpu.annotate(
            d["name"],
            (x, d["gw_cpu_per_1k_ms"]),
            textcoords="offset points",
            xytext=(0, 6),
            rotation=60,
            fontsize=8,
        )
    lat.scatter([], [], marker="o", color="tab:blue", label="p50")
    lat.scatter([], [], marker="^", color="tab:red", label="p99")
    lat.set(
        xscale="log",
        yscale="log",
        xlabel="clients",
        ylabel="publish -> read latency, ms",
        title="latency",
    )
    lat.legend()
    cpu.scatter([], [], marker="s", color="tab:green", label="gateway")
    cpu.scatter([], [], marker="x", color="tab:gray", label="load client (C)")
    cpu.axhline(4.0, color="tab:red", linestyle="--", label="target (a): 4 ms")
    base = report.get("baseline")
    if base:
        cpu.axhline(
            base["uvloop_write_ms_per_1k"],
            color="tab:purple",
            linestyle=":",
            label="bare uvloop write loop",
        )
    cpu.set(
        xscale="log",
        yscale="log",
        xlabel="clients",
        ylabel="CPU ms per 1,000 deliveries",
        title="CPU per 1,000 deliveries",
    )
    cpu.legend()
    fig.suptitle("kernel event gateway fan-out (bench/fanout.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
