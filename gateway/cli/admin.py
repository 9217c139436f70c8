"""``gateway keypair|user|group|import``: manage the identities in Redis.

Mounted by the gateway CLI with :func:`register`. Every leaf command sets ``func=run`` (an
``async (args) -> int``) and ``handler`` (an ``async (store, args) -> int``); :func:`run` opens
Redis from ``args.redis_url`` / ``args.prefix``, calls the handler and closes the client. The
store it builds does not cache, so every command reads what Redis holds now.
Errors print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import string
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
import redis

from gateway.identity.models import ROLES, Group, IdentityError, Keypair, User
from gateway.identity.passwords import check_password, hash_password
from gateway.identity.store import IdentityStore
from gateway.settings import Settings
from publisher.bus import Bus
from publisher.connection import connect_async, redact_url
from publisher.partitions import PartitionMismatch, Partitions, check_partitions
from publisher.secretinput import SecretError, read_secret, resolve_secret

__all__ = ["generate_access_key", "generate_secret_key", "redis_settings", "register", "run"]

Handler = Callable[[IdentityStore, argparse.Namespace], Awaitable[int]]

_UPPER_ALNUM: Final = string.ascii_uppercase + string.digits
_ALNUM: Final = string.ascii_letters + string.digits
_PROMPT: Final = object()


class _UsageError(Exception):
    """A command-line mistake that is not about the stored data."""


def generate_access_key() -> str:
    """``AKIA`` + 16 random upper-case letters and digits, Backend.AI style."""
    return "AKIA" + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(16))


def generate_secret_key() -> str:
    """40 random letters and digits (~238 bits)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(40))


def redis_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The Redis URL, password, TLS options and prefix of an admin command: ``--redis-url``
    (``-`` = stdin) or ``--redis-url-file``, then the ``GATEWAY_*`` settings (``_FILE``
    variants included). Raises :class:`ValueError` (a setting or secret that cannot be
    used), with any password redacted."""
    url = resolve_secret(
        getattr(args, "redis_url", None), getattr(args, "redis_url_file", None), {}, "",
        what="--redis-url",
    )  # fmt: skip
    return Settings.load(environ, redis_url=url, prefix=getattr(args, "prefix", None))


async def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run the chosen management command against Redis; 0 on success, 2 on any error."""
    try:
        settings = redis_settings(args, os.environ if environ is None else environ)
        keys = settings.redis.keys()
        client = connect_async(settings.redis.url, **settings.redis.options)
    except ValueError as exc:  # bad prefix or Redis URL, unreadable secret
        return _fail(str(exc))
    try:
        handler: Handler = args.handler
        args.partitions = settings.redis.partitions  # the bus commands' (reset-history)
        return await handler(IdentityStore(client, keys, cache_ttl=0), args)
    except (IdentityError, _UsageError, SecretError, PartitionMismatch) as exc:
        return _fail(str(exc))
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        return _fail(f"Redis at {redact_url(settings.redis.url)}: {exc}")
    finally:
        await client.aclose()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# -- output -------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows as JSON lines with ``--json``, else a plain aligned table."""
    if args.json:
        for row in rows:
            print(msgspec.json.encode(dict(zip(columns, row, strict=True))).decode())
        return
    cells = [[str(c) for c in columns], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _done(args: argparse.Namespace, message: str, **fields: Any) -> int:
    print(msgspec.json.encode(fields).decode() if args.json else message)
    return 0


# -- keypair ------------------------------------------------------------------------------------


async def _keypair_add(store: IdentityStore, args: argparse.Namespace) -> int:
    secret_key = resolve_secret(args.secret_key, args.secret_key_file, {}, "", what="--secret-key")
    keypair = Keypair(
        args.access_key or generate_access_key(),
        secret_key or generate_secret_key(),
        args.user,
        not args.inactive,
    )
    await store.add_keypair(keypair)
    # The only time the secret is shown: Redis keeps it, nothing prints it again.
    if args.json:
        return _done(
            args,
            "",
            access_key=keypair.access_key,
            secret_key=keypair.secret_key,
            user_id=keypair.user_id,
            active=keypair.active,
        )
    print(f"access key: {keypair.access_key}")
    print(f"secret key: {keypair.secret_key}")
    print("(the secret key is not shown again)", file=sys.stderr)
    return 0


async def _keypair_list(store: IdentityStore, args: argparse.Namespace) -> int:
    keypairs = await store.list_keypairs(args.user)
    _emit(
        args,
        ("access_key", "user_id", "active"),
        [(kp.access_key, kp.user_id, kp.active) for kp in keypairs],
    )
    return 0


async def _keypair_remove(store: IdentityStore, args: argparse.Namespace) -> int:
    await store.remove_keypair(args.access_key)
    return _done(args, f"removed keypair {args.access_key}", removed=args.access_key)


async def _keypair_activate(store: IdentityStore, args: argparse.Namespace) -> int:
    await store.set_keypair_active(args.access_key, args.active)
    state = "activated" if args.active else "deactivated"
    return _done(
        args, f"{state} keypair {args.access_key}", access_key=args.access_key, active=args.active
    )


# -- user ---------------------------------------------------------------------------------------


async def _user_add(store: IdentityStore, args: argparse.Namespace) -> int:
    password: str | None = args.password
    if args.password_file is not None:
        password = read_secret(args.password_file, what="--password-file")
    elif args.password == "-":
        password = read_secret("-", what="--password")
    elif args.password is _PROMPT:
        password = getpass.getpass(f"password for {args.user_id}: ")
        if password != getpass.getpass("again: "):
            raise _UsageError("the passwords differ")
    if password is not None and not password:
        raise _UsageError("the password must not be empty")
    if password is not None:
        check_password(password, args.user_id)  # WeakPasswordError: an IdentityError
    password_hash = hash_password(password) if password is not None else ""
    await store.add_user(User(args.user_id, args.role, args.domain, password_hash))
    return _done(
        args,
        f"added user {args.user_id} ({args.role} in {args.domain})",
        user_id=args.user_id,
        role=args.role,
        domain=args.domain,
    )


async def _user_list(store: IdentityStore, args: argparse.Namespace) -> int:
    users = await store.list_users(args.domain)
    _emit(
        args,
        ("user_id", "role", "domain", "password"),
        [(u.user_id, u.role, u.domain, bool(u.password_hash)) for u in users],
    )
    return 0


async def _user_remove(store: IdentityStore, args: argparse.Namespace) -> int:
    await store.remove_user(args.user_id, cascade=args.cascade)
    return _done(args, f"removed user {args.user_id}", removed=args.user_id)


# -- group --------------------------------------------------------------------------------------


async def _group_add(store: IdentityStore, args: argparse.Namespace) -> int:
    await store.add_group(Group(args.domain, args.name))
    return _done(
        args, f"added group {args.name} in {args.domain}", domain=args.domain, name=args.name
    )


async def _group_list(store: IdentityStore, args: argparse.Namespace) -> int:
    groups = await store.list_groups(args.domain)
    _emit(args, ("domain", "name"), [(g.domain, g.name) for g in groups])
    return 0


async def _group_remove(store: IdentityStore, args: argparse.Namespace) -> int:
    await store.remove_group(args.name, args.domain)
    return _done(
        args, f"removed group {args.name} from {args.domain}", domain=args.domain, name=args.name
    )


# -- import -------------------------------------------------------------------------------------


async def _import(store: IdentityStore, args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {args.file}: {exc.strerror}") from exc
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise _UsageError(f"{args.file} is not valid JSON: {exc}") from exc
    summary = await store.import_data(doc)
    return _done(
        args,
        f"imported {summary.users} users, {summary.keypairs} keypairs, {summary.groups} groups",
        users=summary.users,
        keypairs=summary.keypairs,
        groups=summary.groups,
    )


# -- parser -------------------------------------------------------------------------------------


# -- history ------------------------------------------------------------------------------------


async def _reset_history(store: IdentityStore, args: argparse.Namespace) -> int:
    """Start a new history: the way out of one no id can follow (an entry written with an id
    in the future: every replica's /ready says so). Every open stream is told
    ``history_truncated`` (``reset``); what the old history held is gone."""
    if not args.yes:
        raise _UsageError(
            "this deletes the event history (every stream is told history_truncated, reset): "
            "run it again with --yes"
        )
    n = getattr(args, "partitions", 1)
    await check_partitions(store.redis, store.keys, n)
    length, lasts = 0, []
    for keys in Partitions(store.keys, n).keys:  # every partition's history (one: today's)
        bus = Bus(keys)
        raw = await bus.history_info(store.redis)
        info = {} if raw is None else {_text(k): v for k, v in raw.items()}
        lasts.append(_text(info.get("last-generated-id", "none")))
        length += int(info.get("length", 0))
        await bus.start_new_history(store.redis)
    last = lasts[0] if n == 1 else ",".join(lasts)
    return _done(
        args,
        f"started a new history (the old one held {length} entries, its last id {last}); "
        "publishers go on at once, every replica tells its streams within seconds",
        entries=length,
        last_id=last,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    """Add ``keypair``, ``user``, ``group`` and ``import`` to the gateway CLI.

    ``parents`` (e.g. one holding ``--redis-url`` and ``--prefix``) are added to every leaf
    command, so those options go after it: ``gateway keypair list --redis-url ...``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON lines")

    def leaf(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Handler,
        help_text: str,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(
            name, parents=[*parents, common], help=help_text, description=help_text
        )
        parser.set_defaults(func=run, handler=handler)
        return parser

    keypair = subparsers.add_parser("keypair", help="manage API keypairs")
    kp = keypair.add_subparsers(dest="keypair_command", required=True, metavar="COMMAND")
    p = leaf(kp, "add", _keypair_add, "add a keypair; prints its secret key once")
    p.add_argument("--user", required=True, help="the user id the keypair belongs to")
    p.add_argument("--access-key", help="default: AKIA + 16 random characters")
    p.add_argument("--secret-key", help="default: 40 random characters; - reads stdin")
    p.add_argument("--secret-key-file", metavar="PATH", help="read it from this file (- = stdin)")
    p.add_argument("--inactive", action="store_true", help="add it deactivated")
    p = leaf(kp, "list", _keypair_list, "list keypairs (never their secrets)")
    p.add_argument("--user", help="only this user's")
    leaf(kp, "remove", _keypair_remove, "remove a keypair").add_argument("access_key")
    for name, active in (("activate", True), ("deactivate", False)):
        p = leaf(kp, name, _keypair_activate, f"{name} a keypair")
        p.add_argument("access_key")
        p.set_defaults(active=active)

    user = subparsers.add_parser("user", help="manage users")
    us = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    p = leaf(us, "add", _user_add, "add a user")
    p.add_argument("user_id")
    p.add_argument("--role", required=True, choices=sorted(ROLES))
    p.add_argument("--domain", required=True)
    p.add_argument(
        "--password",
        nargs="?",
        const=_PROMPT,
        help="browser login password; without a value it is prompted for; - reads stdin",
    )
    p.add_argument("--password-file", metavar="PATH", help="read it from this file (- = stdin)")
    p = leaf(us, "list", _user_list, "list users")
    p.add_argument("--domain", help="only this domain's")
    p = leaf(us, "remove", _user_remove, "remove a user")
    p.add_argument("user_id")
    p.add_argument("--cascade", action="store_true", help="remove its keypairs too")

    group = subparsers.add_parser("group", help="manage groups")
    gr = group.add_subparsers(dest="group_command", required=True, metavar="COMMAND")
    for name, handler, help_text in (
        ("add", _group_add, "add a group"),
        ("remove", _group_remove, "remove a group"),
    ):
        p = leaf(gr, name, handler, help_text)
        p.add_argument("name")
        p.add_argument("--domain", required=True)
    p = leaf(gr, "list", _group_list, "list groups")
    p.add_argument("--domain", help="only this domain's")

    p = leaf(
        subparsers,
        "reset-history",
        _reset_history,
        "start a new event history (needs the admin user): the way out when /ready says the "
        "history's last id is ahead of Redis' clock",
    )
    p.add_argument("--yes", action="store_true", help="yes, delete the history")

    p = leaf(subparsers, "import", _import, "load users, keypairs and groups from a JSON file")
    p.add_argument("file", help='{"users": [...], "keypairs": [...], "groups": [...]}; - = stdin')
