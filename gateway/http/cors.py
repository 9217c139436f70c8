"""CORS with credentials, for the origins in ``settings.browser.cors_origins`` only (exact match).

Starlette's ``CORSMiddleware`` nearly fits, but it adds ``Access-Control-Allow-Credentials:
true`` to the answer for any ``Origin``, allowed or not, and lists its allowed methods and
headers on a refused preflight. Here a foreign origin gets no ``Access-Control-*`` header at
all. A request without ``Origin`` (SDKs, curl, a same-origin ``GET``) passes straight through,
so the stream's usual path pays nothing; the middleware is not installed at all when no
origin is configured.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.settings import Settings

from .errors import problem_response

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "CredentialedCORS", "cors_middleware"]

ALLOW_METHODS: Final = frozenset({"GET", "HEAD", "POST"})
#: what the dashboard and EventSource send: a JSON login, and ``Last-Event-ID`` on reconnect
ALLOW_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-language",
        "cache-control",
        "content-language",
        "content-type",
        "last-event-id",
    }
)
MAX_AGE: Final = 600


class CredentialedCORS:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self._preflight_headers = {
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ", ".join(sorted(ALLOW_METHODS)),
            "Access-Control-Allow-Headers": ", ".join(sorted(ALLOW_HEADERS)),
            "Access-Control-Max-Age": str(MAX_AGE),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(headers, origin, allowed)(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = [(b"vary", b"Origin")]
        if allowed:
            extra += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, headers: Headers, origin: str, allowed: bool) -> ASGIApp:
        vary = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
        method = headers["access-control-request-method"].strip().upper()
        requested = {
            h.strip().lower()
            for h in headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        }
        if not allowed or method not in ALLOW_METHODS or not requested <= ALLOW_HEADERS:
            return problem_response("generic-forbidden", "CORS preflight refused", headers=vary)
        return Response(
            status_code=204,
            headers={**vary, **self._preflight_headers, "Access-Control-Allow-Origin": origin},
        )


def cors_middleware(settings: Settings) -> list[Middleware]:
    """The CORS layer for ``Starlette(middleware=...)``; none when no origin is configured."""
    if not settings.browser.cors_origins:
        return []
    return [Middleware(CredentialedCORS, origins=settings.browser.cors_origins)]
