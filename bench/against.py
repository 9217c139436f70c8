"""The regression guard: this working tree against a commit, back to back, as ratios.

    python -m bench.fanout --against REF [--rounds N] [--scenario NAME ...] [--quick]

``REF`` (any commit-ish: ``HEAD``, ``main~3``, a hash) is checked out into a temporary git
worktree; then, for each round, ``python -m bench.fanout`` runs the chosen scenarios once for
each, alternating which goes first (REF, working; working, REF; ...), so a drift of the
machine's speed during the run falls on both alike. What is measured is each one's
``gateway`` and ``publisher`` (:data:`MEASURED`); the instrument is the same for both, this
tree's ``bench`` and ``devtools`` (scenarios, load client, publisher rate), so a change to the
harness cannot pass for a change of speed. The REF run happens in a directory that links
REF's measured packages and this tree's harness, first on ``PYTHONPATH`` and the working
directory of every process it starts (the gateways run ``python -m gateway.cli serve``), on
this interpreter. Then it prints, per scenario
and figure, the median of the rounds for each tree and their ratio (working / REF), marking
ratios past :data:`TOLERANCE` in the direction that is worse, and writes every run's JSON and
the ratios to ``bench/results/against-<ref>.json``. Exit status 0, or 1 when a ratio is past
the tolerance (``--strict``) or a run failed. The worktree is removed at the end.

Figures compared (:data:`FIGURES`): gateway CPU per write (µs; and its user share alone, what
the gateway's code costs without the system calls) and per 1,000 deliveries (ms), p99
latency, delivered share, RSS per stream and idle CPU; and, as the row ``hot``, the hot
path's ns per delivery in process (:mod:`bench.hotpath`: the gateway's Python alone, which
the tick-sampled user share measures only roughly); lower is better for all but
delivered. Which scenarios to run: the ones the change touches, at least a25, a100, b and e
for a change to the hot path or to what each stream keeps (README, "Benchmarks").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["FIGURES", "TOLERANCE", "compare", "run_against"]

ROOT: Final = Path(__file__).resolve().parents[1]
#: a ratio further than this from 1.0, in the worse direction, is flagged (the guide's 10%)
TOLERANCE: Final = 0.10
#: the packages whose speed is compared; the rest of the tree is the instrument
MEASURED: Final = ("gateway", "publisher")
#: what the bench needs of the tree besides them (taken from this tree for both runs)
HARNESS: Final = ("bench", "devtools")
#: derived figure -> True when higher is better
FIGURES: Final[dict[str, bool]] = {
    "gw_cpu_per_write_us": False,
    "gw_user_per_write_us": False,
    "gw_cpu_per_1k_ms": False,
    "p99_ms": False,
    "delivered_pct": True,
    "rss_per_conn_kb": False,
    "idle_cpu_pct": False,
    "hot_ns_per_delivery": False,
}

Log = Callable[[str], None]


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def _run(tree: Path, bench_args: Sequence[str], out: Path, log: Log, label: str) -> dict[str, Any]:
    """One ``python -m bench.fanout`` in ``tree`` (``label``: "ref" or "working", for the
    log); its JSON report."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, "-m", "bench.fanout", *bench_args, "--out", str(out)]
    argv += ["--plot", str(out.with_suffix(".png"))]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    log(f"    {label}: exit {done.returncode} in {time.monotonic() - started:.0f} s")
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"bench.fanout in {tree} failed: " + " | ".join(tail))
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def compare(
    ref_runs: Sequence[dict[str, Any]], new_runs: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per scenario and figure of :data:`FIGURES` present in both: the medians over the runs
    (``ref``, ``new``), ``ratio`` = new / ref, and ``worse``: past :data:`TOLERANCE` in the
    direction that is worse."""

    def medians(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], float]:
        values: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            for row in run.get("derived", []):
                for figure in FIGURES:
                    value = row.get(figure)
                    if isinstance(value, int | float):
                        values.setdefault((row["name"], figure), []).append(float(value))
            hot = run.get("hotpath")  # bench.hotpath: not a scenario, one figure per run
            if hot:
                values.setdefault(("hot", "hot_ns_per_delivery"), []).append(
                    float(hot["ns_per_delivery"])
                )
        return {key: statistics.median(v) for key, v in values.items()}

    ref, new = medians(ref_runs), medians(new_runs)
    rows = []
    for key in sorted(ref.keys() & new.keys()):
        scenario, figure = key
        before, after = ref[key], new[key]
        ratio = after / before if before else (1.0 if after == before else float("inf"))
        higher_better = FIGURES[figure]
        worse = ratio < 1 - TOLERANCE if higher_better else ratio > 1 + TOLERANCE
        rows.append(
            {"scenario": scenario, "figure": figure, "ref": before, "new": after,
             "ratio": ratio, "worse": worse}
        )  # fmt: skip
    return rows


def run_against(
    ref: str,
    bench_args: Sequence[str],
    *,
    rounds: int,
    results: Path,
    log: Log,
) -> tuple[list[dict[str, Any]], Path]:
    """Run the comparison of the module docstring; the rows of :func:`compare` and the
    path of the JSON written. Raises RuntimeError for a REF git does not know or a run
    that failed."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    label = _git("rev-parse", "--short", commit)
    results.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="kev-against-"))
    worktree = scratch / f"ref-{label}"
    _git("worktree", "add", "--detach", str(worktree), commit)
    mount = scratch / "ref"  # REF's measured packages, this tree's harness
    mount.mkdir()
    for name in MEASURED:
        (mount / name).symlink_to(worktree / name, target_is_directory=True)
    for name in HARNESS:
        (mount / name).symlink_to(ROOT / name, target_is_directory=True)
    runs: dict[str, list[dict[str, Any]]] = {"ref": [], "working": []}
    try:
        for n in range(rounds):
            order = [("ref", mount), ("working", ROOT)]
            if n % 2:
                order.reverse()
            log(f"round {n + 1}/{rounds}: {', '.join(name for name, _ in order)}")
            for name, tree in order:
                out = scratch / f"{name}-{n}.json"
                runs[name].append(_run(tree, bench_args, out, log, name))
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(worktree)],
            cwd=ROOT, capture_output=True, check=False, timeout=120,
        )  # fmt: skip
    rows = compare(runs["ref"], runs["working"])
    path = results / f"against-{label}.json"
    path.write_text(
        json.dumps(
            {"ref": ref, "ref_commit": commit, "rounds": rounds, "bench_args": list(bench_args),
             "ratios": rows, "ref_runs": runs["ref"], "new_runs": runs["working"]},
            indent=1,
        )
    )  # fmt: skip
    return rows, path


def print_ratios(ref: str, rows: Sequence[dict[str, Any]]) -> None:
    print(f"\nworking tree / {ref}, medians of the rounds (! = past {TOLERANCE:.0%}, worse)")
    print(f"{'scenario':10} {'figure':22} {ref[:12]:>12} {'working':>12} {'ratio':>7}")
    for row in rows:
        mark = " !" if row["worse"] else ""
        print(
            f"{row['scenario']:10} {row['figure']:22} {row['ref']:12.3f} {row['new']:12.3f} "
            f"{row['ratio']:7.3f}{mark}"
        )
