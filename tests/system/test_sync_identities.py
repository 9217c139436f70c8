"""The identity sync against a real PostgreSQL holding Backend.AI's schema (23.09 and 26.8),
read as the column-limited "identity" role, and a real Redis under the identity store: rows
written the way the manager writes them, changed with SQL ``UPDATE``/``DELETE``, show in the
store after the next :func:`gateway.sync.sync_once`; what an operator imported is left alone;
a mass removal is refused; a database that does not answer changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest
import redis.asyncio as aredis

from devtools.postgres import (
    SCHEMAS,
    BackendAIDatabase,
    Owner,
    PostgresServer,
    SchemaVersion,
    Scope,
    owner_sql,
)
from gateway.identity.models import Group, Identity, Keypair, User
from gateway.identity.store import IdentityStore
from gateway.sync import (
    SourceUnavailable,
    SyncKeys,
    SyncRefused,
    SyncReport,
    read_managed,
    read_state,
    sync_once,
)

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

RESEARCH = uuid.UUID("0b3f2c1d-7a8e-4f60-8c2b-5d9e1f3a4b02")
LAB = uuid.UUID("0b3f2c1d-7a8e-4f60-8c2b-5d9e1f3a4b03")
#: the read-only role's grants: exactly the columns the sync reads
IDENTITY: tuple[Scope, ...] = ("identity",)


def _owner(n: int, name: str, *, role: str = "user", domain: str = "default") -> Owner:
    group = ("lab", LAB) if domain == "other" else ("research", RESEARCH)
    return Owner(
        user_uuid=uuid.UUID(f"00000000-0000-4000-8000-{n:012d}"),
        email=f"{name}@example.com",
        access_key=f"AKSYNC{n:014d}",
        secret_key=name.ljust(40, "0"),
        group_id=group[1],
        group_name=group[0],
        domain=domain,
        role=role,
    )


ALICE, BOB, CAROL, DAVE, ERIN, FRANK = (
    _owner(1, "alice"),
    _owner(2, "bob"),
    _owner(3, "carol"),
    _owner(4, "dave"),
    _owner(5, "erin", role="admin"),
    _owner(6, "frank", domain="other"),
)
OWNERS = (ALICE, BOB, CAROL, DAVE, ERIN, FRANK)


def _seed(db: BackendAIDatabase, owners: tuple[Owner, ...] = OWNERS) -> None:
    db.execute("".join(owner_sql(db.version, owner) for owner in owners))


async def _pool(dsn: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=2, timeout=10, command_timeout=10)


@pytest.fixture
async def pool(backendai_db: BackendAIDatabase) -> AsyncIterator[asyncpg.Pool]:
    """The seeded database, read as the read-only "identity" role."""
    _seed(backendai_db)
    dsn = backendai_db.create_readonly_role(
        f"kev_sync_{uuid.uuid4().hex[:10]}", "sync-pw", IDENTITY
    )
    pool = await _pool(dsn)
    yield pool
    await pool.close()


async def _sync(
    pool: asyncpg.Pool, store: IdentityStore, redis: aredis.Redis, *, force: bool = False
) -> SyncReport:
    with anyio.fail_after(20):
        return await sync_once(
            pool, store, redis, store.keys.prefix, max_removal_share=0.5, force=force
        )


async def test_a_keypair_only_in_postgresql_resolves_after_one_sync(
    pool: asyncpg.Pool, store: IdentityStore, async_redis: aredis.Redis
) -> None:
    assert await store.resolve(ALICE.access_key) is None
    report = await sync_once(pool, store, async_redis, store.keys.prefix, max_removal_share=0.5)
    assert (report.added, report.updated, report.deactivated, report.removed) == (14, 0, 0, 0)
    assert report.keypairs == 6 and report.skipped == ()

    resolved = await store.resolve(ALICE.access_key)
    assert resolved is not None
    keypair, identity = resolved
    assert keypair == Keypair(ALICE.access_key, ALICE.secret_key, str(ALICE.user_uuid), True)
    assert identity == Identity(ALICE.access_key, str(ALICE.user_uuid), "user", "default")
    assert (await store.get_user(str(ERIN.user_uuid))) == User(
        str(ERIN.user_uuid), "admin", "default"
    )
    assert await store.group_exists("research", "default")
    assert await store.group_exists("lab", "other")

    keys = SyncKeys(store.keys.prefix)
    assert keys.keypairs == "kev:sync:keypairs"
    managed = await read_managed(async_redis, store.keys.prefix)
    assert managed.keypairs == {o.access_key for o in OWNERS}
    assert managed.users == {str(o.user_uuid) for o in OWNERS}
    assert managed.groups == {Group("default", "research"), Group("other", "lab")}
    assert (await async_redis.hgetall(keys.last))[b"keypairs"] == b"6"

    # nothing changed: nothing written, no identity change published
    generation = await async_redis.get(store.keys.identity_generation)
    again = await sync_once(pool, store, async_redis, store.keys.prefix, max_removal_share=0.5)
    assert (again.added, again.updated, again.deactivated, again.removed) == (0, 0, 0, 0)
    assert await async_redis.get(store.keys.identity_generation) == generation


async def test_each_change_in_backend_ai_shows_after_the_next_sync(
    backendai_db: BackendAIDatabase,
    pool: asyncpg.Pool,
    store: IdentityStore,
    async_redis: aredis.Redis,
) -> None:
    await _sync(pool, store, async_redis)

    async def identity(owner: Owner) -> tuple[Keypair, Identity] | None:
        return await store.resolve(owner.access_key)

    # deactivate the key: it still resolves (the gateway says "inactive", not "unknown")
    backendai_db.execute(
        f"UPDATE keypairs SET is_active = false WHERE access_key = '{ALICE.access_key}'"
    )
    report = await _sync(pool, store, async_redis)
    assert report.deactivated == 1
    got = await identity(ALICE)
    assert got is not None and got[0].active is False

    # the user's status: inactive, then deleted (Backend.AI's soft delete)
    for owner, status in ((BOB, "inactive"), (CAROL, "deleted")):
        backendai_db.execute(
            f"UPDATE users SET status = '{status}' WHERE uuid = '{owner.user_uuid}'"
        )
        await _sync(pool, store, async_redis)
        got = await identity(owner)
        assert got is not None and got[0].active is False, status

    # demote
    backendai_db.execute(f"UPDATE users SET role = 'user' WHERE uuid = '{ERIN.user_uuid}'")
    report = await _sync(pool, store, async_redis)
    assert report.updated == 1
    got = await identity(ERIN)
    assert got is not None and got[1].role == "user" and got[0].active

    # move to another domain
    backendai_db.execute(f"UPDATE users SET domain_name = 'other' WHERE uuid = '{DAVE.user_uuid}'")
    await _sync(pool, store, async_redis)
    got = await identity(DAVE)
    assert got is not None and got[1].domain == "other" and got[0].active

    # rotate the secret
    rotated = "rotated".ljust(40, "1")
    backendai_db.execute(
        f"UPDATE keypairs SET secret_key = '{rotated}' WHERE access_key = '{FRANK.access_key}'"
    )
    await _sync(pool, store, async_redis)
    got = await identity(FRANK)
    assert got is not None and got[0].secret_key == rotated

    # a project deactivated
    backendai_db.execute(f"UPDATE groups SET is_active = false WHERE id = '{RESEARCH}'")
    await _sync(pool, store, async_redis)
    assert not await store.group_exists("research", "default")

    # delete the user (a hard purge: memberships, keypairs, then the row)
    uid = ERIN.user_uuid
    backendai_db.execute(
        f"DELETE FROM association_groups_users WHERE user_id = '{uid}';"
        f"DELETE FROM keypairs WHERE \"user\" = '{uid}';"
        f"DELETE FROM users WHERE uuid = '{uid}';"
    )
    report = await _sync(pool, store, async_redis)
    assert report.removed == 2  # the keypair and the user
    assert await store.get_keypair(ERIN.access_key) is None
    assert await store.get_user(str(uid)) is None
    assert str(uid) not in (await read_managed(async_redis, store.keys.prefix)).users


async def test_an_identity_imported_by_hand_is_left_alone(
    backendai_db: BackendAIDatabase,
    pool: asyncpg.Pool,
    store: IdentityStore,
    async_redis: aredis.Redis,
) -> None:
    operator = User("ops-robot", "monitor", "default", "a-password-hash")
    op_key = Keypair("OPSKEY", "ops-secret-0123456789", "ops-robot", True)
    await store.add_user(operator)
    await store.add_keypair(op_key)
    await store.add_group(Group("ops", "oncall"))
    # a copy of a Backend.AI user, imported by hand with a gateway password: it becomes the
    # syncer's, keeps its password, and follows Backend.AI
    await store.add_user(User(str(ALICE.user_uuid), "superadmin", "default", "alice-hash"))

    await _sync(pool, store, async_redis)
    backendai_db.execute(f"DELETE FROM keypairs WHERE access_key = '{BOB.access_key}'")
    await _sync(pool, store, async_redis)

    kept = await store.get_user("ops-robot")
    assert kept == operator and kept.password_hash == "a-password-hash"
    assert await store.get_keypair("OPSKEY") == op_key
    assert await store.group_exists("oncall", "ops")
    alice = await store.get_user(str(ALICE.user_uuid))
    assert alice is not None and alice.role == "user" and alice.password_hash == "alice-hash"
    assert await store.get_keypair(BOB.access_key) is None
    managed = await read_managed(async_redis, store.keys.prefix)
    assert "OPSKEY" not in managed.keypairs and "ops-robot" not in managed.users
    assert Group("ops", "oncall") not in managed.groups


async def test_a_snapshot_with_most_keypairs_missing_is_refused_until_forced(
    backendai_db: BackendAIDatabase,
    pool: asyncpg.Pool,
    store: IdentityStore,
    async_redis: aredis.Redis,
) -> None:
    await _sync(pool, store, async_redis)
    before = await read_state(store)
    generation = await async_redis.get(store.keys.identity_generation)

    backendai_db.execute(f"DELETE FROM keypairs WHERE access_key <> '{ALICE.access_key}'")
    refused = r"remove 5 and deactivate 0 keypairs and change .* of 0 more, 83% of the 6"
    with pytest.raises(SyncRefused, match=refused):
        await _sync(pool, store, async_redis)
    assert await read_state(store) == before
    assert await async_redis.get(store.keys.identity_generation) == generation

    report = await _sync(pool, store, async_redis, force=True)
    assert report.forced is True
    state = await read_state(store)
    assert set(state.keypairs) == {ALICE.access_key}
    assert len(state.users) == 6  # the users are still in Backend.AI


@pytest.mark.parametrize("version", list(SCHEMAS))
async def test_a_stopped_postgresql_changes_nothing(
    private_postgres: PostgresServer,
    store: IdentityStore,
    async_redis: aredis.Redis,
    version: SchemaVersion,
) -> None:
    server = private_postgres
    server.create_database("backend", SCHEMAS[version])
    db = BackendAIDatabase(server, version, "backend")
    _seed(db)
    pool = await _pool(db.create_readonly_role("kev_sync_down", "sync-pw", IDENTITY))
    try:
        await _sync(pool, store, async_redis)
        before = await read_state(store)
        managed = await read_managed(async_redis, store.keys.prefix)

        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(SourceUnavailable, match=r"backend\.ai's database could not be read"):
            await _sync(pool, store, async_redis)
        assert await read_state(store) == before
        assert await read_managed(async_redis, store.keys.prefix) == managed

        await anyio.to_thread.run_sync(server.start)
        db.execute(f"UPDATE keypairs SET is_active = false WHERE access_key = '{ALICE.access_key}'")
        with anyio.fail_after(15):
            while True:
                try:
                    await _sync(pool, store, async_redis)
                    break
                except SourceUnavailable:
                    await anyio.sleep(0.1)
        got = await store.get_keypair(ALICE.access_key)
        assert got is not None and got.active is False
    finally:
        await pool.close()
