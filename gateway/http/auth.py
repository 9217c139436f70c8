"""The HTTP side of authentication: a request as the auth methods read it
(:class:`~gateway.identity.methods.RequestView`), and the one call the endpoints make.

The methods themselves, each a unit (how it authenticates, what a stream keeps, how that is
re-checked), are :mod:`gateway.identity.methods`; the replica's lifespan decides which run, in
which order (``GatewayState.methods``). Every refusal is counted by title in
``state.auth_failures`` (``kev_auth_failures``).
"""

from __future__ import annotations

from starlette.requests import Request

from gateway.errors import GatewayError
from gateway.identity.methods import Credential, RequestView, authenticate
from gateway.identity.signing import raw_target
from gateway.replica.state import GatewayState

__all__ = ["authenticate_request", "request_view"]


def request_view(request: Request) -> RequestView:
    """The request as the auth methods read it: the target exactly as sent (what a signature
    covers), headers with lower-case names, cookies."""
    scope = request.scope
    target = raw_target(scope.get("raw_path") or scope["path"].encode(), scope["query_string"])
    return RequestView(request.method, target, request.headers, request.cookies)


async def authenticate_request(request: Request, state: GatewayState) -> Credential:
    """Who is calling, and how it proved it (the credential its stream keeps). Raises
    :class:`~gateway.errors.InvalidAuthParams` (malformed or missing credentials) or
    :class:`~gateway.errors.AuthFailed` (wrong or revoked ones)."""
    try:
        return await authenticate(request_view(request), state.methods)
    except GatewayError as exc:
        state.auth_failures[exc.title] += 1
        raise
