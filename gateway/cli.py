"""``gateway``: serve the stream, manage identities, sign a request for curl, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from . import admin, tail
from .auth import DEFAULT_VERSION, signed_headers
from .logs import configure_logging
from .settings import ENV_PREFIX, Settings, SettingsError

__all__ = ["main"]


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field; unset flags fall back to env, then defaults."""
    for f in fields(Settings):
        kind = f.type if isinstance(f.type, str) else str(f.type)
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction)
        elif kind.startswith("tuple"):
            parser.add_argument(
                flag, dest=f.name, type=lambda v: tuple(p for p in v.split(",") if p)
            )
        else:
            caster: Any = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=f.name, type=caster, metavar=f.name.upper())


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.load(os.environ, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    serve(settings)
    return 0


def _sign(args: argparse.Namespace) -> int:
    """Print the headers of a signed GET, or a whole curl command."""
    headers = signed_headers(
        "GET", args.path, args.host, args.access_key, args.secret_key, version=args.version
    )
    if args.curl:
        flags = " ".join(f"-H '{name}: {value}'" for name, value in headers.items())
        print(f"curl -sSN {flags} 'http://{args.host}{args.path}'")
    else:
        for name, value in headers.items():
            print(f"{name}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a gateway replica (uvicorn)")
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    sign = sub.add_parser("sign", help="print the headers of a signed stream request")
    sign.add_argument("--access-key", required=True)
    sign.add_argument("--secret-key", required=True)
    sign.add_argument("--host", default="127.0.0.1:8081", help="Host header, as curl sends it")
    sign.add_argument("--path", default="/stream/kernel/_/events?sessionId=*")
    sign.add_argument("--version", default=DEFAULT_VERSION)
    sign.add_argument("--curl", action="store_true", help="print a whole curl command")
    sign.set_defaults(run=_sign)

    demo = sub.add_parser("demo", help="redis-server + gateway + demo publisher, all local")
    demo.add_argument("--port", type=int, default=8081)
    demo.add_argument("--rate", type=float, default=5.0, help="demo events per second")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--redis-url", default=None, help="use this Redis, not a private one")
    demo.set_defaults(run=_demo)

    tail.add_parser(sub)

    cluster = sub.add_parser(
        "cluster", help="redis + N replicas + nginx + demo publisher on loopback (no Docker)"
    )
    cluster.add_argument("--replicas", type=int, default=3)
    cluster.add_argument("--port", type=int, default=8080, help="nginx's port")
    cluster.add_argument("--rate", type=float, default=5.0, help="demo events/s (0: none)")
    cluster.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    cluster.set_defaults(run=_cluster)

    admin_parent = argparse.ArgumentParser(add_help=False)
    defaults = Settings.load({})
    admin_parent.add_argument(
        "--redis-url", default=os.environ.get(ENV_PREFIX + "REDIS_URL", defaults.redis_url)
    )
    admin_parent.add_argument(
        "--prefix", default=os.environ.get(ENV_PREFIX + "PREFIX", defaults.prefix)
    )
    admin.register(sub, parents=[admin_parent])
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result: int = asyncio.run(
        run_demo(port=args.port, rate=args.rate, duration=args.duration, redis_url=args.redis_url)
    )
    return result


def _cluster(args: argparse.Namespace) -> int:
    import signal
    import time

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "func"):  # identity management (gateway.admin)
            logging.basicConfig(level=logging.WARNING)
            return asyncio.run(admin.run(args))
        result: int = args.run(args)
        return result
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
