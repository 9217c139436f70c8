"""What changed in the identity store or the browser-session store, told to every replica.

Every write to either store queues, in the same ``MULTI`` as the write itself, a
``PUBLISH <prefix>:identity:changes <msgpack Change>``: the message reaches the replicas only
once the write is applied, and never without it. Each replica drops the named entries from its
identity cache and re-checks the open streams the change can touch
(``gateway.replica.reauthorize``).
A message can still be lost (a replica's subscription was down): the periodic re-check of every
open stream is the backstop, and a replica re-checks everything once it has subscribed again.

Identity writes also ``INCR <prefix>:identity:generation``. The key exists from the first write
on, so a replica that has seen it and then finds it gone knows Redis lost its data (a restart
without persistence, a fresh instance, a flush), not that every key was revoked (see
:meth:`gateway.identity.store.IdentityStore.presence`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from publisher.bus import Bus
from publisher.keys import Keys

__all__ = [
    "MAX_NAMES",
    "Change",
    "changes_channel",
    "decode_change",
    "generation_key",
    "make_change",
    "queue_change",
]

log = logging.getLogger(__name__)

#: a change naming more than this many entries is sent as "everything" instead (an import)
MAX_NAMES: Final = 1000


class Change(msgspec.Struct, frozen=True, omit_defaults=True):
    """One write's reach. ``keys``: access keys whose keypair changed (secret, owner, active
    flag, removal); ``users``: user ids (role, domain, removal); ``groups``: ``<domain>:<name>``
    added or removed; ``sessions``: browser-session token hashes ended (logout, replaced,
    evicted); ``all``: re-check every stream (large imports)."""

    keys: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    sessions: tuple[str, ...] = ()
    all: bool = False

    def merged(self, other: Change) -> Change:
        """Both changes' reach (what a replica still has to re-check)."""
        if self.all or other.all:
            return Change(all=True)
        return Change(
            keys=tuple({*self.keys, *other.keys}),
            users=tuple({*self.users, *other.users}),
            groups=tuple({*self.groups, *other.groups}),
            sessions=tuple({*self.sessions, *other.sessions}),
        )

    def __bool__(self) -> bool:
        return bool(self.all or self.keys or self.users or self.groups or self.sessions)


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Change)


def changes_channel(keys: Keys) -> str:
    """The pub/sub channel every identity and browser-session write publishes on."""
    return keys.identity_changes


def generation_key(keys: Keys) -> str:
    """A counter every identity write increments: present iff the store was ever written."""
    return keys.identity_generation


def make_change(
    *,
    keys: Iterable[str] = (),
    users: Iterable[str] = (),
    groups: Iterable[str] = (),
    sessions: Iterable[str] = (),
) -> Change:
    """A :class:`Change`; one naming over :data:`MAX_NAMES` entries becomes ``all``."""
    k, u, g, s = (tuple(sorted(set(p))) for p in (keys, users, groups, sessions))
    if len(k) + len(u) + len(g) + len(s) > MAX_NAMES:
        return Change(all=True)
    return Change(keys=k, users=u, groups=g, sessions=s)


def queue_change(pipe: Any, keys: Keys, change: Change, *, identity: bool = True) -> None:
    """Queue the publication of ``change`` on ``pipe`` (put it in the write's ``MULTI``);
    ``identity`` writes also bump the generation key (browser-session writes do not)."""
    if identity:
        pipe.incr(generation_key(keys))
    Bus(keys).announce(pipe, _encoder.encode(change))


def decode_change(data: bytes) -> Change | None:
    """The change in a message, or None (logged) when it does not decode."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        log.warning("undecodable identity change message (%d bytes): %s", len(data), exc)
        return None
