"""Backend.AI's schema subsets (tests/fixtures/backendai) in a real PostgreSQL: the rows the
manager writes for a user, a keypair, a project and a two-kernel session, read back with the
bridge's, the reconciler's and the identity sync's queries as their read-only roles, once
with the 23.09 schema and once with the 26.8 one. And a PostgreSQL restart under a pool."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from devtools.postgres import (
    SCHEMAS,
    BackendAIDatabase,
    Kernel,
    Owner,
    PostgresServer,
    owner_sql,
    session_sql,
    transition_sql,
)

OWNER = Owner(
    user_uuid=uuid.UUID("6f1c7a52-0c0e-4c59-9d1b-1b0a5e0d7a01"),
    email="alice@example.com",
    access_key="AKIAKEVALICE00000001",
    secret_key="kevalicesecret0000000000000000000000000a",
    group_id=uuid.UUID("0b3f2c1d-7a8e-4f60-8c2b-5d9e1f3a4b02"),
    group_name="research",
)
SESSION = uuid.UUID("5e551011-0000-4000-8000-000000000001")
# The main kernel has an id of its own: at 23.09 and 26.8 the manager never reuses the session
# id for it (registry.py 23.09.0 L1035-1036; scheduler/creators.py 26.8.1 L10-14).
MAIN = Kernel(uuid.UUID("4e4e0001-0000-4000-8000-0000000000aa"), "main", 1, 0)
SUB = Kernel(uuid.UUID("4e4e0002-0000-4000-8000-0000000000bb"), "sub", 1, 1)
CANCELLED = uuid.UUID("5e551011-0000-4000-8000-000000000002")
AT = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)

# The bridge's per-event reads (BACKENDAI.md section 1.4)
KERNEL_BY_ID = (
    "SELECT session_id, session_name, access_key, domain_name, group_id, user_uuid,"
    " cluster_role, cluster_idx FROM kernels WHERE id = $1"
)
SESSION_BY_ID = (
    "SELECT name, access_key, domain_name, group_id, user_uuid FROM sessions WHERE id = $1"
)
MAIN_KERNEL_OF = "SELECT id FROM kernels WHERE session_id = $1 AND cluster_role = 'main'"
GROUPS = "SELECT id, name, domain_name FROM groups"
# The reconciler's read after an outage (section 1.5)
ENDED_SINCE = (
    "SELECT id, status, status_info, status_history, result, terminated_at FROM sessions"
    " WHERE status IN ('TERMINATED', 'CANCELLED') AND greatest(created_at, terminated_at) > $1"
    " ORDER BY id"
)

READONLY_DENIED = (asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError)


@pytest.fixture
def seeded(backendai_db: BackendAIDatabase) -> BackendAIDatabase:
    """The owner and a PENDING two-kernel session, written the way the manager writes them."""
    backendai_db.execute(owner_sql(backendai_db.version, OWNER))
    backendai_db.execute(
        session_sql(backendai_db.version, OWNER, SESSION, "train-1", [MAIN, SUB], AT)
    )
    return backendai_db


@pytest.fixture
def role_name() -> str:
    """Roles are cluster-wide: a name of the test's own (the database fixture drops it)."""
    return f"kev_ro_{uuid.uuid4().hex[:10]}"


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=10, command_timeout=10)


def test_the_statuses_are_stored_as_each_generation_declares(
    backendai_db: BackendAIDatabase,
) -> None:
    """23.09: PG enums named after the classes (names for the statuses and results, values for
    the user's); 26.8: varchar(64) statuses and results, the user's enums unchanged."""
    columns = backendai_db.execute(
        "SELECT table_name || '.' || column_name, data_type, udt_name,"
        " coalesce(character_maximum_length, 0) FROM information_schema.columns"
        " WHERE (table_name, column_name) IN (('sessions', 'status'), ('kernels', 'status'),"
        " ('sessions', 'result'), ('kernels', 'result'), ('users', 'status'), ('users', 'role'))"
        " ORDER BY 1"
    ).splitlines()
    got = {line.split("|")[0]: tuple(line.split("|")[1:]) for line in columns}
    enum = "USER-DEFINED"
    if backendai_db.version == "23.09":
        assert got == {
            "kernels.result": (enum, "sessionresult", "0"),
            "kernels.status": (enum, "kernelstatus", "0"),
            "sessions.result": (enum, "sessionresult", "0"),
            "sessions.status": (enum, "sessionstatus", "0"),
            "users.role": (enum, "userrole", "0"),
            "users.status": (enum, "userstatus", "0"),
        }
        labels = backendai_db.execute(
            "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum"
            " WHERE enumtypid = 'sessionstatus'::regtype"
        ).strip()
        assert labels == (
            "PENDING,SCHEDULED,PULLING,PREPARING,RUNNING,RESTARTING,RUNNING_DEGRADED,"
            "TERMINATING,TERMINATED,ERROR,CANCELLED"
        )
    else:
        varchar = ("character varying", "varchar", "64")
        assert got == {
            "kernels.result": varchar,
            "kernels.status": varchar,
            "sessions.result": varchar,
            "sessions.status": varchar,
            "users.role": (enum, "userrole", "0"),
            "users.status": (enum, "userstatus", "0"),
        }
    statuses = backendai_db.execute("SELECT enum_range(NULL::userstatus)").strip()
    assert statuses == "{active,inactive,deleted,before-verification}"


@pytest.mark.anyio
async def test_the_bridge_reads_owner_and_place_of_each_kernel(
    seeded: BackendAIDatabase, role_name: str
) -> None:
    dsn = seeded.create_readonly_role(role_name, "bridge-pw", ("bridge",))
    conn = await _connect(dsn)
    try:
        owner = {
            "session_id": SESSION,
            "session_name": "train-1",
            "access_key": OWNER.access_key,
            "domain_name": "default",
            "group_id": OWNER.group_id,
            "user_uuid": OWNER.user_uuid,
        }
        main = await conn.fetchrow(KERNEL_BY_ID, MAIN.id)
        assert main is not None
        assert dict(main) == {**owner, "cluster_role": "main", "cluster_idx": 1}
        sub = await conn.fetchrow(KERNEL_BY_ID, SUB.id)
        assert sub is not None
        assert dict(sub) == {**owner, "cluster_role": "sub", "cluster_idx": 1}

        session = await conn.fetchrow(SESSION_BY_ID, SESSION)
        assert session is not None
        assert dict(session) == {
            "name": "train-1",
            "access_key": OWNER.access_key,
            "domain_name": "default",
            "group_id": OWNER.group_id,
            "user_uuid": OWNER.user_uuid,
        }
        assert await conn.fetchval(MAIN_KERNEL_OF, SESSION) == MAIN.id
        # 23.09's own SSE handler looks the session up as `kernels.id = <session id>`
        # (manager/api/events.py 23.09.0 L302-305): that finds nothing
        assert await conn.fetchrow(KERNEL_BY_ID, SESSION) is None

        groups = [tuple(row) for row in await conn.fetch(GROUPS)]
        assert groups == [(OWNER.group_id, "research", "default")]
        assert await conn.fetchrow(KERNEL_BY_ID, uuid.uuid4()) is None
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_the_reconciler_reads_how_sessions_ended(
    seeded: BackendAIDatabase, role_name: str
) -> None:
    """A session that ran and was terminated by its user, and one cancelled while pending:
    the status, the reason, the per-status timestamps and the end time the reconciler needs."""
    steps = [("SCHEDULED", None), ("PREPARING", None), ("RUNNING", None)]
    steps += [("TERMINATING", "user-requested"), ("TERMINATED", "user-requested")]
    for n, (status, reason) in enumerate(steps, start=1):
        seeded.execute(transition_sql(SESSION, status, AT + timedelta(seconds=n), reason=reason))
    seeded.execute(
        session_sql(seeded.version, OWNER, CANCELLED, "late", [Kernel(uuid.uuid4())], AT)
    )
    seeded.execute(
        transition_sql(CANCELLED, "CANCELLED", AT + timedelta(seconds=9), reason="pending-timeout")
    )
    dsn = seeded.create_readonly_role(role_name, "reconcile-pw", ("bridge", "reconcile"))
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(ENDED_SINCE, AT)
        ended = {row["id"]: row for row in rows}
        assert set(ended) == {SESSION, CANCELLED}
        done = ended[SESSION]
        assert (done["status"], done["status_info"], done["result"]) == (
            "TERMINATED",
            "user-requested",
            "UNDEFINED",  # only batch sessions get SUCCESS / FAILURE
        )
        history = json.loads(done["status_history"])
        # a JSON object keyed by status name (jsonb keeps no insertion order)
        assert set(history) == {
            "PENDING",
            "SCHEDULED",
            "PREPARING",
            "RUNNING",
            "TERMINATING",
            "TERMINATED",
        }
        assert datetime.fromisoformat(history["TERMINATED"]) == done["terminated_at"]
        assert done["terminated_at"] == AT + timedelta(seconds=5)
        gone = ended[CANCELLED]
        assert (gone["status"], gone["status_info"]) == ("CANCELLED", "pending-timeout")
        assert set(json.loads(gone["status_history"])) == {"PENDING", "CANCELLED"}

        kernels = await conn.fetch(
            "SELECT status, status_history, terminated_at, result FROM kernels"
            " WHERE session_id = $1",
            SESSION,
        )
        assert [k["status"] for k in kernels] == ["TERMINATED", "TERMINATED"]
        assert all(k["terminated_at"] == AT + timedelta(seconds=5) for k in kernels)
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_an_unknown_status_is_refused_only_by_the_23_09_enum(
    seeded: BackendAIDatabase,
) -> None:
    """26.8 added statuses (PREPARED, CREATING, ...) that 23.09's enum does not have: a bridge
    must not assume the set is closed."""
    conn = await _connect(seeded.dsn)
    try:
        update = "UPDATE sessions SET status = $1 WHERE id = $2"
        if seeded.version == "23.09":
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                await conn.execute(update, "PREPARED", SESSION)
        else:
            await conn.execute(update, "PREPARED", SESSION)
            assert await conn.fetchval("SELECT status FROM sessions WHERE id = $1", SESSION) == (
                "PREPARED"
            )
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_the_bridge_role_reads_no_secret_and_writes_nothing(
    seeded: BackendAIDatabase, role_name: str
) -> None:
    dsn = seeded.create_readonly_role(role_name, "bridge-pw", ("bridge",))
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _connect(dsn.replace("bridge-pw", "wrong-pw"))
    conn = await _connect(dsn)
    try:
        for denied in (
            "SELECT secret_key FROM keypairs",
            "SELECT access_key FROM keypairs",
            "SELECT * FROM kernels",
            "SELECT status FROM sessions",  # the reconciler's columns are a scope of their own
            "SELECT email FROM users",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(denied)
        await _assert_writes_refused(conn)
    finally:
        await conn.close()
    untouched = seeded.execute("SELECT count(*), min(session_name) FROM kernels").strip()
    assert untouched == "2|train-1"


@pytest.mark.anyio
async def test_the_identity_role_reads_its_columns_and_writes_nothing(
    seeded: BackendAIDatabase, role_name: str
) -> None:
    dsn = seeded.create_readonly_role(role_name, "identity-pw", ("identity",))
    conn = await _connect(dsn)
    try:
        keypair = await conn.fetchrow(
            'SELECT access_key, secret_key, is_active, is_admin, "user" FROM keypairs'
        )
        assert keypair is not None
        assert tuple(keypair) == (OWNER.access_key, OWNER.secret_key, True, False, OWNER.user_uuid)
        user = await conn.fetchrow("SELECT uuid, email, role, status, domain_name FROM users")
        assert user is not None
        assert tuple(user) == (OWNER.user_uuid, OWNER.email, "user", "active", "default")
        group = await conn.fetchrow("SELECT id, name, domain_name, is_active FROM groups")
        assert group is not None
        assert tuple(group) == (OWNER.group_id, "research", "default", True)
        member = await conn.fetchrow("SELECT user_id, group_id FROM association_groups_users")
        assert member is not None
        assert tuple(member) == (OWNER.user_uuid, OWNER.group_id)
        domains = await conn.fetch("SELECT name, is_active FROM domains")
        assert [tuple(row) for row in domains] == [("default", True)]
        for denied in (
            "SELECT session_id FROM kernels",
            "SELECT bootstrap_script FROM keypairs",
            "SELECT resource_policy FROM users",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(denied)
        await _assert_writes_refused(conn)
    finally:
        await conn.close()


async def _assert_writes_refused(conn: asyncpg.Connection) -> None:
    """Every write fails: first because transactions start read-only, then, with that turned
    off (any role may), because the role holds no privilege but SELECT on some columns."""
    writes = (
        "UPDATE groups SET name = 'x'",
        "DELETE FROM association_groups_users",
        "INSERT INTO domains (name, is_active, allowed_vfolder_hosts,"
        " allowed_docker_registries, dotfiles) VALUES ('x', true, '{}', '{}', '')",
        "TRUNCATE kernels CASCADE",
        "CREATE TABLE public.mine (x int)",
    )
    for write in writes:
        with pytest.raises(READONLY_DENIED):
            await conn.execute(write)
    await conn.execute("SET default_transaction_read_only = off")
    for write in writes:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(write)


@pytest.mark.anyio
async def test_a_restart_keeps_the_data_and_the_pool_reconnects(
    private_postgres: PostgresServer,
) -> None:
    server = private_postgres
    server.create_database("kev_restart", SCHEMAS["26.8"])
    server.execute(owner_sql("26.8", OWNER), "kev_restart")
    server.execute(session_sql("26.8", OWNER, SESSION, "train-1", [MAIN, SUB], AT), "kev_restart")
    port, pid = server.port, server.proc.pid if server.proc else None
    pool = await asyncpg.create_pool(
        server.dsn_for("kev_restart"), min_size=1, max_size=2, timeout=10, command_timeout=10
    )
    try:
        count = "SELECT count(*) FROM kernels WHERE session_id = $1"
        assert await pool.fetchval(count, SESSION) == 2

        server.stop()  # SIGINT: a fast shutdown that disconnects the pooled connection
        assert server.proc is None
        with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresError, OSError)):
            await pool.fetchval("SELECT 1")

        server.start()
        assert server.port == port
        assert server.proc is not None and server.proc.pid != pid
        with anyio.fail_after(15):
            while True:
                try:
                    assert await pool.fetchval(count, SESSION) == 2
                    break
                except (asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
                    await anyio.sleep(0.1)
    finally:
        await pool.close()
