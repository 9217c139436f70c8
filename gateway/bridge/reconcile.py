"""After a gap in Backend.AI's bus, what PostgreSQL can still tell: the sessions that ended
(terminated or cancelled) while the bridge did not follow, and their terminal events.

Backend.AI offers no replay of its bus; its database keeps each session's status and when it
changed (``sessions.status``, ``terminated_at``, the ``status_history`` JSON;
``src/ai/backend/manager/models/session.py`` 23.09.0). For each session that ended in the gap
the bridge publishes what a stream would have shown, each with the reason ``reconciled``:

* terminated: the main kernel's ``kernel_terminated`` (its ``result`` from
  ``sessions.result``), ``session_terminated``, and ``session_success`` or
  ``session_failure`` when the session has a result;
* cancelled: ``session_cancelled``.

A session whose end the gateway's history already holds (published before the gap, or by an
earlier run of this same reconciliation), or that the source still holds after the gap, is
left out, so a client sees each end once. Starts and other steps missed in the gap cannot be
reconstructed: the gap marker before these events tells every stream so.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import redis.asyncio as aredis

from publisher.bus import Bus
from publisher.schema import InvalidEvent, KernelEvent, decode_event

from .database import Database, EndedSession, Lookup
from .lifecycle import Step

__all__ = ["REASON", "TERMINAL", "Reconciler"]

log = logging.getLogger(__name__)

#: the reason every reconciled event carries
REASON: Final = "reconciled"
#: the events that end a session, in either API generation's names
TERMINAL: Final = frozenset(
    {
        "kernel_terminated",
        "kernel_cancelled",
        "kernel_success",
        "kernel_failure",
        "session_terminated",
        "session_cancelled",
        "session_success",
        "session_failure",
    }
)
#: seconds looked back before the gap's start: a session's end is stamped in its transaction,
#: which may be a moment before or after its event reached the bus
MARGIN: Final = 60.0
#: sessions reconciled after one gap at most (the rest are covered by the marker alone)
MAX_SESSIONS: Final = 10_000
#: history entries read back at most to see which ends are already published
_MAX_SCAN: Final = 200_000
_CHUNK: Final = 1000
_MAX_PAYLOAD: Final = 64 * 1024


class Reconciler:
    """Terminal events for the sessions that ended in a gap (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        lookup: Lookup,
        gateway: aredis.Redis,
        bus: Bus,
        *,
        source: str,
        limit: float,
    ) -> None:
        self._db = db
        self._lookup = lookup
        self._gateway = gateway
        self._bus = bus
        self._source = source
        #: seconds back it looks at most
        self._limit = limit

    async def events(
        self, since: float, until: float, seen: Iterable[Step] = ()
    ) -> list[KernelEvent]:
        """The terminal events of the sessions that ended between ``since`` (less
        :data:`MARGIN`, and no further back than the limit) and ``until`` (seconds since the
        epoch), oldest end first, leaving out those whose end is in ``seen`` (steps the
        source still holds) or already in the gateway's history. Waits while PostgreSQL
        does not answer; raises ``redis`` errors (the caller retries the gap)."""
        start = max(since - MARGIN, until - self._limit)
        if start >= until:
            return []
        ended: list[EndedSession] = await self._lookup.ask(
            lambda: self._db.ended_sessions(_utc(start), _utc(until), MAX_SESSIONS)
        )
        if len(ended) >= MAX_SESSIONS:
            log.warning(
                "more than %d sessions ended in the gap; the later ones are told only by the "
                "gap marker",
                MAX_SESSIONS,
            )
        if not ended:
            return []
        # a session step's key is the session's id (a kernel step's is the kernel's)
        done = {step.key for step in seen if step.name in TERMINAL and step.lookup == "session"}
        done |= await self._published_ends(start, {s.owner.session_uuid for s in ended})
        groups = await self._lookup.group_names(
            s.owner.group_id for s in ended if s.owner.group_id is not None
        )
        events: list[KernelEvent] = []
        for session in ended:
            if session.owner.session_uuid in done:
                continue
            group = groups.get(session.owner.group_id) if session.owner.group_id else None
            try:
                events += _terminal_events(session, group or "")
            except InvalidEvent as exc:
                log.warning("session %s cannot be reconciled: %s", session.owner.session_uuid, exc)
        return events

    async def _published_ends(self, start: float, sessions: set[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``sessions`` have an end in the gateway's history from ``start`` on."""
        found: set[uuid.UUID] = set()
        after = f"{max(0, int((start - MARGIN) * 1000))}-0"
        scanned = 0
        while scanned < _MAX_SCAN:
            reply = await self._bus.read_history(self._gateway, after, _CHUNK, _MAX_PAYLOAD)
            count, last, rows = int(reply[0]), reply[1], reply[2]
            for _, payload in rows:
                if not isinstance(payload, bytes):
                    continue
                try:
                    event = decode_event(payload)
                except ValueError:  # a marker, or a payload this bridge cannot read
                    continue
                if event.name in TERMINAL and event.session_uuid in sessions:
                    found.add(event.session_uuid)
            scanned += count
            if count < _CHUNK:
                break
            after = last.decode() if isinstance(last, bytes) else str(last)
        return found


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _terminal_events(session: EndedSession, group: str) -> list[KernelEvent]:
    owner = session.owner

    def event(name: str, **fields: object) -> KernelEvent:
        base: dict[str, object] = {
            "name": name,
            "session_id": owner.session_name or "",
            "session_uuid": owner.session_uuid,
            "kernel_id": owner.kernel_id,
            "owner_access_key": owner.access_key or "",
            "owner_user_id": str(owner.user_uuid) if owner.user_uuid else "",
            "domain": owner.domain or "",
            "group": group,
            "reason": REASON,
            "timestamp": session.ended_at,
        }
        return KernelEvent(**(base | fields))  # type: ignore[arg-type]

    if session.status == "CANCELLED":
        return [event("session_cancelled")]
    out: list[KernelEvent] = []
    if session.main_kernel is not None:
        kernel_id, role, idx = session.main_kernel
        result = session.result if session.result in ("SUCCESS", "FAILURE") else "UNDEFINED"
        out.append(
            event(
                "kernel_terminated",
                kernel_id=kernel_id,
                cluster_role=role,
                cluster_idx=idx,
                result=result,
            )
        )
    out.append(event("session_terminated"))
    if session.result == "SUCCESS":
        out.append(event("session_success"))
    elif session.result == "FAILURE":
        out.append(event("session_failure"))
    return out
