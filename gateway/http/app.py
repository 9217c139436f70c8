"""The Starlette app: its routes, the ASGI entry in front of it (:class:`TransportScope`),
``/health`` and ``/ready``, and its lifespan, which is the replica's
(:func:`gateway.replica.lifespan.running_replica`: every process-wide resource)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.replica.lifespan import running_replica
from gateway.replica.state import GatewayState
from gateway.settings import ENV_PREFIX, Settings

from . import errors
from .cors import cors_middleware
from .dashboard import dashboard_routes
from .discovery import discovery_routes
from .login import login_routes
from .metrics import metrics_endpoint
from .stream import STREAM_PATHS, HubStreamResponse, stream_events, stream_response
from .uvicorn_internals import DIRECT_SCOPE_KEY, direct_path

__all__ = ["STREAM_PATHS", "TransportScope", "create_app", "create_app_from_env"]

log = logging.getLogger(__name__)


class _LifespanState(TypedDict):
    gateway: GatewayState


def _lifespan(settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[_LifespanState]:
        async with running_replica(settings) as state:
            app.state.gateway = state  # for embedding servers and tests: begin_shutdown()
            yield {"gateway": state}

    return lifespan


async def health(request: Request) -> Response:
    """Liveness: 200 while the process can serve; 503 once it has been unable to deliver
    (not ready while accepting) for over ``liveness_timeout`` seconds, so an orchestrator
    restarts a replica that stays deaf."""
    state: GatewayState = request.state.gateway
    stuck = state.unable_to_deliver_for()
    limit = state.settings.server.liveness_timeout
    if limit and stuck > limit:
        body = {"status": "unable to deliver", "seconds": round(stuck, 1)}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    sub = state.subscriber
    body = {
        "ready": state.ready,
        "accepting": state.accepting,
        "subscribed": sub.subscribed,
        "probe_ok": sub.probe_ok,
        "tasks_down": sorted(state.tasks_down),
        "streams": len(state.hub),
        # "lost": Redis lost the identity data; open streams keep their rights, new requests
        # get 503 until it is re-imported. Not a reason to be unready: every replica shares
        # the store, and taking them all out would end the streams they still serve.
        "identity_store": state.store.state,
        # why the history cannot take new events (an id written in the future), if it cannot
        "history": "ok"
        if state.history_watch is None or state.history_watch.problem is None
        else state.history_watch.problem,
    }
    problem = state.partitions_problem
    if problem is not None:
        body["partitions"] = problem
    if state.keeper is not None:  # more than one partition: each one's subscription
        states = state.keeper.states()
        states[0] = sub.ready
        body["partitions_ready"] = states  # live, not (yet), or not subscribed (null)
        # not live for START_TIMEOUT or more: the replica stays ready for the others
        body["partitions_down"] = state.keeper.not_live()
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


class TransportScope:
    """The outermost ASGI app, in front of Starlette.

    * It remembers uvicorn's request-response cycle in the scope (its ``send`` is a bound
      method of it), so the hub can write to the transport directly
      (:mod:`gateway.fanout.connection`) and abort a stuck client's socket. Starlette's
      middlewares wrap ``send`` in closures, hence this sits outside them.
    * A stream request without an ``Origin`` header (SDKs, curl, a same-origin EventSource)
      goes straight to :func:`gateway.http.stream.stream_response`, past Starlette's middleware and
      routing, whose frames every open stream would otherwise keep for its whole life; once
      the stream is set up, its scope lets go of the request's headers (:func:`_forget_request`).
      Cross-origin requests take the Starlette path, where CORS is answered.
    * With ``watch_forwarding`` (no ``trusted_proxies``), the first request that carries
      ``X-Forwarded-For`` logs one warning: a load balancer is in front, but the login
      throttle counts it, not its clients, as the address of every login.
    """

    def __init__(self, app: Starlette, *, watch_forwarding: bool = False) -> None:
        self.app = app
        self._watch_forwarding = watch_forwarding

    def _warn_forwarding(self, scope: Scope) -> None:
        if not any(name == b"x-forwarded-for" for name, _ in scope["headers"]):
            return
        self._watch_forwarding = False  # once per process, not per request
        client = scope.get("client")
        log.warning(
            "a request from %s carries X-Forwarded-For but trusted_proxies is empty: the "
            "login throttle counts that peer as the address of every client behind it; set "
            "%sTRUSTED_PROXIES (--trusted-proxies) to the load balancer's address or network "
            "(logged once)",
            client[0] if client else "unknown",
            ENV_PREFIX,
        )

    @property
    def state(self) -> Any:
        return self.app.state

    def request_shutdown(self) -> None:
        """Thread-safe: start the graceful close of every stream (what SIGTERM does)."""
        gateway: GatewayState | None = getattr(self.app.state, "gateway", None)
        if gateway is not None and gateway.loop is not None:
            gateway.loop.call_soon_threadsafe(gateway.begin_shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._watch_forwarding and scope["type"] == "http":
            self._warn_forwarding(scope)
        if scope["type"] == "http" and scope["path"] in STREAM_PATHS:
            direct = direct_path(send)
            if direct is not None:
                scope[DIRECT_SCOPE_KEY] = direct
            if (
                scope["method"] in ("GET", "HEAD")
                and "state" in scope
                and not any(name == b"origin" for name, _ in scope["headers"])
            ):
                head = scope["headers"]
                response = await stream_response(scope, receive)
                if isinstance(response, HubStreamResponse):
                    _forget_request(scope, head)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _forget_request(scope: Scope, head: object) -> None:
    """A stream has read all it needs of its request (its identity, filter and handoff
    digest are kept); the scope lives as long as the stream, so what else it holds would
    too. Drop the headers, the server's own list (``head``: uvicorn's protocol keeps it as
    well) and Starlette's copy, and the request's copy of the lifespan state: ~1 KB per idle
    stream (tracemalloc; more with a browser's or an SDK's headers)."""
    if type(head) is list:
        head.clear()
    scope["headers"] = ()
    scope.pop("state", None)


def create_app(settings: Settings | None = None) -> TransportScope:
    """The gateway as an ASGI app; ``settings`` default to :meth:`Settings.load`."""
    settings = settings or Settings.load()
    routes = [Route(path, stream_events, methods=["GET"]) for path in STREAM_PATHS]
    routes += [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    routes += login_routes()  # browser sessions: /auth/login, /auth/logout, /auth/me
    routes += discovery_routes()  # / (version JSON; the dashboard for browsers), /func/
    routes += dashboard_routes()  # /dashboard, /static/dashboard.{js,css}
    app = Starlette(
        routes=routes,
        middleware=cors_middleware(settings),  # none unless cors_origins is set
        lifespan=_lifespan(settings),
        # one mapper for every error, as on the fast stream path (gateway.http.errors)
        exception_handlers={
            GatewayError: errors.handle,
            RedisError: errors.handle,
            HTTPException: errors.handle,
            Exception: errors.handle,
        },
    )
    # No trailing-slash redirects: Starlette builds their Location from the Host header,
    # which the client chooses. /health/ is 404, as any other unknown path.
    app.router.redirect_slashes = False
    return TransportScope(app, watch_forwarding=not settings.browser.trusted_proxies)


def create_app_from_env() -> TransportScope:
    """Factory for ``uvicorn --factory`` and multi-worker serving (settings from env). A
    worker of several (``workers`` > 1) is the replica ``<replica>-<its pid>``: each process
    has a subscription, probe channel and stream counts of its own."""
    settings = Settings.load()
    if settings.server.workers > 1:
        settings = settings.replace(replica=f"{settings.server.replica}-{os.getpid()}")
    return create_app(settings)
