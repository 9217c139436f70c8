"""The HTTP edge: the Starlette app and its lifespan, the stream endpoint, the one
authentication seam, the one error mapper, browser sessions, CORS, dashboard, metrics, and
the uvicorn server options production runs with.

Imports :mod:`gateway.fanout`, :mod:`gateway.identity` and :mod:`gateway.settings`; nothing
below imports this.
"""

from .app import STREAM_PATHS, TransportScope, create_app, create_app_from_env
from .server import serve, uvicorn_options
from .state import GatewayState

__all__ = [
    "STREAM_PATHS",
    "GatewayState",
    "TransportScope",
    "create_app",
    "create_app_from_env",
    "serve",
    "uvicorn_options",
]
