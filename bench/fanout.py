"""The fan-out core at its limit, measured.

    python -m bench.fanout [--scenario NAME ...] [--quick] [--profile | --no-profile]
                           [--profile-scenario NAME ...] [--pin]

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
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from .baseline import bare_write_floors
from .loadclient import BUILD_DIR, build
from .plot import plot
from .procs import pin_load, raise_nofile
from .profile import available, pyspy_profiler
from .report import derive, marginal_rss_kb, print_report, targets, trim, write_json
from .scenarios import SCENARIOS, run_scenario, select

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
        "--pin",
        action="store_true",
        help="gateway i on core i %% cpus, the load off core 0 (off by default: on a 2-vCPU VM "
        "it made every write a cross-core wake-up and the gateway's CPU per write ~1.8x worse)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "fanout.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "fanout.png")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    try:
        chosen = select(args.scenario)
    except ValueError as exc:
        parser.error(str(exc))
    if args.quick:
        chosen = [s.quick() for s in chosen]
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
        "environment": {**_environment(), "pinning": pinning},
        "quick": args.quick,
    }
    if args.baseline:
        _log("baseline: bare write loops")
        report["baseline"] = bare_write_floors()
    raw: list[dict[str, Any]] = []
    for n, sc in enumerate(chosen, 1):
        _log(
            f"[{n}/{len(chosen)}] {sc.name}: {sc.title} (warm-up {sc.warmup:g} s, "
            f"measure {sc.measure:g} s)"
        )
        try:
            raw.append(run_scenario(sc, log=_log))
        except Exception as exc:  # one broken scenario should not lose the others' figures
            _log(f"  {sc.name} failed: {exc!r}")
            raw.append({"name": sc.name, "title": sc.title, "error": repr(exc)})
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
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
