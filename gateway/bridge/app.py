"""The bridge's process: a small Starlette app on its own port (``/metrics``, ``/health``,
``/ready``) whose lifespan runs the :class:`~.run.Bridge`, served by uvicorn so that SIGTERM
and SIGINT end it the way they end ``gateway serve``: the bridge stops, gives up its lease
(a standby takes over at once) and closes its connections."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.logs import logging_config
from gateway.settings import BridgeSettings
from publisher.tasks import cancel_and_wait

from .run import Bridge

__all__ = ["create_app", "serve"]

log = logging.getLogger(__name__)

#: seconds the bridge gets to give up its lease and close, once asked to stop
_STOP_DEADLINE: Final = 5.0


def create_app(settings: BridgeSettings, bridge: Bridge | None = None) -> Starlette:
    """The app; its lifespan starts the bridge and stops it."""
    bridge = bridge or Bridge(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(bridge.run(), name="bridge")
        app.state.task = task
        try:
            yield
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("the bridge ended with an error", exc_info=task.exception())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_DEADLINE):
                    await cancel_and_wait(task)  # a swallowed cancel too (publisher.tasks)
            async with asyncio.timeout(_STOP_DEADLINE):
                await bridge.close()
            log.info("bridge %s stopped", bridge.name)

    def state() -> dict[str, object]:
        return {
            "role": bridge.role,
            "format": bridge.format,
            "source": "ok" if bridge.source_ok else "not followed",
            "database": "ok" if bridge.lookup.available else "unavailable",
            "gateway": "ok" if bridge.gateway_ok and bridge.lease.reachable else "unavailable",
        }

    async def health(request: Request) -> Response:
        task: asyncio.Task[None] = request.app.state.task
        if task.done():  # run() ends only by a bug: let the orchestrator restart the process
            return JSONResponse({"status": "failed", **state()}, status_code=500)
        return JSONResponse({"status": "ok", **state()})

    async def ready(request: Request) -> Response:
        ok = bridge.ready and not request.app.state.task.done()
        return JSONResponse({"ready": ok, **state()}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(bridge.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )


def serve(settings: BridgeSettings) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    cfg = settings.bridge
    uvicorn.run(
        create_app(settings),
        host=cfg.host,
        port=cfg.port,
        log_config=logging_config(cfg.log_level, cfg.log_format),
        access_log=False,
        lifespan="on",
    )
