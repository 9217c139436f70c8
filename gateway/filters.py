"""What one stream may and wants to see, and where the hub files it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from publisher.schema import KernelEvent

__all__ = ["ALL", "Filter", "IndexKey", "candidate_keys"]

IndexKey = tuple[str, ...]
ALL: Final[IndexKey] = ("*",)


@dataclass(frozen=True, slots=True)
class Filter:
    """What one stream may and wants to see; ``None`` means "no constraint".

    ``owner_user_id`` and ``domain`` come from the caller's role (who may see what); the rest
    from the query (what the caller asked for). Built by :mod:`gateway.visibility`.
    """

    owner_user_id: str | None = None
    domain: str | None = None
    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None
    #: True when the index key alone proves a match (nothing else is constrained): the hub
    #: then skips :meth:`matches`, which is most clients of a broadcast
    exact: bool = field(init=False, compare=False, repr=False, default=False)

    def __post_init__(self) -> None:
        assert self.session_id is None or self.owner_access_key is not None, (
            "a session filter always names its owner key"
        )
        constraints = sum(
            value is not None
            for value in (self.owner_user_id, self.domain, self.owner_access_key, self.group)
        )
        object.__setattr__(self, "exact", constraints <= 1)

    def index_key(self) -> IndexKey:
        """The one index this filter is filed under: its most selective constraint."""
        if self.session_id is not None:
            assert self.owner_access_key is not None
            return ("s", self.session_id, self.owner_access_key)
        if self.owner_access_key is not None:
            return ("k", self.owner_access_key)
        if self.owner_user_id is not None:
            return ("u", self.owner_user_id)
        if self.group is not None:
            return ("g", self.group)
        if self.domain is not None:
            return ("d", self.domain)
        return ALL

    def matches(self, event: KernelEvent) -> bool:
        return (
            (self.owner_user_id is None or event.owner_user_id == self.owner_user_id)
            and (self.domain is None or event.domain == self.domain)
            and (self.session_id is None or event.session_id == self.session_id)
            and (self.owner_access_key is None or event.owner_access_key == self.owner_access_key)
            and (self.group is None or event.group == self.group)
        )


def candidate_keys(event: KernelEvent) -> tuple[IndexKey, ...]:
    return (
        ("s", event.session_id, event.owner_access_key),
        ("k", event.owner_access_key),
        ("u", event.owner_user_id),
        ("g", event.group),
        ("d", event.domain),
        ALL,
    )
