"""What one stream may and wants to see, and where the hub files it.

Everything here is derived from two tables, so a new filter field cannot be half-wired:

* each :class:`Filter` field names the :class:`~publisher.schema.KernelEvent` attribute it
  constrains (checked at import: a field without an event attribute of the same name fails);
* :data:`INDEXES` lists the indexes a stream can be filed under, most selective first, each
  with the fields its key holds.

:meth:`Filter.matches` checks every constrained field; :attr:`Filter.exact` (the hub may skip
``matches``) holds only when the index key holds every constrained field. A field that no
index holds is still checked by ``matches``: it can make delivery slower, never wider.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Final

from publisher.schema import KernelEvent

__all__ = ["ALL", "INDEXES", "Filter", "IndexKey", "candidate_keys"]

IndexKey = tuple[str, ...]
ALL: Final[IndexKey] = ("*",)

#: (tag, fields the key holds), most selective first; an event is looked up under each
INDEXES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("s", ("session_id", "owner_access_key")),
    ("k", ("owner_access_key",)),
    ("u", ("owner_user_id",)),
    ("g", ("group",)),
    ("d", ("domain",)),
)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Filter:
    """What one stream may and wants to see; ``None`` means "no constraint".

    ``owner_user_id`` and ``domain`` come from the caller's role (who may see what); the rest
    from the query (what the caller asked for). Built by :mod:`gateway.identity.visibility`.
    Every field constrains the event attribute of the same name. Equal filters are one object
    in the hub (weakly referenced: :meth:`gateway.fanout.hub.Hub.new_connection`).
    """

    owner_user_id: str | None = None
    domain: str | None = None
    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None
    #: a session by its UUID (API v5's ``sessionId``)
    session_uuid: uuid.UUID | None = None
    #: the constrained fields as ``(name, value)``, derived: what :meth:`matches` checks
    constraints: tuple[tuple[str, object], ...] = field(
        init=False, compare=False, repr=False, default=()
    )
    #: True when the index key alone proves a match (it holds every constrained field): the
    #: hub then skips :meth:`matches`, which is most clients of a broadcast
    exact: bool = field(init=False, compare=False, repr=False, default=False)

    def __post_init__(self) -> None:
        assert self.session_id is None or self.owner_access_key is not None, (
            "a session filter always names its owner key"
        )
        constraints = tuple(
            (name, value) for name in FILTER_FIELDS if (value := getattr(self, name)) is not None
        )
        object.__setattr__(self, "constraints", constraints)
        covered = _index_fields(self)
        object.__setattr__(self, "exact", all(name in covered for name, _ in constraints))

    def index_key(self) -> IndexKey:
        """The one index this filter is filed under: its most selective constraint."""
        for tag, names in INDEXES:
            values = tuple(getattr(self, name) for name in names)
            if None not in values:
                return (tag, *values)
        return ALL

    def matches(self, event: KernelEvent) -> bool:
        for name, value in self.constraints:
            if getattr(event, name) != value:
                return False
        return True


def _index_fields(filter: Filter) -> tuple[str, ...]:
    for _, names in INDEXES:
        if all(getattr(filter, name) is not None for name in names):
            return names
    return ()


#: the fields a filter constrains, in declaration order (every init field)
FILTER_FIELDS: Final = tuple(f.name for f in fields(Filter) if f.init)

_EVENT_FIELDS: Final = frozenset(KernelEvent.__struct_fields__)
for _name in FILTER_FIELDS:
    if _name not in _EVENT_FIELDS:  # pragma: no cover - a wiring error, caught at import
        raise TypeError(f"Filter.{_name} names no KernelEvent attribute")

_KEY_GETTERS: Final = tuple((tag, attrgetter(*names)) for tag, names in INDEXES)


def candidate_keys(event: KernelEvent) -> tuple[IndexKey, ...]:
    """Every index key under which a stream that may match ``event`` can be filed."""
    keys: list[IndexKey] = []
    for tag, get in _KEY_GETTERS:
        values = get(event)
        keys.append((tag, *values) if isinstance(values, tuple) else (tag, values))
    keys.append(ALL)
    return tuple(keys)
