"""``gateway copy-keys``: copy a deployment's keys to another Redis, under that Redis' names.

Moving from a single Redis (or Sentinel) onto a Redis Cluster renames every key: the prefix
becomes a hash tag there (``kev:events`` is ``{kev}:events``, :mod:`publisher.keys`). This
command copies every key of the configured deployment (``--redis-url``, ``--prefix``, as the
admin commands take them) to the Redis ``--to`` names, replacing the source's prefix by the
target's and keeping the rest of each name: single to cluster, cluster to single, or single to
single under another prefix (``--to-prefix``) or database.

Each key is copied with DUMP and RESTORE and its remaining PTTL, so a stream keeps its entry
ids (and its last id, so new ones follow on): a client resumes on the new Redis with the
``Last-Event-ID`` it had, and the copied epoch tells the gateways it is the same history.
Identities and browser sessions are copied first; the history, its epoch and the publishers'
sequence numbers and positions last.

The copy is not a snapshot: it reads one key after another. Stop the publishers (``kev-publish``,
the bridge, ``gateway sync-identities``) before it and point them at the new Redis after it;
otherwise whatever they write during the copy may or may not reach the new Redis, and a
publisher's sequence number copied out of step with the history can make the new Redis drop a
retried event or keep it twice. Gateways may keep serving from the old Redis meanwhile (they
only read), but identity changes and logins made during the copy stay there.

Exit status: 0 when copied (or counted, with ``--dry-run``); 2 for a bad URL or prefix, a
target that already holds keys of the target prefix (without ``--replace``) or a source with
none; 1 when Redis fails. Every failure is one line on stderr; no password is ever printed
(:func:`publisher.connection.redact_url`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis
import redis.asyncio as aredis
from redis.exceptions import MovedError, RedisClusterException, ResponseError

from gateway.cli.admin import redis_settings
from publisher.bus import Bus
from publisher.connection import connect_async, is_cluster, redact_url
from publisher.keys import Keys
from publisher.partitions import PartitionMismatch, Partitions, refuse_repartition
from publisher.secretinput import resolve_secret

__all__ = ["ENV_TO", "add_parser", "copy_keys", "run"]

#: the variable the target URL may come from (and ``ENV_TO + "_FILE"``: a file holding it)
ENV_TO: Final = "GATEWAY_COPY_TO_URL"
PROG: Final = "gateway copy-keys"
#: keys per round trip (DUMP on the source, RESTORE on the target)
BATCH: Final = 100
#: seconds to connect to either Redis, and to wait for one answer (a DUMP of a long history)
CONNECT_TIMEOUT: Final = 5.0
REPLY_TIMEOUT: Final = 60.0


class _Refused(Exception):
    """Nothing is copied, for a reason the operator can fix (exit 2)."""


class _Failed(Exception):
    """A Redis error, as one line naming the side and its (redacted) URL (exit 1)."""


@dataclass(frozen=True, slots=True)
class Side:
    """The source or the target: its client, and how an error on it is named."""

    name: str
    url: str
    client: aredis.Redis

    @contextlib.contextmanager
    def talking(self) -> Iterator[None]:
        """Redis errors inside become :class:`_Failed`, one line."""
        try:
            yield
        except (redis.RedisError, RedisClusterException) as exc:
            raise _Failed(_explain(exc, self.name, self.url)) from None


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of key, by the part of its name after the prefix and ``:``."""

    name: str
    exact: tuple[str, ...] = ()
    starts: tuple[str, ...] = ()

    def holds(self, rest: str) -> bool:
        return rest in self.exact or rest.startswith(self.starts)


#: every kind in the order it is copied: identities and sessions first, whatever else there is,
#: then the history, its epoch and the publishers' state (see the module's docstring)
KINDS: Final = (
    Kind("keypairs", starts=("keypair:",)),
    Kind("users", starts=("user:",)),
    Kind("groups", starts=("group:",)),
    Kind("browser sessions", starts=("websession:",)),
    # the keypairs/users/groups sets, each key's session index, the change counter, the sync's
    Kind("identity state", ("keypairs", "users", "groups"), ("websessions:", "identity:", "sync:")),
    # fleet-wide stream counts, handoffs, login throttles
    Kind("other", starts=("streams:", "handoff:", "login-throttle:")),
    Kind("history", ("events",)),
    Kind("epoch", ("epoch",)),
    # (and the number of partitions the deployment records: publisher.partitions)
    Kind("publisher state", ("partitions",), ("pubseq:", "pubpos:", "bridge:")),
)


def kind_of(rest: str) -> str | None:
    """The kind (:data:`KINDS`) of a key whose name after ``<prefix>:`` is ``rest``; None for
    a name no :class:`~publisher.keys.Keys` member makes: another deployment's, whose prefix
    starts with this one and ``:`` (``kev:staging`` under ``kev``), never copied."""
    for kind in KINDS:
        if kind.holds(rest):
            return kind.name
    return None


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


@dataclass
class Plan:
    """What one copy moves: the source's keys by kind, the history's length."""

    source: Keys
    target: Keys
    keys: dict[str, list[bytes]] = field(default_factory=lambda: {k.name: [] for k in KINDS})
    history_entries: int = 0
    #: keys under the prefix that no Keys member names (another deployment's): left alone
    foreign: int = 0

    @property
    def total(self) -> int:
        return sum(len(names) for names in self.keys.values())

    def renamed(self, key: bytes) -> bytes:
        """``key``'s name on the target: the target's prefix, the rest kept."""
        return self.target.prefix.encode() + key[len(self.source.prefix) :]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    """Add ``copy-keys`` to the gateway CLI; ``parents`` give ``--redis-url``/``--prefix``."""
    parser = sub.add_parser(
        "copy-keys",
        parents=list(parents),
        help="copy the deployment's keys to another Redis (e.g. onto a Redis Cluster)",
        description="Copy every key of the deployment (--redis-url, --prefix) to the Redis "
        "--to names, under that Redis' names (on a cluster the prefix is a hash tag: "
        "kev:events becomes {kev}:events), with DUMP/RESTORE: streams keep their ids, keys "
        "their TTLs. "
        "Stop the publishers first: what they write during the copy may not reach the target.",
    )
    parser.add_argument(
        "--to",
        metavar="URL",
        help=f"the target Redis, any URL form (redis+cluster://h:p,h:p,...); - reads stdin; "
        f"with a password prefer --to-file or env {ENV_TO}[_FILE]",
    )
    parser.add_argument("--to-file", metavar="PATH", help="read the target URL from this file")
    parser.add_argument(
        "--to-prefix",
        metavar="PREFIX",
        help="the prefix on the target (default: --prefix; hash-tagged on a cluster)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be copied, copy nothing"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite keys the target already holds (without it, a target holding any key "
        "of the target prefix is refused; with it, target keys the source lacks stay)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``gateway copy-keys``: 0 copied, 2 refused (bad input), 1 a Redis error."""
    try:
        return asyncio.run(copy_keys(args, os.environ))
    except _Refused as exc:
        return _fail(str(exc), 2)
    except _Failed as exc:
        return _fail(str(exc), 1)


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def _target_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    url = resolve_secret(
        getattr(args, "to", None), getattr(args, "to_file", None), environ, ENV_TO, what="--to"
    )
    if not url:
        raise _Refused(f"the target is needed: --to URL, --to-file PATH or {ENV_TO}[_FILE]")
    return url


async def copy_keys(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Copy (or with ``args.dry_run`` count) the deployment's keys and print what; raises
    :class:`_Refused` for what the operator must change, :class:`_Failed` for Redis."""
    try:
        settings = redis_settings(args, environ)
        to_url = _target_url(args, environ)
        source_keys = settings.redis.keys()
        target_keys = Keys.for_url(to_url, args.to_prefix or settings.redis.prefix)
        if to_url == settings.redis.url and target_keys == source_keys:
            raise _Refused("the target is the source (the same URL and prefix)")
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": REPLY_TIMEOUT,
        }
        source = Side(
            "the source",
            settings.redis.url,
            connect_async(settings.redis.url, **settings.redis.options, **options),
        )
    except ValueError as exc:  # a bad URL, prefix or setting, an unreadable secret
        raise _Refused(str(exc)) from None
    try:
        try:
            target = Side("the target", to_url, connect_async(to_url, **options))
        except ValueError as exc:
            raise _Refused(str(exc)) from None
        try:
            n = settings.redis.partitions
            return await _run(source, target, source_keys, target_keys, args, n)
        finally:
            await _close(target)
    finally:
        await _close(source)


async def _close(side: Side) -> None:
    with contextlib.suppress(redis.RedisError, RedisClusterException, OSError):
        await side.client.aclose()


async def _run(
    source: Side,
    target: Side,
    source_keys: Keys,
    target_keys: Keys,
    args: argparse.Namespace,
    partitions: int = 1,
) -> int:
    """The copy; with more than one partition, each partition's names to the target's names
    of the same partition (:mod:`publisher.partitions`), the counts summed."""
    where = (
        f"{redact_url(source.url)} (prefix {source_keys.prefix}) to "
        f"{redact_url(target.url)} (prefix {target_keys.prefix})"
    )
    for side in (source, target):
        with side.talking():
            if await _cluster_node_named_plainly(side):
                raise _Refused(
                    f"{side.name}, {redact_url(side.url)}, is a Redis Cluster node: name the "
                    "cluster as redis+cluster://host:port[,host:port...]"
                )
    pairs = list(
        zip(
            Partitions(source_keys, partitions).keys,
            Partitions(target_keys, partitions).keys,
            strict=True,
        )
    )
    with source.talking():
        recorded = await source.client.get(source_keys.partitions)
        _same_number("source", recorded, source_keys, partitions, "copy with the same number")
        try:  # a source without a record, with history: written with one partition
            await refuse_repartition(source.client, source_keys, partitions)
        except PartitionMismatch as exc:
            raise _Refused(f"the source: {exc}") from None
        plans = [await _plan(source.client, s, t) for s, t in pairs]
    total = sum(plan.total for plan in plans)
    if not total:
        raise _Refused(
            f"no key of prefix {source_keys.prefix!r} on {redact_url(source.url)}: "
            "check --redis-url and --prefix"
        )
    with target.talking():
        holds = False
        for _, t in pairs:
            holds = holds or await _holds_any(target.client, t)
        theirs = await target.client.get(target_keys.partitions)
    _same_number(
        "target", theirs, target_keys, partitions,
        "a history cannot change its number of partitions, even with --replace",
    )  # fmt: skip
    if holds and not args.replace:
        raise _Refused(
            f"{redact_url(target.url)} already holds keys of prefix {target_keys.prefix!r}: "
            "nothing copied (--replace overwrites them)"
        )
    foreign = sum(plan.foreign for plan in plans)
    if foreign:
        print(
            f"left alone: {foreign} keys under {source_keys.prefix}: that no name of this "
            "deployment has (another deployment's, with a longer prefix?)",
            flush=True,
        )
    if args.dry_run:
        print(f"would copy from {where}:")
        for kind in KINDS:
            print(_line(plans, kind.name))
        print(f"total: {total} keys (dry run: nothing copied)")
        return 0
    print(f"copying from {where}:", flush=True)
    copied = 0
    for kind in KINDS:
        done = 0
        for plan in plans:
            done += await _copy(source, target, plan, plan.keys[kind.name], args.replace)
        copied += done
        print(_line(plans, kind.name, done), flush=True)
    with target.talking():  # the target records its number, as its first process would
        await target.client.set(target_keys.partitions, str(partitions), nx=True)
    vanished = total - copied
    gone = f" ({vanished} expired or deleted during the copy)" if vanished else ""
    print(f"total: {copied} keys copied{gone}")
    return 0


def _line(plans: list[Plan], kind: str, count: int | None = None) -> str:
    """What the plans of every partition hold of ``kind`` (or ``count`` of it), summed."""
    n = sum(len(plan.keys[kind]) for plan in plans) if count is None else count
    text = f"{kind}: {n} key{'' if n == 1 else 's'}"
    if kind == "history" and n:
        text += f" ({sum(plan.history_entries for plan in plans)} entries)"
    return text


def _checked(replies: list[Any]) -> list[Any]:
    """A pipeline's replies, its first error raised as Redis gave it. (redis-py's own raise
    prefixes the command, and a RESTORE's holds a DUMP payload: a secret key, a session.)"""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _explain(exc: BaseException, which: str, url: str) -> str:
    """One line for a Redis error, with a hint for the two an operator meets first."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    # never a command's arguments (a payload), should an error carry them after all
    text = text.rpartition(" of pipeline caused error: ")[2]
    hint = ""
    if "payload version" in text:
        hint = " (the target runs an older Redis than the source: RESTORE reads its own and "
        hint += "older DUMP formats only)"
    elif isinstance(exc, MovedError):
        text = f"MOVED {text}"
        hint = " (that Redis is a cluster node: name the cluster as redis+cluster://)"
    return f"{which}, {redact_url(url)}: {text}{hint}"


async def _cluster_node_named_plainly(side: Side) -> bool:
    """Whether ``side`` is a cluster node under a plain URL: its keys are not all there, and a
    RESTORE would be answered MOVED after some were written. (A user without INFO: unknown.)"""
    if is_cluster(side.client):
        return False
    try:
        info = await side.client.info("cluster")
    except ResponseError:
        return False
    return bool(int(info.get("cluster_enabled", 0)))


def _scan(client: aredis.Redis, match: str) -> AsyncGenerator[Any, None]:
    """SCAN MATCH ``match`` to the end: every master's, on a cluster (redis-py's
    ``RedisCluster.scan_iter``), as a generator that can be closed early."""
    return cast("AsyncGenerator[Any, None]", client.scan_iter(match=match, count=1000))


async def _plan(source: aredis.Redis, source_keys: Keys, target_keys: Keys) -> Plan:
    """The source's keys of the deployment (every master's, on a cluster), by kind."""
    plan = Plan(source_keys, target_keys)
    head = source_keys.prefix.encode() + b":"
    found: set[bytes] = set()
    match = glob_escape(source_keys.prefix) + ":*"
    async with contextlib.aclosing(_scan(source, match)) as keys:
        async for key in keys:
            found.add(key if isinstance(key, bytes) else str(key).encode())
    for key in sorted(found):  # (SCAN may return a key twice)
        if key.startswith(head):
            kind = kind_of(key[len(head) :].decode(errors="replace"))
            if kind is None:
                plan.foreign += 1
            else:
                plan.keys[kind].append(key)
    if plan.keys["history"]:
        info = await Bus(source_keys).history_info(source)
        plan.history_entries = int((info or {}).get("length", 0))
    return plan


def _same_number(side: str, recorded: Any, keys: Keys, partitions: int, advice: str) -> None:
    """Refuse when ``side`` records another number of partitions than this command has."""
    if recorded is not None and int(recorded) != partitions:
        raise _Refused(
            f"the {side} records {int(recorded)} partitions for prefix {keys.prefix!r}; "
            f"this command has {partitions} (GATEWAY_REDIS_PARTITIONS): {advice}"
        )


async def _holds_any(target: aredis.Redis, keys: Keys) -> bool:
    """Whether the target has any key of ``keys``' prefix (every master's, on a cluster)."""
    match = glob_escape(keys.prefix) + ":*"
    head = keys.prefix.encode() + b":"
    async with contextlib.aclosing(_scan(target, match)) as found:
        async for key in found:
            name = key if isinstance(key, bytes) else str(key).encode()
            if kind_of(name[len(head) :].decode(errors="replace")) is not None:
                return True  # (another deployment's, under a longer prefix, is no conflict)
    return False


async def _copy(source: Side, target: Side, plan: Plan, keys: list[bytes], replace: bool) -> int:
    """DUMP each of ``keys`` with its PTTL, RESTORE it under its target name; how many were
    copied (a key that expired or was deleted meanwhile is not)."""
    copied = 0
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        with source.talking():
            async with source.client.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.pttl(key)
                    pipe.dump(key)
                replies = _checked(await pipe.execute(raise_on_error=False))
        restores = []
        for i, key in enumerate(batch):
            ttl, payload = replies[2 * i], replies[2 * i + 1]
            if payload is None or ttl == -2:  # gone since the scan
                continue
            restores.append((plan.renamed(key), max(int(ttl), 0), payload))
        if not restores:
            continue
        with target.talking():
            async with target.client.pipeline(transaction=False) as pipe:
                for name, ttl, payload in restores:
                    pipe.restore(name, ttl, payload, replace=replace)
                _checked(await pipe.execute(raise_on_error=False))
        copied += len(restores)
    return copied
