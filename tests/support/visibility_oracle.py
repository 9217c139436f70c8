"""docs/design.md §4 ("Who sees what") written out plainly, as the tests' independent oracle.

It imports nothing from :mod:`gateway` on purpose: the tests compare what the gateway does
(``build_filter``, the hub's ``Filter``, the stream endpoint) with what this module reads off
the role table, so a mistake in one is not silently repeated in the other.

=============  ===================================  =====================================
role           sees                                 may pass ``ownerAccessKey``
=============  ===================================  =====================================
user           events of its own user's sessions    only its own key, else 403
admin          every event in its domain            keys of its domain, else 403
superadmin     every event                          any key
monitor        every event, read only               any key
=============  ===================================  =====================================

* ``sessionId=X``: session id X *and* owner key ``ownerAccessKey`` if given, else the
  caller's own key.
* ``ownerAccessKey=K`` without ``sessionId``: events owned by K.
* ``group=G`` (alias ``groupName``): events of group G; a group the caller cannot name is 404
  (users and admins name groups of their own domain, superadmins and monitors any domain's).
* A request both forbidden and naming an unknown group is 403: who may ask is decided before
  what exists is revealed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal

Refusal = Literal[403, 404]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who opens the stream: the keypair it signed with and that keypair's user."""

    role: str
    user_id: str
    domain: str
    access_key: str


@dataclass(frozen=True, slots=True)
class Ask:
    """The stream's query; ``None`` where the client asked for everything."""

    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """The fields of an event that decide who sees it."""

    session_id: str
    owner_access_key: str
    owner_user_id: str
    domain: str
    group: str


@dataclass(frozen=True, slots=True)
class World:
    """What the identity store knows: each access key's user's domain, and the groups."""

    key_domains: Mapping[str, str]
    groups: Collection[tuple[str, str]]  # (domain, name)


# The "sees" column of the table.
ROLE_SEES: Final[dict[str, Callable[[Caller, Seen], bool]]] = {
    "user": lambda caller, event: event.owner_user_id == caller.user_id,
    "admin": lambda caller, event: event.domain == caller.domain,
    "superadmin": lambda caller, event: True,
    "monitor": lambda caller, event: True,
}

# The "may pass ownerAccessKey" column: may ``caller`` name ``key`` (not its own)?
ROLE_MAY_NAME: Final[dict[str, Callable[[Caller, str, World], bool]]] = {
    "user": lambda caller, key, world: False,
    "admin": lambda caller, key, world: world.key_domains.get(key) == caller.domain,
    "superadmin": lambda caller, key, world: True,
    "monitor": lambda caller, key, world: True,
}

# Whose groups a role may name: its own domain's, or any domain's.
ROLE_GROUP_DOMAINS: Final[dict[str, Callable[[Caller, World], set[str]]]] = {
    "user": lambda caller, world: {caller.domain},
    "admin": lambda caller, world: {caller.domain},
    "superadmin": lambda caller, world: {domain for domain, _ in world.groups},
    "monitor": lambda caller, world: {domain for domain, _ in world.groups},
}


def refusal(caller: Caller, ask: Ask, world: World) -> Refusal | None:
    """403 or 404 for a request the table refuses, else None (the stream opens)."""
    key = ask.owner_access_key
    if key is not None and key != caller.access_key:
        if not ROLE_MAY_NAME[caller.role](caller, key, world):
            return 403
    if ask.group is not None:
        domains = ROLE_GROUP_DOMAINS[caller.role](caller, world)
        if not any((domain, ask.group) in world.groups for domain in domains):
            return 404
    return None


def visible(caller: Caller, ask: Ask, event: Seen) -> bool:
    """Whether a stream ``caller`` opened with ``ask`` shows ``event``."""
    if not ROLE_SEES[caller.role](caller, event):
        return False
    if ask.session_id is not None:
        owner = ask.owner_access_key if ask.owner_access_key is not None else caller.access_key
        if event.session_id != ask.session_id or event.owner_access_key != owner:
            return False
    elif ask.owner_access_key is not None and event.owner_access_key != ask.owner_access_key:
        return False
    return ask.group is None or event.group == ask.group
