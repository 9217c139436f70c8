"""Serving a replica with uvicorn, and the order a replica stops in.

On the first SIGTERM (or SIGINT) a single-process replica drains before uvicorn closes its
listener: ``/ready`` turns 503 and new streams are refused with 503 (a load balancer's health
check and retry move traffic away), every client gets ``server_close`` with the reconnect
hint, and once no stream is left, or ``drain_deadline`` has passed, uvicorn's own shutdown
runs. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
from types import FrameType
from typing import Any

import uvicorn

from gateway.settings import ENV_PREFIX, Settings

from .app import TransportScope, create_app

__all__ = ["DrainingServer", "serve", "uvicorn_options"]

log = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The one uvicorn configuration (``uvicorn.Config`` keywords): what ``gateway serve``
    runs, and what the tests and the bench run, so they exercise the production paths
    (uvloop, httptools, whose chunked responses the direct writes rely on)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        # X-Forwarded-For rewriting is a middleware frame that every open stream would keep
        # on its stack; the gateway never uses the client's address.
        "proxy_headers": False,
        # Streams end by themselves within drain_deadline (server_close); this is the
        # backstop after which uvicorn cancels what is left.
        "timeout_graceful_shutdown": int(settings.drain_deadline) + 1,
        "backlog": 4096,
    }


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain of the module docstring in front of its shutdown."""

    def __init__(self, config: uvicorn.Config, app: TransportScope):
        super().__init__(config)
        self._app = app
        self._draining: asyncio.Task[None] | None = None
        self._signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self._app.state, "gateway", None)
        if self._signalled or state is None or state.loop is None:
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        # A signal.signal handler may run between any two bytecodes of the loop's thread:
        # hand the work to the loop instead of touching it from here.
        state.loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        log.info(
            "signal received: draining %d streams before exit", len(self._app.state.gateway.hub)
        )
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._app.state.gateway.drain()
        self.should_exit = True


def serve(settings: Settings) -> None:
    options = uvicorn_options(settings)
    if settings.workers > 1:
        # Workers are separate processes (one Redis subscription each) that read the same
        # settings from the environment; uvicorn's supervisor relays signals to them and
        # each drains through sse-starlette's exit hook (gateway.http.app._watch_exit).
        env = settings.to_env()
        del env[ENV_PREFIX + "REPLICA"]  # each worker names itself
        os.environ.update(env)
        uvicorn.run(
            "gateway.http.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **options,
        )
        return
    app = create_app(settings)
    DrainingServer(uvicorn.Config(app, **options), app).run()
