"""Who may call the gateway: keypairs, users and groups, stored in Redis and cached briefly.

Redis layout (names from :class:`publisher.keys.Keys`, all values strings):

* ``keypair(ak)`` hash ``access_key secret_key user_id active(1|0)``; set ``keypairs`` lists them
* ``user(uid)`` hash ``user_id role domain [password_hash]``; set ``users`` lists them
* ``group(domain, name)`` hash ``domain name``; set ``groups`` holds ``<domain>:<name>``

Every replica caches reads (hits and misses) for ``cache_ttl`` seconds. Every write also
publishes what it changed (:mod:`.changes`, in the write's own transaction), and each replica
drops those entries from its cache when the message comes (:meth:`IdentityStore.forget`), so
a change is seen everywhere at once; ``cache_ttl`` bounds it only when a message is lost.

A store that watches its presence (the gateway's) tells "Redis lost its data" apart from "this
key is unknown": a lookup that finds nothing checks the generation key, and once the store was
seen present a store found empty is ``lost`` (:meth:`IdentityStore.presence`): lookups raise
:class:`IdentityStoreLost` (503) instead of answering "unknown", so no caller is refused and
no open stream is revoked for data Redis merely forgot. Re-importing ends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import msgspec
import redis.asyncio as aredis

from gateway.errors import Unavailable
from publisher.keys import Keys

from .cache import MISS, TTLCache
from .changes import Change, generation_key, make_change, queue_change
from .models import (
    ROLES,
    Group,
    Identity,
    IdentityError,
    ImportDocument,
    ImportSummary,
    Keypair,
    Role,
    UnknownIdentityError,
    User,
    check_group,
    check_keypair,
    check_user,
)
from .passwords import WeakPasswordError, check_password, hash_password

__all__ = ["IdentityStore", "IdentityStoreLost", "Presence"]

logger = logging.getLogger(__name__)

#: seconds a lookup that found nothing trusts the last presence check (see raise_if_lost)
PRESENCE_EVERY = 1.0

# -- the store ----------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _glob_escape(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


#: ``unknown``: not looked yet; ``ok``: present; ``empty``: never seen present by this process
#: (a new deployment, or one that lost its data before this process started); ``lost``: seen
#: present, now gone: Redis lost its data
Presence = Literal["unknown", "ok", "empty", "lost"]


class IdentityStoreLost(Unavailable):
    """The identity store was present and is gone (Redis lost its data): nothing can be
    decided about anyone until it is re-imported (503, ``Retry-After``)."""

    def __init__(self) -> None:
        super().__init__(
            "Identity store unavailable",
            "the gateway's identity data is gone from Redis; an operator must re-import it",
            retry_after=5,
        )


async def _present(pipe: Any, key: str) -> bool:
    """Whether ``key`` exists, asked at once on a pipeline in WATCH mode. TYPE, not EXISTS:
    redis-py 8.2's cluster pipeline splits EXISTS (a multi-key command) by slot and returns
    the pipeline itself when awaited, so on a cluster every key looked present (``gateway
    user add`` refused every new user)."""
    kind = await pipe.type(key)
    return _text(kind) != "none"


class IdentityStore:
    """Reads (cached) and management (uncached, clears the local cache) of the identity data."""

    def __init__(
        self,
        redis: aredis.Redis,
        keys: Keys,
        *,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        watch_presence: bool = False,
    ) -> None:
        """``watch_presence``: check, on every lookup that finds nothing, whether the store
        itself is gone (see :meth:`presence`); the gateway's store does, the admin CLI's not."""
        self._redis = redis
        self._keys = keys
        self._watch = watch_presence
        self._presence_at = float("-inf")
        #: see :meth:`presence`
        self.state: Presence = "unknown"
        #: the generation last seen (None: no generation key)
        self.generation: int | None = None
        self._keypairs: TTLCache[str, Keypair] = TTLCache(cache_ttl, cache_size, clock)
        self._users: TTLCache[str, User] = TTLCache(cache_ttl, cache_size, clock)
        self._groups: TTLCache[tuple[str | None, str], bool] = TTLCache(
            cache_ttl, cache_size, clock
        )

    @property
    def redis(self) -> aredis.Redis:
        """The client the store reads and writes with (admin commands share it)."""
        return self._redis

    @property
    def keys(self) -> Keys:
        return self._keys

    def clear_cache(self) -> None:
        self._keypairs.clear()
        self._users.clear()
        self._groups.clear()

    def forget(self, change: Change) -> None:
        """Drop what ``change`` names from this replica's cache (all of it for ``all``)."""
        if change.all:
            self.clear_cache()
            return
        for access_key in change.keys:
            self._keypairs.discard(access_key)
        for user_id in change.users:
            self._users.discard(user_id)
        if change.groups:
            self._groups.clear()  # keyed by (domain or None, name): cheaper to drop them all

    async def presence(self) -> Presence:
        """Whether the identity store is there: the generation key (or, for data written
        before it existed, the user or keypair set) exists. Updates :attr:`state` and logs
        every transition; ``lost`` only after this store has seen it ``ok``."""
        gen_key = generation_key(self._keys)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(gen_key)
            pipe.exists(self._keys.users, self._keys.keypairs)
            raw, sets = await pipe.execute()
        before = self.state
        if raw is not None or sets:
            self.generation = int(raw) if raw is not None else None
            self.state = "ok"
            if before == "lost":
                logger.warning(
                    "identity store is back (generation %s): open streams are re-checked",
                    self.generation,
                )
        elif before in ("ok", "lost"):
            self.state = "lost"
            if before == "ok":
                logger.error(
                    "identity store LOST: Redis holds no identity data any more (restarted "
                    "without persistence, replaced or flushed). Open streams keep their "
                    "rights, new requests get 503 until an operator re-imports the "
                    "identities (`gateway import`)"
                )
        else:
            self.state = "empty"
        return self.state

    def _seen(self) -> None:
        if self.state in ("unknown", "empty"):
            self.state = "ok"  # found an entry: the store is there (a lost one waits for presence)

    async def raise_if_lost(self) -> None:
        """A lookup found nothing: raise :class:`IdentityStoreLost` if the store is gone.
        Presence is read again at most every :data:`PRESENCE_EVERY` seconds, so a miss
        costs what a hit costs (an unknown access key is not told by its answer's time)."""
        if not self._watch:
            return
        now = time.monotonic()
        if self.state != "ok" or now - self._presence_at >= PRESENCE_EVERY:
            self._presence_at = now
            await self.presence()
        if self.state == "lost":
            raise IdentityStoreLost()

    # reads -------------------------------------------------------------------------------------

    async def get_keypair(self, access_key: str) -> Keypair | None:
        cached = self._keypairs.get(access_key)
        if cached is not MISS:
            return cached
        keypair = self._keypair_from(
            access_key, await self._redis.hgetall(self._keys.keypair(access_key))
        )
        if keypair is None:
            await self.raise_if_lost()
        else:
            self._seen()
        self._keypairs.put(access_key, keypair)
        return keypair

    async def get_user(self, user_id: str) -> User | None:
        cached = self._users.get(user_id)
        if cached is not MISS:
            return cached
        user = self._user_from(user_id, await self._redis.hgetall(self._keys.user(user_id)))
        if user is None:
            await self.raise_if_lost()
        else:
            self._seen()
        self._users.put(user_id, user)
        return user

    async def resolve(self, access_key: str) -> tuple[Keypair, Identity] | None:
        """The keypair and who it speaks for; None if the key or its user is unknown.

        An inactive keypair still resolves, so the caller can say "inactive" rather than "unknown".
        """
        keypair = await self.get_keypair(access_key)
        if keypair is None:
            return None
        user = await self.get_user(keypair.user_id)
        if user is None:
            logger.warning("keypair %r belongs to unknown user %r", access_key, keypair.user_id)
            return None
        return keypair, Identity(access_key, user.user_id, user.role, user.domain)

    async def group_exists(self, name: str, domain: str | None) -> bool:
        """Whether group ``name`` exists in ``domain``, or in any domain when ``domain`` is None."""
        cache_key = (domain, name)
        cached = self._groups.get(cache_key)
        if cached is not MISS:
            return bool(cached)
        if domain is not None:
            found = bool(await self._redis.exists(self._keys.group(domain, name)))
        else:
            found = False
            async for member in self._redis.sscan_iter(
                self._keys.groups, match="*:" + _glob_escape(name), count=1000
            ):
                if _text(member).partition(":")[2] == name:
                    found = True
                    break
        if not found:
            await self.raise_if_lost()
        self._groups.put(cache_key, found)
        return found

    # keypairs ----------------------------------------------------------------------------------

    async def add_keypair(self, keypair: Keypair, *, replace: bool = False) -> None:
        """Store ``keypair``; its user must exist. Raises :class:`IdentityError` if it exists."""
        check_keypair(keypair)
        kp_key = self._keys.keypair(keypair.access_key)
        user_key = self._keys.user(keypair.user_id)

        async def tx(pipe: Any) -> None:
            if not await _present(pipe, user_key):
                raise UnknownIdentityError(f"user {keypair.user_id!r} does not exist")
            if not replace and await _present(pipe, kp_key):
                raise IdentityError(f"keypair {keypair.access_key!r} already exists")
            pipe.multi()
            self._queue_keypair(pipe, keypair)
            queue_change(pipe, self._keys, make_change(keys=[keypair.access_key]))

        await self._redis.transaction(tx, kp_key, user_key)
        self.clear_cache()

    async def remove_keypair(self, access_key: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.keypair(access_key))
            pipe.srem(self._keys.keypairs, access_key)
            queue_change(pipe, self._keys, make_change(keys=[access_key]))
            deleted, *_ = await pipe.execute()
        self.clear_cache()
        if not deleted:
            raise UnknownIdentityError(f"keypair {access_key!r} does not exist")

    async def set_keypair_active(self, access_key: str, active: bool) -> None:
        kp_key = self._keys.keypair(access_key)

        async def tx(pipe: Any) -> None:
            if not await _present(pipe, kp_key):
                raise UnknownIdentityError(f"keypair {access_key!r} does not exist")
            pipe.multi()
            pipe.hset(kp_key, "active", "1" if active else "0")
            queue_change(pipe, self._keys, make_change(keys=[access_key]))

        await self._redis.transaction(tx, kp_key)
        self.clear_cache()

    async def list_keypairs(self, user_id: str | None = None) -> list[Keypair]:
        keypairs = [
            kp
            for ak, raw in await self._hashes(self._keys.keypairs, self._keys.keypair)
            if (kp := self._keypair_from(ak, raw)) is not None
        ]
        return [kp for kp in keypairs if user_id is None or kp.user_id == user_id]

    # users -------------------------------------------------------------------------------------

    async def add_user(self, user: User, *, replace: bool = False) -> None:
        check_user(user)
        user_key = self._keys.user(user.user_id)

        async def tx(pipe: Any) -> None:
            if not replace and await _present(pipe, user_key):
                raise IdentityError(f"user {user.user_id!r} already exists")
            pipe.multi()
            self._queue_user(pipe, user)
            queue_change(pipe, self._keys, make_change(users=[user.user_id]))

        await self._redis.transaction(tx, user_key)
        self.clear_cache()

    async def remove_user(self, user_id: str, *, cascade: bool = False) -> None:
        """Remove a user; its keypairs too with ``cascade``, else refuse while it has any."""
        user_key = self._keys.user(user_id)

        async def tx(pipe: Any) -> None:
            if not await _present(pipe, user_key):
                raise UnknownIdentityError(f"user {user_id!r} does not exist")
            owned = [kp.access_key for kp in await self.list_keypairs(user_id)]
            if owned and not cascade:
                raise IdentityError(
                    f"user {user_id!r} still has keypairs {', '.join(sorted(owned))}: "
                    "remove them first, or remove the user with its keypairs"
                )
            pipe.multi()
            for ak in owned:
                pipe.delete(self._keys.keypair(ak))
                pipe.srem(self._keys.keypairs, ak)
            pipe.delete(user_key)
            pipe.srem(self._keys.users, user_id)
            queue_change(pipe, self._keys, make_change(keys=owned, users=[user_id]))

        # Watching the keypairs set makes a keypair added meanwhile restart the check.
        await self._redis.transaction(tx, user_key, self._keys.keypairs)
        self.clear_cache()

    async def list_users(self, domain: str | None = None) -> list[User]:
        users = [
            user
            for uid, raw in await self._hashes(self._keys.users, self._keys.user)
            if (user := self._user_from(uid, raw)) is not None
        ]
        return [u for u in users if domain is None or u.domain == domain]

    # groups ------------------------------------------------------------------------------------

    async def add_group(self, group: Group) -> None:
        check_group(group)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(self._keys.group(group.domain, group.name))
            self._queue_group(pipe, group)
            queue_change(pipe, self._keys, make_change(groups=[f"{group.domain}:{group.name}"]))
            existed, *_ = await pipe.execute()
        self.clear_cache()
        if existed:
            raise IdentityError(f"group {group.name!r} already exists in domain {group.domain!r}")

    async def remove_group(self, name: str, domain: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.group(domain, name))
            pipe.srem(self._keys.groups, f"{domain}:{name}")
            queue_change(pipe, self._keys, make_change(groups=[f"{domain}:{name}"]))
            deleted, *_ = await pipe.execute()
        self.clear_cache()
        if not deleted:
            raise UnknownIdentityError(f"group {name!r} does not exist in domain {domain!r}")

    async def list_groups(self, domain: str | None = None) -> list[Group]:
        groups = []
        async for member in self._redis.sscan_iter(self._keys.groups, count=1000):
            group_domain, _, name = _text(member).partition(":")
            if domain is None or group_domain == domain:
                groups.append(Group(group_domain, name))
        return sorted(groups, key=lambda g: (g.domain, g.name))

    # import ------------------------------------------------------------------------------------

    async def import_data(self, doc: object) -> ImportSummary:
        """Load ``{"users": [...], "keypairs": [...], "groups": [...]}``, replacing what it names.

        All of it is checked before anything is written, then written in one transaction, so a
        bad entry changes nothing; importing the same document twice gives the same data. A
        user entry may carry ``password`` (hashed here) or ``password_hash``; without either, a
        stored user keeps its password.
        """
        try:
            parsed = msgspec.convert(doc, ImportDocument)
        except msgspec.ValidationError as exc:
            raise IdentityError(f"import: {exc}") from exc
        users: dict[str, tuple[User, bool]] = {}
        for i, u in enumerate(parsed.users):
            where = f"import: users[{i}] ({u.user_id!r})"
            if u.password is not None and u.password_hash is not None:
                raise IdentityError(f"{where}: give password or password_hash, not both")
            pw_hash = u.password_hash or ""
            if u.password is not None:
                try:
                    check_password(u.password, u.user_id)
                except WeakPasswordError as exc:
                    raise WeakPasswordError(f"{where}: {exc}") from None
                pw_hash = hash_password(u.password)
            user = User(u.user_id, u.role, u.domain, pw_hash)
            self._checked(where, check_user, user, u.user_id in users)
            users[u.user_id] = (user, u.password is not None or u.password_hash is not None)
        groups: set[tuple[str, str]] = set()
        for i, entry in enumerate(parsed.groups):
            g = Group(entry.domain, entry.name)
            where = f"import: groups[{i}] ({g.domain!r}:{g.name!r})"
            self._checked(where, check_group, g, (g.domain, g.name) in groups)
            groups.add((g.domain, g.name))
        keypairs: dict[str, Keypair] = {}
        for i, k in enumerate(parsed.keypairs):
            where = f"import: keypairs[{i}] ({k.access_key!r})"
            kp = Keypair(k.access_key, k.secret_key, k.user_id, k.active)
            self._checked(where, check_keypair, kp, k.access_key in keypairs)
            keypairs[k.access_key] = kp
        known = set(users)
        for ak, kp in keypairs.items():
            if kp.user_id not in known:
                if not await self._redis.exists(self._keys.user(kp.user_id)):
                    raise IdentityError(
                        f"import: keypair {ak!r}: user {kp.user_id!r} is neither in the file "
                        "nor stored"
                    )
                known.add(kp.user_id)

        async with self._redis.pipeline(transaction=True) as pipe:
            for user, with_password in users.values():
                self._queue_user(pipe, user, with_password=with_password)
            for domain, name in groups:
                self._queue_group(pipe, Group(domain, name))
            for kp in keypairs.values():
                self._queue_keypair(pipe, kp)
            # what the import names: each replica re-checks the streams it can touch (an
            # entry written unchanged changes no stream's rights, so none is closed for it)
            change = make_change(keys=keypairs, users=users, groups=[f"{d}:{n}" for d, n in groups])
            queue_change(pipe, self._keys, change)
            await pipe.execute()
        self.clear_cache()
        return ImportSummary(users=len(users), keypairs=len(keypairs), groups=len(groups))

    # helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _checked(where: str, check: Callable[[Any], None], item: object, duplicate: bool) -> None:
        try:
            check(item)
        except IdentityError as exc:
            raise IdentityError(f"{where}: {exc}") from None
        if duplicate:
            raise IdentityError(f"{where}: appears more than once")

    def _queue_keypair(self, pipe: Any, kp: Keypair) -> None:
        pipe.hset(
            self._keys.keypair(kp.access_key),
            mapping={
                "access_key": kp.access_key,
                "secret_key": kp.secret_key,
                "user_id": kp.user_id,
                "active": "1" if kp.active else "0",
            },
        )
        pipe.sadd(self._keys.keypairs, kp.access_key)

    def _queue_user(self, pipe: Any, user: User, *, with_password: bool = True) -> None:
        fields = {"user_id": user.user_id, "role": user.role, "domain": user.domain}
        if with_password:
            fields["password_hash"] = user.password_hash
        pipe.hset(self._keys.user(user.user_id), mapping=fields)
        pipe.sadd(self._keys.users, user.user_id)

    def _queue_group(self, pipe: Any, group: Group) -> None:
        key = self._keys.group(group.domain, group.name)
        pipe.hset(key, mapping={"domain": group.domain, "name": group.name})
        pipe.sadd(self._keys.groups, f"{group.domain}:{group.name}")

    async def _hashes(
        self, index: str, key_of: Callable[[str], str]
    ) -> list[tuple[str, Mapping[Any, Any]]]:
        names = sorted({_text(m) async for m in self._redis.sscan_iter(index, count=1000)})
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(key_of(name))
            raws: list[Mapping[Any, Any]] = await pipe.execute()
        return list(zip(names, raws, strict=True))

    @staticmethod
    def _keypair_from(access_key: str, raw: Mapping[Any, Any]) -> Keypair | None:
        if not raw:
            return None
        f = _fields(raw)
        try:
            return Keypair(access_key, f["secret_key"], f["user_id"], f.get("active", "1") == "1")
        except KeyError as exc:
            logger.warning("keypair %r is stored without %s: ignored", access_key, exc)
            return None

    @staticmethod
    def _user_from(user_id: str, raw: Mapping[Any, Any]) -> User | None:
        if not raw:
            return None
        f = _fields(raw)
        role = f.get("role", "")
        if role not in ROLES or "domain" not in f:
            logger.warning("user %r is stored with bad role or no domain: ignored", user_id)
            return None
        return User(user_id, cast(Role, role), f["domain"], f.get("password_hash", ""))
