"""``POST /auth/login`` trades a keypair (or a user's password) for an HttpOnly cookie whose
browser session lives in Redis, so ``new EventSource(url, {withCredentials: true})`` works
against any replica (docs/design.md §4); ``POST /auth/logout`` ends it; ``GET /auth/me`` says
whose it is. How sessions are stored, bound and ended is :mod:`gateway.identity.sessions`.

* CSRF: login and logout accept only ``application/json`` (which a cross-site form cannot
  send without a preflight) and, when the browser names an ``Origin``, only the gateway's own
  or one of ``cors_origins``. The cookie is ``SameSite=Lax``, so pages of other sites do not
  carry it on their requests at all.
* Every attempt is counted by the login throttle (:mod:`gateway.identity.throttle`) against
  the account it names and the client's address (:func:`client_address`: the peer, or behind
  ``trusted_proxies`` what they say). A blocked account gets 429 before any credential is
  checked; from a blocked address an unknown account or a wrong credential gets 429, a correct
  credential for an account that is not blocked itself gets in (no client can lock out
  another by blocking the address they share).
* Failed logins all get the same 401, whatever was wrong; the log says what.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from gateway.errors import AuthFailed, Forbidden, GatewayError, InvalidParams, RateLimited
from gateway.identity.models import Identity
from gateway.identity.sessions import SESSION_COOKIE, LoginMethod
from gateway.identity.throttle import LoginThrottle, Subject
from gateway.replica.state import GatewayState
from gateway.settings import BrowserSettings

__all__ = ["MAX_LOGIN_BODY", "LoginRequest", "client_address", "login_routes"]

log = logging.getLogger(__name__)

#: largest login body read, bytes; anything larger is refused unread
MAX_LOGIN_BODY: Final = 4096

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


_login_decoder: Final = msgspec.json.Decoder(LoginRequest)
_json_encoder: Final = msgspec.json.Encoder()
_NO_STORE: Final = {"Cache-Control": "no-store"}


def _bad_body(msg: str) -> InvalidParams:
    return InvalidParams("Invalid login request", msg)


# -- whose attempt it is ------------------------------------------------------------------------

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _trusted(address: str, networks: Sequence[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(scope: Scope, trusted_proxies: tuple[str, ...]) -> str:
    """The address a request comes from: the peer's, or, when the peer is one of
    ``trusted_proxies``, the last address in ``X-Forwarded-For`` that is not (the one the
    first trusted proxy saw; earlier entries are the client's to forge)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    networks = _networks(trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded += [part.strip() for part in value.decode("latin-1").split(",")]
    for hop in reversed(forwarded):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return "invalid"  # a proxy we trust passed garbage: one bucket for all of it
    return peer


# -- CSRF and the body --------------------------------------------------------------------------


def _check_same_origin(request: Request, browser: BrowserSettings) -> None:
    """JSON only, and from the gateway's own origin or a configured one when ``Origin`` is sent."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise _bad_body("send Content-Type: application/json")
    origin = request.headers.get("origin")
    if origin is None or origin in browser.cors_origins:
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


# -- the endpoints ------------------------------------------------------------------------------


def _set_cookie(response: Response, token: str, browser: BrowserSettings, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        secure=browser.cookie_secure,
        httponly=True,
        samesite="Lax",  # type: ignore[arg-type]  # Starlette checks it case-insensitively
    )


def _identity_response(identity: Identity) -> Response:
    return Response(
        _json_encoder.encode(identity), media_type="application/json", headers=_NO_STORE
    )


def _throttled(account: Subject, address: Subject, wait: float) -> RateLimited:
    log.info("login throttled: %s from %s for %.1fs", account[1], address[1], wait)
    return RateLimited(
        "Too many failed logins", "try again later", retry_after=LoginThrottle.retry_after(wait)
    )


async def login(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    browser, sessions, throttle = state.settings.browser, state.sessions, state.throttle
    assert sessions is not None and throttle is not None, "built by the replica's lifespan"
    try:
        _check_same_origin(request, browser)
        body = _parse_login(await _read_body(request))
        account: Subject = (
            ("account", f"key:{body.access_key}")
            if body.access_key is not None
            else ("account", f"user:{body.user_id}")
        )
        address: Subject = ("address", client_address(request.scope, browser.trusted_proxies))
        verdict = await throttle.attempt(account, address)
        if verdict.account_wait:
            raise _throttled(account, address, verdict.account_wait)
        if verdict.address_wait:
            # The address is blocked, perhaps by someone else behind the same NAT or proxy:
            # an unknown account is refused unchecked, a known one is counted against the
            # account alone (its own guessing protection) and only a correct credential wins.
            known = await sessions.has_account(access_key=body.access_key, user_id=body.user_id)
            if not known:
                raise _throttled(account, address, verdict.address_wait)
            again = await throttle.attempt(account)
            if again.account_wait:
                raise _throttled(account, address, again.account_wait)
        method: LoginMethod
        try:
            if body.access_key is not None and body.secret_key is not None:
                method = "keypair"
                identity, credential = await sessions.login_with_keypair(
                    body.access_key, body.secret_key
                )
            else:
                assert body.user_id is not None and body.password is not None
                method = "password"
                identity, credential = await sessions.login_with_password(
                    body.user_id, body.password
                )
        except AuthFailed:
            if verdict.address_wait:  # a failure from a blocked address: the same 429
                raise _throttled(account, address, verdict.address_wait) from None
            raise
        # from a blocked address nothing was counted against it, so nothing is taken back
        await throttle.succeeded(account, None if verdict.address_wait else address)
    except GatewayError as exc:
        state.auth_failures[exc.title] += 1
        raise
    token = await sessions.open(
        identity,
        method,
        credential,
        replaces=request.cookies.get(SESSION_COOKIE),
    )
    response = _identity_response(identity)
    _set_cookie(response, token, browser, max(1, round(browser.session_ttl)))
    return response


async def logout(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    _check_same_origin(request, state.settings.browser)
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None and state.sessions is not None:
        await state.sessions.end(token)
    response = Response(status_code=204, headers=_NO_STORE)
    _set_cookie(response, "", state.settings.browser, 0)
    return response


async def me(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    token = request.cookies.get(SESSION_COOKIE)
    if token is None or state.sessions is None:
        raise AuthFailed("Not logged in")
    return _identity_response((await state.sessions.find(token)).identity)


def login_routes() -> list[Route]:
    """``POST /auth/login``, ``POST /auth/logout``, ``GET /auth/me``."""
    return [
        Route("/auth/login", login, methods=["POST"]),
        Route("/auth/logout", logout, methods=["POST"]),
        Route("/auth/me", me, methods=["GET"]),
    ]
