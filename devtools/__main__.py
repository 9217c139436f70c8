"""``python -m devtools``: the local demo cluster (default) or a single in-process replica."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence

from gateway.logs import configure_logging


def _cluster(args: argparse.Namespace) -> int:
    """Run the cluster until Ctrl-C (or ``--duration``); the banner only once every
    component answered; a start-up failure is one line on stderr and status 1."""
    from redis.exceptions import RedisError

    from .cluster import ClusterError, LocalCluster, PortInUse
    from .demo import banner

    configure_logging("info")
    stop = False

    def on_signal(sig: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    print(
        f"demo: starting redis-server, {args.replicas} gateway replicas, nginx on "
        f":{args.port} and "
        + (
            "a Backend.AI-shaped installation with gateway bridge..."
            if args.backendai
            else "the demo publisher..."
        ),
        file=sys.stderr,
        flush=True,
    )
    try:
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(
                LocalCluster(
                    replicas=args.replicas,
                    port=args.port,
                    publisher_rate=0.0 if args.backendai else args.rate,
                    quiet=False,
                )
            )
            extra: tuple[str, ...] = ()
            if args.backendai:
                from .backendai import BackendAIDemo

                backendai = stack.enter_context(
                    BackendAIDemo(
                        cluster.redis_url, generation=args.generation, rate=args.rate, quiet=False
                    )
                )
                extra = tuple(backendai.lines())
            front = (
                f"  nginx on :{cluster.port} in front of {len(cluster.replicas)} replicas: "
                + ", ".join(cluster.replica_urls)
                if cluster.use_nginx
                else "  nginx not found: one replica, no load balancer (scripts/install adds nginx)"
            )
            ready = f"  every component answered in {time.monotonic() - started:.1f}s"
            print(
                banner(
                    cluster.url, cluster.redis_url, (front, *extra, ready), cluster.replica_urls[0]
                ),
                file=sys.stderr,
                flush=True,
            )
            deadline = None if args.duration is None else time.monotonic() + args.duration
            while not stop and (deadline is None or time.monotonic() < deadline):
                for line in cluster.dead_replicas():
                    print(f"demo: {line}", file=sys.stderr, flush=True)
                time.sleep(0.2)
            print("stopping the cluster...", file=sys.stderr, flush=True)
    except PortInUse as exc:
        print(
            f"demo: {exc} (another demo, or another program): stop it, or choose another "
            f"port: bash scripts/demo --port {args.port + 10}",
            file=sys.stderr,
        )
        return 1
    except (ClusterError, RuntimeError, OSError, RedisError) as exc:
        # redis-server missing or not starting, a replica or nginx exiting, seeding failing
        print(f"demo: {exc}", file=sys.stderr)
        return 1
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
    cluster.add_argument(
        "--port", type=int, default=8080, help="the front door: nginx's port (default 8080)"
    )
    cluster.add_argument("--rate", type=float, default=5.0, help="demo events/s (0: none)")
    cluster.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    cluster.add_argument(
        "--backendai",
        action="store_true",
        help="the events from a Backend.AI-shaped installation (private PostgreSQL and Redis "
        "bus, --rate messages/s) through gateway bridge, instead of the demo publisher",
    )
    cluster.add_argument(
        "--generation",
        default="26.8",
        choices=("22.09.5", "23.09", "25.6", "26.8"),
        help="with --backendai: the Backend.AI whose bus and schema to imitate (default 26.8)",
    )
    cluster.set_defaults(run=_cluster)
    demo = sub.add_parser("demo", help="redis-server + one in-process gateway + demo publisher")
    demo.add_argument("--port", type=int, default=8080)
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
