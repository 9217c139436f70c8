"""``gateway``: serve the stream, sign a request for curl, follow the stream, manage identities,
copy a deployment's keys to another Redis.

The local demo cluster is dev tooling outside the wheel: ``scripts/demo`` (``python -m devtools``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from gateway.cli.keypair import KeypairMissing, add_keypair_flags, keypair_from
from gateway.identity.signing import DEFAULT_VERSION, signed_headers
from gateway.listen import ListenError, check_listen
from gateway.logs import configure_logging
from gateway.settings import (
    ENV_PREFIX,
    BridgeSettings,
    Field,
    Settings,
    SettingsError,
    SettingsGroup,
    SyncSettings,
)
from publisher.cli import OneLineParser
from publisher.secretinput import SecretError, resolve_secret

from . import acl, admin, copykeys, tail

__all__ = ["main"]

G = TypeVar("G", bound=SettingsGroup)


def _add_settings_flags(
    parser: argparse.ArgumentParser, group: type[SettingsGroup] = Settings
) -> None:
    """One ``--flag`` per setting of ``group``, and ``--<name>-file`` per secret one; unset
    flags fall back to env, then defaults. Each flag's help is the setting's declared
    description (:func:`gateway.settings.field_docs`), its default and its environment
    variable: written once, in gateway/settings/sections.py."""
    for name, field in group.FIELDS.items():
        env = field.env
        if field.shared_env:
            env += f", else {field.shared_env}"
        if field.secret:
            env += f" or {field.env}_FILE"
        help_text = f"{field.description} [default: {_shown(field)}; env {env}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if field.kind == "bool":
            parser.add_argument(
                field.flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(
                field.flag,
                dest=name,
                type=_flag_type(field, group),
                choices=field.choices or None,
                metavar=name.upper(),
                help=help_text,
            )
    for name, field in group.FIELDS.items():
        if field.secret:
            parser.add_argument(
                field.flag + "-file",
                metavar="PATH",
                help=f"read {name} from this file (- = stdin); env {field.env}_FILE",
            )


def _shown(field: Field) -> str:
    """A default as the help shows it: what one would type."""
    value = field.default
    if value is None:  # made per process
        return "host-pid-random"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if field.secret and field.name != "redis_url":
        return "none" if not value else "***"
    return str(value) if value != "" else "none"


def _flag_type(field: Field, group: type[SettingsGroup]) -> Callable[[str], Any]:
    """The same cast as the environment's (:meth:`Settings.parse`), named after the
    setting's type so that argparse says "invalid int value: 'abc'"."""

    def cast(raw: str) -> Any:
        if field.kind == "choice":  # case-folded; argparse names the choices if it is none
            return field.from_text(raw)
        return group.parse(field.name, raw)

    cast.__name__ = field.kind
    return cast


def _settings(args: argparse.Namespace, group: type[G]) -> G:
    overrides = {name: getattr(args, name, None) for name in group.FIELDS}
    for name, field in group.FIELDS.items():
        if not field.secret:  # --redis-url -, --redis-url-file PATH (GATEWAY_*_FILE: load)
            continue
        try:
            overrides[name] = resolve_secret(
                overrides[name], getattr(args, name + "_file", None), {}, "", what=field.flag
            )
        except SecretError as exc:
            raise SettingsError(str(exc)) from None
    return group.load(os.environ, **overrides)


def _serve(args: argparse.Namespace) -> int:
    """Run a replica; a start-up that cannot succeed (port taken, host not local, Redis
    away, a missing file) ends within seconds with one line on stderr and status 1."""
    from gateway.http.server import StartupError, serve

    settings = _settings(args, Settings)
    configure_logging(settings.server.log_level, settings.server.log_format)
    try:
        serve(settings)
    except StartupError as exc:
        print(f"gateway serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _can_listen(command: str, host: str, port: int) -> bool:
    """Whether ``gateway <command>`` can listen on its port; says why not in one line."""
    group = "GATEWAY_" + command.split("-")[0].upper()  # GATEWAY_BRIDGE_*, GATEWAY_SYNC_*
    try:
        check_listen(host, port, flags=f"--host/{group}_HOST, --port/{group}_PORT")
    except ListenError as exc:
        print(f"gateway {command}: {exc}", file=sys.stderr)
        return False
    return True


def _bridge(args: argparse.Namespace) -> int:
    """Run the bridge from an unmodified Backend.AI's bus (gateway.bridge)."""
    from gateway.bridge.app import serve

    settings = _settings(args, BridgeSettings)
    configure_logging(settings.bridge.log_level, settings.bridge.log_format)
    if not _can_listen("bridge", settings.bridge.host, settings.bridge.port):
        return 1
    serve(settings)
    return 0


def _sync_identities(args: argparse.Namespace) -> int:
    """Keep the identity store equal to an unmodified Backend.AI's (gateway.sync)."""
    from gateway.sync.run import run_once, serve

    settings = _settings(args, SyncSettings)
    configure_logging(settings.sync.log_level, settings.sync.log_format)
    if args.once:
        return asyncio.run(run_once(settings, force=args.force))
    if not _can_listen("sync-identities", settings.sync.host, settings.sync.port):
        return 1
    serve(settings, force=args.force)
    return 0


def _sign(args: argparse.Namespace) -> int:
    """Print the headers of a signed GET, or a whole curl command."""
    try:
        access_key, secret_key = keypair_from(args, os.environ)
    except KeypairMissing as exc:
        print(f"gateway sign: {exc}", file=sys.stderr)
        return 2
    headers = signed_headers(
        "GET", args.path, args.host, access_key, secret_key, version=args.version
    )
    if args.curl:
        flags = " ".join(f"-H '{name}: {value}'" for name, value in headers.items())
        print(f"curl -sSN {flags} 'http://{args.host}{args.path}'")
    else:
        for name, value in headers.items():
            print(f"{name}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gateway", description=__doc__)
    # the subcommands' parsers are OneLineParsers too (argparse makes them of the parent's
    # class); typed as plain parsers for the modules that add them
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True),
    )

    serve = sub.add_parser(
        "serve",
        help="run a gateway replica (uvicorn)",
        description="Run a gateway replica. Every setting is a flag and an environment "
        "variable; flags win over the environment, which wins over the defaults.",
    )
    _add_settings_flags(serve)
    serve.set_defaults(run=_serve)

    bridge = sub.add_parser(
        "bridge",
        help="publish an unmodified Backend.AI's lifecycle events (its Redis and PostgreSQL)",
        description="Follow an unmodified Backend.AI's event bus (its Redis, database 4), look "
        "each lifecycle event up in its PostgreSQL as the manager does, and publish it to the "
        "gateway's Redis: history, resume and exactly-once writes apply. One bridge is active "
        "at a time; start another as a standby. Every setting is a flag and an environment "
        "variable (GATEWAY_BRIDGE_*; the gateway's Redis as gateway serve names it).",
    )
    _add_settings_flags(bridge, BridgeSettings)
    bridge.set_defaults(run=_bridge)

    sync = sub.add_parser(
        "sync-identities",
        help="keep the identity store equal to an unmodified Backend.AI's (its PostgreSQL)",
        description="Read Backend.AI's keypairs, users, groups and domains from its "
        "PostgreSQL every --interval seconds, compare the whole snapshot with the gateway's "
        "identity store and write the difference, so open streams follow (deactivated keys, "
        "inactive or deleted users, changed roles and domains, rotated secrets). One syncer "
        "is active at a time; start another as a standby. Every setting is a flag and an "
        "environment variable (GATEWAY_SYNC_*; the gateway's Redis as gateway serve names "
        "it).",
    )
    _add_settings_flags(sync, SyncSettings)
    sync.add_argument(
        "--once", action="store_true", help="sync once, print what changed and exit (no lease)"
    )
    sync.add_argument(
        "--force",
        action="store_true",
        help="apply a snapshot even when it removes or deactivates more than "
        "--max-removal-share of the keypairs",
    )
    sync.set_defaults(run=_sync_identities)

    sign = sub.add_parser("sign", help="print the headers of a signed stream request")
    add_keypair_flags(sign)
    sign.add_argument(
        "--host",
        default=f"127.0.0.1:{Settings.load({}).server.port}",
        help="Host header, as curl sends it (default: %(default)s, the demo's front door)",
    )
    sign.add_argument("--path", default="/stream/kernel/_/events?sessionId=*")
    sign.add_argument("--version", default=DEFAULT_VERSION)
    sign.add_argument("--curl", action="store_true", help="print a whole curl command")
    sign.set_defaults(run=_sign)

    tail.add_parser(sub)
    acl.add_parser(sub)

    admin_parent = argparse.ArgumentParser(add_help=False)
    admin_parent.add_argument(
        "--redis-url",
        help=f"- reads stdin; prefer env {ENV_PREFIX}REDIS_URL[_FILE] or --redis-url-file "
        "(password, TLS options: the GATEWAY_REDIS_* settings)",
    )
    admin_parent.add_argument("--redis-url-file", metavar="PATH", help="- = stdin")
    admin_parent.add_argument("--prefix", help=f"env {ENV_PREFIX}PREFIX")
    admin.register(sub, parents=[admin_parent])
    copykeys.add_parser(sub, parents=[admin_parent])
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
