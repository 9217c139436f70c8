"""The identity store on a real redis-server and on a real Redis Cluster (every test on
both): records, lists, the per-replica cache with its TTL and bound, management errors, and
the import file."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from gateway.identity.models import (
    Group,
    Identity,
    IdentityError,
    Keypair,
    UnknownIdentityError,
    User,
)
from gateway.identity.passwords import verify_password
from gateway.identity.store import IdentityStore
from publisher.connection import connect_async
from publisher.keys import Keys
from tests.support.fakes import FakeClock
from tests.support.vector import SECRET

#: not the default: the store must keep to the prefix it is given
PREFIX = "idtest"


@pytest.fixture
def redis_url(topology_url: str) -> str:
    """Every test here runs on a single redis-server and on a Redis Cluster."""
    return topology_url


@pytest.fixture
def keys(async_redis: aredis.Redis) -> Keys:
    """The names of ``PREFIX`` on the test's Redis (``{idtest}:...`` on a cluster)."""
    return Keys.on(async_redis, PREFIX)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(async_redis: aredis.Redis, keys: Keys, clock: FakeClock) -> IdentityStore:
    """Unlike the shared one, cached (on a fake clock): every management call here is checked
    through the cache too."""
    return IdentityStore(async_redis, keys, cache_ttl=5.0, clock=clock)


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[IdentityStore]:
    """Another replica's store (its own cache), on a client that decodes responses."""
    client = connect_async(redis_url, decode_responses=True)
    yield IdentityStore(client, Keys.on(client, PREFIX), cache_ttl=5.0)
    await client.aclose()


async def seed(store: IdentityStore) -> None:
    await store.add_user(User("alice", "user", "default"))
    await store.add_user(User("dora", "admin", "research"))
    await store.add_keypair(Keypair("AKIAALICE", SECRET, "alice"))


@pytest.mark.anyio
async def test_resolve_gives_the_keypair_and_the_identity(store: IdentityStore) -> None:
    await seed(store)
    resolved = await store.resolve("AKIAALICE")
    assert resolved == (
        Keypair("AKIAALICE", SECRET, "alice", True),
        Identity("AKIAALICE", "alice", "user", "default"),
    )
    assert await store.resolve("AKIANOBODY") is None
    assert await store.get_user("nobody") is None


@pytest.mark.anyio
async def test_values_read_the_same_with_decoding_client(
    store: IdentityStore, other: IdentityStore
) -> None:
    await seed(store)
    assert await other.get_keypair("AKIAALICE") == await store.get_keypair("AKIAALICE")
    assert await other.get_user("dora") == User("dora", "admin", "research")
    assert await other.list_groups() == []


@pytest.mark.anyio
async def test_inactive_keypair_still_resolves(store: IdentityStore) -> None:
    await seed(store)
    await store.set_keypair_active("AKIAALICE", False)
    resolved = await store.resolve("AKIAALICE")
    assert resolved is not None and resolved[0].active is False
    await store.set_keypair_active("AKIAALICE", True)
    resolved = await store.resolve("AKIAALICE")
    assert resolved is not None and resolved[0].active is True


@pytest.mark.anyio
async def test_keypair_of_a_vanished_user_does_not_resolve(
    store: IdentityStore, async_redis: aredis.Redis, keys: Keys
) -> None:
    await seed(store)
    await async_redis.delete(keys.user("alice"))
    store.clear_cache()
    assert await store.resolve("AKIAALICE") is None


@pytest.mark.anyio
async def test_deactivation_elsewhere_is_seen_after_cache_ttl(
    store: IdentityStore, other: IdentityStore, clock: FakeClock
) -> None:
    await seed(store)
    assert (await store.get_keypair("AKIAALICE")) is not None
    await other.set_keypair_active("AKIAALICE", False)
    clock.now += 4.9
    cached = await store.get_keypair("AKIAALICE")
    assert cached is not None and cached.active  # within the documented bound
    clock.now += 0.1
    fresh = await store.get_keypair("AKIAALICE")
    assert fresh is not None and not fresh.active


@pytest.mark.anyio
async def test_misses_are_cached_too(
    store: IdentityStore, other: IdentityStore, clock: FakeClock
) -> None:
    await seed(store)
    assert await store.get_keypair("AKIALATE") is None
    assert not await store.group_exists("g1", "default")
    await other.add_keypair(Keypair("AKIALATE", SECRET, "alice"))
    await other.add_group(Group("default", "g1"))
    assert await store.get_keypair("AKIALATE") is None
    assert not await store.group_exists("g1", "default")
    clock.now += 5
    assert await store.get_keypair("AKIALATE") is not None
    assert await store.group_exists("g1", "default")


@pytest.mark.anyio
async def test_own_management_calls_clear_the_cache(store: IdentityStore) -> None:
    await seed(store)
    assert await store.get_keypair("AKIANEW") is None
    await store.add_keypair(Keypair("AKIANEW", SECRET, "alice"))
    assert await store.get_keypair("AKIANEW") is not None
    await store.remove_keypair("AKIANEW")
    assert await store.get_keypair("AKIANEW") is None


@pytest.mark.anyio
async def test_cache_is_bounded_oldest_out_first(
    async_redis: aredis.Redis, keys: Keys, clock: FakeClock
) -> None:
    store = IdentityStore(async_redis, keys, cache_size=2, clock=clock)
    await seed(store)
    await store.add_user(User("bob", "user", "default"))
    for uid in ("alice", "dora", "bob"):
        await store.get_user(uid)
    await async_redis.delete(keys.user("alice"), keys.user("bob"))
    assert await store.get_user("alice") is None  # evicted, so read again
    assert await store.get_user("bob") is not None  # still cached


@pytest.mark.anyio
async def test_zero_ttl_disables_the_cache(async_redis: aredis.Redis, keys: Keys) -> None:
    store = IdentityStore(async_redis, keys, cache_ttl=0)
    await seed(store)
    await store.get_user("alice")
    await async_redis.delete(keys.user("alice"))
    assert await store.get_user("alice") is None


@pytest.mark.anyio
async def test_group_exists_per_domain_and_in_any(store: IdentityStore) -> None:
    for group in (Group("default", "ml"), Group("research", "a*b"), Group("research", "x:y")):
        await store.add_group(group)
    assert await store.group_exists("ml", "default")
    assert not await store.group_exists("ml", "research")
    assert await store.group_exists("ml", None)
    assert await store.group_exists("a*b", None)
    assert not await store.group_exists("a", None)  # glob characters are literal
    assert not await store.group_exists("aXb", None)
    assert await store.group_exists("x:y", None)
    assert not await store.group_exists("y", None)
    assert not await store.group_exists("nope", None)


@pytest.mark.anyio
async def test_lists_are_sorted_and_filtered(store: IdentityStore) -> None:
    await seed(store)
    await store.add_keypair(Keypair("AKIAA", SECRET, "dora", active=False))
    await store.add_group(Group("research", "b"))
    await store.add_group(Group("default", "c"))
    await store.add_group(Group("research", "a"))
    assert [k.access_key for k in await store.list_keypairs()] == ["AKIAA", "AKIAALICE"]
    assert [k.access_key for k in await store.list_keypairs("dora")] == ["AKIAA"]
    assert [u.user_id for u in await store.list_users()] == ["alice", "dora"]
    assert [u.user_id for u in await store.list_users("research")] == ["dora"]
    assert await store.list_groups() == [
        Group("default", "c"),
        Group("research", "a"),
        Group("research", "b"),
    ]
    assert await store.list_groups("default") == [Group("default", "c")]


@pytest.mark.anyio
async def test_stale_index_entries_are_skipped(
    store: IdentityStore, async_redis: aredis.Redis, keys: Keys
) -> None:
    await seed(store)
    await async_redis.sadd(keys.keypairs, "AKIAGHOST")
    await async_redis.hset(keys.keypair("AKIABROKEN"), "user_id", "alice")  # no secret
    await async_redis.sadd(keys.keypairs, "AKIABROKEN")
    await async_redis.hset(keys.user("weird"), mapping={"role": "king", "domain": "d"})
    await async_redis.sadd(keys.users, "weird")
    assert [k.access_key for k in await store.list_keypairs()] == ["AKIAALICE"]
    assert [u.user_id for u in await store.list_users()] == ["alice", "dora"]


@pytest.mark.anyio
async def test_management_conflicts_and_unknowns(store: IdentityStore) -> None:
    await seed(store)
    with pytest.raises(IdentityError, match="keypair 'AKIAALICE' already exists"):
        await store.add_keypair(Keypair("AKIAALICE", SECRET, "alice"))
    await store.add_keypair(Keypair("AKIAALICE", SECRET, "dora"), replace=True)
    with pytest.raises(IdentityError, match="user 'alice' already exists"):
        await store.add_user(User("alice", "user", "default"))
    await store.add_group(Group("default", "g"))
    with pytest.raises(IdentityError, match="group 'g' already exists in domain 'default'"):
        await store.add_group(Group("default", "g"))
    with pytest.raises(UnknownIdentityError, match="user 'ghost' does not exist"):
        await store.add_keypair(Keypair("AKIAX", SECRET, "ghost"))
    with pytest.raises(UnknownIdentityError, match="keypair 'AKIAX' does not exist"):
        await store.remove_keypair("AKIAX")
    with pytest.raises(UnknownIdentityError, match="keypair 'AKIAX' does not exist"):
        await store.set_keypair_active("AKIAX", True)
    with pytest.raises(UnknownIdentityError, match="user 'ghost' does not exist"):
        await store.remove_user("ghost")
    with pytest.raises(UnknownIdentityError, match="group 'h' does not exist"):
        await store.remove_group("h", "default")
    await store.remove_group("g", "default")
    assert not await store.group_exists("g", None)


@pytest.mark.anyio
async def test_remove_user_refuses_while_it_has_keypairs(store: IdentityStore) -> None:
    await seed(store)
    with pytest.raises(IdentityError, match="still has keypairs AKIAALICE"):
        await store.remove_user("alice")
    await store.remove_user("alice", cascade=True)
    assert await store.get_user("alice") is None
    assert await store.get_keypair("AKIAALICE") is None
    assert await store.list_keypairs() == []
    await store.remove_user("dora")
    assert await store.list_users() == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (Keypair("", SECRET, "alice"), "access key must not be empty"),
        (Keypair("AKIA X", SECRET, "alice"), "contains whitespace"),
        (Keypair("AKIA\x00", SECRET, "alice"), "control character"),
        (Keypair("AKIA:1", SECRET, "alice"), "must not contain ':'"),
        (Keypair("AKIAé", SECRET, "alice"), "must be ASCII"),
        (Keypair("A" * 129, SECRET, "alice"), "longer than 128"),
        (Keypair("AKIA1", "short", "alice"), "secret key must be 16-256 characters, not 5"),
        (Keypair("AKIA1", SECRET[:-1] + " ", "alice"), "printable ASCII without whitespace"),
        (Keypair("AKIA1", SECRET, "al\tice"), "user id 'al\\tice' contains whitespace"),
        (User("bob", "boss", "default"), "role 'boss' is not one of"),  # type: ignore[arg-type]
        (User("bob", "user", "a:b"), "domain 'a:b' must not contain ':'"),
        (User("bob\u200b", "user", "d"), "control character"),
        (User("bob", "user", ""), "domain must not be empty"),
        (Group("default", " "), "group name ' ' contains whitespace"),
    ],
)
@pytest.mark.anyio
async def test_invalid_identities_are_refused_with_the_value(
    store: IdentityStore, item: Any, message: str
) -> None:
    await store.add_user(User("alice", "user", "default"))
    with pytest.raises(IdentityError, match=re.escape(message)) as info:
        if isinstance(item, Keypair):
            await store.add_keypair(item)
        elif isinstance(item, User):
            await store.add_user(item)
        else:
            await store.add_group(item)
    assert SECRET not in str(info.value)


DOC: dict[str, Any] = {
    "users": [
        {"user_id": "alice", "role": "user", "domain": "default", "password": "pw-of-the-user-a"},
        {"user_id": "root", "role": "superadmin", "domain": "default"},
    ],
    "keypairs": [
        {"access_key": "AKIAALICE", "secret_key": SECRET, "user_id": "alice"},
        {"access_key": "AKIAROOT", "secret_key": SECRET, "user_id": "root", "active": False},
    ],
    "groups": [{"domain": "default", "name": "ml"}],
}


@pytest.mark.anyio
async def test_import_round_trip_and_idempotent(
    store: IdentityStore, async_redis: aredis.Redis
) -> None:
    summary = await store.import_data(DOC)
    assert (summary.users, summary.keypairs, summary.groups) == (2, 2, 1)
    first = sorted(await async_redis.keys("*"))
    await store.import_data(DOC)
    assert sorted(await async_redis.keys("*")) == first
    assert await store.list_keypairs() == [
        Keypair("AKIAALICE", SECRET, "alice", True),
        Keypair("AKIAROOT", SECRET, "root", False),
    ]
    alice = await store.get_user("alice")
    assert alice is not None and verify_password("pw-of-the-user-a", alice.password_hash)
    assert await store.list_groups() == [Group("default", "ml")]
    # Without a password in the file, a stored password is kept.
    await store.import_data({"users": [{"user_id": "alice", "role": "admin", "domain": "default"}]})
    alice = await store.get_user("alice")
    assert alice is not None and alice.role == "admin"
    assert verify_password("pw-of-the-user-a", alice.password_hash)


@pytest.mark.anyio
async def test_import_keypair_may_name_a_stored_user(store: IdentityStore) -> None:
    await store.add_user(User("bob", "user", "default"))
    doc = {"keypairs": [{"access_key": "AKIABOB", "secret_key": SECRET, "user_id": "bob"}]}
    assert (await store.import_data(doc)).keypairs == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], r"import: Expected `object`, got `array`"),
        ({"users": [{"user_id": "a", "role": "boss", "domain": "d"}]}, r"\$\.users\[0\]\.role"),
        ({"users": [{"user_id": "a", "role": "user"}]}, r"missing required field `domain`"),
        ({"userz": []}, r"unknown field `userz`"),
        ({"groups": [{"domain": "d", "name": "g", "x": 1}]}, r"\$\.groups\[0\]"),
        (
            {"users": [{"user_id": "a b", "role": "user", "domain": "d"}]},
            r"users\[0\] \('a b'\): user id 'a b' contains whitespace",
        ),
        (
            {"groups": [{"domain": "d", "name": "g"}, {"domain": "d", "name": "g"}]},
            r"groups\[1\] \('d':'g'\): appears more than once",
        ),
        (
            {"keypairs": [{"access_key": "AKIAX", "secret_key": SECRET, "user_id": "ghost"}]},
            r"keypair 'AKIAX': user 'ghost' is neither in the file nor stored",
        ),
        (
            {"keypairs": [{"access_key": "AKIAX", "secret_key": "x", "user_id": "ghost"}]},
            r"keypairs\[0\] \('AKIAX'\): secret key must be",
        ),
        (
            {
                "users": [
                    {
                        "user_id": "a",
                        "role": "user",
                        "domain": "d",
                        "password": "p",
                        "password_hash": "h",
                    }
                ]
            },
            r"users\[0\] \('a'\): give password or password_hash, not both",
        ),
    ],
)
@pytest.mark.anyio
async def test_import_rejects_bad_entries_and_writes_nothing(
    store: IdentityStore, async_redis: aredis.Redis, doc: Any, message: str
) -> None:
    # A valid entry before the bad one must not be written either.
    if isinstance(doc, dict) and "users" not in doc and "userz" not in doc:
        doc = {**doc, "users": [{"user_id": "first", "role": "user", "domain": "d"}]}
    with pytest.raises(IdentityError, match=message):
        await store.import_data(doc)
    assert await async_redis.keys("*") == []
