"""Browser sessions: ``POST /auth/login`` trades a keypair (or a user's password) for an
HttpOnly cookie whose session lives in Redis, so ``new EventSource(url, {withCredentials:
true})`` works against any replica (docs/design.md §4).

* The cookie carries a random token (``secrets.token_urlsafe(32)``). Redis keeps the session
  under the token's SHA-256 (``Keys.browser_session``), never the token itself, with the
  session's TTL; every replica reads it, none caches it.
* A session remembers which keypair it speaks for. Every use resolves that keypair again
  through the identity store, so deactivating a keypair ends its browser sessions at once
  (every identity write is announced to every replica), exactly as it does for signed
  requests, and a changed role or domain applies at once.
* A session is bound to the credential it was opened with: it keeps a digest
  (:func:`credential_digest`) of the keypair's secret (keypair logins) or of the user's
  password hash (password logins). Every use compares it with the current one, so giving the
  keypair a new secret, or the user a new password, ends the sessions opened with the old one
  (deleted on their next use, 401; their streams end ``revoked``): a leaked secret stops
  working for browsers when the operator rotates it, as it does for signatures.
* Logging out (and a login replacing the browser's previous session) deletes the session and
  announces it in the same transaction (:mod:`gateway.identity.changes`): every replica ends
  the streams opened with it (``logged_out``); a stream also ends when its session expires
  (``session_expired``; :mod:`gateway.http.reauthorize`).
* CSRF: login and logout accept only ``application/json`` (which a cross-site form cannot
  send without a preflight) and, when the browser names an ``Origin``, only the gateway's own
  or one of ``cors_origins``. The cookie is ``SameSite=Lax``, so pages of other sites do not
  carry it on their requests at all.
* Failed logins all get the same 401, whatever was wrong; the log says what.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Final, Literal, cast
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import AuthFailed, Forbidden, GatewayError, InvalidParams, RateLimited
from gateway.identity.changes import make_change, queue_change
from gateway.identity.models import Identity, Keypair, Role
from gateway.identity.store import IdentityStore
from gateway.identity.throttle import LoginThrottle, Subject
from gateway.settings import Settings

from .login_guard import PasswordChecks, cap_sessions, client_address, session_index
from .state import GatewayState

__all__ = [
    "MAX_LOGIN_BODY",
    "SESSION_COOKIE",
    "BrowserSession",
    "CookieSession",
    "LoginRequest",
    "auth_routes",
    "authenticate_cookie",
    "cookie_session",
    "credential_digest",
    "decode_session",
    "still_bound",
    "token_hash",
]

log = logging.getLogger(__name__)

SESSION_COOKIE: Final = "kev_session"
#: largest login body read, bytes; anything larger is refused unread
MAX_LOGIN_BODY: Final = 4096
#: what ``secrets.token_urlsafe(32)`` produces; anything else is refused without a Redis read
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class LoginRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``{"access_key", "secret_key"}`` or ``{"user_id", "password"}``, nothing else."""

    access_key: _Text | None = None
    secret_key: _Secret | None = None
    user_id: _Text | None = None
    password: _Secret | None = None

    def __repr__(self) -> str:  # never the secret, in a log line or a traceback
        return f"LoginRequest(access_key={self.access_key!r}, user_id={self.user_id!r})"


class BrowserSession(msgspec.Struct, frozen=True):
    """What Redis holds for one browser session (msgpack)."""

    access_key: str
    user_id: str
    role: Role
    domain: str
    method: Literal["keypair", "password"]
    created: float
    #: :func:`credential_digest` of what the login proved; empty (sessions stored before
    #: sessions were bound) never matches, so such a session is refused
    credential: bytes = b""


_session_encoder: Final = msgspec.msgpack.Encoder()
_session_decoder: Final = msgspec.msgpack.Decoder(BrowserSession)
_login_decoder: Final = msgspec.json.Decoder(LoginRequest)
_json_encoder: Final = msgspec.json.Encoder()
_NO_STORE: Final = {"Cache-Control": "no-store"}


def token_hash(token: str) -> str:
    """The name a session token is stored under (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def credential_digest(method: Literal["keypair", "password"], credential: str) -> bytes:
    """What a session keeps of the credential it was opened with: SHA-256 of the keypair's
    secret (``keypair``) or of the user's stored password hash (``password``), by method."""
    return hashlib.sha256(f"kev-session:{method}\0{credential}".encode()).digest()


def decode_session(raw: bytes) -> BrowserSession | None:
    """A stored session, or None when it does not decode (logged by the caller)."""
    try:
        return _session_decoder.decode(raw)
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


def _bad_body(msg: str) -> InvalidParams:
    return InvalidParams("Invalid login request", msg)


# -- CSRF ---------------------------------------------------------------------------------------


def _check_same_origin(request: Request, settings: Settings) -> None:
    """JSON only, and from the gateway's own origin or a configured one when ``Origin`` is sent."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise _bad_body("send Content-Type: application/json")
    origin = request.headers.get("origin")
    if origin is None or origin in settings.cors_origins:
        return
    # Own origin: compared by host[:port] with the Host header, not by scheme, because TLS
    # usually ends at the load balancer (the page is https, the gateway sees http) and the
    # load balancer passes Host through unchanged (deploy/README.md).
    parts = urlsplit(origin)
    if parts.scheme in ("http", "https") and parts.netloc == request.headers.get("host"):
        return
    log.info("login/logout refused from origin %r", origin[:200])
    raise Forbidden("Origin not allowed", f"origin {origin[:200]!r}")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_LOGIN_BODY):
        raise _bad_body(f"the body must be at most {MAX_LOGIN_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            raise _bad_body(f"the body must be at most {MAX_LOGIN_BODY} bytes")
    return bytes(body)


def _parse_login(body: bytes) -> LoginRequest:
    try:
        login = _login_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _bad_body(str(exc)) from None
    except msgspec.DecodeError:
        raise _bad_body("the body is not a JSON object") from None
    keypair = login.access_key is not None or login.secret_key is not None
    password = login.user_id is not None or login.password is not None
    complete = (login.access_key is not None and login.secret_key is not None) or (
        login.user_id is not None and login.password is not None
    )
    if keypair == password or not complete:
        raise _bad_body('give {"access_key", "secret_key"} or {"user_id", "password"}')
    return login


# -- checking credentials -----------------------------------------------------------------------


async def _keypair_login(login: LoginRequest, state: GatewayState) -> tuple[Identity, bytes]:
    """Who the login speaks for, and :func:`credential_digest` of the secret it proved."""
    assert login.access_key is not None and login.secret_key is not None
    keypair = await state.store.get_keypair(login.access_key)
    expected = keypair.secret_key if keypair is not None else ""
    secret_ok = hmac.compare_digest(expected.encode(), login.secret_key.encode())
    if keypair is None or not secret_ok or not keypair.active:
        why = "unknown key" if keypair is None else "bad secret" if not secret_ok else "inactive"
        log.info("login failed: access key %r: %s", login.access_key, why)
        raise AuthFailed("Login failed")
    resolved = await state.store.resolve(keypair.access_key)
    if resolved is None:
        log.info("login failed: access key %r belongs to no user", login.access_key)
        raise AuthFailed("Login failed")
    return resolved[1], credential_digest("keypair", keypair.secret_key)


async def _password_login(
    login: LoginRequest, state: GatewayState, checks: PasswordChecks
) -> tuple[Identity, bytes]:
    """Who the login speaks for, and :func:`credential_digest` of the password hash it
    matched (a password changed meanwhile makes the new session fail at its first use)."""
    assert login.user_id is not None and login.password is not None
    user = await state.store.get_user(login.user_id)
    pw_hash = user.password_hash if user is not None and user.password_hash else None
    ok = await checks.verify(login.password, pw_hash)
    if user is None or pw_hash is None or not ok:
        why = "unknown user" if user is None else "no password" if pw_hash is None else "bad"
        log.info("login failed: user %r: %s", login.user_id, why)
        raise AuthFailed("Login failed")
    # A browser session speaks for one keypair (its key is what the stream's filters name):
    # the user's first active one. Listing scans every keypair; logins are rare.
    active = sorted(
        kp.access_key for kp in await state.store.list_keypairs(user.user_id) if kp.active
    )
    if not active:
        log.info("login failed: user %r has no active keypair", login.user_id)
        raise AuthFailed("Login failed")
    identity = Identity(active[0], user.user_id, user.role, user.domain)
    return identity, credential_digest("password", pw_hash)


# -- sessions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CookieSession:
    """A request's valid browser session: who it speaks for, the name it is stored under
    (:func:`token_hash`), and when it expires (``time.time()`` seconds)."""

    identity: Identity
    token_hash: str
    expires_at: float


async def _session_identity(token: str, state: GatewayState) -> CookieSession:
    if not _TOKEN.fullmatch(token):
        raise AuthFailed("Session not found")
    name = token_hash(token)
    async with state.redis.pipeline(transaction=False) as pipe:
        pipe.get(state.keys.browser_session(name))
        pipe.pttl(state.keys.browser_session(name))
        raw, pttl = await pipe.execute()
    if raw is None:  # never was, logged out, or expired; or Redis lost its data
        await state.store.raise_if_lost()
        raise AuthFailed("Session not found")
    session = decode_session(cast(bytes, raw))  # decode_responses is off
    if session is None:
        log.warning("browser session %s… is stored garbled: refused", name[:12])
        raise AuthFailed("Session not found")
    resolved = await state.store.resolve(session.access_key)
    if resolved is None or not resolved[0].active or resolved[1].user_id != session.user_id:
        log.info("browser session of key %r refused: keypair gone or inactive", session.access_key)
        raise AuthFailed("Session revoked")
    if not await still_bound(session, resolved[0], state.store):
        # Opened with a secret or password that has since been replaced: gone for good. Not
        # announced: the identity write that replaced it already was (its streams end
        # ``revoked`` on every replica), and a session announcement would read as a logout.
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.delete(state.keys.browser_session(name))
            pipe.zrem(session_index(state, session.access_key), name)
            await pipe.execute()
        log.info(
            "browser session of key %r (user %r, via %s) refused: its %s was replaced",
            session.access_key,
            session.user_id,
            session.method,
            "secret" if session.method == "keypair" else "password",
        )
        raise AuthFailed("Session revoked")
    ttl = pttl / 1000 if pttl is not None and pttl >= 0 else state.settings.session_ttl
    return CookieSession(resolved[1], name, time.time() + ttl)


async def cookie_session(request: Request, state: GatewayState) -> CookieSession | None:
    """The request's browser session; None when it carries no session cookie.

    Raises :class:`~gateway.errors.AuthFailed` for an unknown or expired session, one whose
    keypair has been removed or deactivated, or one whose keypair secret (keypair logins) or
    user password (password logins) has been replaced since (:func:`still_bound`), and
    :class:`~gateway.identity.store.IdentityStoreLost` when Redis lost its data.
    """
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    return await _session_identity(token, state)


async def authenticate_cookie(request: Request, state: GatewayState) -> Identity | None:
    """Who the request's session cookie speaks for (:func:`cookie_session`'s identity)."""
    session = await cookie_session(request, state)
    return None if session is None else session.identity


def _set_cookie(response: Response, token: str, settings: Settings, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        secure=settings.cookie_secure,
        httponly=True,
        samesite="Lax",  # type: ignore[arg-type]  # Starlette checks it case-insensitively
    )


def _identity_response(identity: Identity) -> Response:
    return Response(
        _json_encoder.encode(identity), media_type="application/json", headers=_NO_STORE
    )


class _Endpoints:
    """The ``/auth/*`` handlers of one app (one event loop), with their password limiter."""

    def __init__(self) -> None:
        self._checks: PasswordChecks | None = None
        self._throttle: LoginThrottle | None = None

    def _guards(self, state: GatewayState) -> tuple[PasswordChecks, LoginThrottle]:
        # Built on first use: the routes exist before the lifespan has made the state.
        if self._checks is None or self._throttle is None:
            settings = state.settings
            self._checks = PasswordChecks(settings.login_hash_threads, settings.login_hash_queue)
            self._throttle = LoginThrottle(
                state.redis,
                state.keys,
                free=settings.login_free_failures,
                free_per_address=settings.login_free_failures_per_address,
                backoff=settings.login_backoff,
                backoff_max=settings.login_backoff_max,
                window=settings.login_failure_window,
            )
        return self._checks, self._throttle

    async def login(self, request: Request) -> Response:
        state: GatewayState = request.state.gateway
        settings = state.settings
        try:
            _check_same_origin(request, settings)
            login = _parse_login(await _read_body(request))
            checks, throttle = self._guards(state)
            account: Subject = (
                ("account", f"key:{login.access_key}")
                if login.access_key is not None
                else ("account", f"user:{login.user_id}")
            )
            address: Subject = ("address", client_address(request.scope, settings))
            wait = await throttle.attempt(account, address)
            if wait:
                log.info("login throttled: %s from %s for %.1fs", account[1], address[1], wait)
                raise RateLimited(
                    "Too many failed logins",
                    "try again later",
                    retry_after=LoginThrottle.retry_after(wait),
                )
            if login.access_key is not None:
                identity, credential = await _keypair_login(login, state)
            else:
                identity, credential = await _password_login(login, state, checks)
            await throttle.succeeded(account, address)
        except GatewayError as exc:
            state.auth_failures[exc.title] += 1
            raise
        token = secrets.token_urlsafe(32)
        session = BrowserSession(
            identity.access_key,
            identity.user_id,
            identity.role,
            identity.domain,
            method="keypair" if login.access_key is not None else "password",
            created=time.time(),
            credential=credential,
        )
        ttl_ms = max(1, round(settings.session_ttl * 1000))
        async with state.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                state.keys.browser_session(token_hash(token)),
                _session_encoder.encode(session),
                px=ttl_ms,
            )
            # The key's session index (capped below): expired entries dropped, this added.
            index = session_index(state, identity.access_key)
            pipe.zremrangebyscore(index, "-inf", session.created - settings.session_ttl)
            pipe.zadd(index, {token_hash(token): session.created})
            pipe.pexpire(index, ttl_ms)
            # A fresh login replaces the session the browser held before, if any.
            old = request.cookies.get(SESSION_COOKIE)
            if old is not None and _TOKEN.fullmatch(old):
                pipe.delete(state.keys.browser_session(token_hash(old)))
                # its streams end on every replica (logged_out)
                queue_change(
                    pipe, state.keys, make_change(sessions=[token_hash(old)]), identity=False
                )
            await pipe.execute()
        await cap_sessions(state, identity.access_key)
        log.info(
            "browser session opened key=%s user=%s via=%s",
            identity.access_key,
            identity.user_id,
            session.method,
        )
        response = _identity_response(identity)
        _set_cookie(response, token, settings, max(1, round(settings.session_ttl)))
        return response

    async def logout(self, request: Request) -> Response:
        state: GatewayState = request.state.gateway
        _check_same_origin(request, state.settings)
        token = request.cookies.get(SESSION_COOKIE)
        if token is not None and _TOKEN.fullmatch(token):
            name = token_hash(token)
            # Deleted and announced in one transaction: every replica ends the streams
            # opened with this session (server_close logged_out).
            async with state.redis.pipeline(transaction=True) as pipe:
                pipe.delete(state.keys.browser_session(name))
                queue_change(pipe, state.keys, make_change(sessions=[name]), identity=False)
                await pipe.execute()
        response = Response(status_code=204, headers=_NO_STORE)
        _set_cookie(response, "", state.settings, 0)
        return response

    async def me(self, request: Request) -> Response:
        state: GatewayState = request.state.gateway
        identity = await authenticate_cookie(request, state)
        if identity is None:
            raise AuthFailed("Not logged in")
        return _identity_response(identity)


def auth_routes() -> list[Route]:
    """``POST /auth/login``, ``POST /auth/logout``, ``GET /auth/me`` for one app."""
    endpoints = _Endpoints()
    return [
        Route("/auth/login", endpoints.login, methods=["POST"]),
        Route("/auth/logout", endpoints.logout, methods=["POST"]),
        Route("/auth/me", endpoints.me, methods=["GET"]),
    ]
