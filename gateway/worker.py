"""The processes beside the replicas (``gateway bridge``, ``gateway sync-identities``): one
long-running loop, served by uvicorn with ``/health``, ``/ready`` and ``/metrics`` on a port of
its own, stopped by SIGTERM or SIGINT the way ``gateway serve`` stops (the loop cancelled for
certain, then closed: a lease given up, connections closed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.logs import logging_config
from publisher.tasks import cancel_and_wait

__all__ = ["Worker", "serve_worker", "worker_app"]

log = logging.getLogger(__name__)

#: seconds a worker gets to stop its loop (and at most publisher.tasks.GRACE more), and then
#: to close, once asked to stop
STOP_DEADLINE: Final = 5.0


class Worker(Protocol):
    """What :func:`worker_app` runs."""

    @property
    def registry(self) -> CollectorRegistry:
        """Its Prometheus metrics."""
        ...

    @property
    def ready(self) -> bool:
        """Doing its part (``/ready`` 200)."""
        ...

    def state(self) -> dict[str, object]:
        """What ``/health`` and ``/ready`` show besides their verdict."""
        ...

    async def run(self) -> None:
        """The loop, until cancelled (ending otherwise is a bug: ``/health`` 500)."""
        ...

    async def close(self) -> None:
        """After the loop ended: give back what it holds."""
        ...


def worker_app(worker: Worker, *, name: str) -> Starlette:
    """The app whose lifespan runs ``worker`` (``name`` in its log lines)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(worker.run(), name=name)
        app.state.task = task
        try:
            yield
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s ended with an error", name, exc_info=task.exception())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_DEADLINE):
                    await cancel_and_wait(task)  # a swallowed cancel too (publisher.tasks)
            async with asyncio.timeout(STOP_DEADLINE):
                await worker.close()
            log.info("%s stopped", name)

    async def health(request: Request) -> Response:
        if request.app.state.task.done():  # the loop ends only by a bug: restart the process
            return JSONResponse({"status": "failed", **worker.state()}, status_code=500)
        return JSONResponse({"status": "ok", **worker.state()})

    async def ready(request: Request) -> Response:
        ok = worker.ready and not request.app.state.task.done()
        return JSONResponse({"ready": ok, **worker.state()}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(worker.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/health", health), Route("/ready", ready), Route("/metrics", metrics)],
        lifespan=lifespan,
    )


def serve_worker(
    worker: Worker, *, name: str, host: str, port: int, log_level: str, log_format: str
) -> None:
    """Run ``worker`` until SIGTERM or SIGINT."""
    uvicorn.run(
        worker_app(worker, name=name),
        host=host,
        port=port,
        log_config=logging_config(log_level, log_format),
        access_log=False,
        lifespan="on",
    )
