"""Open streams follow identity: any change to who a caller is or what it may see ends its
open streams on every replica within a second (docs/design.md §4, "Rights follow identity").

Each stream remembers what opened it (:class:`Grant`, on ``Connection.grant``): the query and
the credential its auth method made (:mod:`gateway.identity.methods`: the identity, and what
that method re-checks: the secret's digest, the browser session and its expiry). Streams
opened with equal credentials and queries (an SDK's or a dashboard's several streams, a
fleet of watchers on one key) share one grant: what a re-check learns (an identity, a
session's end) is learnt for all of them at once.
:class:`Reauthorizer` re-checks grants

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
import heapq
import itertools
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from redis.exceptions import RedisError

from gateway.errors import GatewayError
from gateway.fanout.connection import Connection
from gateway.fanout.frames import CloseReason
from gateway.fanout.hub import Hub
from gateway.identity.changes import Change, decode_change
from gateway.identity.methods import AuthMethod, Credential
from gateway.identity.models import Identity
from gateway.identity.store import IdentityStore, IdentityStoreLost
from gateway.identity.visibility import StreamQuery, build_filter

__all__ = ["Grant", "Reauthorizer"]

log = logging.getLogger(__name__)

#: how soon a re-check that Redis could not answer is tried again, seconds
_RETRY = 0.5


@dataclass(slots=True, weakref_slot=True)
class Grant:
    """What the edge proved when a stream opened: the credential and the query."""

    credential: Credential
    query: StreamQuery

    def key(self) -> tuple[object, ...]:
        """What makes two grants one: the credential's kind, each of its fields as they are
        now, and the query."""
        credential = self.credential
        values = (getattr(credential, f.name) for f in fields(credential))
        return (type(credential), *values, self.query)

    def touched_by(self, change: Change) -> bool:
        """Whether ``change`` can alter this stream's rights."""
        if change.all or self.credential.touched_by(change):
            return True
        query = self.query
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
        methods: Sequence[AuthMethod],
        *,
        period: float,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``methods``: the auth methods whose credentials streams keep (each re-checks its
        own); ``period``: seconds between backstop re-checks of every stream."""
        self._hub = hub
        self._store = store
        #: which method re-checks which kind of credential
        self._method_of = {method.credential: method for method in methods}
        self._period = period
        self._wall = wall_clock
        self._pending = Change()
        self._wake = asyncio.Event()
        self._expiries: list[tuple[float, int, Connection]] = []
        self._order = itertools.count()
        #: the grant of every distinct credential and query with an open stream (streams
        #: share it: a grant per stream was ~450 bytes with its credential, identity and query)
        self._grants: weakref.WeakValueDictionary[tuple[object, ...], Grant] = (
            weakref.WeakValueDictionary()
        )
        #: streams ended, by reason (``kev_reauth_closes_total``)
        self.closes: Counter[str] = Counter()
        #: change messages received (``kev_identity_changes_total``)
        self.changes = 0

    # -- fed by the edge and the subscriber (never await) -------------------------------------

    def _method_for(self, kind: type[Credential]) -> AuthMethod:
        """The method that re-checks credentials of ``kind`` (or of a class it derives
        from); ``TypeError`` for one no method declares, a wiring error."""
        for cls in kind.__mro__:
            method = self._method_of.get(cls)
            if method is not None:
                return method
        raise TypeError(f"no auth method re-checks a {kind.__name__}")

    def track(self, connection: Connection, credential: Credential, query: StreamQuery) -> None:
        """Remember what opened ``connection`` (before it is registered with the hub).
        ``TypeError`` (the stream is refused) for a credential no method re-checks."""
        self._method_for(type(credential))
        connection.grant = grant = self._shared(Grant(credential, query))
        credential = grant.credential
        expires_at = credential.expires_at
        if expires_at is not None:
            first = self._expiries[0][0] if self._expiries else None
            if len(self._expiries) > 2 * len(self._hub) + 64:
                # entries of streams gone long before their session expires: drop them
                self._expiries = [e for e in self._expiries if not e[2].closed]
                heapq.heapify(self._expiries)
            heapq.heappush(self._expiries, (expires_at, next(self._order), connection))
            if first is None or expires_at < first:
                self._wake.set()

    def _shared(self, grant: Grant) -> Grant:
        """The grant the open streams hold that equals ``grant`` (credential and query alike,
        as they are now: one whose credential a re-check has moved on is not it), else
        ``grant``, now theirs to share."""
        key = grant.key()
        try:
            shared = self._grants.get(key)
        except TypeError:  # a credential with a field that cannot be hashed: its own grant
            return grant
        if shared is not None and shared.key() == key:
            return shared
        self._grants[key] = grant
        return grant

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
            if not conn.closed and isinstance(grant, Grant):
                expires_at = grant.credential.expires_at
                if expires_at is not None and expires_at <= now:
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
            verdicts: dict[CloseReason, list[Connection]] = {}
            for conn, reason in await self._verdicts(touched):
                if reason is not None:
                    verdicts.setdefault(reason, []).append(conn)
        except (RedisError, OSError, IdentityStoreLost) as exc:
            log.warning("re-check of %d streams postponed: %s", len(touched), exc)
            return False
        for reason, conns in verdicts.items():
            self._close(conns, reason)
        return True

    async def _verdicts(
        self, conns: list[Connection]
    ) -> list[tuple[Connection, CloseReason | None]]:
        """Each stream's auth method re-checks its credential (one batch per method); then a
        stream still allowed keeps its filter only if its identity and query still give it."""
        by_method: dict[type[Credential], list[Connection]] = {}
        for conn in conns:
            assert isinstance(conn.grant, Grant)
            by_method.setdefault(type(conn.grant.credential), []).append(conn)
        results: list[tuple[Connection, CloseReason | None]] = []
        for kind, group in by_method.items():
            method = self._method_for(kind)
            grants = [c.grant for c in group if isinstance(c.grant, Grant)]
            verdicts = await method.recheck([g.credential for g in grants])
            for conn, grant, verdict in zip(group, grants, verdicts, strict=True):
                if isinstance(verdict, str):
                    results.append((conn, verdict))
                else:
                    results.append((conn, await self._filter_verdict(conn, grant, verdict)))
        return results

    async def _filter_verdict(
        self, conn: Connection, grant: Grant, identity: Identity
    ) -> CloseReason | None:
        credential, query = grant.credential, grant.query
        if (
            identity == credential.identity
            and query.group is None
            and query.owner_access_key is None
        ):
            return None  # the filter follows from the identity alone
        try:
            filter = await build_filter(identity, query, self._store)
        except IdentityStoreLost:
            raise
        except GatewayError:  # Forbidden, GroupNotFound: the query is no longer allowed
            return "rights_changed"
        if filter != conn.filter:
            return "rights_changed"
        credential.identity = identity  # e.g. a superadmin made monitor: it sees the same
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
