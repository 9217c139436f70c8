"""The one seam where a request becomes an :class:`~gateway.identity.models.Identity`.

Methods, tried in this order (add a new one here, and only here):

1. a Backend.AI keypair signature, when the request has an ``Authorization`` header;
2. the browser session cookie (:mod:`gateway.http.websession`), when it has none.

Every refusal is counted by title in ``state.auth_failures`` (``kev_auth_failures``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.identity.authenticate import authenticate
from gateway.identity.models import Identity
from gateway.identity.signing import raw_target

from .state import GatewayState
from .websession import authenticate_cookie

__all__ = ["authenticate_request"]


async def authenticate_request(request: Request, state: GatewayState) -> Identity:
    """Who is calling. Raises :class:`~gateway.errors.InvalidAuthParams` (malformed or
    missing credentials) or :class:`~gateway.errors.AuthFailed` (wrong or revoked ones)."""
    try:
        if "authorization" not in request.headers:
            # A browser (EventSource) has no signature, only its session cookie.
            identity = await authenticate_cookie(request, state)
            if identity is not None:
                return identity
        scope = request.scope
        return await authenticate(
            request.method,
            raw_target(scope.get("raw_path") or scope["path"].encode(), scope["query_string"]),
            request.headers,
            state.store,
            now=datetime.now(UTC),
            max_skew=state.max_skew,
        )
    except GatewayError as exc:
        state.auth_failures[exc.title] += 1
        raise
