"""The Starlette app factory and the lifespan that owns every process-wide resource.

Inside the lifespan, in order: the Redis clients, the identity store, the hub, the exit
signals (:func:`_chain_exit_signals`) and the background tasks (the subscriber, the hub's
timer, the re-authorization of open streams: :mod:`gateway.http.reauthorize`, the fleet-wide
stream leases), each supervised: one that dies is logged, counted
(``kev_task_restarts_total``) and restarted after a backoff, and ``/ready`` is 503 meanwhile.
On the way out the tasks are cancelled and awaited before the Redis client closes, so no
reader outlives the connection it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from types import FrameType
from typing import Any, Final, TypedDict

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from gateway.identity.changes import changes_channel
from gateway.identity.store import IdentityStore
from gateway.settings import Settings
from publisher.connection import connect_async, redact_url
from publisher.keys import Keys
from publisher.tasks import cancel_and_wait

from . import errors
from .cors import cors_middleware
from .dashboard import dashboard_routes
from .discovery import discovery_routes
from .limits import KeyLeases
from .metrics import metrics_endpoint
from .reauthorize import Reauthorizer
from .state import GatewayState
from .stream import STREAM_PATHS, stream_events, stream_response
from .uvicorn_internals import DIRECT_SCOPE_KEY, direct_path
from .websession import auth_routes

__all__ = ["STREAM_PATHS", "TransportScope", "create_app", "create_app_from_env"]

log = logging.getLogger(__name__)


class _LifespanState(TypedDict):
    gateway: GatewayState


#: the signals that stop a replica (uvicorn's own set)
EXIT_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _chain_exit_signals(state: GatewayState) -> Callable[[], None]:
    """On the first SIGINT or SIGTERM, drain (:meth:`GatewayState.drain`: not ready, no new
    stream, ``server_close`` to every client, then wait until they are gone or
    ``drain_deadline`` passed), and only then pass the signal on to the handler that was
    there before: the server's (uvicorn's: it closes the listener and stops), so load
    balancers see ``/ready`` fail while the replica still answers. A second signal is passed
    on at once. A signal that had no handler before keeps its default action, after the
    drain. Returns the undo.

    Only the main thread may set signal handlers: elsewhere (an embedding server's thread,
    the tests) nothing is installed, and ``TransportScope.request_shutdown`` is the way in.
    The standard library's signal API, where sse-starlette patches a private hook onto
    uvicorn's ``Server.handle_exit`` at import."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    signalled: list[int] = []
    draining: set[asyncio.Task[None]] = set()

    def pass_on(sig: int, frame: FrameType | None) -> None:
        before = previous[signal.Signals(sig)]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain_then_pass_on(sig: int) -> None:
        try:
            await state.drain()
        finally:
            pass_on(sig, None)

    def start_drain(sig: int) -> None:
        log.info("signal %d: draining %d streams before exit", sig, len(state.hub))
        task = loop.create_task(drain_then_pass_on(sig))
        draining.add(task)
        task.add_done_callback(draining.discard)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if signalled:
            pass_on(sig, frame)  # the second: no more waiting
            return
        signalled.append(sig)
        # A handler may run between any two bytecodes of the loop's thread: hand over.
        loop.call_soon_threadsafe(start_drain, sig)

    for sig in EXIT_SIGNALS:
        signal.signal(sig, on_signal)

    def undo() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, before)

    return undo


async def _supervise(
    state: GatewayState, name: str, run: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``run()`` for the life of the process: a crash (or a return) is logged and
    counted, the task is marked down (``/ready`` 503) and restarted after a backoff of 0.1 s
    doubling to 5 s."""
    delay = 0.1
    while True:
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except Exception:
            log.exception("background task %s died; restarting it in %.1fs", name, delay)
        state.task_restarts[name] += 1
        state.tasks_down.add(name)
        try:
            await asyncio.sleep(delay)
        finally:
            state.tasks_down.discard(name)
        delay = min(delay * 2, 5.0)


def _lifespan(settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[_LifespanState]:
        keys = Keys(settings.prefix)
        # A pooled connection found dead on first use (Redis restarted since) is retried
        # once on a fresh one: without it the first request after every restart got 503.
        # The gateway's commands are reads and idempotent writes, so a retry is safe.
        redis = connect_async(
            settings.redis_url,
            **settings.redis_options,
            pool_size=settings.redis_pool_size,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        # The subscription and its probes get a client of their own, so a storm of
        # reconnecting clients can never starve the one thing every stream depends on.
        # No retries of its own: redis-py's default (10, with backoff, reconnecting and
        # re-subscribing underneath) hid a Redis restart inside one read for seconds while
        # the replica still looked ready; the subscriber's session loop reconnects, with its
        # own backoff, and gap-fills what the dropped connection missed.
        sub_redis = connect_async(
            settings.redis_url,
            **settings.redis_options,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),
        )
        hub = Hub(
            buffer_cap=settings.buffer_cap,
            write_deadline=settings.write_deadline,
            ping_interval=settings.ping_interval,
            max_payload=settings.max_payload,
            flush_interval=settings.flush_interval,
            retry_ms=settings.retry_ms,
            retry_jitter_ms=settings.retry_jitter_ms,
            max_lag=settings.max_lag,
            max_id_skew_ms=settings.max_id_skew_ms,
        )
        store = IdentityStore(
            redis, keys, cache_ttl=settings.identity_cache_ttl, watch_presence=True
        )
        # Open streams follow identity: change messages at once, every stream after each
        # (re)subscription, and every max(1, identity_cache_ttl) s as the backstop.
        reauth = Reauthorizer(hub, store, redis, keys, period=max(1.0, settings.identity_cache_ttl))
        state = GatewayState(
            settings=settings,
            redis=redis,
            keys=keys,
            hub=hub,
            store=store,
            subscriber=Subscriber(
                sub_redis,
                keys,
                hub,
                replica=settings.replica,
                probe_interval=settings.probe_interval,
                listeners={changes_channel(keys): reauth.on_message},
                on_subscribed=reauth.on_subscribed,
            ),
            reauth=reauth,
            # max_streams_per_key counts across the fleet (gateway.http.limits)
            leases=KeyLeases(
                redis,
                keys,
                hub,
                replica=settings.replica,
                limit=settings.max_streams_per_key,
                lease=settings.stream_lease,
            ),
        )
        tasks: set[asyncio.Task[None]] = set()

        def spawn(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
            task = asyncio.create_task(_supervise(state, name, run), name=name)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        state.loop = asyncio.get_running_loop()
        undo_signals = _chain_exit_signals(state)
        try:
            spawn("subscriber", state.subscriber.run)
            spawn("hub-timer", hub.run_timer)
            spawn("revalidate", reauth.run)
            if state.leases is not None:
                spawn("stream-leases", state.leases.run)
            app.state.gateway = state  # for embedding servers and tests: begin_shutdown()
            log.info(
                "gateway replica %s up, redis %s prefix %s",
                settings.replica,
                redact_url(settings.redis_url),
                settings.prefix,
            )
            yield {"gateway": state}
            await state.drain()
        finally:
            undo_signals()
            # Cancelled until they end: a cancel that lands as a Redis command completes
            # can be swallowed on Python 3.11 (publisher.tasks), and the process would hang
            # here on its way out.
            await cancel_and_wait(*tasks)
            await sub_redis.aclose()
            await redis.aclose()

    return lifespan


async def health(request: Request) -> Response:
    """Liveness: 200 while the process can serve; 503 once it has been unable to deliver
    (not ready while accepting) for over ``liveness_timeout`` seconds, so an orchestrator
    restarts a replica that stays deaf."""
    state: GatewayState = request.state.gateway
    stuck = state.unable_to_deliver_for()
    limit = state.settings.liveness_timeout
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
    }
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


class TransportScope:
    """The outermost ASGI app, in front of Starlette.

    * It remembers uvicorn's request-response cycle in the scope (its ``send`` is a bound
      method of it), so the hub can write to the transport directly
      (:mod:`gateway.fanout.connection`) and abort a stuck client's socket. Starlette's
      middlewares wrap ``send`` in closures, hence this sits outside them.
    * A stream request without an ``Origin`` header (SDKs, curl, a same-origin EventSource)
      goes straight to :func:`gateway.http.stream.stream_response`, past Starlette's middleware and
      routing, whose frames every open stream would otherwise keep for its whole life.
      Cross-origin requests take the Starlette path, where CORS is answered.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state

    def request_shutdown(self) -> None:
        """Thread-safe: start the graceful close of every stream (what SIGTERM does)."""
        gateway: GatewayState | None = getattr(self.app.state, "gateway", None)
        if gateway is not None and gateway.loop is not None:
            gateway.loop.call_soon_threadsafe(gateway.begin_shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in STREAM_PATHS:
            direct = direct_path(send)
            if direct is not None:
                scope[DIRECT_SCOPE_KEY] = direct
            if (
                scope["method"] in ("GET", "HEAD")
                and "state" in scope
                and not any(name == b"origin" for name, _ in scope["headers"])
            ):
                response = await stream_response(scope, receive)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> TransportScope:
    """The gateway as an ASGI app; ``settings`` default to :meth:`Settings.load`."""
    settings = settings or Settings.load()
    routes = [Route(path, stream_events, methods=["GET"]) for path in STREAM_PATHS]
    routes += [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    routes += auth_routes()  # browser sessions: /auth/login, /auth/logout, /auth/me
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
    return TransportScope(app)


def create_app_from_env() -> TransportScope:
    """Factory for ``uvicorn --factory`` and multi-worker serving (settings from env). A
    worker of several (``workers`` > 1) is the replica ``<replica>-<its pid>``: each process
    has a subscription, probe channel and stream counts of its own."""
    settings = Settings.load()
    if settings.workers > 1:
        settings = settings.replace(replica=f"{settings.replica}-{os.getpid()}")
    return create_app(settings)
