"""Browser sessions, stored in Redis: what a login proves, how a session is kept, found,
capped and ended. The HTTP side (``POST /auth/login``, the cookie) is
:mod:`gateway.http.login`; the auth method that reads the cookie is
:class:`gateway.identity.methods.GatewaySessions`.

* A session is named by a random token (``secrets.token_urlsafe(32)``, the cookie's value).
  Redis keeps it under the token's SHA-256 (``Keys.browser_session``), never the token
  itself, with the session's TTL; every replica reads it, none caches it.
* A session remembers which keypair it speaks for. Every use resolves that keypair again
  through the identity store, so deactivating a keypair ends its browser sessions at once,
  exactly as it does for signed requests, and a changed role or domain applies at once.
* A session is bound to the credential it was opened with: a digest
  (:func:`credential_digest`) of the keypair's secret (keypair logins) or of the user's
  password hash (password logins). Every use compares it with the current one
  (:func:`still_bound`), so a new secret or password ends the sessions opened with the old one.
* Ending a session (logout, a login replacing the browser's previous session, the cap) deletes
  it and announces it in the same transaction (:mod:`.changes`): every replica ends the
  streams opened with it (``logged_out``).
* Each access key has a sorted set (``Keys.browser_sessions_of``) of its sessions' names,
  scored by creation time; a login beyond ``max_per_key`` live sessions ends the oldest.
  Memory per session: the session string (~330 bytes with its key, ``MEMORY USAGE``) plus its
  index entry (~110 bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import msgspec
import redis.asyncio as aredis

from gateway.errors import AuthFailed
from publisher.keys import Keys

from .changes import make_change, queue_change
from .models import Identity, Keypair, Role
from .passwords import PasswordChecks
from .store import IdentityStore

__all__ = [
    "SESSION_COOKIE",
    "BrowserSession",
    "OpenSession",
    "SessionStore",
    "credential_digest",
    "decode_session",
    "still_bound",
    "token_hash",
]

log = logging.getLogger(__name__)

#: the cookie that carries a session's token
SESSION_COOKIE: Final = "kev_session"
#: what ``secrets.token_urlsafe(32)`` produces; anything else is refused without a Redis read
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

LoginMethod = Literal["keypair", "password"]


class BrowserSession(msgspec.Struct, frozen=True):
    """What Redis holds for one browser session (msgpack)."""

    access_key: str
    user_id: str
    role: Role
    domain: str
    method: LoginMethod
    created: float
    #: :func:`credential_digest` of what the login proved; empty (sessions stored before
    #: sessions were bound) never matches, so such a session is refused
    credential: bytes = b""


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(BrowserSession)


def token_hash(token: str) -> str:
    """The name a session token is stored under (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def valid_token(token: str) -> bool:
    """Whether ``token`` has the form a session token has (checked before any Redis read)."""
    return _TOKEN.fullmatch(token) is not None


def credential_digest(method: LoginMethod, credential: str) -> bytes:
    """What a session keeps of the credential it was opened with: SHA-256 of the keypair's
    secret (``keypair``) or of the user's stored password hash (``password``), by method."""
    return hashlib.sha256(f"kev-session:{method}\0{credential}".encode()).digest()


def decode_session(raw: bytes) -> BrowserSession | None:
    """A stored session, or None when it does not decode (logged by the caller)."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


async def still_bound(session: BrowserSession, keypair: Keypair, store: IdentityStore) -> bool:
    """Whether the credential ``session`` was opened with is still the current one:
    ``keypair`` (the session's, just resolved through ``store``) has the same secret, or the
    session's user the same password hash. The user was loaded by that resolve: a cache hit."""
    if session.method == "keypair":
        current = keypair.secret_key
    else:
        user = await store.get_user(session.user_id)
        current = user.password_hash if user is not None else ""
    if not current:
        return False
    return hmac.compare_digest(session.credential, credential_digest(session.method, current))


@dataclass(frozen=True, slots=True)
class OpenSession:
    """A request's valid browser session: who it speaks for, the name it is stored under
    (:func:`token_hash`), and when it expires (``time.time()`` seconds)."""

    identity: Identity
    name: str
    expires_at: float


class SessionStore:
    """The browser sessions in Redis (see the module docstring): ``ttl`` seconds each, at
    most ``max_per_key`` per access key; ``checks`` verify passwords."""

    def __init__(
        self,
        redis: aredis.Redis,
        keys: Keys,
        store: IdentityStore,
        checks: PasswordChecks,
        *,
        ttl: float,
        max_per_key: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._checks = checks
        self.ttl = ttl
        self.max_per_key = max_per_key

    # -- logging in -----------------------------------------------------------------------------

    async def has_account(self, *, access_key: str | None, user_id: str | None) -> bool:
        """Whether a login may name an account at all: the keypair exists, or the user does
        and has a password. Cheap (no password check): what the login throttle asks before
        checking a credential from a blocked address (:mod:`gateway.http.login`)."""
        if access_key is not None:
            return await self._store.get_keypair(access_key) is not None
        user = await self._store.get_user(user_id) if user_id is not None else None
        return user is not None and bool(user.password_hash)

    async def login_with_keypair(self, access_key: str, secret_key: str) -> tuple[Identity, bytes]:
        """Who a keypair login speaks for, and :func:`credential_digest` of the secret it
        proved. Raises :class:`~gateway.errors.AuthFailed` (the same for every reason; the
        log says which)."""
        keypair = await self._store.get_keypair(access_key)
        expected = keypair.secret_key if keypair is not None else ""
        secret_ok = hmac.compare_digest(expected.encode(), secret_key.encode())
        if keypair is None or not secret_ok or not keypair.active:
            why = (
                "unknown key" if keypair is None else "bad secret" if not secret_ok else "inactive"
            )
            log.info("login failed: access key %r: %s", access_key, why)
            raise AuthFailed("Login failed")
        resolved = await self._store.resolve(keypair.access_key)
        if resolved is None:
            log.info("login failed: access key %r belongs to no user", access_key)
            raise AuthFailed("Login failed")
        return resolved[1], credential_digest("keypair", keypair.secret_key)

    async def login_with_password(self, user_id: str, password: str) -> tuple[Identity, bytes]:
        """Who a password login speaks for (the user's first active keypair: a session speaks
        for one key, the one its streams' filters name), and :func:`credential_digest` of the
        password hash it matched. Raises :class:`~gateway.errors.AuthFailed`, or
        :class:`~gateway.errors.Unavailable` when too many passwords wait to be checked."""
        user = await self._store.get_user(user_id)
        pw_hash = user.password_hash if user is not None and user.password_hash else None
        ok = await self._checks.verify(password, pw_hash)
        if user is None or pw_hash is None or not ok:
            why = "unknown user" if user is None else "no password" if pw_hash is None else "bad"
            log.info("login failed: user %r: %s", user_id, why)
            raise AuthFailed("Login failed")
        # Listing scans every keypair; logins are rare.
        active = sorted(
            kp.access_key for kp in await self._store.list_keypairs(user.user_id) if kp.active
        )
        if not active:
            log.info("login failed: user %r has no active keypair", user_id)
            raise AuthFailed("Login failed")
        return Identity(active[0], user.user_id, user.role, user.domain), credential_digest(
            "password", pw_hash
        )

    # -- sessions -------------------------------------------------------------------------------

    def index(self, access_key: str) -> str:
        """The sorted set of ``access_key``'s sessions (name -> created, seconds)."""
        return self._keys.browser_sessions_of(access_key)

    async def open(
        self,
        identity: Identity,
        method: LoginMethod,
        credential: bytes,
        *,
        replaces: str | None = None,
    ) -> str:
        """Store a new session for ``identity``; returns its token (the cookie's value). The
        browser's previous session (``replaces``, its token) ends in the same transaction, and
        the key is held to ``max_per_key`` sessions (the oldest end)."""
        token = secrets.token_urlsafe(32)
        name = token_hash(token)
        session = BrowserSession(
            identity.access_key,
            identity.user_id,
            identity.role,
            identity.domain,
            method=method,
            created=time.time(),
            credential=credential,
        )
        ttl_ms = max(1, round(self.ttl * 1000))
        index = self.index(identity.access_key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._keys.browser_session(name), _encoder.encode(session), px=ttl_ms)
            # The key's session index: expired entries dropped, this one added.
            pipe.zremrangebyscore(index, "-inf", session.created - self.ttl)
            pipe.zadd(index, {name: session.created})
            pipe.pexpire(index, ttl_ms)
            if replaces is not None and valid_token(replaces):
                old = token_hash(replaces)
                pipe.delete(self._keys.browser_session(old))
                queue_change(pipe, self._keys, make_change(sessions=[old]), identity=False)
            await pipe.execute()
        await self.cap(identity.access_key)
        log.info(
            "browser session opened key=%s user=%s via=%s",
            identity.access_key,
            identity.user_id,
            method,
        )
        return token

    async def find(self, token: str) -> OpenSession:
        """The session ``token`` names, checked now. Raises :class:`~gateway.errors.AuthFailed`
        for an unknown or expired session, one whose keypair is gone or inactive, or one whose
        secret or password was replaced since (deleted then), and
        :class:`~gateway.identity.store.IdentityStoreLost` when Redis lost its data."""
        if not valid_token(token):
            raise AuthFailed("Session not found")
        name = token_hash(token)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._keys.browser_session(name))
            pipe.pttl(self._keys.browser_session(name))
            raw, pttl = await pipe.execute()
        if raw is None:  # never was, logged out, or expired; or Redis lost its data
            await self._store.raise_if_lost()
            raise AuthFailed("Session not found")
        session = decode_session(cast(bytes, raw))  # decode_responses is off
        if session is None:
            log.warning("browser session %s… is stored garbled: refused", name[:12])
            raise AuthFailed("Session not found")
        resolved = await self._store.resolve(session.access_key)
        if resolved is None or not resolved[0].active or resolved[1].user_id != session.user_id:
            log.info("browser session of key %r refused: keypair gone or inactive",
                     session.access_key)  # fmt: skip
            raise AuthFailed("Session revoked")
        if not await still_bound(session, resolved[0], self._store):
            # Gone for good. Not announced: the identity write that replaced the credential
            # already was (its streams end ``revoked`` on every replica), and a session
            # announcement would read as a logout.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._keys.browser_session(name))
                pipe.zrem(self.index(session.access_key), name)
                await pipe.execute()
            log.info(
                "browser session of key %r (user %r, via %s) refused: its %s was replaced",
                session.access_key,
                session.user_id,
                session.method,
                "secret" if session.method == "keypair" else "password",
            )
            raise AuthFailed("Session revoked")
        ttl = pttl / 1000 if pttl is not None and pttl >= 0 else self.ttl
        return OpenSession(resolved[1], name, time.time() + ttl)

    async def fetch(self, names: Sequence[str]) -> dict[str, BrowserSession | None]:
        """The sessions stored under ``names`` now (None: gone), in one round trip."""
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

    async def end(self, token: str) -> None:
        """Log out: delete the session and announce it, in one transaction (every replica
        ends the streams opened with it, ``logged_out``)."""
        if not valid_token(token):
            return
        name = token_hash(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.browser_session(name))
            queue_change(pipe, self._keys, make_change(sessions=[name]), identity=False)
            await pipe.execute()

    async def cap(self, access_key: str) -> list[str]:
        """Hold ``access_key`` to ``max_per_key`` live sessions: forget index entries whose
        session is gone (logged out, expired), delete the oldest live ones beyond the cap and
        announce them (their streams end, ``logged_out``). Returns the names ended. Two logins
        racing may both end the same session; deleting it twice is harmless."""
        index = self.index(access_key)
        if await self._redis.zcard(index) <= self.max_per_key:
            return []
        raw = await self._redis.zrange(index, 0, -1)  # oldest first
        members = [cast(bytes, m).decode() for m in raw]
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in members:
                pipe.exists(self._keys.browser_session(name))
            alive = await pipe.execute()
        gone = [name for name, exists in zip(members, alive, strict=True) if not exists]
        live = [name for name, exists in zip(members, alive, strict=True) if exists]
        evict = live[: max(0, len(live) - self.max_per_key)]
        async with self._redis.pipeline(transaction=True) as pipe:
            if gone or evict:
                pipe.zrem(index, *gone, *evict)
            if evict:
                pipe.delete(*(self._keys.browser_session(name) for name in evict))
                queue_change(pipe, self._keys, make_change(sessions=evict), identity=False)
            await pipe.execute()
        if evict:
            log.info(
                "access key %s over %d browser sessions: ended the %d oldest",
                access_key,
                self.max_per_key,
                len(evict),
            )
        return evict
