"""What the identity sync compares: the identity data as a whole (:class:`StoreState`) and
the part of it the syncer owns (:class:`Managed`). Plain values, no I/O."""

from __future__ import annotations

import msgspec

from gateway.identity.models import Group, Keypair, User

__all__ = ["Managed", "StoreState"]


class StoreState(msgspec.Struct, frozen=True):
    """Keypairs by access key, users by user id, and the groups: what the identity store
    holds, or what it should hold. Keypairs show their secret as ``***`` (``Keypair.__repr__``)."""

    keypairs: dict[str, Keypair] = msgspec.field(default_factory=dict)
    users: dict[str, User] = msgspec.field(default_factory=dict)
    groups: frozenset[Group] = frozenset()


class Managed(msgspec.Struct, frozen=True):
    """The entries the syncer wrote (kept in Redis beside the store): only these, and entries
    Backend.AI has, does it change or remove; everything else was imported by an operator."""

    keypairs: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    groups: frozenset[Group] = frozenset()
