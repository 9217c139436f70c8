"""Backend.AI's PostgreSQL, read as the manager reads it to tell whose an event is.

The reads (``../shared/BACKENDAI.md`` §1.4), in batches (``= ANY($1)``) rather than one query
per event as the manager does:

* a kernel by its id: ``kernels(id, session_id, session_name, access_key, domain_name,
  group_id, user_uuid, cluster_role, cluster_idx)``, the columns of manager 23.09's
  ``enqueue_kernel_creation_status_update`` (``src/ai/backend/manager/api/events.py``
  23.09.0 L193-227) and 26.8.1's ``_fetch_kernel_data`` (``manager/events/hub/propagators/
  session.py`` L164-197);
* a session by its id: ``sessions(id, name, access_key, domain_name, group_id, user_uuid)``
  (26.8.1 ``_fetch_session_data`` L199-247; the table exists from 23.03), with its main
  kernel's id (``kernels WHERE session_id = S AND cluster_role = 'main'``: a session step's
  ``kernelId``; from 23.03 a kernel's id is its own, ``registry.py`` 23.09.0 L1035-1036, so
  manager 23.09's own ``kernels.id = session_id`` read found none); before 23.03, the main
  kernel's row alone (22.09 reused the session's id for it, ``registry.py`` L950-951);
* a group's name by its id: ``groups(id, name)``.

Every column is read by name, so a role granted SELECT on just these columns is enough (the
README shows it). A row keeps its values for a live kernel, so they are cached; a group's name
can change, so it is kept for a minute.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

from publisher.connection import redact_url

__all__ = ["Database", "DatabaseUnavailable", "EndedSession", "Owner", "RowCache"]

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """PostgreSQL could not answer (down, restarting, refusing, a query that failed); the
    message says why. The bridge waits and asks again, keeping its place in the bus."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose a kernel or a session is: what a lifecycle event needs besides its own fields."""

    session_uuid: uuid.UUID
    session_name: str | None
    access_key: str | None
    domain: str | None
    group_id: uuid.UUID | None
    user_uuid: uuid.UUID | None
    kernel_id: uuid.UUID
    cluster_role: str = "main"
    cluster_idx: int = 0


@dataclass(frozen=True, slots=True)
class EndedSession:
    """A session that ended (terminated or cancelled), for reconciliation."""

    owner: Owner
    #: TERMINATED or CANCELLED
    status: str
    #: SUCCESS, FAILURE or UNDEFINED (``sessions.result``)
    result: str
    #: when it ended, seconds since the epoch
    ended_at: float
    #: the main kernel (kernel id, role, index), None if it has no row
    main_kernel: tuple[uuid.UUID, str, int] | None


_KERNELS: Final = """
SELECT id, session_id, session_name, access_key, domain_name, group_id, user_uuid,
       cluster_role, cluster_idx
FROM kernels WHERE id = ANY($1::uuid[])
"""
# the session's row, and its main kernel's id (the id a session step's ``kernelId`` shows;
# from 23.03 a kernel has an id of its own: registry.py 23.09.0 L1035-1036)
_SESSIONS: Final = """
SELECT s.id, s.name, s.access_key, s.domain_name, s.group_id, s.user_uuid, k.id AS kernel_id
FROM sessions s LEFT JOIN kernels k ON k.session_id = s.id AND k.cluster_role = 'main'
WHERE s.id = ANY($1::uuid[])
"""
# 22.09 has no sessions table: the main kernel's row stands for its session
_SESSIONS_2209: Final = """
SELECT session_id AS id, session_name AS name, access_key, domain_name, group_id, user_uuid,
       id AS kernel_id
FROM kernels WHERE session_id = ANY($1::uuid[]) AND cluster_role = 'main'
"""
_GROUPS: Final = "SELECT id, name FROM groups WHERE id = ANY($1::uuid[])"
_HAS_SESSIONS: Final = "SELECT to_regclass('sessions') IS NOT NULL"
# Sessions that ended in a window, with their main kernel. A session's end is the time
# status_history recorded for its status (a JSON object of status name -> ISO timestamp, at
# 23.09 and 26.8: manager/models/utils.py 23.09.0 L265-298), else terminated_at (26.8.1 does
# not set it on every way to CANCELLED: repositories/scheduler/db_source/db_source.py
# L3493-3512). Status and result are text (PostgreSQL enums at 23.09, varchar at 26.8).
_ENDED: Final = """
SELECT s.id, s.name, s.access_key, s.domain_name, s.group_id, s.user_uuid,
       s.status::text AS status, COALESCE(s.result::text, 'UNDEFINED') AS result,
       COALESCE((s.status_history ->> s.status::text)::timestamptz, s.terminated_at) AS ended,
       k.id AS kernel_id, k.cluster_role, k.cluster_idx
FROM sessions s
LEFT JOIN kernels k ON k.session_id = s.id AND k.cluster_role = 'main'
WHERE s.status::text IN ('TERMINATED', 'CANCELLED')
  AND COALESCE((s.status_history ->> s.status::text)::timestamptz, s.terminated_at)
      BETWEEN $1 AND $2
ORDER BY ended, s.id
LIMIT $3
"""
_ENDED_2209: Final = """
SELECT k.session_id AS id, k.session_name AS name, k.access_key, k.domain_name, k.group_id,
       k.user_uuid, k.status::text AS status, COALESCE(k.result::text, 'UNDEFINED') AS result,
       k.terminated_at AS ended, k.id AS kernel_id, k.cluster_role, k.cluster_idx
FROM kernels k
WHERE k.cluster_role = 'main' AND k.status::text IN ('TERMINATED', 'CANCELLED')
  AND k.terminated_at BETWEEN $1 AND $2
ORDER BY ended, k.session_id
LIMIT $3
"""


def _owner(row: Any, *, kernel: bool) -> Owner:
    if kernel:
        return Owner(
            session_uuid=row["session_id"],
            session_name=row["session_name"],
            access_key=row["access_key"],
            domain=row["domain_name"],
            group_id=row["group_id"],
            user_uuid=row["user_uuid"],
            kernel_id=row["id"],
            cluster_role=row["cluster_role"] or "main",
            cluster_idx=row["cluster_idx"] or 0,
        )
    return Owner(
        session_uuid=row["id"],
        session_name=row["name"],
        access_key=row["access_key"],
        domain=row["domain_name"],
        group_id=row["group_id"],
        user_uuid=row["user_uuid"],
        # a session not (yet) with a main kernel's row shows its own id, as 22.09 did
        kernel_id=row["kernel_id"] or row["id"],
    )


class Database:
    """A small asyncpg pool on Backend.AI's database, made on first use and made again after
    PostgreSQL went away. Every read raises :class:`DatabaseUnavailable` when it cannot be
    answered, never anything else."""

    def __init__(self, dsn: str, *, pool_size: int = 4, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._has_sessions: bool | None = None
        self.where = redact_url(dsn)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        try:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=self._timeout,
                    command_timeout=self._timeout,
                )
            rows: list[Any] = await self._pool.fetch(query, *args, timeout=self._timeout)
            return rows
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
                await self.close()  # its connections are dead: the next read makes a new pool
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def has_sessions(self) -> bool:
        """Whether the schema has the ``sessions`` table (Backend.AI 23.03 and later)."""
        if self._has_sessions is None:
            rows = await self._fetch(_HAS_SESSIONS)
            self._has_sessions = bool(rows[0][0])
            log.info(
                "backend.ai's database %s: %s",
                self.where,
                "sessions table (23.03+)" if self._has_sessions else "no sessions table (22.09)",
            )
        return self._has_sessions

    async def kernels(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Owner]:
        rows = await self._fetch(_KERNELS, list(ids))
        return {row["id"]: _owner(row, kernel=True) for row in rows}

    async def sessions(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Owner]:
        query = _SESSIONS if await self.has_sessions() else _SESSIONS_2209
        rows = await self._fetch(query, list(ids))
        return {row["id"]: _owner(row, kernel=False) for row in rows}

    async def groups(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        rows = await self._fetch(_GROUPS, list(ids))
        return {row["id"]: row["name"] for row in rows}

    async def ended_sessions(
        self, since: datetime, until: datetime, limit: int
    ) -> list[EndedSession]:
        """Sessions that ended between ``since`` and ``until`` (timezone-aware), oldest
        first, at most ``limit``."""
        query = _ENDED if await self.has_sessions() else _ENDED_2209
        rows = await self._fetch(query, since, until, limit)
        out: list[EndedSession] = []
        for row in rows:
            main = None
            if row["kernel_id"] is not None:
                main = (row["kernel_id"], row["cluster_role"] or "main", row["cluster_idx"] or 0)
            out.append(
                EndedSession(
                    owner=_owner(row, kernel=False),
                    status=row["status"],
                    result=row["result"],
                    ended_at=row["ended"].timestamp(),
                    main_kernel=main,
                )
            )
        return out


class RowCache:
    """The most recently used rows, at most ``size`` (0: none kept)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._rows: OrderedDict[tuple[str, uuid.UUID], Owner] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, kind: str, key: uuid.UUID) -> Owner | None:
        row = self._rows.get((kind, key))
        if row is not None:
            self._rows.move_to_end((kind, key))
        return row

    def put(self, kind: str, key: uuid.UUID, row: Owner) -> None:
        if self._size <= 0:
            return
        self._rows[(kind, key)] = row
        self._rows.move_to_end((kind, key))
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)


#: seconds a group's name is trusted before it is read again (a rename shows within it)
GROUP_TTL: Final = 60.0
#: the waits before each further look-up of a row not yet visible, then every second
_RETRY_WAITS: Final = (0.05, 0.2)


class Lookup:
    """Whose each step is: rows from the cache or the database, a row not yet visible asked
    for again (after 50 ms, 200 ms, then every second) until ``timeout`` seconds have passed
    with PostgreSQL answering; while PostgreSQL does not answer it waits (with backoff) and
    keeps asking, never giving up, so the bridge keeps its place in the bus."""

    def __init__(
        self,
        db: Database,
        *,
        cache_size: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_unavailable: Callable[[str | None], None] | None = None,
    ) -> None:
        self.db = db
        self.cache = RowCache(cache_size)
        self.timeout = timeout
        self._clock = clock
        self._groups: dict[uuid.UUID, tuple[str, float]] = {}
        #: called with the reason when PostgreSQL stops answering, and None when it is back
        self._on_unavailable = on_unavailable
        self._down: str | None = None

    @property
    def available(self) -> bool:
        """False from a read PostgreSQL did not answer until one it answers."""
        return self._down is None

    def _available(self, reason: str | None) -> None:
        if (reason is None) == (self._down is None):
            return
        self._down = reason
        if reason is None:
            log.warning("backend.ai's database answers again")
        else:
            log.warning("backend.ai's database does not answer (%s); waiting", reason)
        if self._on_unavailable is not None:
            self._on_unavailable(reason)

    async def ask(self, read: Callable[[], Any]) -> Any:
        """``read()`` until PostgreSQL answers it (backoff 0.5 s doubling to 5 s)."""
        delay = 0.5
        while True:
            try:
                result = await read()
            except DatabaseUnavailable as exc:
                self._available(str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._available(None)
            return result

    async def owners(
        self, wanted: Iterable[tuple[Literal["kernel", "session"], uuid.UUID]]
    ) -> dict[tuple[str, uuid.UUID], Owner]:
        """The rows of ``wanted`` (kind, id) that exist; the ones still missing after
        ``timeout`` seconds are left out."""
        found: dict[tuple[str, uuid.UUID], Owner] = {}
        missing: set[tuple[Literal["kernel", "session"], uuid.UUID]] = set()
        for kind, key in wanted:
            row = self.cache.get(kind, key)
            if row is None:
                missing.add((kind, key))
            else:
                found[(kind, key)] = row
        deadline: float | None = None
        waits = iter(_RETRY_WAITS)
        while missing:
            kernels = [key for kind, key in missing if kind == "kernel"]
            sessions = [key for kind, key in missing if kind == "session"]
            if kernels:
                rows = await self.ask(functools.partial(self.db.kernels, kernels))
                for key, row in rows.items():
                    self._found(found, missing, "kernel", key, row)
            if sessions:
                rows = await self.ask(functools.partial(self.db.sessions, sessions))
                for key, row in rows.items():
                    self._found(found, missing, "session", key, row)
            if not missing:
                break
            now = self._clock()
            if deadline is None:
                deadline = now + self.timeout
            if now >= deadline:
                break
            await asyncio.sleep(min(next(waits, 1.0), deadline - now))
        return found

    def _found(
        self,
        found: dict[tuple[str, uuid.UUID], Owner],
        missing: set[tuple[Literal["kernel", "session"], uuid.UUID]],
        kind: Literal["kernel", "session"],
        key: uuid.UUID,
        row: Owner,
    ) -> None:
        self.cache.put(kind, key, row)
        found[(kind, key)] = row
        missing.discard((kind, key))

    async def group_names(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Group names by id (kept :data:`GROUP_TTL` seconds); unknown ids are left out."""
        now = self._clock()
        names: dict[uuid.UUID, str] = {}
        stale: list[uuid.UUID] = []
        for key in set(ids):
            known = self._groups.get(key)
            if known is not None and now - known[1] < GROUP_TTL:
                names[key] = known[0]
            else:
                stale.append(key)
        if stale:
            rows = await self.ask(functools.partial(self.db.groups, stale))
            for key, name in rows.items():
                self._groups[key] = (name, now)
                names[key] = name
        return names
