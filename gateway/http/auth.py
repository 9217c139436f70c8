"""The one seam where a request becomes an :class:`~gateway.identity.models.Identity`.

Methods, tried in this order (add a new one here, and only here):

1. a Backend.AI keypair signature, when the request has an ``Authorization`` header;
2. the browser session cookie (:mod:`gateway.http.websession`), when it has none.

Every refusal is counted by title in ``state.auth_failures`` (``kev_auth_failures``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.identity.authenticate import authenticate_keypair
from gateway.identity.models import Identity
from gateway.identity.signing import raw_target

from .state import GatewayState
from .websession import cookie_session

__all__ = ["AuthMethod", "Caller", "authenticate_request"]

#: how a request proved who it is: a keypair signature (SDKs, CLIs, curl) or a browser session
AuthMethod = Literal["signature", "cookie"]


@dataclass(frozen=True, slots=True)
class Caller:
    identity: Identity
    method: AuthMethod
    #: signature callers: SHA-256 of the secret that signed (a new secret ends their streams)
    secret_digest: bytes | None = None
    #: cookie callers: the session's stored name (``websession.token_hash``) and its expiry
    #: (``time.time()`` seconds), which end their streams when it is logged out or expires
    session: str | None = None
    expires_at: float | None = None


async def authenticate_request(request: Request, state: GatewayState) -> Caller:
    """Who is calling, and how it proved it. Raises
    :class:`~gateway.errors.InvalidAuthParams` (malformed or missing credentials) or
    :class:`~gateway.errors.AuthFailed` (wrong or revoked ones)."""
    try:
        if "authorization" not in request.headers:
            # A browser (EventSource) has no signature, only its session cookie.
            session = await cookie_session(request, state)
            if session is not None:
                return Caller(
                    session.identity,
                    "cookie",
                    session=session.token_hash,
                    expires_at=session.expires_at,
                )
        scope = request.scope
        keypair, identity = await authenticate_keypair(
            request.method,
            raw_target(scope.get("raw_path") or scope["path"].encode(), scope["query_string"]),
            request.headers,
            state.store,
            now=datetime.now(UTC),
            max_skew=state.max_skew,
        )
        digest = hashlib.sha256(keypair.secret_key.encode()).digest()
        return Caller(identity, "signature", secret_digest=digest)
    except GatewayError as exc:
        state.auth_failures[exc.title] += 1
        raise
