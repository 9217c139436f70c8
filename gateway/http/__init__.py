"""The HTTP edge: the Starlette app, the stream endpoint, the login endpoints, the one error
mapper, CORS, dashboard, metrics, and the uvicorn server production runs (with the one module
that uses uvicorn's internals).

Imports :mod:`gateway.replica` (the process's resources), :mod:`gateway.identity`,
:mod:`gateway.fanout` and :mod:`gateway.settings`; nothing below imports this.
"""

from .app import STREAM_PATHS, TransportScope, create_app, create_app_from_env
from .server import serve, uvicorn_options

__all__ = [
    "STREAM_PATHS",
    "TransportScope",
    "create_app",
    "create_app_from_env",
    "serve",
    "uvicorn_options",
]
