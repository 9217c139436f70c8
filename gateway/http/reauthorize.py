"""Open streams follow identity: any change to who a caller is or what it may see ends its
open streams on every replica within a second (docs/design.md §4, "Rights follow identity").

Each stream remembers what opened it (:class:`Grant`, on ``Connection.grant``): the identity,
the query, the secret's digest (signed requests) or the browser session and its expiry
(cookies). :class:`Reauthorizer` re-checks grants

* when a change message comes (:mod:`gateway.identity.changes`: every identity and session
  write publishes one, in its own transaction): the named cache entries are dropped and the
  streams the change can touch are re-checked at once;
* after every (re)subscription: messages may have been missed, so every stream, uncached;
* every ``period`` seconds (the backstop for a lost message): every stream, through the cache;
* at a browser session's expiry time: its streams end (``session_expired``).

A re-check ends a stream with ``server_close`` and a reason saying why:

=================  ==========================================================================
``revoked``        its keypair was removed or deactivated, got a new secret, or its user is gone;
                   or its browser session was opened with a secret or password since replaced
``rights_changed`` the role, domain or user changed so that its filter would differ, or its query
                   is no longer allowed (a group removed, an owner key out of reach)
``logged_out``     its browser session was ended (logout, or replaced by a new login)
``session_expired`` its browser session reached its end
=================  ==========================================================================

A change that leaves a stream's filter as it was (an import that rewrites the same data)
ends nothing. The client reconnects with ``Last-Event-ID`` and gets its new rights.

Never on data loss: before judging anyone, the store's presence is checked; when Redis lost
the identity store (:class:`~gateway.identity.store.IdentityStoreLost`) every decision is
held and open streams keep their rights until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aredis
from redis.exceptions import RedisError

from gateway.errors import GatewayError
from gateway.fanout.connection import Connection
from gateway.fanout.frames import CloseReason
from gateway.fanout.hub import Hub
from gateway.identity.changes import Change, decode_change
from gateway.identity.models import Identity
from gateway.identity.store import IdentityStore, IdentityStoreLost
from gateway.identity.visibility import StreamQuery, build_filter
from publisher.keys import Keys

from .websession import BrowserSession, decode_session, still_bound

__all__ = ["Grant", "Reauthorizer"]

log = logging.getLogger(__name__)

#: how soon a re-check that Redis could not answer is tried again, seconds
_RETRY = 0.5


@dataclass(slots=True)
class Grant:
    """What the edge proved when a stream opened; ``expires_at`` is ``time.time()`` seconds."""

    identity: Identity
    query: StreamQuery
    method: Literal["signature", "cookie"]
    secret_digest: bytes | None = None
    session: str | None = None
    expires_at: float | None = None

    def touched_by(self, change: Change) -> bool:
        """Whether ``change`` can alter this stream's rights."""
        if change.all:
            return True
        identity, query = self.identity, self.query
        if identity.access_key in change.keys or identity.user_id in change.users:
            return True
        if self.session is not None and self.session in change.sessions:
            return True
        if query.group is not None and any(
            g.partition(":")[2] == query.group for g in change.groups
        ):
            return True
        # another key's owner may have moved out of a domain admin's reach
        return query.owner_access_key is not None and bool(change.keys or change.users)


class Reauthorizer:
    """Re-checks the grants of this replica's open streams (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        store: IdentityStore,
        redis: aredis.Redis,
        keys: Keys,
        *,
        period: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``period``: seconds between backstop re-checks of every stream."""
        self._hub = hub
        self._store = store
        self._redis = redis
        self._keys = keys
        self._period = period
        self._wall = wall_clock
        self._pending = Change()
        self._wake = asyncio.Event()
        self._expiries: list[tuple[float, int, Connection]] = []
        self._order = itertools.count()
        #: streams ended, by reason (``kev_reauth_closes_total``)
        self.closes: Counter[str] = Counter()
        #: change messages received (``kev_identity_changes_total``)
        self.changes = 0

    # -- fed by the edge and the subscriber (never await) -------------------------------------

    def track(
        self,
        connection: Connection,
        identity: Identity,
        query: StreamQuery,
        method: Literal["signature", "cookie"],
        *,
        secret_digest: bytes | None = None,
        session: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        """Remember what opened ``connection`` (before it is registered with the hub)."""
        connection.grant = Grant(identity, query, method, secret_digest, session, expires_at)
        if expires_at is not None:
            first = self._expiries[0][0] if self._expiries else None
            if len(self._expiries) > 2 * len(self._hub) + 64:
                # entries of streams gone long before their session expires: drop them
                self._expiries = [e for e in self._expiries if not e[2].closed]
                heapq.heapify(self._expiries)
            heapq.heappush(self._expiries, (expires_at, next(self._order), connection))
            if first is None or expires_at < first:
                self._wake.set()

    def on_message(self, data: bytes) -> None:
        """A message on the changes channel (the subscriber's read loop)."""
        change = decode_change(data)
        if change:
            self.changes += 1
            self._pending = self._pending.merged(change)
            self._wake.set()

    def on_subscribed(self) -> None:
        """The subscription is (re)established: what was published meanwhile is unknown."""
        self._pending = Change(all=True)
        self._wake.set()

    # -- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: act on changes, expiries and the backstop period."""
        with contextlib.suppress(RedisError, OSError):
            await self._store.presence()  # /ready shows the store's state from the start
        next_backstop = self._wall() + self._period
        while True:
            now = self._wall()
            wake_at = next_backstop
            if self._expiries:
                wake_at = min(wake_at, self._expiries[0][0])
            if not self._wake.is_set() and wake_at > now:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # task's cancellation (publisher.tasks)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake_at - now):
                        await self._wake.wait()
            self._wake.clear()
            now = self._wall()
            self._expire(now)
            change, self._pending = self._pending, Change()
            backstop = now >= next_backstop
            if backstop:
                next_backstop = now + self._period
            if not change and not backstop:
                continue
            # a message's change is read from Redis, not from the cache; the backstop's
            # through the cache (whose ttl bounds a change whose message was lost)
            self._store.forget(change)
            if not await self.recheck(Change(all=True) if backstop else change):
                self._pending = self._pending.merged(change)
                await asyncio.sleep(_RETRY)
                self._wake.set()

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, _, conn = heapq.heappop(self._expiries)
            grant = conn.grant
            if not conn.closed and isinstance(grant, Grant) and grant.expires_at is not None:
                if grant.expires_at <= now:
                    self._close([conn], "session_expired")

    async def recheck(self, change: Change) -> bool:
        """Re-check every open stream ``change`` can touch; False when nothing could be
        decided (Redis away, or the identity store lost: every stream kept)."""
        touched = [
            c
            for c in self._hub.connections()
            if isinstance(c.grant, Grant) and c.grant.touched_by(change)
        ]
        if not touched:
            return True
        try:
            was_lost = self._store.state == "lost"
            if await self._store.presence() != "ok":
                return False  # lost (logged by the store), or never there: judge no one
            if was_lost and not change.all:
                # back (re-imported): whatever the import left out is gone for good now
                return await self.recheck(Change(all=True))
            sessions = await self._sessions(touched)
            verdicts: dict[CloseReason, list[Connection]] = {}
            for conn in touched:
                reason = await self._verdict(conn, sessions)
                if reason is not None:
                    verdicts.setdefault(reason, []).append(conn)
        except (RedisError, OSError, IdentityStoreLost) as exc:
            log.warning("re-check of %d streams postponed: %s", len(touched), exc)
            return False
        for reason, conns in verdicts.items():
            self._close(conns, reason)
        return True

    async def _sessions(self, conns: list[Connection]) -> dict[str, BrowserSession | None]:
        """The browser sessions ``conns`` were opened with, as stored now (None: gone)."""
        names = sorted(
            {c.grant.session for c in conns if isinstance(c.grant, Grant) and c.grant.session}
        )
        if not names:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(self._keys.browser_session(name))
            found = await pipe.execute()
        return {
            name: None if raw is None else decode_session(raw)
            for name, raw in zip(names, found, strict=True)
        }

    async def _verdict(
        self, conn: Connection, sessions: dict[str, BrowserSession | None]
    ) -> CloseReason | None:
        grant = conn.grant
        assert isinstance(grant, Grant)
        session = None if grant.session is None else sessions.get(grant.session)
        if grant.session is not None and session is None:
            expired = grant.expires_at is not None and self._wall() >= grant.expires_at - 1.0
            return "session_expired" if expired else "logged_out"
        resolved = await self._store.resolve(grant.identity.access_key)
        if resolved is None or not resolved[0].active:
            return "revoked"
        keypair, identity = resolved
        if grant.secret_digest is not None:
            if hashlib.sha256(keypair.secret_key.encode()).digest() != grant.secret_digest:
                return "revoked"
        if grant.session is not None and identity.user_id != grant.identity.user_id:
            return "revoked"  # the session's keypair now speaks for someone else
        if session is not None and not await still_bound(session, keypair, self._store):
            return "revoked"  # opened with a secret or password that has since been replaced
        query = grant.query
        if identity == grant.identity and query.group is None and query.owner_access_key is None:
            return None  # the filter follows from the identity alone
        try:
            filter = await build_filter(identity, query, self._store)
        except IdentityStoreLost:
            raise
        except GatewayError:  # Forbidden, GroupNotFound: the query is no longer allowed
            return "rights_changed"
        if filter != conn.filter:
            return "rights_changed"
        grant.identity = identity  # e.g. a superadmin made monitor: it sees the same
        return None

    def _close(self, conns: list[Connection], reason: CloseReason) -> None:
        per_key: Counter[str] = Counter()
        for conn in conns:
            if not conn.closed:
                conn.close(reason)
                per_key[conn.access_key] += 1
        for access_key, n in sorted(per_key.items()):
            self.closes[reason] += n
            log.info("closed %d streams of key=%s: %s", n, access_key, reason)
