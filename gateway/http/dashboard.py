"""The live dashboard: one HTML page, its script and its stylesheet from ``gateway/http/static``.

No build step and nothing fetched from elsewhere (the page must work offline). The three
files are read once, when the app is built, and served from memory with a strict Content
Security Policy: scripts, styles and connections from the gateway's own origin only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["dashboard_routes"]

_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _serve(name: str) -> Callable[[Request], Awaitable[Response]]:
    body = (resources.files("gateway.http") / "static" / name).read_bytes()
    media_type = _FILES[name]

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    return serve


#: the dashboard page; ``/`` serves it to browsers (gateway.http.discovery)
page: Final = _serve("index.html")


def dashboard_routes() -> list[Route]:
    """``/dashboard`` (the page), ``/static/dashboard.{js,css}``."""
    return [
        Route("/dashboard", page, methods=["GET"], name="dashboard"),
        *(
            Route(f"/static/{name}", _serve(name), methods=["GET"], name=f"static-{name}")
            for name in _FILES
            if name != "index.html"
        ),
    ]
