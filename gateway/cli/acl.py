"""``gateway acl``: Redis ACL users for least privilege, one per role.

The identity secrets (needed in clear for HMAC) live in the same Redis as the event bus every
agent writes to, so every role gets a user that can do its part and nothing else:

========== ============================================= =======================================
profile    may                                           may not
========== ============================================= =======================================
publisher  run the publish script: XADD to the history,  read or write identities or browser
           PUBLISH on the live channel, its sequence     sessions, read the history, subscribe,
           number, the epoch                             run any other command
gateway    read history, epoch, identities; subscribe;   write identities or the history;
           keep browser sessions; probe its channel      any @admin or @dangerous command
                                                         but INFO
admin      read and write identities (``gateway user``,  history, sessions, channels; @admin,
           ``keypair``, ``group``, ``import``)           @dangerous
bridge     run the positioned publish script (history,   identities, browser sessions; @admin,
           live channel, epoch, its position); hold its  @dangerous
           lease and state (``gateway bridge``; written
           only when its password is given or named)
sync       read and write identities, its own sets and   history, sessions, the live channel;
           lease (``gateway sync-identities``; written   @admin, @dangerous
           only when its password is given or named)
========== ============================================= =======================================

The ``default`` user is the operator's superuser, behind a password of its own
(``--superuser-password-file``; it must differ from every other user's, since ``AUTH`` with a
password alone logs in as ``default``): no component is given it, and unauthenticated clients
get NOAUTH, even for PING. It has every right because Redis replays its append-only file as
that user, and a Redis whose EXEC re-checks ACLs during that replay (Redis from 7.0 until
redis/redis#14545, reported on 7.2.5 and measured on Debian bookworm's 7.0.15; Valkey until
valkey#3984) refuses every transaction and script write it may not make: a ``default`` user
limited to PING (or off) loses every identity, event and epoch at each restart with AOF
(``tests/system/test_aof_acl.py``). ``--default-user ping`` or ``off`` remain, for a Redis
without persistence or with the fix.

A replica and a Sentinel then need users of their own too (the superuser's password is for
people); written when their password is given (:data:`SERVICE_USERS`, Redis's documented
sets):

=========== ================================================= ==============================
service     may                                               configured on the node as
=========== ================================================= ==============================
replication PSYNC, REPLCONF, PING (no key, no channel)        ``masteruser``/``masterauth``
sentinel    INFO, ROLE, PING, SLAVEOF, MULTI/EXEC,            Sentinel's ``sentinel
            CONFIG REWRITE, CLIENT SETNAME/KILL, SCRIPT KILL, auth-user``/``auth-pass``
            PUBLISH/SUBSCRIBE on ``__sentinel__:hello`` only
=========== ================================================= ==============================

``--backendai-sessions`` prints instead the one user ``gateway serve --backendai-sessions``
needs on Backend.AI's web server's Redis (another server: nothing else of this output belongs
there, and its ``default`` user is left alone): ``GET`` on ``AIOHTTP_SESSION_*``, read-only,
and the connection commands (:data:`BACKENDAI_SESSIONS_RULES`).

``--cluster`` writes the users for a Redis Cluster (to be loaded on every node: ACLs are not
replicated): the names hash-tagged as the gateway uses them there (``{kev}:events``), SPUBLISH
instead of PUBLISH, and what redis-py's cluster client asks every node on connecting
(:data:`CLUSTER_COMMANDS`).

Which names each profile may touch comes from :data:`KEY_GRANTS` and :data:`CHANNEL_GRANTS`,
keyed by the member of :class:`publisher.keys.Keys` that makes the name; a test fails when
``Keys`` gains a member neither table lists. Passwords go into the output only as SHA-256
hashes (``#<hex>``), so the file can be mounted without exposing them.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, get_args

from publisher.keys import DEFAULT_PREFIX, Keys, cluster_prefix
from publisher.partitions import MAX_PARTITIONS, Partitions
from publisher.secretinput import SecretError, resolve_secret

__all__ = [
    "BACKENDAI_SESSIONS_RULES",
    "CHANNEL_GRANTS",
    "CLUSTER_COMMANDS",
    "KEY_GRANTS",
    "PROFILES",
    "SERVICE_RULES",
    "SERVICE_USERS",
    "Profile",
    "ServiceUser",
    "add_parser",
    "name_pattern",
    "partition_patterns",
    "render",
    "render_backendai_sessions",
    "rules",
]

Profile = Literal["publisher", "gateway", "admin", "bridge", "sync"]
PROFILES: Final[tuple[Profile, ...]] = get_args(Profile)
#: written unless ``--profiles`` says otherwise; the others only when named or given a password
DEFAULT_PROFILES: Final[tuple[Profile, ...]] = ("publisher", "gateway", "admin")
#: ``r``: read-only (``%R~``), ``rw``: read and write (``~``). A script's declared keys
#: (EVALSHA ... KEYS) need both, whatever the script does with them; EVALSHA_RO's need ``r``.
Access = Literal["r", "rw"]

#: Keys member -> who may touch the key(s) it names, and how.
KEY_GRANTS: Final[Mapping[str, Mapping[Profile, Access]]] = {
    # the gateway reads it (XINFO, XRANGE) and through a read-only script run by EVALSHA_RO
    # (publisher/bus.py, READ_SCRIPT), whose declared keys need read access only: it cannot
    # append or trim
    # the bridge also reads it back to reconcile (gateway.bridge.reconcile)
    "history": {"publisher": "rw", "gateway": "r", "bridge": "rw"},
    # the publish script sets it once; a gateway sets it (SET NX) for a history written
    # before epochs existed (history.history_state)
    "epoch": {"publisher": "rw", "gateway": "rw", "bridge": "rw"},
    "publisher_seq": {"publisher": "rw"},
    "publisher_position": {"bridge": "rw"},
    "bridge_lease": {"bridge": "rw"},
    "bridge_state": {"bridge": "rw"},
    # the identity sync (gateway sync-identities) writes identities as the admin does
    "keypair": {"gateway": "r", "admin": "rw", "sync": "rw"},
    "user": {"gateway": "r", "admin": "rw", "sync": "rw"},
    "group": {"gateway": "r", "admin": "rw", "sync": "rw"},
    "keypairs": {"gateway": "r", "admin": "rw", "sync": "rw"},
    "users": {"gateway": "r", "admin": "rw", "sync": "rw"},
    "groups": {"gateway": "r", "admin": "rw", "sync": "rw"},
    # what the identity sync owns, what it last did, and its lease
    "sync_keypairs": {"sync": "rw"},
    "sync_users": {"sync": "rw"},
    "sync_groups": {"sync": "rw"},
    "sync_last": {"sync": "rw"},
    "sync_lease": {"sync": "rw"},
    "browser_session": {"gateway": "rw"},
    "browser_sessions_of": {"gateway": "rw"},
    "login_throttle": {"gateway": "rw"},
    # each replica's count of open streams per access key, under a lease (replica/limits.py)
    "key_streams": {"gateway": "rw"},
    # where a draining replica left each SDK stream, for its reconnect (replica/handoff.py)
    "stream_handoff": {"gateway": "rw"},
    "identity_generation": {"gateway": "r", "admin": "rw", "sync": "rw"},
    # the number of partitions, recorded by the first process that checks it (SET NX GET:
    # publisher.partitions.check_partitions)
    "partitions": {"publisher": "rw", "gateway": "rw", "admin": "rw", "bridge": "rw"},
}
#: the Keys members each partition has on its own (publisher.partitions): with more than one
#: partition, every grant of one of them also covers the exact names of partitions 1..n-1
#: (``kev.p1:events`` .. ``kev.p<n-1>:events``; on a cluster the computed hash tags,
#: ``{kev.p1.<t>}:events``): no glob over ``kev.p*``, which other deployments' names match too
#: (``kev.prod:events``)
PARTITIONED: Final = frozenset(
    {"history", "epoch", "publisher_seq", "publisher_position", "channel", "probe_channel"}
)
#: Keys member -> who may publish or subscribe on the channel(s) it names (Redis does not
#: tell the two apart; commands do: a publisher has PUBLISH, no SUBSCRIBE).
CHANNEL_GRANTS: Final[Mapping[str, tuple[Profile, ...]]] = {
    "channel": ("publisher", "gateway", "bridge"),
    "probe_channel": ("gateway",),
    # every identity write (admin) and logout (gateway) announces itself here
    "identity_changes": ("gateway", "admin", "sync"),
}

#: what every user needs to connect: redis-py's handshake and health checks (its CLIENT
#: SETINFO is left out: Redis 7.0 does not know it, and redis-py ignores its refusal)
_CONNECT: Final = ("+ping", "+select", "+hello", "+auth")
#: commands (and categories) per profile; keys and channels limit where they apply
COMMANDS: Final[Mapping[Profile, tuple[str, ...]]] = {
    # EVALSHA (SCRIPT LOAD/EXISTS when the script is not cached yet) of the publish script;
    # Redis checks every command a script runs against the caller's rights, hence the four.
    "publisher": (
        "-@all",
        *_CONNECT,
        "+evalsha",
        "+script|load",
        "+script|exists",
        "+publish",
    ),
    "gateway": (
        "-@all",
        "+@read",
        "+@write",
        "+@pubsub",
        "+@transaction",
        "+@connection",
        "-@admin",
        "-@dangerous",
        "-function",
        "+info",
        "+time",
        # EVALSHA: the login throttle's and the stream limit's scripts; EVALSHA_RO: the
        # history read script
        "+evalsha",
        "+evalsha_ro",
        "+script|load",
        "+script|exists",
        *_CONNECT,
    ),
    # the positioned publish script and the lease's (EVALSHA), its reads of its position,
    # state and the history (reconciliation after a gap: the history read script, EVALSHA_RO),
    # TIME
    "bridge": (
        "-@all",
        "+@read",
        "+@write",
        "+@transaction",
        "+@connection",
        "-@admin",
        "-@dangerous",
        "-function",
        "+publish",
        "+time",
        "+evalsha",
        "+evalsha_ro",
        "+script|load",
        "+script|exists",
        *_CONNECT,
    ),
    # identity writes as the admin's, and the lease's script (EVALSHA)
    "sync": (
        "-@all",
        "+@read",
        "+@write",
        "+@pubsub",
        "+@transaction",
        "+@connection",
        "-@admin",
        "-@dangerous",
        "-function",
        "+evalsha",
        "+script|load",
        "+script|exists",
        *_CONNECT,
    ),
    "admin": (
        "-@all",
        "+@read",
        "+@write",
        "+@pubsub",
        "+@transaction",
        "+@connection",
        "-@admin",
        "-@dangerous",
        "-function",
        "+evalsha",
        "+script|load",
        "+script|exists",
        *_CONNECT,
    ),
}
#: what a cluster client sends any node besides the profile's commands: the slot map (CLUSTER
#: SLOTS, SHARDS) and the command table it routes keys by (COMMAND, COMMAND GETKEYS)
CLUSTER_COMMANDS: Final = ("+cluster|slots", "+cluster|shards", "+command")

#: Keys member -> the commands the publish script runs on that key, granted to the publisher
#: on that key alone (a Redis 7 ACL selector each): ``SET <history> x`` would turn the stream
#: into a string (every gateway unready on WRONGTYPE, every publish failing). Arguments cannot
#: be limited: a publisher can still trim the history (XADD MAXLEN) or overwrite the epoch.
PUBLISHER_SELECTORS: Final[Mapping[str, tuple[str, ...]]] = {
    "history": ("+xadd",),
    "publisher_seq": ("+get", "+set"),
    "epoch": ("+set",),
    "partitions": ("+set",),
}
#: Keys member -> what the admin may do there, and nothing else (a selector each): start a
#: new history when none can follow the old one (``gateway reset-history``: XINFO to say what
#: it held, DEL of the history and its epoch). No XADD, no PUBLISH: the admin cannot write
#: events.
ADMIN_SELECTORS: Final[Mapping[str, tuple[str, ...]]] = {
    "history": ("+del", "+xinfo|stream"),
    "epoch": ("+del",),
}
ServiceUser = Literal["replication", "sentinel"]
SERVICE_USERS: Final[tuple[ServiceUser, ...]] = get_args(ServiceUser)
#: the users Redis itself needs when ``default`` is not theirs to use: a replica's link to its
#: master (``masteruser``/``masterauth``), and Sentinel's monitoring and failover of every
#: node (``sentinel auth-user``/``auth-pass``); no keys, and Sentinel's one channel
SERVICE_RULES: Final[Mapping[ServiceUser, tuple[str, ...]]] = {
    "replication": ("resetkeys", "resetchannels", "-@all", "+psync", "+replconf", "+ping"),
    "sentinel": (
        "resetkeys",
        "resetchannels",
        "&__sentinel__:hello",
        "-@all",
        "+ping",
        "+info",
        "+role",
        "+multi",
        "+exec",
        "+slaveof",
        "+config|rewrite",
        "+client|setname",
        "+client|kill",
        "+script|kill",
        "+subscribe",
        "+publish",
    ),
}
#: the ``default`` user: ``superuser`` (every right, the password of
#: ``--superuser-password-file``, as SHA-256: what an AOF replays as, see the module's
#: docstring); ``ping`` (no password, PING only: health checks need no secret, but an AOF's
#: transactions are lost on an affected Redis) or ``off``
DEFAULT_USER: Final = {
    "superuser": "user default reset on {digest} ~* &* +@all",
    "ping": "user default on nopass resetkeys resetchannels -@all +ping",
    "off": "user default off resetpass resetkeys resetchannels -@all",
}
DefaultUser = Literal["superuser", "ping", "off", "keep"]

#: the user on Backend.AI's web server's Redis (its console sessions, ``AIOHTTP_SESSION_<id>``
#: keys: gateway/identity/backendai_sessions.py): GET them, read-only (``%R~``, Redis 7), and
#: connect; no channel, no other key or command
BACKENDAI_SESSIONS_RULES: Final = (
    "resetkeys",
    "%R~AIOHTTP_SESSION_*",
    "resetchannels",
    "-@all",
    "+get",
    *_CONNECT,
)

_GLOB = re.compile(r"([*?\[\]\\])")


def name_pattern(keys: Keys, member: str) -> str:
    """The glob of every name ``Keys.<member>`` can make: its arguments become ``*``, the
    prefix is escaped (``kev:keypair:*``, ``kev:events``)."""
    escaped = Keys.__new__(Keys)
    object.__setattr__(escaped, "prefix", _GLOB.sub(r"\\\1", keys.prefix))
    value = getattr(escaped, member)
    if callable(value):
        return str(value(*("*" for _ in inspect.signature(value).parameters)))
    return str(value)


def partition_patterns(keys: Keys, member: str, partitions: int) -> list[str]:
    """The globs of every name ``Keys.<member>`` makes in partitions 1..n-1
    (:mod:`publisher.partitions`), one per partition, each from that partition's exact prefix
    escaped as :func:`name_pattern` does (``kev.p1:events``, ``kev.p2:pubseq:*``; on a
    cluster with the computed hash tags, ``{kev.p1.<t>}:events``). Not ``kev.p*``: that
    would also grant other deployments' names (``kev.prod:events``, ``kev.preview:...``)."""
    return [name_pattern(k, member) for k in Partitions(keys, partitions).keys[1:]]


def _patterns(keys: Keys, member: str, partitions: int) -> list[str]:
    """The member's glob, and with more than one partition its partitions' too."""
    out = [name_pattern(keys, member)]
    if partitions > 1 and member in PARTITIONED:
        out += partition_patterns(keys, member, partitions)
    return out


def rules(keys: Keys, profile: Profile, partitions: int = 1) -> list[str]:
    """The ACL rules of ``profile`` (after the user name and password); ``partitions``: the
    deployment's (more than one: the names of partitions 1..n-1 are granted too)."""
    out = ["resetkeys"]
    for member, grants in KEY_GRANTS.items():
        access = grants.get(profile)
        if access is not None:
            mode = "%R~" if access == "r" else "~"
            out += [mode + pattern for pattern in _patterns(keys, member, partitions)]
    out.append("resetchannels")
    for member, who in CHANNEL_GRANTS.items():
        if profile in who:
            out += [f"&{pattern}" for pattern in _patterns(keys, member, partitions)]
    if keys.cluster:  # the live channel is a shard channel there (SPUBLISH from the script)
        out += [c.replace("+publish", "+spublish") for c in COMMANDS[profile]]
        out += CLUSTER_COMMANDS
    else:
        out += COMMANDS[profile]
    selectors = {"publisher": PUBLISHER_SELECTORS, "admin": ADMIN_SELECTORS}.get(profile, {})
    for member, commands in selectors.items():  # one selector, every partition's name
        patterns = " ".join(f"~{pattern}" for pattern in _patterns(keys, member, partitions))
        out.append(f"({patterns} {' '.join(commands)})")
    return out


def render(
    keys: Keys,
    passwords: Mapping[Profile, str],
    users: Mapping[Profile, str],
    *,
    fmt: Literal["aclfile", "commands"] = "aclfile",
    default_user: DefaultUser = "superuser",
    superuser_password: str | None = None,
    services: Mapping[ServiceUser, tuple[str, str]] | None = None,
    partitions: int = 1,
) -> str:
    """An aclfile (``redis-server --aclfile``) or ``ACL SETUSER`` lines (for ``redis-cli``)
    defining the ``default`` user (:data:`DEFAULT_USER`; ``keep`` leaves it out), one user
    per profile in ``passwords``, then one per service in ``services`` (service -> (user
    name, password)); passwords appear as SHA-256 hashes only; ``partitions``: the
    deployment's (:func:`rules`). Raises ValueError for ``superuser`` without
    ``superuser_password``."""
    lines: list[str] = []  # an aclfile has no comments
    entries: list[list[str]] = []
    if default_user == "superuser":
        if not superuser_password:
            raise ValueError("the superuser (default user) needs a password")
        line = DEFAULT_USER["superuser"].format(digest=_digest(superuser_password))
        entries.append(line.split()[1:])
    elif default_user != "keep":
        entries.append(DEFAULT_USER[default_user].split()[1:])
    for profile in PROFILES:
        if profile in passwords:
            digest = _digest(passwords[profile])
            entries.append(
                [users[profile], "reset", "on", digest, *rules(keys, profile, partitions)]
            )
    for service in SERVICE_USERS:
        if services and service in services:
            name, password = services[service]
            entries.append([name, "reset", "on", _digest(password), *SERVICE_RULES[service]])
    for entry in entries:
        if fmt == "aclfile":
            lines.append(" ".join(["user", *entry]))
        else:
            lines.append(" ".join(["ACL", "SETUSER", *(_quote(word) for word in entry)]))
    return "\n".join(lines) + "\n"


def _digest(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def _quote(word: str) -> str:
    return f'"{word}"' if any(c in word for c in '*%&|#" ()') else word


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "acl",
        help="print Redis ACL users for the publisher, gateway, admin (and bridge, sync) roles",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--prefix", help=f"key prefix (env GATEWAY_PREFIX; default {DEFAULT_PREFIX})")
    p.add_argument(
        "--format",
        choices=("aclfile", "commands"),
        default="aclfile",
        help="aclfile for redis-server --aclfile (default), or ACL SETUSER lines for redis-cli",
    )
    p.add_argument(
        "--default-user",
        choices=get_args(DefaultUser),
        default="superuser",
        help="the default user is the superuser, with --superuser-password-file (default: "
        "what an AOF replays as must have every right), or may only PING without a password "
        "(ping), or is off; keep leaves it as it is (with --format commands only: adding a "
        "user to a running Redis). ping and off lose every transaction of an AOF at a "
        "restart on a Redis without redis/redis#14545 (7.0 and later, before it)",
    )
    p.add_argument(
        "--superuser-password-file",
        metavar="PATH",
        help="the default user's password, for people only (- = stdin); or env "
        "KEV_ACL_SUPERUSER_PASSWORD or KEV_ACL_SUPERUSER_PASSWORD_FILE",
    )
    p.add_argument(
        "--profiles",
        default=",".join(DEFAULT_PROFILES),
        help="comma list of the users to write (default: %(default)s; the bridge, sync, "
        "replication and sentinel users are written when their password is given, and "
        "required when named here)",
    )
    for profile in PROFILES:
        env = f"KEV_ACL_{profile.upper()}_PASSWORD"
        p.add_argument(f"--{profile}-user", default=None, help=f"default: <prefix>-{profile}")
        p.add_argument(
            f"--{profile}-password-file",
            metavar="PATH",
            help=f"its password (- = stdin); or env {env} or {env}_FILE",
        )
    for service in SERVICE_USERS:
        env = f"KEV_ACL_{service.upper()}_PASSWORD"
        p.add_argument(f"--{service}-user", default=None, help=f"default: <prefix>-{service}")
        p.add_argument(
            f"--{service}-password-file",
            metavar="PATH",
            help=f"its password (- = stdin); or env {env} or {env}_FILE; written only when "
            "given (or named in --profiles): "
            + ("a replica's masteruser/masterauth" if service == "replication"
               else "Sentinel's auth-user/auth-pass for every node"),
        )  # fmt: skip
    p.add_argument(
        "--backendai-sessions",
        action="store_true",
        help="print only the read-only user for Backend.AI's web server's Redis (GET "
        "AIOHTTP_SESSION_*: gateway serve --backendai-sessions), nothing for the gateway's",
    )
    p.add_argument(
        "--backendai-sessions-user", default=None, help="default: <prefix>-backendai-sessions"
    )
    p.add_argument(
        "--backendai-sessions-password-file",
        metavar="PATH",
        help="its password (- = stdin); or env KEV_ACL_BACKENDAI_SESSIONS_PASSWORD or "
        "KEV_ACL_BACKENDAI_SESSIONS_PASSWORD_FILE",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="users for a Redis Cluster (load the file on every node): hash-tagged names, "
        "SPUBLISH, the slot map",
    )
    p.add_argument(
        "--partitions",
        metavar="N",
        help="the deployment's partitions (env GATEWAY_REDIS_PARTITIONS; default 1): more "
        "than one also grants the names of partitions 1..N-1",
    )
    p.add_argument("--output", "-o", metavar="PATH", help="write here instead of stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Print (or write) the ACL; 0, or 2 with one line on stderr when a password is missing
    or unreadable."""
    env = os.environ if environ is None else environ
    prefix = args.prefix or env.get("GATEWAY_PREFIX") or DEFAULT_PREFIX
    try:
        keys = Keys(cluster_prefix(prefix), cluster=True) if args.cluster else Keys(prefix)
        partitions = int(args.partitions or env.get("GATEWAY_REDIS_PARTITIONS") or 1)
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"--partitions must be 1..{MAX_PARTITIONS}, got {partitions}")
    except ValueError as exc:
        return _fail(str(exc))
    if args.backendai_sessions:
        return _backendai_sessions(args, keys, env)
    wanted: Sequence[str] = [p.strip() for p in args.profiles.split(",") if p.strip()]
    known = (*PROFILES, *SERVICE_USERS)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        return _fail(f"--profiles: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    if args.default_user == "keep" and args.format == "aclfile":
        # an aclfile without a default line: Redis makes ``default`` nopass with every right
        return _fail(
            "--default-user keep writes no default user, and Redis then loads an aclfile "
            "with default open to anyone (nopass, every right): use it with --format "
            "commands only, to add users to a running Redis"
        )
    if args.default_user != "superuser" and args.superuser_password_file is not None:
        return _fail(f"--superuser-password-file is for --default-user superuser, not "
                     f"{args.default_user}")  # fmt: skip
    from_stdin = [n for n, v in vars(args).items() if n.endswith("_password_file") and v == "-"]
    if len(from_stdin) > 1:
        names = ", ".join("--" + n.replace("_", "-") for n in sorted(from_stdin))
        return _fail(f"only one password can come from standard input (-): {names}")
    passwords: dict[Profile, str] = {}
    users: dict[Profile, str] = {}
    for profile in PROFILES:
        if profile not in wanted and profile in DEFAULT_PROFILES:
            continue
        env_name = f"KEV_ACL_{profile.upper()}_PASSWORD"
        try:
            password = resolve_secret(
                None, getattr(args, f"{profile}_password_file"), env, env_name,
                what=f"--{profile}-password",
            )  # fmt: skip
        except SecretError as exc:
            return _fail(str(exc))
        if password is None and profile not in wanted:
            continue  # an optional profile without a password: not written
        if password is None:
            return _fail(
                f"the {profile} user needs a password: --{profile}-password-file, "
                f"{env_name} or {env_name}_FILE"
            )
        passwords[profile] = password
        users[profile] = getattr(args, f"{profile}_user") or f"{_user_prefix(keys)}-{profile}"
    services: dict[ServiceUser, tuple[str, str]] = {}
    for service in SERVICE_USERS:
        env_name = f"KEV_ACL_{service.upper()}_PASSWORD"
        try:
            password = resolve_secret(
                None, getattr(args, f"{service}_password_file"), env, env_name,
                what=f"--{service}-password",
            )  # fmt: skip
        except SecretError as exc:
            return _fail(str(exc))
        if password is None:
            if service in wanted:
                return _fail(
                    f"the {service} user needs a password: --{service}-password-file, "
                    f"{env_name} or {env_name}_FILE"
                )
            continue
        name = getattr(args, f"{service}_user") or f"{_user_prefix(keys)}-{service}"
        services[service] = (name, password)
    superuser = None
    if args.default_user == "superuser":
        env_name = "KEV_ACL_SUPERUSER_PASSWORD"
        try:
            superuser = resolve_secret(
                None, args.superuser_password_file, env, env_name, what="--superuser-password"
            )
        except SecretError as exc:
            return _fail(str(exc))
        if not superuser or not superuser.strip():
            return _fail(
                f"the default user (the superuser) needs a password: --superuser-password-file, "
                f"{env_name} or {env_name}_FILE"
            )
        shared = sorted(
            [p for p, pw in passwords.items() if pw == superuser]
            + [s for s, (_, pw) in services.items() if pw == superuser]
        )
        if shared:  # a client that leaves its user name out would log in as the superuser
            return _fail(
                "the superuser's password must differ from every user's; it is the "
                f"{', '.join(shared)} user's too"
            )
    if args.cluster and args.default_user != "keep" and "replication" not in services:
        print(
            "gateway acl: warning: with the default user behind a password or limited, every "
            "replica of the cluster loses its master unless it authenticates as the "
            "replication user: give --replication-password-file and set "
            "masteruser/masterauth on every node",
            file=sys.stderr,
        )
    text = render(
        keys, passwords, users, fmt=args.format, default_user=args.default_user,
        superuser_password=superuser, services=services, partitions=partitions,
    )  # fmt: skip
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def render_backendai_sessions(
    user: str, password: str, *, fmt: Literal["aclfile", "commands"] = "aclfile"
) -> str:
    """The user for Backend.AI's web server's Redis (:data:`BACKENDAI_SESSIONS_RULES`), as
    an aclfile line or an ``ACL SETUSER`` line; the password as its SHA-256 only."""
    entry = [user, "reset", "on", _digest(password), *BACKENDAI_SESSIONS_RULES]
    if fmt == "aclfile":
        return " ".join(["user", *entry]) + "\n"
    return " ".join(["ACL", "SETUSER", *(_quote(word) for word in entry)]) + "\n"


def _backendai_sessions(args: argparse.Namespace, keys: Keys, env: Mapping[str, str]) -> int:
    env_name = "KEV_ACL_BACKENDAI_SESSIONS_PASSWORD"
    try:
        password = resolve_secret(
            None, args.backendai_sessions_password_file, env, env_name,
            what="--backendai-sessions-password",
        )  # fmt: skip
    except SecretError as exc:
        return _fail(str(exc))
    if password is None:
        return _fail(
            "the backendai-sessions user needs a password: --backendai-sessions-password-file, "
            f"{env_name} or {env_name}_FILE"
        )
    user = args.backendai_sessions_user or f"{_user_prefix(keys)}-backendai-sessions"
    text = render_backendai_sessions(user, password, fmt=args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _user_prefix(keys: Keys) -> str:
    """The prefix as the start of a user name (``kev-gateway``, also on a cluster)."""
    return keys.prefix.replace("{", "").replace("}", "")


def _fail(message: str) -> int:
    print(f"gateway acl: {message}", file=sys.stderr)
    return 2
