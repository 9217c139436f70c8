"""What Backend.AI clients ask before anything else: the API version.

The SDKs (20.03 and later) start with an unauthenticated ``GET /`` (``GET /func/`` with
``BACKEND_ENDPOINT_TYPE=session``), read ``version`` from the JSON answer, and speak
``min(server, client)``: the path and parameters they use for events follow from it
(``v4``: ``/stream/kernel/_/events?sessionId=``). The manager answers
``{"version": "<api version>", "manager": "<its version>"}``; so does this, with
``settings.server.api_version`` (default ``v4.20190615``, the API the stream endpoint implements).

A browser asking for ``/`` (``Accept: text/html``) still gets the dashboard. SDKs 19.09-20.09
also ask ``GET /manager/announcement`` once; there is never one here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.replica.state import GatewayState

from .dashboard import page

__all__ = ["discovery_routes"]


def _gateway_version() -> str:
    try:
        return version("kernel-event-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


_MANAGER: Final = f"kernel-event-gateway {_gateway_version()}"
_VARY: Final = {"Vary": "Accept"}


def _quality(accept: str, media: str) -> float:
    """The q-value ``accept`` gives ``media`` itself (not through a wildcard), 0 if none."""
    for part in accept.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if name.lower() == media:
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        return float(value)
                    except ValueError:
                        return 0.0
            return 1.0
    return 0.0


def _wants_html(request: Request) -> bool:
    """A browser names text/html, and prefers it to JSON; an API client (``*/*``, JSON, or
    a tie) gets the version JSON."""
    accept = request.headers.get("accept", "")
    html = _quality(accept, "text/html")
    return html > 0 and html > _quality(accept, "application/json")


async def _root(request: Request) -> Response:
    if _wants_html(request):
        response = await page(request)
        response.headers["Vary"] = "Accept"
        return response
    return await _version(request)


async def _version(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    body = {"version": state.settings.server.api_version, "manager": _MANAGER}
    return JSONResponse(body, headers=_VARY)


async def _announcement(request: Request) -> Response:
    return JSONResponse({"enabled": False, "message": ""})


def discovery_routes() -> list[Route]:
    """``GET /`` (version JSON, or the dashboard for a browser), ``GET /func/``,
    ``GET /manager/announcement``."""
    return [
        Route("/", _root, methods=["GET"]),
        Route("/func/", _version, methods=["GET"]),
        Route("/manager/announcement", _announcement, methods=["GET"]),
    ]
