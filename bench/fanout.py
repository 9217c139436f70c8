"""The fan-out core at its limit, measured.

    python -m bench.fanout [--scenario NAME ...] [--quick] [--profile | --no-profile]
                           [--profile-scenario NAME ...] [--pin] [--workers N]
    python -m bench.fanout --against REF [--rounds N] [--scenario NAME ...] [--quick]
    python -m bench.fanout --peer nchan [--rounds N] [--scenario NAME ...] [--quick]

With ``--against REF``: the regression guard (:mod:`bench.against`): the commit REF and the
working tree run back to back, alternating, and the figures are printed as ratios.

With ``--peer nchan``: nchan (:mod:`bench.nchan`; ``scripts/install --with-bench``) runs each
scenario it can after the gateway, ``--rounds`` times (default 2: gateway, nchan, gateway,
nchan), and each gateway figure is printed as a ratio to nchan's of the same run, next to the
floors (:mod:`bench.peer`); the JSON gains nchan's figures (``peer``). Opt-in: it doubles the
run's time at least. Without nchan installed it says so and runs the gateway alone.

With ``--workers N``: every gateway is ``gateway serve`` with N worker processes (uvicorn's
supervisor; each worker has its own streams and Redis subscription); CPU seconds and RSS are
summed over the supervisor and its workers, deliveries and latency are the load client's, and
the figures read from ``/metrics`` (evictions, buffered bytes) are the one worker's that
answered the scrape.

Every scenario runs against its own private redis-server and freshly started gateway
process(es) (``python -m gateway.cli serve``), with N real SSE streams held by the C load client
(``bench/loadclient.c``, built into ``bench/build/``) in a separate process, and events
published at a fixed rate through the publisher library, the publish time inside each event.
Prints progress, then a table with every figure and the issue's targets (PASS/MISS); writes
``bench/results/fanout.json`` and ``bench/results/fanout.png``.

Scenarios (``--scenario`` takes a name or a prefix, e.g. ``c`` for both filtered runs):
a25, a100 broadcast to 2,000 superadmin streams at 25 and 100 events/s; b 10,000 streams at
20 events/s; c1k, c10k one stream per session, 1,000 events/s over the sessions; d-healthy,
d-stall 2,000 streams at 10 events/s of ~1 KiB, every 10th stops reading 2 s in (write deadline
5 s, send buffer 16 KiB); e 10,000 idle streams; f two gateway processes, 1,000 streams each,
100 events/s. With ``--profile`` (the default when py-spy is installed and a100 is selected,
except with ``--quick``) a100 (or the ``--profile-scenario`` ones) is run once more under
``py-spy record --native``; that run's figures are not in the table. Pings are off in every
gateway (see :data:`bench.procs.BASE_ENV`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .baseline import bare_write_floors
from .hotpath import hot_path_ns
from .loadclient import BUILD_DIR, build
from .nchan import missing as nchan_missing
from .nchan import version as nchan_version
from .plot import plot
from .procs import pin_load, raise_nofile
from .profile import available, pyspy_profiler
from .report import derive, marginal_rss_kb, print_report, targets, trim, write_json
from .scenarios import SCENARIOS, Scenario, ServerKind, peer_skip_reason, run_scenario, select

RESULTS: Final = Path(__file__).resolve().parent / "results"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    words = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    redis_version = next((w[2:] for w in words if w.startswith("v=")), "?")
    here = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(here)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "gateway", "publisher"],
        capture_output=True,
        text=True,
    )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": redis_version,
        "uvloop": version("uvloop"),
        "uvicorn": version("uvicorn"),
        # what was measured: the gateway and publisher as they are in the working tree
        "commit": head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = ", ".join(s.name for s in SCENARIOS)
    parser.add_argument("--scenario", action="append", help=f"one of {names} (or a prefix)")
    parser.add_argument("--quick", action="store_true", help="short warm-up and windows")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--profile-scenario",
        action="append",
        help="scenario(s) to profile (default a100)",
    )
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--hotpath",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway's own ns per delivery, in process, no kernel (bench.hotpath; ~3 s)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="gateway i on core i %% cpus, the load off core 0 (off by default: on a 2-vCPU VM "
        "it made every write a cross-core wake-up and the gateway's CPU per write ~1.8x worse)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "fanout.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "fanout.png")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if a target is missed (with --against: if a ratio is past 10%% worse)",
    )
    parser.add_argument(
        "--against",
        metavar="REF",
        help="compare the working tree with commit REF, back to back (bench.against)",
    )
    parser.add_argument(
        "--peer",
        choices=["nchan", "floor"],
        help="run nchan (or the floor server, bench.floor) too, interleaved with the gateway, "
        "and print the ratios (bench.peer)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway serve --workers N for every scenario (N processes, each with its streams "
        "and its subscription; CPU and RSS are summed over them, /metrics figures are one "
        "worker's)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="with --against: rounds per tree (default 3); with --peer: rounds of gateway "
        "then peer (default 2)",
    )
    args = parser.parse_args(argv)
    try:
        chosen = select(args.scenario)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.against and args.peer:
        parser.error("--against and --peer are two comparisons: run them one at a time")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.against and args.workers != 1:
        parser.error("--against compares one worker each (run --workers without it)")
    if args.against:
        return _against(args, chosen)
    if args.quick:
        chosen = [s.quick() for s in chosen]
    if args.workers > 1:
        chosen = [replace(s, workers=args.workers) for s in chosen]
    profiled = [next(s for s in SCENARIOS if s.name == "a100")]
    if args.profile_scenario:
        try:
            profiled = select(args.profile_scenario)
        except ValueError as exc:
            parser.error(str(exc))
    profile = args.profile
    if profile is None:
        profile = bool(args.profile_scenario) or (
            not args.quick and available() is not None and any(s.name == "a100" for s in chosen)
        )

    started = time.monotonic()
    nofile = raise_nofile()
    pinning = pin_load() if args.pin else {"pinned": False}
    _log(f"building the load client: {build()} (RLIMIT_NOFILE {nofile}; {pinning})")
    report: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": {**_environment(), "pinning": pinning, "workers": args.workers},
        "quick": args.quick,
    }
    if args.baseline:
        _log("baseline: bare write loops")
        report["baseline"] = bare_write_floors()
    if args.hotpath:
        _log("hot path: dispatch + flush in process")
        report["hotpath"] = hot_path_ns()
    peer = _peer_setup(args.peer, chosen, args.rounds or 2)
    if peer is not None:
        report["peer"] = peer
    raw: list[dict[str, Any]] = []
    for n, sc in enumerate(chosen, 1):
        _log(
            f"[{n}/{len(chosen)}] {sc.name}: {sc.title} (warm-up {sc.warmup:g} s, "
            f"measure {sc.measure:g} s)"
        )
        rounds = peer["rounds"] if peer is not None and _peer_runs(peer, sc) else 0
        for round_ in range(max(1, rounds)):
            if rounds:
                _log(f"  round {round_ + 1}/{rounds}: gateway")
            result = _run(sc, "gateway")
            if round_ == 0:
                raw.append(result)
            if peer is not None and rounds:
                _peer_record(peer, sc, round_, "gateway", result)
                _log(f"  round {round_ + 1}/{rounds}: {peer['name']}")
                _peer_record(peer, sc, round_, peer["name"], _run(sc, peer["name"]))
    report["profiles"] = []
    for sc in profiled if profile else []:
        _log(f"profile: {sc.name} once more, under py-spy")
        try:
            hook = pyspy_profiler(BUILD_DIR / f"profile-{sc.name}.txt")
            summary = run_scenario(sc, log=_log, profiler=hook)["profile"]
        except Exception as exc:
            summary = {"error": repr(exc)}
        summary["scenario"] = f"{sc.name} ({sc.title})"
        report["profiles"].append(summary)

    if peer is not None and "runs" in peer:
        from .peer import compare

        peer["ratios"] = compare(peer["runs"], peer["name"])
    derived = [derive(r) for r in raw if "error" not in r]
    report["derived"] = derived
    report["failed"] = [r for r in raw if "error" in r]
    by_name = {d["name"]: d for d in derived}
    report["targets"] = targets(by_name)
    report["marginal_rss_kb"] = marginal_rss_kb(by_name)
    report["raw"] = [trim(r) for r in raw]
    report["total_s"] = time.monotonic() - started
    print_report(report)
    for r in report["failed"]:
        print(f"  FAILED  {r['name']}: {r['error']}")
    write_json(report, args.out)
    plot(report, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    missed = report["failed"] or not all(t["pass"] for t in report["targets"])
    missed = missed or bool(peer and peer.get("failed"))
    return 1 if args.strict and missed else 0


def _run(sc: Scenario, server: ServerKind) -> dict[str, Any]:
    try:
        return run_scenario(sc, log=_log, server=server)
    except Exception as exc:  # one broken scenario should not lose the others' figures
        _log(f"  {sc.name} on {server} failed: {exc!r}")
        return {"name": sc.name, "title": sc.title, "server": server, "error": repr(exc)}


def _peer_setup(name: str | None, chosen: list[Scenario], rounds: int) -> dict[str, Any] | None:
    """``report["peer"]`` before the runs: None without ``--peer``; why not, when the peer is
    not installed; else the setup, the rounds and which scenarios it skips (and why)."""
    if name is None:
        return None
    why = nchan_missing() if name == "nchan" else None
    if why is not None:
        _log(f"peer nchan: not run, the gateway runs alone: {why}")
        return {"name": name, "unavailable": why}
    skipped = {sc.name: r for sc in chosen if (r := peer_skip_reason(sc, name)) is not None}
    if name == "nchan":
        version, setup = nchan_version(), "its Redis mode, one nginx worker"
    else:
        version = f"uvloop {importlib.metadata.version('uvloop')}"
        setup = "bench.floor: one transport.write per delivery, nothing else"
    _log(f"peer: {name} {version}, {rounds} round(s) of gateway then {name} per scenario")
    return {
        "name": name,
        "version": version,
        "setup": setup,
        "rounds": rounds,
        "skipped": skipped,
        "runs": [],
        "failed": [],
    }


def _peer_runs(peer: dict[str, Any], sc: Scenario) -> bool:
    """Whether the peer runs ``sc``: it is installed and can run that scenario."""
    return "runs" in peer and sc.name not in peer["skipped"]


def _peer_record(
    peer: dict[str, Any], sc: Scenario, round_: int, server: str, result: dict[str, Any]
) -> None:
    if "error" in result:
        peer["failed"].append({"scenario": sc.name, "server": server, "error": result["error"]})
        return
    peer["runs"].append(
        {
            "scenario": sc.name,
            "round": round_,
            "server": server,
            "derived": derive(result),
            "raw": trim(result),
        }
    )


def _against(args: argparse.Namespace, chosen: list[Any]) -> int:
    from .against import print_ratios, run_against

    bench_args = ["--no-profile", "--no-baseline"]
    bench_args += [arg for sc in chosen for arg in ("--scenario", sc.name)]
    if args.quick:
        bench_args.append("--quick")
    try:
        rows, path = run_against(
            args.against, bench_args, rounds=args.rounds or 3, results=RESULTS, log=_log
        )
    except RuntimeError as exc:
        _log(f"--against {args.against}: {exc}")
        return 1
    print_ratios(args.against, rows)
    print(f"wrote {path}")
    return 1 if args.strict and any(row["worse"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
