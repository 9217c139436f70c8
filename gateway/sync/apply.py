"""Writing a :class:`~.diff.Changes` to the identity store, and the syncer's own records.

Every write goes through :class:`~gateway.identity.store.IdentityStore`'s public methods, so
each one publishes its change on ``<prefix>:identity:changes`` and bumps the generation like
any other write: open streams on every replica are re-checked as for a hand-made change.

The syncer's records, beside the store (``<prefix>`` is the store's key prefix):

* ``<prefix>:sync:keypairs`` set: the access keys the syncer owns;
* ``<prefix>:sync:users`` set: the user ids it owns;
* ``<prefix>:sync:groups`` set: its groups as ``<domain>:<name>``;
* ``<prefix>:sync:last`` hash: the last applied sync (``at`` unix seconds, ``seconds``,
  ``added``, ``updated``, ``deactivated``, ``removed``, ``keypairs``), written by
  :func:`~.syncer.sync_once`.

The sets grow before the writes and shrink after them, so an apply cut short leaves nothing
written by the syncer that a later run would take for an operator's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis.asyncio as aredis

from gateway.identity.models import Group, IdentityError, UnknownIdentityError
from gateway.identity.store import IdentityStore
from publisher.keys import Keys

from .diff import Changes
from .state import Managed, StoreState

__all__ = ["SyncKeys", "apply", "read_managed", "read_state"]

log = logging.getLogger(__name__)


class SyncKeys:
    """The syncer's Redis key names under the store's ``prefix`` (:class:`publisher.keys.Keys`
    names them, so ``gateway acl`` grants them)."""

    def __init__(self, prefix: str) -> None:
        keys = Keys(prefix)
        self.prefix = prefix
        self.keypairs = keys.sync_keypairs
        self.users = keys.sync_users
        self.groups = keys.sync_groups
        self.last = keys.sync_last

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.keypairs, self.users, self.groups, self.last)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _member(group: Group) -> str:
    return f"{group.domain}:{group.name}"  # a domain never holds ":" (models.check_group)


async def read_state(store: IdentityStore) -> StoreState:
    """Everything the store holds (read uncached)."""
    keypairs = await store.list_keypairs()
    users = await store.list_users()
    groups = await store.list_groups()
    return StoreState(
        keypairs={kp.access_key: kp for kp in keypairs},
        users={u.user_id: u for u in users},
        groups=frozenset(groups),
    )


async def read_managed(redis: aredis.Redis, prefix: str) -> Managed:
    """The entries the syncer owns."""
    keys = SyncKeys(prefix)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.smembers(keys.keypairs)
        pipe.smembers(keys.users)
        pipe.smembers(keys.groups)
        keypairs, users, groups = await pipe.execute()
    return Managed(
        keypairs=frozenset(_text(m) for m in keypairs),
        users=frozenset(_text(m) for m in users),
        groups=frozenset(
            Group(domain, name) for domain, _, name in (_text(m).partition(":") for m in groups)
        ),
    )


async def _write_managed(
    redis: aredis.Redis, keys: SyncKeys, managed: Managed, *, replace: bool
) -> None:
    sets: tuple[tuple[str, Iterable[str]], ...] = (
        (keys.keypairs, managed.keypairs),
        (keys.users, managed.users),
        (keys.groups, map(_member, managed.groups)),
    )
    async with redis.pipeline(transaction=True) as pipe:
        for key, members in sets:
            names = sorted(members)
            if replace:
                pipe.delete(key)
            if names:
                pipe.sadd(key, *names)
        await pipe.execute()


async def apply(store: IdentityStore, redis: aredis.Redis, prefix: str, changes: Changes) -> None:
    """Write ``changes`` through ``store`` (users, then keypairs, then removals of keypairs,
    then of users, then groups), then record what the syncer owns. An entry already gone,
    or a group already there, is no error; a user that gained a keypair meanwhile is kept
    (and stays the syncer's, so the next run looks again)."""
    keys = SyncKeys(prefix)
    # claim first: an apply cut short must not leave a written entry unowned
    await _write_managed(redis, keys, changes.managed, replace=False)
    for user in (*changes.users_added, *changes.users_updated):
        await store.add_user(user, replace=True)
    for keypair in (
        *changes.keypairs_added,
        *changes.keypairs_updated,
        *changes.keypairs_deactivated,
    ):
        await store.add_keypair(keypair, replace=True)
    for access_key in changes.keypairs_removed:
        try:
            await store.remove_keypair(access_key)
        except UnknownIdentityError:
            pass  # removed meanwhile (by an operator): the result is the same
    kept: list[str] = []
    for user_id in changes.users_removed:
        try:
            await store.remove_user(user_id)
        except UnknownIdentityError:
            pass
        except IdentityError as exc:  # a keypair was added to it meanwhile
            log.warning("identity sync: user %s not removed: %s", user_id, exc)
            kept.append(user_id)
    for group in changes.groups_added:
        try:
            await store.add_group(group)
        except IdentityError:
            pass  # added meanwhile: it is there, which is what was wanted
    for group in changes.groups_removed:
        try:
            await store.remove_group(group.name, group.domain)
        except UnknownIdentityError:
            pass
    for user_id in changes.released:
        log.warning(
            "identity sync: user %s is gone from backend.ai but keypairs imported by hand "
            "still belong to it; it is kept and no longer synced (remove those keypairs and "
            "the user with `gateway` to finish)",
            user_id,
        )
    managed = changes.managed
    if kept:
        managed = Managed(managed.keypairs, managed.users | frozenset(kept), managed.groups)
    await _write_managed(redis, keys, managed, replace=True)
