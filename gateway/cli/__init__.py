"""``gateway``: serve the stream, sign a request for curl, follow the stream, manage identities.

The local demo cluster is dev tooling outside the wheel: ``scripts/demo`` (``python -m devtools``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from gateway.identity.signing import DEFAULT_VERSION, signed_headers
from gateway.logs import configure_logging
from gateway.settings import ENV_PREFIX, Settings, SettingsError

from . import admin, tail

__all__ = ["main"]


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field; unset flags fall back to env, then defaults."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if Settings.kind(f.name) == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=f.name, type=_flag_type(f.name), metavar=f.name.upper())


def _flag_type(name: str) -> Callable[[str], Any]:
    """The same cast as the environment's (:meth:`Settings.parse`), named after the field's
    type so that argparse says "invalid int value: 'abc'"."""

    def cast(raw: str) -> Any:
        return Settings.parse(name, raw)

    cast.__name__ = Settings.kind(name)
    return cast


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return Settings.load(os.environ, **overrides)


def _serve(args: argparse.Namespace) -> int:
    from gateway.http.server import serve

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

    tail.add_parser(sub)

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "func"):  # identity management (gateway.cli.admin)
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
