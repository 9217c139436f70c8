"""One identity sync: read Backend.AI's snapshot, compare it with the store, refuse a mass
removal, apply the rest (:func:`sync_once`). Running it every ``interval`` seconds, under a
lease so one syncer is active at a time, is the caller's."""

from __future__ import annotations

import logging
import time
from typing import Final

import asyncpg
import msgspec
import redis.asyncio as aredis

from gateway.identity.store import IdentityStore

from .apply import SyncKeys, apply, read_managed, read_state
from .diff import ALWAYS_ALLOWED, check_removals, diff
from .snapshot import desired, read_snapshot

__all__ = ["DEFAULT_MAX_REMOVAL_SHARE", "SyncReport", "sync_once"]

log = logging.getLogger(__name__)

#: the share of the syncer's streaming keypairs one sync may remove or deactivate unforced
DEFAULT_MAX_REMOVAL_SHARE: Final = 0.5
_SHOWN_SKIPS: Final = 5


class SyncReport(msgspec.Struct, frozen=True):
    """What one sync did. Counts are of entries (users, keypairs and groups together, except
    ``deactivated`` and ``keypairs``, which count keypairs)."""

    added: int
    updated: int
    deactivated: int
    removed: int
    #: seconds from the first read to the last write
    seconds: float
    #: the keypairs Backend.AI has that the store now holds
    keypairs: int
    #: users Backend.AI dropped, kept for keypairs imported by hand (see ``diff.Changes``)
    released: tuple[str, ...] = ()
    #: rows left out and why (no secrets)
    skipped: tuple[str, ...] = ()
    #: whether the removal guard was overridden to apply this one
    forced: bool = False


async def sync_once(
    pool: asyncpg.Pool | asyncpg.Connection,
    store: IdentityStore,
    redis: aredis.Redis,
    prefix: str,
    *,
    max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE,
    force: bool = False,
    timeout: float = 30.0,
) -> SyncReport:
    """Bring the store to Backend.AI's current identities.

    Raises :class:`~.snapshot.SourceUnavailable` if the database cannot be read, and
    :class:`~.diff.SyncRefused` if the snapshot would remove or deactivate more than
    ``max_removal_share`` of the syncer's streaming keypairs (unless ``force``); either way
    before anything is written. Errors of the gateway's Redis propagate as they are."""
    started = time.monotonic()
    snapshot = await read_snapshot(pool, timeout=timeout)
    skipped: list[str] = []
    want = desired(snapshot, skipped=skipped)
    current = await read_state(store)
    managed = await read_managed(redis, prefix)
    changes = diff(current, want, managed)
    share = changes.removed_share(current)
    check_removals(changes, current, max_removal_share=max_removal_share, force=force)
    taken = len(changes.disturbed(current))
    forced = share > max_removal_share and taken > ALWAYS_ALLOWED
    if forced:
        log.warning(
            "identity sync FORCED: removing %d and deactivating %d keypairs (%.0f%% of the "
            "synced active ones)",
            len(changes.keypairs_removed),
            len(changes.keypairs_deactivated),
            share * 100,
        )
    if changes or changes.managed != managed:
        await apply(store, redis, prefix, changes)
    report = SyncReport(
        added=changes.added,
        updated=changes.updated,
        deactivated=changes.deactivated,
        removed=changes.removed,
        seconds=time.monotonic() - started,
        keypairs=len(want.keypairs),
        released=changes.released,
        skipped=tuple(skipped),
        forced=forced,
    )
    await redis.hset(
        SyncKeys(prefix).last,
        mapping={
            "at": f"{time.time():.3f}",
            "seconds": f"{report.seconds:.3f}",
            "added": report.added,
            "updated": report.updated,
            "deactivated": report.deactivated,
            "removed": report.removed,
            "keypairs": report.keypairs,
        },
    )
    if skipped:
        log.warning(
            "identity sync: %d rows left out: %s%s",
            len(skipped),
            "; ".join(skipped[:_SHOWN_SKIPS]),
            " ..." if len(skipped) > _SHOWN_SKIPS else "",
        )
    if changes:
        log.info(
            "identity sync: %d added, %d updated, %d deactivated, %d removed in %.2fs",
            report.added,
            report.updated,
            report.deactivated,
            report.removed,
            report.seconds,
        )
    return report
