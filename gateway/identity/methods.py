"""The ways a request proves who it is, each one unit: how it authenticates a request, what
an open stream keeps of it for later (a :class:`Credential`), and how that is re-checked when
identities change. The stream endpoint (:func:`authenticate`) and the re-authorization of open
streams (:class:`gateway.replica.reauthorize.Reauthorizer`) speak to these units only.

* :class:`SignedRequests`: a Backend.AI keypair signature (SDKs, CLIs, curl). Its credential
  keeps a digest of the secret that signed: a new secret ends the stream (``revoked``).
* :class:`GatewaySessions`: the gateway's own browser session cookie
  (:mod:`.sessions`). Its credential keeps the session's name and expiry: a logout ends the
  stream (``logged_out``), the expiry ``session_expired``.
* :class:`~.backendai_sessions.BackendAISessions` (its own module): Backend.AI's console
  session (the web server's ``AIOHTTP_SESSION`` cookie or ``X-BackendAI-SessionID``), read
  from the web server's Redis. Its credential keeps the session's key and the secret's
  digest: a logout ends the stream (``logged_out``), a new secret ``revoked``.

Tried in the order :func:`authenticate` is given them; a method returns None for a request
that does not use it. To add a method: a :class:`Credential` subclass with what its re-check
needs, and a class with ``authenticate`` and ``recheck`` (ARCHITECTURE.md, "Where to change
what").
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Protocol

from gateway.fanout.frames import CloseReason

from .authenticate import authenticate_keypair
from .changes import Change
from .models import Identity
from .sessions import SESSION_COOKIE, BrowserSession, SessionStore, still_bound
from .signing import MAX_SKEW
from .store import IdentityStore

__all__ = [
    "AuthMethod",
    "Credential",
    "GatewaySessions",
    "Recheck",
    "RequestView",
    "SessionCredential",
    "SignedCredential",
    "SignedRequests",
    "authenticate",
]

log = logging.getLogger(__name__)

#: a re-check's outcome for one stream: a reason to end it, or who it speaks for now
Recheck = CloseReason | Identity


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a method reads of a request (no HTTP framework here): the method, the target as
    sent (path and ``?query``), headers with lower-case names, and cookies."""

    method: str
    target: str
    headers: Mapping[str, str]
    cookies: Mapping[str, str]


@dataclass(slots=True, eq=False)
class Credential:
    """What a request proved, kept by its stream for the re-check.

    ``identity`` is who it spoke for when last checked; ``expires_at`` (``time.time()``
    seconds) ends the stream when reached; ``resumes``: the client reconnects by itself with
    its last id (a browser's EventSource), so it gets a ``retry:`` hint and may be ended to
    rebalance load."""

    identity: Identity
    expires_at: float | None = None
    #: the method's name, in logs and metrics
    method: ClassVar[str] = ""
    resumes: ClassVar[bool] = False

    def touched_by(self, change: Change) -> bool:
        """Whether ``change`` can alter what this credential allows."""
        return self.identity.access_key in change.keys or self.identity.user_id in change.users


class AuthMethod(Protocol):
    """One way in (see the module docstring)."""

    #: the kind of credential this method makes (and re-checks)
    credential: ClassVar[type[Credential]]

    async def authenticate(self, request: RequestView) -> Credential | None:
        """The request's credential, or None when it does not use this method. Raises
        :class:`~gateway.errors.InvalidAuthParams` (malformed) or
        :class:`~gateway.errors.AuthFailed` (wrong or revoked)."""
        ...

    async def recheck(self, credentials: Sequence[Credential]) -> list[Recheck]:
        """For each credential (all of this method), why its stream must end, or who it
        speaks for now (the caller then compares the stream's filter)."""
        ...


async def authenticate(request: RequestView, methods: Sequence[AuthMethod]) -> Credential:
    """The credential of the first method the request uses. The last method is the default:
    it raises for a request that carries nothing (:class:`SignedRequests`: 400)."""
    for method in methods:
        credential = await method.authenticate(request)
        if credential is not None:
            return credential
    raise AssertionError("the last method answers every request")  # pragma: no cover


# -- keypair signatures -------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class SignedCredential(Credential):
    """A keypair signature: the SHA-256 of the secret that signed (a new secret ends it)."""

    secret_digest: bytes = b""
    #: the position a drained replica left for this very signed request, claimed (removed)
    #: while its stale date was let through (gateway.replica.handoff); None otherwise
    handed_off: str | None = None
    method: ClassVar[str] = "signature"


#: ``(access key, Authorization header) -> the position handed off for it (claimed), or None``
Claim = Callable[[str, str], Awaitable[str | None]]


class SignedRequests:
    """Backend.AI's keypair signature (HMAC-SHA256, docs/design.md §4), checked against the
    identity store; dates may be ``max_skew`` off the server's clock."""

    credential: ClassVar[type[Credential]] = SignedCredential

    def __init__(
        self,
        store: IdentityStore,
        *,
        max_skew: timedelta = MAX_SKEW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        claim: Claim | None = None,
    ) -> None:
        """``claim(access_key, authorization)``: for a request whose date is past
        ``max_skew``, the position a drained replica left for that very signed request,
        removed as it is returned (atomic: a request is let in once), or None: it is refused
        as stale (gateway.replica.handoff)."""
        self._store = store
        self._max_skew = max_skew
        self._clock = clock
        self._claim = claim

    async def authenticate(self, request: RequestView) -> SignedCredential:
        claimed: list[str] = []
        claim = self._claim

        async def stale_ok(access_key: str, authorization: str) -> bool:
            position = None if claim is None else await claim(access_key, authorization)
            if position is not None:
                claimed.append(position)
            return position is not None

        keypair, identity = await authenticate_keypair(
            request.method,
            request.target,
            request.headers,
            self._store,
            now=self._clock(),
            max_skew=self._max_skew,
            stale_ok=stale_ok if claim is not None else None,
        )
        return SignedCredential(
            identity,
            secret_digest=_digest(keypair.secret_key),
            handed_off=claimed[0] if claimed else None,
        )

    async def recheck(self, credentials: Sequence[Credential]) -> list[Recheck]:
        verdicts: list[Recheck] = []
        for credential in credentials:
            assert isinstance(credential, SignedCredential)
            resolved = await self._store.resolve(credential.identity.access_key)
            if resolved is None or not resolved[0].active:
                verdicts.append("revoked")
            elif _digest(resolved[0].secret_key) != credential.secret_digest:
                verdicts.append("revoked")
            else:
                verdicts.append(resolved[1])
        return verdicts


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# -- the gateway's browser sessions -------------------------------------------------------------


@dataclass(slots=True, eq=False)
class SessionCredential(Credential):
    """A browser session: its stored name (a logout ends the stream)."""

    session: str = ""
    method: ClassVar[str] = "cookie"
    resumes: ClassVar[bool] = True

    def touched_by(self, change: Change) -> bool:
        return self.session in change.sessions or Credential.touched_by(self, change)


class GatewaySessions:
    """The gateway's browser session cookie (``kev_session``), for a request without an
    ``Authorization`` header (a signature wins over a cookie)."""

    credential: ClassVar[type[Credential]] = SessionCredential

    def __init__(
        self,
        sessions: SessionStore,
        store: IdentityStore,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._wall = wall_clock

    async def authenticate(self, request: RequestView) -> SessionCredential | None:
        if "authorization" in request.headers:
            return None
        token = request.cookies.get(SESSION_COOKIE)
        if token is None:
            return None
        found = await self._sessions.find(token)
        return SessionCredential(found.identity, expires_at=found.expires_at, session=found.name)

    async def recheck(self, credentials: Sequence[Credential]) -> list[Recheck]:
        names = sorted({c.session for c in credentials if isinstance(c, SessionCredential)})
        stored = await self._sessions.fetch(names)
        return [await self._verdict(c, stored) for c in credentials]

    async def _verdict(
        self, credential: Credential, stored: Mapping[str, BrowserSession | None]
    ) -> Recheck:
        assert isinstance(credential, SessionCredential)
        session = stored.get(credential.session)
        if session is None:
            expires = credential.expires_at
            expired = expires is not None and self._wall() >= expires - 1.0
            return "session_expired" if expired else "logged_out"
        resolved = await self._store.resolve(credential.identity.access_key)
        if resolved is None or not resolved[0].active:
            return "revoked"
        keypair, identity = resolved
        if identity.user_id != credential.identity.user_id:
            return "revoked"  # the session's keypair now speaks for someone else
        if not await still_bound(session, keypair, self._store):
            return "revoked"  # opened with a secret or password that has since been replaced
        return identity
