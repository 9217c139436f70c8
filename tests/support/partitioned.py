"""Events of numbered owners spread over a deployment's partitions, for the replay tests."""

from __future__ import annotations

import uuid

from publisher.partitions import Partitions
from publisher.schema import KernelEvent
from tests.support.identities import SessionRef

__all__ = ["numbered_event", "owner_per_partition"]


def owner_per_partition(parts: Partitions) -> list[str]:
    """One owner (a user UUID) per partition, by partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < parts.n:
        owner = str(uuid.UUID(int=i + 1))
        found.setdefault(parts.of(owner), owner)
        i += 1
    return [found[p] for p in range(parts.n)]


def numbered_event(owner: str, n: int, sessions: int = 7) -> KernelEvent:
    """Event ``n`` of ``owner`` (its reason ``n=<n>``), in one of ``sessions`` sessions."""
    ref = SessionRef(
        session_id=f"s{n % sessions}", owner_access_key="AK", owner_user_id=owner, domain="d",
        group="g", session_uuid=uuid.UUID(int=n % sessions + 1),
        kernel_id=uuid.UUID(int=n % sessions + 100),
    )  # fmt: skip
    return ref.started(f"n={n}")
