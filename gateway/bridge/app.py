"""The bridge's process: :class:`~.run.Bridge` served as a :mod:`gateway.worker` (its own
port: ``/metrics``, ``/health``, ``/ready``), so that SIGTERM and SIGINT end it the way they
end ``gateway serve``: the bridge stops, gives up its lease (a standby takes over at once)
and closes its connections."""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.settings import BridgeSettings
from gateway.worker import serve_worker, worker_app

from .run import Bridge

__all__ = ["create_app", "serve"]


def create_app(settings: BridgeSettings, bridge: Bridge | None = None) -> Starlette:
    """The app; its lifespan starts the bridge and stops it."""
    bridge = bridge or Bridge(settings)
    return worker_app(bridge, name=f"bridge {bridge.name}")


def serve(settings: BridgeSettings) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    cfg = settings.bridge
    bridge = Bridge(settings)
    serve_worker(
        bridge, name=f"bridge {bridge.name}", host=cfg.host, port=cfg.port,
        log_level=cfg.log_level, log_format=cfg.log_format,
    )  # fmt: skip
