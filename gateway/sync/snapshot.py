"""Backend.AI's identities, read in one consistent snapshot, and what the gateway's store
should hold for them.

:func:`read_snapshot` reads the five tables of ``../shared/BACKENDAI.md`` §2.1, only the
columns present from 23.09 to the newest release (never ``keypairs.user_id``, gone at HEAD,
nor ``users.domain_id``, absent up to 26.8), in one ``REPEATABLE READ READ ONLY``
transaction: every table as of the same moment, so a user deleted between two reads cannot
leave its keypair behind. A role granted ``SELECT`` on just these columns is enough.

:func:`desired` applies Backend.AI's rules (``manager/api/auth.py`` 23.09.0 L470-515,
L715-724): a keypair may stream only if ``keypairs.is_active``, its user's ``status`` is
``active`` and the user's domain is active. A keypair that may not stream is still stored,
inactive, so the gateway answers "inactive" rather than "unknown". Rights come from
``users.role`` (``keypairs.is_admin`` is read but, as in the manager, not what decides).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final, cast

import asyncpg
import msgspec

from gateway.bridge.database import DatabaseUnavailable
from gateway.identity.models import (
    ROLES,
    Group,
    IdentityError,
    Keypair,
    Role,
    User,
    check_group,
    check_keypair,
    check_user,
)

from .errors import SourceUnavailable
from .state import StoreState

__all__ = [
    "DomainRow",
    "GroupRow",
    "KeypairRow",
    "MembershipRow",
    "Snapshot",
    "UserRow",
    "desired",
    "read_snapshot",
]


class KeypairRow(msgspec.Struct, frozen=True):
    """``keypairs(access_key, secret_key, is_active, is_admin, "user")``."""

    access_key: str
    secret_key: str | None
    is_active: bool | None
    is_admin: bool | None
    user: uuid.UUID

    def __repr__(self) -> str:  # the secret is plaintext in Backend.AI: never in a log line
        return (
            f"KeypairRow(access_key={self.access_key!r}, secret_key='***', "
            f"is_active={self.is_active!r}, is_admin={self.is_admin!r}, user={self.user!r})"
        )

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            ("access_key", self.access_key),
            ("secret_key", "***"),
            ("is_active", self.is_active),
            ("is_admin", self.is_admin),
            ("user", self.user),
        ]


class UserRow(msgspec.Struct, frozen=True):
    """``users(uuid, email, role, status, domain_name)``; role and status as text."""

    uuid: uuid.UUID
    email: str
    role: str | None
    status: str
    domain_name: str | None


class GroupRow(msgspec.Struct, frozen=True):
    """``groups(id, name, domain_name, is_active)``."""

    id: uuid.UUID
    name: str
    domain_name: str
    is_active: bool | None


class MembershipRow(msgspec.Struct, frozen=True):
    """``association_groups_users(user_id, group_id)``."""

    user_id: uuid.UUID
    group_id: uuid.UUID


class DomainRow(msgspec.Struct, frozen=True):
    """``domains(name, is_active)``."""

    name: str
    is_active: bool | None


class Snapshot(msgspec.Struct, frozen=True):
    """The five tables as of one moment."""

    keypairs: tuple[KeypairRow, ...] = ()
    users: tuple[UserRow, ...] = ()
    groups: tuple[GroupRow, ...] = ()
    memberships: tuple[MembershipRow, ...] = ()
    domains: tuple[DomainRow, ...] = ()


# Every column by name (a column-limited role may read nothing else); the PostgreSQL enums
# ``userrole`` and ``userstatus`` as text.
_KEYPAIRS: Final = 'SELECT access_key, secret_key, is_active, is_admin, "user" FROM keypairs'
_USERS: Final = (
    "SELECT uuid, email, role::text AS role, status::text AS status, domain_name FROM users"
)
_GROUPS: Final = "SELECT id, name, domain_name, is_active FROM groups"
_MEMBERSHIPS: Final = "SELECT user_id, group_id FROM association_groups_users"
_DOMAINS: Final = "SELECT name, is_active FROM domains"

#: what a failed read raises, besides a timeout: the connection, the server, a refused grant
_DB_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable)


async def _read(conn: Any) -> Snapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        keypairs = await conn.fetch(_KEYPAIRS)
        users = await conn.fetch(_USERS)
        groups = await conn.fetch(_GROUPS)
        memberships = await conn.fetch(_MEMBERSHIPS)
        domains = await conn.fetch(_DOMAINS)
    return Snapshot(
        keypairs=tuple(
            KeypairRow(r["access_key"], r["secret_key"], r["is_active"], r["is_admin"], r["user"])
            for r in keypairs
        ),
        users=tuple(
            UserRow(r["uuid"], r["email"], r["role"], r["status"], r["domain_name"]) for r in users
        ),
        groups=tuple(
            GroupRow(r["id"], r["name"], r["domain_name"], r["is_active"]) for r in groups
        ),
        memberships=tuple(MembershipRow(r["user_id"], r["group_id"]) for r in memberships),
        domains=tuple(DomainRow(r["name"], r["is_active"]) for r in domains),
    )


async def read_snapshot(
    source: asyncpg.Pool | asyncpg.Connection, *, timeout: float = 30.0
) -> Snapshot:
    """The five tables from ``source`` (an asyncpg pool or connection) in one repeatable-read,
    read-only transaction, within ``timeout`` seconds. Raises :class:`SourceUnavailable` for
    anything the database did not answer."""
    try:
        async with asyncio.timeout(timeout):
            if hasattr(source, "acquire"):  # a pool
                async with source.acquire() as conn:
                    return await _read(conn)
            return await _read(source)
    except TimeoutError as exc:
        raise SourceUnavailable(
            f"backend.ai's database could not be read: the identity snapshot timed out "
            f"(limit {timeout}s)"
        ) from exc
    except _DB_ERRORS as exc:
        raise SourceUnavailable(
            f"backend.ai's database could not be read ({type(exc).__name__}: {exc})"
        ) from exc


def desired(snapshot: Snapshot, *, skipped: list[str] | None = None) -> StoreState:
    """What the identity store should hold for ``snapshot``: every user (``user_id`` =
    ``str(users.uuid)``, what the bridge publishes as the owner), every keypair of a known
    user (active only if Backend.AI lets it sign requests), every active group. A row the
    store cannot hold (no domain, an unknown role, no secret, a name the store refuses) is
    left out, and its reason (never a secret, never an email) appended to ``skipped``."""

    def skip(reason: str) -> None:
        if skipped is not None:
            skipped.append(reason)

    # NULL is_active (the default is ORM-side only) is not active: SQL's `WHERE is_active`
    # the manager uses agrees
    domain_active = {row.name: row.is_active is True for row in snapshot.domains}
    users: dict[str, User] = {}
    user_active: dict[str, bool] = {}
    for u in snapshot.users:
        user_id = str(u.uuid)
        if u.domain_name is None:
            skip(f"user {user_id}: no domain")
            continue
        role = "user" if u.role is None else u.role  # the ORM's default, when raw SQL left none
        if role not in ROLES:
            skip(f"user {user_id}: unknown role {role!r}")
            continue
        user = User(user_id, cast(Role, role), u.domain_name)
        try:
            check_user(user)
        except IdentityError as exc:
            skip(f"user {user_id}: {exc}")
            continue
        users[user_id] = user
        user_active[user_id] = u.status == "active" and domain_active.get(u.domain_name, False)

    keypairs: dict[str, Keypair] = {}
    for k in snapshot.keypairs:
        user_id = str(k.user)
        if user_id not in users:
            skip(f"keypair {k.access_key!r}: its user {user_id} is missing or left out")
            continue
        if k.secret_key is None:
            skip(f"keypair {k.access_key!r}: no secret key")
            continue
        active = k.is_active is True and user_active[user_id]
        keypair = Keypair(k.access_key, k.secret_key, user_id, active)
        try:
            check_keypair(keypair)
        except IdentityError as exc:  # its messages never show the secret
            skip(f"keypair {k.access_key!r}: {exc}")
            continue
        keypairs[k.access_key] = keypair

    groups: set[Group] = set()
    for g in snapshot.groups:
        if g.is_active is not True:
            continue
        group = Group(g.domain_name, g.name)
        try:
            check_group(group)
        except IdentityError as exc:
            skip(f"group {g.id}: {exc}")
            continue
        groups.add(group)
    return StoreState(keypairs=keypairs, users=users, groups=frozenset(groups))
