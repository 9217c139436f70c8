"""What Backend.AI clients ask before anything else: the API version.

The SDKs (20.03 and later) start with an unauthenticated ``GET /`` (``GET /func/`` with
``BACKEND_ENDPOINT_TYPE=session``), read ``version`` from the JSON answer, speak
``min(server, client)`` and pick their event path by it (``v4``: ``/stream/kernel/_/events``;
``v5``: ``/events/session?name=``; ``v6`` and later: ``/events/session?sessionName=`` or
``sessionId=``, with ``scope``; the gateway serves all of them). They warn on every command,
and 20.03 on stdout, into the events, when the server is newer than they are, and from 21.09
on when it is older than their ``MIN_API_VERSION`` (v5.20191215; v7.20230615 from 24.03).
No one version is quiet for all of them, so with ``api_version = "auto"`` (the default) the
answer is the version of the generation that asks: :func:`version_for` reads the SDK's
release from its ``User-Agent`` (``Backend.AI Client for Python <release>``). A client that
does not say (a browser, curl, another SDK) gets the newest (:data:`NEWEST`). A fixed
``api_version`` (e.g. ``v4.20190615``: the v4 paths only) is reported to every client.

The manager answers ``{"version": "<api version>", "manager": "<its version>"}``; so does
this. A browser asking for ``/`` (``Accept: text/html``) still gets the dashboard. SDKs
19.09-20.09 also ask ``GET /manager/announcement`` once; there is never one here.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.replica.state import GatewayState

from .dashboard import page

__all__ = ["NEWEST", "SDK_API_VERSIONS", "discovery_routes", "version_for"]

#: ``((year, month), api version)``, oldest first: from that SDK release on, the lowest
#: ``API_VERSION`` any release of its generation speaks, which is at or above every one's
#: ``MIN_API_VERSION``; so each negotiates exactly it, and none warns. Read off
#: ``src/ai/backend/client/config.py`` of lablup/backend.ai-client-py 19.09-22.03 and of
#: lablup/backend.ai 22.09-26.8 (19.09 does not negotiate; 21.03 speaks 20.09's, 24.12-25.11
#: 24.09's).
SDK_API_VERSIONS: Final = (
    ((0, 0), "v4.20190615"),
    ((20, 3), "v5.20191215"),
    ((20, 9), "v6.20200815"),
    ((21, 9), "v6.20210815"),
    ((22, 3), "v6.20220315"),
    ((22, 9), "v6.20220615"),
    ((23, 3), "v6.20230315"),
    ((23, 9), "v7.20230615"),
    ((24, 3), "v8.20240315"),
    ((24, 9), "v8.20240915"),
    ((25, 12), "v9.20250722"),
)
#: what a client that does not name its SDK release gets with ``api_version = "auto"``
NEWEST: Final = SDK_API_VERSIONS[-1][1]
_RELEASES: Final = [release for release, _ in SDK_API_VERSIONS]
_SDK_AGENT: Final = re.compile(r"Backend\.AI Client for Python (\d{1,4})\.(\d{1,2})\b")


def version_for(user_agent: str | None) -> str:
    """The API version the SDK release in ``user_agent`` speaks (:data:`SDK_API_VERSIONS`),
    or :data:`NEWEST` when it names none."""
    match = _SDK_AGENT.search(user_agent or "")
    if match is None:
        return NEWEST
    release = (int(match[1]), int(match[2]))
    return SDK_API_VERSIONS[bisect_right(_RELEASES, release) - 1][1]


def _gateway_version() -> str:
    try:
        return version("kernel-event-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


_MANAGER: Final = f"kernel-event-gateway {_gateway_version()}"
_VARY_AGENT: Final = {"Vary": "Accept, User-Agent"}


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
        response.headers["Vary"] = "Accept, User-Agent"
        return response
    return await _version(request)


async def _version(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    reported = state.settings.server.api_version
    if reported == "auto":
        reported = version_for(request.headers.get("user-agent"))
    body = {"version": reported, "manager": _MANAGER}
    return JSONResponse(body, headers=_VARY_AGENT)


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
