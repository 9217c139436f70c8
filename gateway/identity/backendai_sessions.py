"""Backend.AI's console sessions as a way in: a browser logged in to Backend.AI's web server
(the stock web UI) streams from the gateway with the session it already has.

What the web server keeps, read in its source (never imported):

* ``RedisStorage`` (``src/ai/backend/common/web/session/redis_storage.py``, 23.09.0 and
  26.8.1) stores a session as ``SET AIOHTTP_SESSION_<id> <json> EX <max_age>`` in the web
  server's Redis, database 0 (``redis_helper.get_redis_object(config["session"]["redis"])``,
  ``src/ai/backend/web/server.py`` 23.09.0; ``db_id=REDIS_STATISTICS_DB``, which is 0, 26.8.1).
  The id is ``uuid.uuid4().hex`` (its ``key_factory``), or from 26.x the manager's login
  session token (``_bind_session_to_manager_token``, ``server.py`` 26.8.1), which is
  ``uuid4().hex`` too (``manager/repositories/auth/db_source/db_source.py`` 26.8.1): 32
  lowercase hex digits either way. The request names it by the header
  ``X-BackendAI-SessionID`` if present, else the cookie ``AIOHTTP_SESSION``
  (``load_session``).
* The value is ``json.dumps({"created": <int>, "session": {...}})`` plus, from 24.09,
  ``"expiration_dt": <int>`` (``AbstractStorage._get_session_data``,
  ``src/ai/backend/common/web/session/__init__.py``); a session past its ``expiration_dt`` is
  empty to the web server (``Session.__init__``, 26.8.1). A login sets
  ``session["authenticated"] = True`` and ``session["token"] = {"type": "keypair",
  "access_key", "secret_key", "role", "status"}`` (``login_handler``, ``server.py`` 23.09.0
  and 26.8.1); a logout (``session.invalidate()``) stores ``{}`` under the same key, and the
  key's TTL removes it at ``max_age``.

How this method uses it (:class:`BackendAISessions`):

* Only a request without an ``Authorization`` header (a signature wins) and with the header or
  the cookie. An id that is not 32 lowercase hex digits is refused (401) without a Redis
  read; any other costs exactly one ``GET``. The gateway never writes there, and never logs
  the id (it is the session's bearer secret); a guessable id would be the web server's
  weakness, not one this widens: Redis finds the key, no comparison of ours is involved.
* The session must be authenticated, not past its ``expiration_dt``, and name a keypair the
  identity store holds, active, with the same secret as the session's token (compared in
  constant time): Backend.AI's manager would refuse a request signed with any other.
* Rights come from the identity store (:class:`~.models.Identity`), never from the
  ``role`` copied into the session.
* Its credential keeps the session's Redis key and a digest of the secret. The re-check
  (on identity changes, and every re-authorization period: the web server announces nothing,
  so a logout is seen within that period) ends the stream ``logged_out`` when the key is
  gone, empty or no longer authenticated, or names another keypair; ``session_expired`` past
  its ``expiration_dt``; ``revoked`` as for signatures (keypair gone, inactive, or another
  secret). While the web server's Redis does not answer, logouts wait; the keypair's checks
  still apply.

The web server's Redis needs only a user that may ``GET AIOHTTP_SESSION_*``
(``gateway acl --backendai-sessions``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, cast

import msgspec
import redis.asyncio as aredis
from redis.exceptions import RedisError

from gateway.errors import AuthFailed, Unavailable

from .methods import Credential, Recheck, RequestView
from .store import IdentityStore

__all__ = [
    "KEY_PREFIX",
    "SESSION_COOKIE",
    "SESSION_HEADER",
    "BackendAICookieCredential",
    "BackendAISessionCredential",
    "BackendAISessions",
    "ConsoleSession",
    "decode_console_session",
    "valid_session_id",
]

log = logging.getLogger(__name__)

#: the web server's cookie (``RedisStorage(cookie_name="AIOHTTP_SESSION")``)
SESSION_COOKIE: Final = "AIOHTTP_SESSION"
#: the header that names the session instead (lower case, as :class:`RequestView` has them)
SESSION_HEADER: Final = "x-backendai-sessionid"
#: ``cookie_name + "_" + id``: the Redis key of a session
KEY_PREFIX: Final = SESSION_COOKIE + "_"
#: ``uuid.uuid4().hex``
_SESSION_ID: Final = re.compile(r"[0-9a-f]{32}")
#: GETs per pipeline in a re-check
_BATCH: Final = 1000


class _Token(msgspec.Struct):
    type: str = ""
    access_key: str = ""
    secret_key: str = ""


class _Session(msgspec.Struct):
    authenticated: bool = False
    token: _Token | None = None


class ConsoleSession(msgspec.Struct):
    """What the gateway reads of a stored session (other fields are ignored)."""

    created: float | None = None
    expiration_dt: float | None = None
    session: _Session | None = None

    def keypair(self) -> _Token | None:
        """The session's keypair token when it is logged in, else None."""
        inner = self.session
        if inner is None or inner.authenticated is not True or inner.token is None:
            return None
        token = inner.token
        if token.type != "keypair" or not token.access_key or not token.secret_key:
            return None
        return token

    def expired(self, now: float) -> bool:
        """Past its ``expiration_dt`` (26.8.1 ``Session.__init__``: unless created after it,
        which the web server treats as a fresh lifetime)."""
        end = self.expiration_dt
        if end is None or now <= end:
            return False
        return not (self.created is not None and self.created > end)


_decoder: Final = msgspec.json.Decoder(ConsoleSession)


def decode_console_session(raw: bytes) -> ConsoleSession | None:
    """A stored session, or None when it is not one (``{}`` after a logout decodes to an
    empty one, which is not logged in)."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def valid_session_id(value: str) -> bool:
    """Whether ``value`` has the form the web server's ids have (checked before any read)."""
    return _SESSION_ID.fullmatch(value) is not None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(slots=True, eq=False)
class BackendAISessionCredential(Credential):
    """A console session named by the ``X-BackendAI-SessionID`` header: its Redis key (the
    id inside is a bearer secret: never in a repr), the digest of its keypair's secret, and
    the last ``expiration_dt`` seen (so a key that vanished after it reads as expired)."""

    key: str = field(default="", repr=False)
    secret_digest: bytes = field(default=b"", repr=False)
    session_end: float | None = None
    method: ClassVar[str] = "backendai_session"


@dataclass(slots=True, eq=False)
class BackendAICookieCredential(BackendAISessionCredential):
    """The same, from the ``AIOHTTP_SESSION`` cookie: a browser's EventSource, which
    resumes by itself (the ``retry:`` hint, rebalancing)."""

    method: ClassVar[str] = "backendai_cookie"
    resumes: ClassVar[bool] = True


class BackendAISessions:
    """Backend.AI's console sessions, read from the web server's Redis (see the module
    docstring). ``redis``: a client on that Redis (the caller owns and closes it)."""

    credential: ClassVar[type[Credential]] = BackendAISessionCredential

    def __init__(
        self,
        redis: aredis.Redis,
        store: IdentityStore,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._store = store
        self._wall = wall_clock
        self._reachable = True

    async def authenticate(self, request: RequestView) -> BackendAISessionCredential | None:
        if "authorization" in request.headers:
            return None
        # the header first, as the web server reads them; empty is absent (a logout's
        # cleared cookie)
        session_id = request.headers.get(SESSION_HEADER) or None
        kind: type[BackendAISessionCredential] = BackendAISessionCredential
        if session_id is None:
            session_id = request.cookies.get(SESSION_COOKIE) or None
            kind = BackendAICookieCredential
            if session_id is None:
                return None
        if not valid_session_id(session_id):
            raise AuthFailed("Session not found")
        key = KEY_PREFIX + session_id
        try:
            raw = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            log.warning("Backend.AI session store unreachable: %s", type(exc).__name__)
            raise Unavailable("Backend.AI session store unavailable", retry_after=2) from None
        stored = None if raw is None else decode_console_session(cast(bytes, raw))
        token = None if stored is None else stored.keypair()
        if stored is None or token is None or stored.expired(self._wall()):
            raise AuthFailed("Session not found")
        resolved = await self._store.resolve(token.access_key)
        if resolved is None or not resolved[0].active:
            log.info("Backend.AI session of key %r refused: keypair unknown or inactive",
                     token.access_key)  # fmt: skip
            raise AuthFailed("Session revoked")
        keypair, identity = resolved
        digest = _digest(token.secret_key)
        if not hmac.compare_digest(digest, _digest(keypair.secret_key)):
            log.info("Backend.AI session of key %r refused: not the keypair's current secret",
                     token.access_key)  # fmt: skip
            raise AuthFailed("Session revoked")
        return kind(identity, key=key, secret_digest=digest, session_end=stored.expiration_dt)

    async def recheck(self, credentials: Sequence[Credential]) -> list[Recheck]:
        own = [c for c in credentials if isinstance(c, BackendAISessionCredential)]
        stored = await self._fetch(sorted({c.key for c in own}))
        return [await self._verdict(c, stored) for c in credentials]

    async def _fetch(self, keys: Sequence[str]) -> Mapping[str, bytes | None] | None:
        """The stored values of ``keys`` now (None: gone), or None when the web server's
        Redis does not answer (logged once per outage)."""
        found: dict[str, bytes | None] = {}
        try:
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.get(key)
                    values = await pipe.execute()
                found.update(zip(chunk, values, strict=True))
        except (RedisError, OSError) as exc:
            if self._reachable:
                log.warning(
                    "Backend.AI session store unreachable (%s): logouts are not seen until "
                    "it answers; keypair changes still end streams",
                    type(exc).__name__,
                )
            self._reachable = False
            return None
        if not self._reachable:
            log.info("Backend.AI session store answers again")
            self._reachable = True
        return found

    async def _verdict(
        self, credential: Credential, stored: Mapping[str, bytes | None] | None
    ) -> Recheck:
        assert isinstance(credential, BackendAISessionCredential)
        now = self._wall()
        if stored is not None:  # else unknown now: the keypair's checks alone
            raw = stored.get(credential.key)
            session = None if raw is None else decode_console_session(raw)
            if session is None:
                end = credential.session_end
                return "session_expired" if end is not None and now >= end - 1.0 else "logged_out"
            token = session.keypair()
            if token is None or token.access_key != credential.identity.access_key:
                return "logged_out"  # logged out, or another user logged in with it
            if session.expired(now):
                return "session_expired"
            credential.session_end = session.expiration_dt  # the web server may extend it
            if not hmac.compare_digest(_digest(token.secret_key), credential.secret_digest):
                return "revoked"  # logged in again with another secret: open anew
        resolved = await self._store.resolve(credential.identity.access_key)
        if resolved is None or not resolved[0].active:
            return "revoked"
        keypair, identity = resolved
        if not hmac.compare_digest(_digest(keypair.secret_key), credential.secret_digest):
            return "revoked"
        if identity.user_id != credential.identity.user_id:
            return "revoked"  # the keypair now speaks for someone else
        return identity
