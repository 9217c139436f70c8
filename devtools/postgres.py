"""A real PostgreSQL, and Backend.AI's schema in it: for the tests, the bridge's benchmark and
the Backend.AI demo (``python -m devtools backendai``).

:class:`PostgresServer` makes a throw-away cluster with ``initdb`` in a fresh temporary
directory and runs ``postgres`` on a free loopback port (its unix socket in that directory,
``fsync`` off): stop, start again on the same port and data directory, close. As root it runs
as the ``postgres`` user (``initdb`` refuses root); otherwise as the current user. Every wait
is bounded. SQL goes through ``psql`` so the synchronous API works inside and outside an event
loop; callers talk to the server with asyncpg themselves (:meth:`PostgresServer.dsn_for`).

Authentication: the superuser ``postgres`` is trusted on loopback; every other role must give
its SCRAM password, so a test of a read-only role also tests its password.

The Backend.AI part: the schema subsets of ``tests/fixtures/backendai`` (one per supported
manager generation), the column sets the bridge, its reconciler and the identity sync read,
:func:`readonly_role_sql` (the ``CREATE ROLE`` + column ``GRANT`` statements), and the rows
the manager writes (:func:`owner_sql`, :func:`session_sql`, :func:`transition_sql`). The
pytest fixtures are in ``tests/support/postgres.py``.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from devtools.localredis import free_port

__all__ = [
    "BRIDGE_COLUMNS",
    "BRIDGE_ONLY",
    "IDENTITY_COLUMNS",
    "RECONCILE_COLUMNS",
    "SCHEMAS",
    "BackendAIDatabase",
    "Kernel",
    "Owner",
    "PostgresError",
    "PostgresNotInstalled",
    "PostgresServer",
    "SchemaVersion",
    "Scope",
    "find_bindir",
    "owner_sql",
    "readonly_role_sql",
    "session_sql",
    "transition_sql",
    "unique_name",
]

SchemaVersion = Literal["23.09", "26.8"]
Scope = Literal["bridge", "reconcile", "identity"]

_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backendai"
#: Backend.AI's schema subset per manager generation: 23.09 (PG enums for statuses) and 26.8
#: (varchar statuses); see the header of each file for what changed
SCHEMAS: Mapping[SchemaVersion, Path] = {
    "23.09": _FIXTURES / "schema-23.09.sql",
    "26.8": _FIXTURES / "schema-26.8.sql",
}

#: What the bridge reads per event (BACKENDAI.md section 1.4): the same columns at 23.09 and 26.8
BRIDGE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "kernels": (
        "id",
        "session_id",
        "session_name",
        "access_key",
        "domain_name",
        "group_id",
        "user_uuid",
        "cluster_role",
        "cluster_idx",
    ),
    "sessions": ("id", "name", "access_key", "domain_name", "group_id", "user_uuid"),
    "groups": ("id", "name", "domain_name"),
}
#: What the bridge's reconciler reads after an outage (BACKENDAI.md section 1.5)
RECONCILE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "sessions": (
        "status",
        "status_info",
        "status_history",
        "result",
        "terminated_at",
        "created_at",
    ),
    "kernels": ("status", "status_history", "terminated_at", "result"),
}
#: What the identity sync reads (BACKENDAI.md section 2.1), present from 23.09 to 26.8
IDENTITY_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "keypairs": ("access_key", "secret_key", "is_active", "is_admin", "user"),
    "users": ("uuid", "email", "role", "status", "domain_name"),
    "groups": ("id", "name", "domain_name", "is_active"),
    "association_groups_users": ("user_id", "group_id"),
    "domains": ("name", "is_active"),
}
_SCOPES: Mapping[Scope, Mapping[str, tuple[str, ...]]] = {
    "bridge": BRIDGE_COLUMNS,
    "reconcile": RECONCILE_COLUMNS,
    "identity": IDENTITY_COLUMNS,
}

#: the default scope of a read-only role: what the bridge reads per event
BRIDGE_ONLY: tuple[Scope, ...] = ("bridge",)

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = frozenset({"user"})  # column names that must be quoted (keypairs."user")


class PostgresNotInstalled(RuntimeError):
    """No ``initdb`` on PATH nor under /usr/lib/postgresql/*/bin."""


class PostgresError(RuntimeError):
    """A ``psql`` run or a server start that failed; the message carries PostgreSQL's words."""


def find_bindir() -> Path:
    """Where ``initdb``, ``postgres``, ``psql`` and ``pg_isready`` are: PATH first, then the
    newest Debian/Ubuntu ``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresNotInstalled(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin):"
            " run scripts/install"
        )
    return candidates[-1].parent


def _ident(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain lower-case SQL name: {name!r}")
    return f'"{name}"' if name in _RESERVED else name


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def readonly_role_sql(
    role: str, password: str, dbname: str, scopes: Collection[Scope] = BRIDGE_ONLY
) -> list[str]:
    """The statements that make ``role``: it logs in with ``password``, connects to ``dbname``
    only through the usual PUBLIC grant, may SELECT exactly the columns of ``scopes`` and
    nothing else, and starts every transaction read-only. Run them as a superuser (or the
    owner of the tables) in ``dbname``."""
    if not scopes or any(scope not in _SCOPES for scope in scopes):
        raise ValueError(f"scopes must be some of {sorted(_SCOPES)}, not {scopes!r}")
    columns: dict[str, list[str]] = {}
    for scope in _SCOPES:  # a fixed order, whatever the caller's
        if scope in scopes:
            for table, names in _SCOPES[scope].items():
                wanted = columns.setdefault(table, [])
                wanted.extend(name for name in names if name not in wanted)
    who = _ident(role)
    statements = [
        f"CREATE ROLE {who} LOGIN PASSWORD {_literal(password)}"
        " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
        f"ALTER ROLE {who} SET default_transaction_read_only = on",
        f"GRANT CONNECT ON DATABASE {_ident(dbname)} TO {who}",
        f"GRANT USAGE ON SCHEMA public TO {who}",
    ]
    statements += [
        f"GRANT SELECT ({', '.join(_ident(c) for c in cols)}) ON TABLE {_ident(table)} TO {who}"
        for table, cols in columns.items()
    ]
    return statements


class PostgresServer:
    """A private PostgreSQL cluster on one loopback port: start, stop, start again, close."""

    def __init__(self, port: int | None = None, *, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.port = port or free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # initdb and postgres refuse to run as root: as root, they run as `postgres`
        self._account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    # -- addresses -------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """The superuser's DSN for the maintenance database ``postgres``."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str, *, user: str = "postgres", password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    @property
    def datadir(self) -> Path:
        if self.dir is None:
            raise RuntimeError("the cluster has not been made yet: call init()")
        return self.dir / "data"

    # -- lifecycle -------------------------------------------------------------------------
    def init(self, timeout: float = 60.0) -> None:
        """Make the cluster: a fresh temporary directory, ``initdb``, the pg_hba rules."""
        if self.dir is not None:
            raise RuntimeError(f"the cluster already exists in {self.dir}")
        self.dir = Path(tempfile.mkdtemp(prefix="kev-pg-"))
        if self._account is not None:
            os.chown(self.dir, self._account.pw_uid, self._account.pw_gid)
        command = [
            str(self.bindir / "initdb"),
            "--pgdata", str(self.datadir),
            "--username", "postgres",
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
        ]  # fmt: skip
        if self._account is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise PostgresError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(
            "# kev test cluster: the superuser trusted on loopback, every other role by password\n"
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        if self._account is not None:
            os.chown(hba, self._account.pw_uid, self._account.pw_gid)

    def start(self, timeout: float = 30.0) -> None:
        """Run ``postgres`` on :attr:`port` and return once it accepts connections."""
        if self.proc is not None:
            raise RuntimeError("postgres is already running")
        if self.dir is None:
            self.init()
        assert self.dir is not None
        self._log = open(self.dir / "postgres.log", "ab")  # closed by stop()
        command = [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.dir}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=60",
            "-c", "shared_buffers=16MB",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        account = self._account
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
            # its own session: a Ctrl-C at the terminal reaches pytest, not the server
            start_new_session=True,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        deadline = time.monotonic() + timeout
        while not self._accepts_connections():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(kill=True)
                raise PostgresError(
                    f"postgres did not start on port {self.port}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """Stop the server: SIGINT (a fast shutdown: clients are disconnected, data is flushed),
        then SIGKILL if it is still there after ``timeout``; ``kill`` skips to SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            self.proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        if self.dir is None or not (self.dir / "postgres.log").exists():
            return "(no log)"
        text = (self.dir / "postgres.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _accepts_connections(self) -> bool:
        probe = [
            str(self.bindir / "pg_isready"),
            "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            "-t", "1",
        ]  # fmt: skip
        try:
            return subprocess.run(probe, timeout=5, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    # -- SQL ---------------------------------------------------------------------------------
    def execute(self, sql: str, dbname: str = "postgres", *, timeout: float = 30.0) -> str:
        """Run ``sql`` (one or more statements, each in its own transaction) as the superuser;
        return psql's unaligned, tuples-only output. Fails on the first error."""
        return self._psql(["--file", "-"], dbname, timeout, stdin=sql)

    def execute_file(self, path: Path, dbname: str, *, timeout: float = 60.0) -> None:
        """Run an SQL file in one transaction (all or nothing)."""
        self._psql(["--single-transaction", "--file", str(path)], dbname, timeout)

    def create_database(self, name: str, schema_file: Path | None = None) -> None:
        """``CREATE DATABASE name``, then load ``schema_file`` into it (one transaction)."""
        self.execute(f"CREATE DATABASE {_ident(name)}")
        if schema_file is not None:
            self.execute_file(schema_file, name)

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def create_readonly_role(
        self, name: str, password: str, dbname: str, scopes: Collection[Scope] = BRIDGE_ONLY
    ) -> str:
        """Make the role of :func:`readonly_role_sql`; return its DSN for ``dbname``."""
        self.execute(";\n".join(readonly_role_sql(name, password, dbname, scopes)) + ";", dbname)
        return self.dsn_for(dbname, user=name, password=password)

    def drop_role(self, name: str) -> None:
        """Drop a role whose grants went with its databases (or revoke them first)."""
        self.execute(f"DROP ROLE IF EXISTS {_ident(name)}")

    def _psql(self, args: list[str], dbname: str, timeout: float, stdin: str | None = None) -> str:
        command = [
            str(self.bindir / "psql"),
            "--no-psqlrc", "--quiet", "--no-align", "--tuples-only",
            "--set", "ON_ERROR_STOP=1",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--username", "postgres", "--dbname", dbname,
            *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(
            command,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresError(done.stderr.decode(errors="replace").strip())
        return done.stdout.decode()


# -- Backend.AI databases --------------------------------------------------------------------
@dataclass
class BackendAIDatabase:
    """A fresh database holding Backend.AI's schema subset of one manager generation."""

    server: PostgresServer
    version: SchemaVersion
    name: str
    roles: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        """The superuser's DSN (what the manager would write with)."""
        return self.server.dsn_for(self.name)

    def execute(self, sql: str) -> str:
        return self.server.execute(sql, self.name)

    def create_readonly_role(
        self, name: str, password: str, scopes: Collection[Scope] = BRIDGE_ONLY
    ) -> str:
        """A read-only role on this database (dropped with it); returns its DSN."""
        dsn = self.server.create_readonly_role(name, password, self.name, scopes)
        self.roles.append(name)
        return dsn


@dataclass(frozen=True)
class Owner:
    """A user with one keypair in one project (group) of one domain, as the manager stores
    them; ``role`` and the statuses are written the way the manager writes them (values for
    ``userrole``/``userstatus``, upper-case names for the session and kernel statuses)."""

    user_uuid: uuid.UUID
    email: str
    access_key: str  # 20 characters
    secret_key: str  # 40 characters
    group_id: uuid.UUID
    group_name: str
    domain: str = "default"
    role: str = "user"


@dataclass(frozen=True)
class Kernel:
    """One container of a session: ``main`` 1 and ``sub`` 1, 2, ... (1-based within a role:
    manager/registry.py 23.09.0 L941-949; expand_kernel_groups_rule.py 26.8.1 L61-74)."""

    id: uuid.UUID
    cluster_role: str = "main"
    cluster_idx: int = 1
    local_rank: int = 0


def owner_sql(version: SchemaVersion, owner: Owner) -> str:
    """INSERTs for the owner's domain (if new), user, keypair, group (if new), membership."""
    d, g = _literal(owner.domain), _literal(owner.group_name)
    v26 = version == "26.8"
    return f"""
INSERT INTO domains (name, is_active, allowed_vfolder_hosts, allowed_docker_registries, dotfiles
    {", total_resource_slots" if v26 else ""})
VALUES ({d}, true, '{{}}', '{{cr.backend.ai}}', '\\x90' {", '{}'" if v26 else ""})
ON CONFLICT (name) DO NOTHING;
INSERT INTO users (uuid, email, status, domain_name, role, resource_policy, sudo_session_enabled)
VALUES ('{owner.user_uuid}', {_literal(owner.email)}, 'active', {d}, {_literal(owner.role)},
    'default', false);
INSERT INTO keypairs (access_key, secret_key, is_active, is_admin, "user", resource_policy,
    dotfiles, bootstrap_script)
VALUES ({_literal(owner.access_key)}, {_literal(owner.secret_key)}, true,
    {"true" if owner.role in ("admin", "superadmin") else "false"}, '{owner.user_uuid}',
    'default', '\\x90', '');
INSERT INTO groups (id, name, is_active, domain_name, allowed_vfolder_hosts, dotfiles,
    resource_policy {", total_resource_slots, type" if v26 else ""})
VALUES ('{owner.group_id}', {g}, true, {d}, '{{}}', '\\x90', 'default'
    {", '{}', 'general'" if v26 else ""})
ON CONFLICT (id) DO NOTHING;
INSERT INTO association_groups_users (user_id, group_id)
VALUES ('{owner.user_uuid}', '{owner.group_id}');
"""


def session_sql(
    version: SchemaVersion,
    owner: Owner,
    session_id: uuid.UUID,
    name: str,
    kernels: Collection[Kernel],
    at: datetime,
) -> str:
    """The rows ``enqueue_session`` writes: a PENDING session and its PENDING kernels, each
    with ``status_history = {"PENDING": <ISO 8601>}`` (registry.py 23.09.0 L978-1030;
    repositories/scheduler/creators.py 26.8.1 L78-236)."""
    v26 = version == "26.8"
    history = _literal(json.dumps({"PENDING": at.isoformat()}))
    slots = _literal(json.dumps({"cpu": "1", "mem": "1073741824"}))
    rows = [
        f"""
INSERT INTO sessions (id, name, cluster_size, domain_name, group_id, user_uuid, access_key,
    occupying_slots, requested_slots, use_host_network, created_at, status, status_history
    {", priority, options, resource_group_id, scaling_group_name, domain_id" if v26 else ""})
VALUES ('{session_id}', {_literal(name)}, {len(kernels)}, {_literal(owner.domain)},
    '{owner.group_id}', '{owner.user_uuid}', {_literal(owner.access_key)}, '{{}}', {slots},
    false, {_literal(at.isoformat())}, 'PENDING', {history}
    {_V26_SESSION.format(domain=_literal(owner.domain)) if v26 else ""});"""
    ]
    rows += [
        f"""
INSERT INTO kernels (id, session_id, session_name, cluster_size, cluster_role, cluster_idx,
    local_rank, cluster_hostname, domain_name, group_id, user_uuid, access_key, occupied_slots,
    requested_slots, occupied_shares, repl_in_port, repl_out_port, stdin_port, stdout_port,
    use_host_network, created_at, status, status_history
    {", scaling_group, resource_group_id" if v26 else ""})
VALUES ('{k.id}', '{session_id}', {_literal(name)}, {len(kernels)},
    {_literal(k.cluster_role)}, {k.cluster_idx}, {k.local_rank},
    {_literal(f"{k.cluster_role}{k.cluster_idx}")}, {_literal(owner.domain)}, '{owner.group_id}',
    '{owner.user_uuid}', {_literal(owner.access_key)}, '{{}}', {slots}, '{{}}', 0, 0, 0, 0,
    false, {_literal(at.isoformat())}, 'PENDING', {history}
    {", 'default', '" + str(_RESOURCE_GROUP) + "'" if v26 else ""});"""
        for k in kernels
    ]
    return "\n".join(rows)


_RESOURCE_GROUP = uuid.UUID("00000000-0000-4000-8000-00000000feed")  # no FK in the subset
_V26_SESSION = (
    ", 10, '{{}}', '" + str(_RESOURCE_GROUP) + "', 'default',"
    " (SELECT id FROM domains WHERE name = {domain})"
)


def transition_sql(
    session_id: uuid.UUID,
    status: str,
    at: datetime,
    *,
    reason: str | None = None,
    result: str | None = None,
    terminated: bool | None = None,
    kernels: bool = True,
) -> str:
    """The UPDATEs the manager makes when a session (and, with ``kernels``, each of its
    kernels) moves to ``status``: the name merged into ``status_history`` with ``at``
    (``sql_json_merge``), ``status_info = reason``, ``terminated_at = at`` when ``terminated``
    (default: TERMINATED or CANCELLED, as 23.09 does; 26.8 leaves it NULL on some CANCELLED
    paths), and ``result`` ('SUCCESS' / 'FAILURE') when given."""
    sets = [
        f"status = {_literal(status)}",
        "status_history = coalesce(status_history, '{}'::jsonb)"
        f" || jsonb_build_object({_literal(status)}, {_literal(at.isoformat())})",
    ]
    if terminated if terminated is not None else status in ("TERMINATED", "CANCELLED"):
        sets.append(f"terminated_at = {_literal(at.isoformat())}")
    if result is not None:
        sets.append(f"result = {_literal(result)}")
    kernel_sets = list(sets)
    if reason is not None:
        sets.append(f"status_info = {_literal(reason)}")
    statements = [f"UPDATE sessions SET {', '.join(sets)} WHERE id = '{session_id}';"]
    if kernels:
        statements.append(
            f"UPDATE kernels SET {', '.join(kernel_sets)} WHERE session_id = '{session_id}';"
        )
    return "\n".join(statements)


_serial = itertools.count(1)


def unique_name(prefix: str) -> str:
    """``prefix`` made unique in this process: a database or role name no other test takes."""
    return f"{prefix}_{next(_serial)}_{uuid.uuid4().hex[:8]}"
