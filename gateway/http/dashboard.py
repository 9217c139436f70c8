"""The live dashboard: one HTML page, its script and its stylesheet from ``gateway/http/static``.

No build step and nothing fetched from elsewhere (the page must work offline). The three
files are read once, when the app is built, and served from memory with a strict Content
Security Policy: scripts, styles and connections from the gateway's own origin only.
"""

from __future__ import annotations

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


def _static(name: str) -> Route:
    body = (resources.files("gateway.http") / "static" / name).read_bytes()
    media_type = _FILES[name]

    async def serve(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_HEADERS)

    path = "/" if name == "index.html" else f"/static/{name}"
    return Route(path, serve, methods=["GET"], name=f"static-{name}")


def dashboard_routes() -> list[Route]:
    """``/`` and ``/dashboard`` (the page), ``/static/dashboard.{js,css}``."""
    page, script, style = (_static(name) for name in _FILES)
    return [
        page,
        Route("/dashboard", page.endpoint, methods=["GET"], name="dashboard"),
        script,
        style,
    ]
