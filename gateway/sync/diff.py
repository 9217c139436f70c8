"""The difference between what the identity store holds and what Backend.AI says it should,
limited to what the syncer may touch; and the guard against a snapshot that would lock many
out at once. Pure: no I/O.

Ownership: the syncer changes or removes only entries it wrote before (:class:`Managed`) or
that Backend.AI has. An entry an operator imported by hand that Backend.AI does not have is
left alone; one that Backend.AI has too becomes the syncer's and follows Backend.AI from then
on (a hand-made copy is exactly the stale copy the sync exists to replace). A user's password
hash (gateway logins) is never Backend.AI's business: it is kept as stored.

One exception to "removed when Backend.AI no longer has it": a user of the syncer's that
still owns keypairs imported by hand is left in place and handed back to the operator
(:attr:`Changes.released`), since removing it would take those keypairs with it.
"""

from __future__ import annotations

from typing import Final

import msgspec

from gateway.identity.models import Group, Keypair, User

from .errors import SyncRefused
from .state import Managed, StoreState

__all__ = ["Changes", "check_removals", "diff"]


class Changes(msgspec.Struct, frozen=True):
    """What to write to bring the store to a snapshot, by kind, each in the order to apply:
    users before keypairs are written, keypairs removed before their users."""

    users_added: tuple[User, ...] = ()
    #: a role or domain changed (the stored password hash carried over)
    users_updated: tuple[User, ...] = ()
    keypairs_added: tuple[Keypair, ...] = ()
    #: a secret, owner or re-activation changed
    keypairs_updated: tuple[Keypair, ...] = ()
    #: active in the store, inactive in Backend.AI (perhaps with other changes)
    keypairs_deactivated: tuple[Keypair, ...] = ()
    keypairs_removed: tuple[str, ...] = ()
    users_removed: tuple[str, ...] = ()
    groups_added: tuple[Group, ...] = ()
    groups_removed: tuple[Group, ...] = ()
    #: users Backend.AI no longer has, kept because keypairs imported by hand still use them
    released: tuple[str, ...] = ()
    #: the syncer's entries before and after these changes
    managed_before: Managed = Managed()
    managed: Managed = Managed()

    def __bool__(self) -> bool:
        return bool(
            self.users_added
            or self.users_updated
            or self.keypairs_added
            or self.keypairs_updated
            or self.keypairs_deactivated
            or self.keypairs_removed
            or self.users_removed
            or self.groups_added
            or self.groups_removed
        )

    @property
    def added(self) -> int:
        return len(self.users_added) + len(self.keypairs_added) + len(self.groups_added)

    @property
    def updated(self) -> int:
        return len(self.users_updated) + len(self.keypairs_updated)

    @property
    def deactivated(self) -> int:
        return len(self.keypairs_deactivated)

    @property
    def removed(self) -> int:
        return len(self.keypairs_removed) + len(self.users_removed) + len(self.groups_removed)

    def governed(self, current: StoreState) -> frozenset[str]:
        """The keypairs of ``current`` that can stream now and are the syncer's (before or
        after these changes)."""
        mine = self.managed_before.keypairs | self.managed.keypairs
        return frozenset(ak for ak, kp in current.keypairs.items() if kp.active and ak in mine)

    def disturbed(self, current: StoreState) -> frozenset[str]:
        """The keypairs of :meth:`governed` these changes remove or deactivate, or whose
        secret, owner, or owner's role or domain they change: what a wrong database (a
        truncated copy, a restored staging one with other secrets, a mass demotion or
        promotion) does to everyone at once."""
        governed = self.governed(current)
        changed_users = {u.user_id for u in self.users_updated} | set(self.users_removed)
        rekeyed = {
            kp.access_key
            for kp in self.keypairs_updated
            if (old := current.keypairs.get(kp.access_key)) is not None
            and (old.secret_key, old.user_id) != (kp.secret_key, kp.user_id)
        }
        by_user = {ak for ak in governed if current.keypairs[ak].user_id in changed_users}
        return governed & {
            *self.keypairs_removed,
            *(kp.access_key for kp in self.keypairs_deactivated),
            *rekeyed,
            *by_user,
        }

    def removed_share(self, current: StoreState) -> float:
        """The share of :meth:`governed` that these changes disturb (:meth:`disturbed`; 0.0
        when there are none)."""
        governed = self.governed(current)
        if not governed:
            return 0.0
        return len(self.disturbed(current)) / len(governed)


def diff(current: StoreState, desired: StoreState, managed: Managed) -> Changes:
    """The changes that make the syncer's part of ``current`` equal ``desired``, leaving the
    rest (entries neither in ``managed`` nor in ``desired``) as they are."""
    users_added: list[User] = []
    users_updated: list[User] = []
    for user_id, want in sorted(desired.users.items()):
        have = current.users.get(user_id)
        if have is None:
            users_added.append(want)
        elif (have.role, have.domain) != (want.role, want.domain):
            users_updated.append(User(user_id, want.role, want.domain, have.password_hash))

    added: list[Keypair] = []
    updated: list[Keypair] = []
    deactivated: list[Keypair] = []
    for ak, want_kp in sorted(desired.keypairs.items()):
        have_kp = current.keypairs.get(ak)
        if have_kp is None:
            added.append(want_kp)
        elif have_kp != want_kp:
            (deactivated if have_kp.active and not want_kp.active else updated).append(want_kp)

    removed = sorted(
        ak for ak in current.keypairs if ak in managed.keypairs and ak not in desired.keypairs
    )
    # keypairs that stay in the store, and are not Backend.AI's: an operator's
    kept_owners = {
        kp.user_id
        for ak, kp in current.keypairs.items()
        if ak not in desired.keypairs and ak not in managed.keypairs
    }
    users_removed: list[str] = []
    released: list[str] = []
    for user_id in sorted(current.users):
        if user_id in managed.users and user_id not in desired.users:
            (released if user_id in kept_owners else users_removed).append(user_id)

    groups_added = sorted(desired.groups - current.groups, key=_group_key)
    groups_removed = sorted((current.groups & managed.groups) - desired.groups, key=_group_key)
    return Changes(
        users_added=tuple(users_added),
        users_updated=tuple(users_updated),
        keypairs_added=tuple(added),
        keypairs_updated=tuple(updated),
        keypairs_deactivated=tuple(deactivated),
        keypairs_removed=tuple(removed),
        users_removed=tuple(users_removed),
        groups_added=tuple(groups_added),
        groups_removed=tuple(groups_removed),
        released=tuple(released),
        managed_before=managed,
        managed=Managed(
            keypairs=frozenset(desired.keypairs),
            users=frozenset(desired.users),
            groups=desired.groups,
        ),
    )


#: keypairs one sync may always remove or deactivate, whatever their share (in an
#: installation of two keypairs, deactivating one is half of them)
ALWAYS_ALLOWED: Final = 3


def check_removals(
    changes: Changes, current: StoreState, *, max_removal_share: float, force: bool = False
) -> None:
    """Raise :class:`SyncRefused` if ``changes`` remove or deactivate more than
    ``max_removal_share`` of the syncer's streaming keypairs (and more than
    :data:`ALWAYS_ALLOWED`), unless ``force``."""
    share = changes.removed_share(current)
    disturbed = changes.disturbed(current)
    taken = len(disturbed)
    # a few at a time are everyday changes, whatever their share of a small installation
    if share > max_removal_share and taken > ALWAYS_ALLOWED and not force:
        others = (
            taken
            - len(disturbed & {*changes.keypairs_removed})
            - len(disturbed & {kp.access_key for kp in changes.keypairs_deactivated})
        )
        raise SyncRefused(
            f"the snapshot would remove {len(changes.keypairs_removed)} and deactivate "
            f"{len(changes.keypairs_deactivated)} keypairs and change the secret, owner, role "
            f"or domain of {max(others, 0)} more, {share:.0%} of the "
            f"{len(changes.governed(current))} active keypairs the sync manages, more than the "
            f"{max_removal_share:.0%} allowed at once: refused, nothing written (a truncated "
            "or wrong database?); check the database, then sync with force to apply it"
        )


def _group_key(group: Group) -> tuple[str, str]:
    return (group.domain, group.name)
