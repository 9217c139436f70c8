"""The one seam where a request becomes an :class:`~gateway.identity.models.Identity`.

Methods, tried in this order (add a new one here, and only here):

1. a Backend.AI keypair signature, when the request has an ``Authorization`` header;
2. the browser session cookie (:mod:`gateway.http.websession`), when it has none.

Every refusal is counted by title in ``state.auth_failures`` (``kev_auth_failures``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.identity.authenticate import authenticate
from gateway.identity.models import Identity
from gateway.identity.signing import raw_target

from .state import GatewayState
from .websession import authenticate_cookie

__all__ = ["AuthMethod", "Caller", "authenticate_request"]

#: how a request proved who it is: a keypair signature (SDKs, CLIs, curl) or a browser session
AuthMethod = Literal["signature", "cookie"]


@dataclass(frozen=True, slots=True)
class Caller:
    identity: Identity
    method: AuthMethod


async def authenticate_request(request: Request, state: GatewayState) -> Caller:
    """Who is calling, and how it proved it. Raises
    :class:`~gateway.errors.InvalidAuthParams` (malformed or missing credentials) or
    :class:`~gateway.errors.AuthFailed` (wrong or revoked ones)."""
    try:
        if "authorization" not in request.headers:
            # A browser (EventSource) has no signature, only its session cookie.
            identity = await authenticate_cookie(request, state)
            if identity is not None:
                return Caller(identity, "cookie")
        scope = request.scope
        identity = await authenticate(
            request.method,
            raw_target(scope.get("raw_path") or scope["path"].encode(), scope["query_string"]),
            request.headers,
            state.store,
            now=datetime.now(UTC),
            max_skew=state.max_skew,
        )
        return Caller(identity, "signature")
    except GatewayError as exc:
        state.auth_failures[exc.title] += 1
        raise
