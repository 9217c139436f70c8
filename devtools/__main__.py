"""``python -m devtools``: the local demo cluster (default) or a single in-process replica."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence

from gateway.logs import configure_logging


def _cluster(args: argparse.Namespace) -> int:
    from .cluster import LocalCluster
    from .demo import banner

    configure_logging("info")
    stop = False

    def on_signal(sig: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with LocalCluster(
        replicas=args.replicas, port=args.port, publisher_rate=args.rate, quiet=False
    ) as cluster:
        front = (
            f"  nginx on :{cluster.port} in front of {len(cluster.replicas)} replicas: "
            + ", ".join(cluster.replica_urls)
            if cluster.use_nginx
            else "  nginx not found: one replica, no load balancer (scripts/install adds nginx)"
        )
        print(banner(cluster.url, cluster.redis_url, (front,)), file=sys.stderr, flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
        print("stopping the cluster...", file=sys.stderr, flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return asyncio.run(
        run_demo(port=args.port, rate=args.rate, duration=args.duration, redis_url=args.redis_url)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    cluster = sub.add_parser(
        "cluster", help="redis + N replicas + nginx + demo publisher on loopback (no Docker)"
    )
    cluster.add_argument("--replicas", type=int, default=3)
    cluster.add_argument("--port", type=int, default=8080, help="nginx's port")
    cluster.add_argument("--rate", type=float, default=5.0, help="demo events/s (0: none)")
    cluster.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    cluster.set_defaults(run=_cluster)
    demo = sub.add_parser("demo", help="redis-server + one in-process gateway + demo publisher")
    demo.add_argument("--port", type=int, default=8081)
    demo.add_argument("--rate", type=float, default=5.0, help="demo events per second")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--redis-url", default=None, help="use this Redis, not a private one")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "cluster")  # the default command, as scripts/demo runs it
    args = build_parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
