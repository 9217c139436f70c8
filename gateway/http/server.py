"""Serving a replica with uvicorn, and the order a replica stops in.

On the first SIGTERM (or SIGINT) a replica (each worker of it) drains before uvicorn closes
its listener (:func:`gateway.replica.lifespan._chain_exit_signals`): ``/ready`` turns 503
and new streams are refused with 503 (a load balancer's health check and retry move traffic
away), every client gets ``server_close`` with the reconnect hint, and once no stream is
left, or ``drain_deadline`` has passed, uvicorn's own shutdown runs. A second signal skips
the wait.

Start-up never hangs and never lies: :func:`serve` checks the installed uvicorn
(:func:`gateway.http.uvicorn_internals.check_uvicorn`), binds the listening socket and waits (at
most ``startup_timeout``) for Redis *before* uvicorn starts the app, so a port in use, a host
that is not this machine's, Redis away, a bad password or a missing certificate file ends the
process within seconds with :class:`StartupError`, whose message is one line saying what to
change. A signal that arrives before the replica serves ends it at once: nothing to drain.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from typing import Any

import redis
import uvicorn

from gateway.logs import logging_config
from gateway.settings import ENV_PREFIX, SHARED_ENV, Settings
from publisher.connection import RedisURLError, connect_sync, redact_url

from .app import create_app
from .uvicorn_internals import LimitedHttpToolsProtocol, Server, check_uvicorn, run_workers

__all__ = [
    "StartupError",
    "bind_listener",
    "serve",
    "uvicorn_options",
    "wait_for_redis",
]

log = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The one uvicorn configuration (``uvicorn.Config`` keywords): what ``gateway serve``
    runs, and what the tests and the bench run, so they exercise the production paths
    (uvloop, httptools, whose chunked responses the direct writes rely on)."""
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        # httptools (whose chunked responses the direct writes rely on) with the limits
        # below applied on every path (gateway.http.uvicorn_internals)
        "http": LimitedHttpToolsProtocol,
        "h11_max_incomplete_event_size": settings.limits.max_header_bytes,
        "timeout_keep_alive": settings.limits.header_timeout,
        "limit_concurrency": settings.limits.max_connections,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        # X-Forwarded-For rewriting is a middleware frame that every open stream would keep
        # on its stack; the gateway never uses the client's address.
        "proxy_headers": False,
        # Streams end by themselves within drain_deadline (server_close); this is the
        # backstop after which uvicorn cancels what is left.
        "timeout_graceful_shutdown": int(settings.server.drain_deadline) + 1,
        "backlog": 4096,
    }


class StartupError(RuntimeError):
    """The replica cannot start; the message is one line naming what to change."""


def bind_listener(settings: Settings) -> socket.socket:
    """A TCP socket bound to the settings' host and port (``SO_REUSEADDR``, not yet
    listening: uvicorn listens with its backlog). Raises :class:`StartupError` when the port
    is taken, the host is not an address of this machine or does not resolve, or binding is
    not allowed."""
    host, port = settings.server.host, settings.server.port
    flags = f"--host/{ENV_PREFIX}HOST, --port/{ENV_PREFIX}PORT"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: the host does not resolve ({exc.strerror}); "
            f"give an address of this machine, e.g. 127.0.0.1 or 0.0.0.0 ({flags})"
        ) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            what = (
                f"port {port} is already in use on {host}: stop what holds it "
                f"(ss -ltnp 'sport = :{port}') or choose another port with "
                f"--port/{ENV_PREFIX}PORT"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            what = (
                f"cannot listen on {host}: not an address of this machine; give one of its "
                f"addresses, 127.0.0.1 or 0.0.0.0 with --host/{ENV_PREFIX}HOST"
            )
        elif exc.errno == errno.EACCES:
            what = (
                f"not allowed to listen on port {port} (below 1024 needs privileges): "
                f"choose a port above 1023 with --port/{ENV_PREFIX}PORT"
            )
        else:
            what = f"cannot listen on {host}:{port}: {exc.strerror or exc} ({flags})"
        raise StartupError(what) from exc
    return sock


def wait_for_redis(settings: Settings) -> None:
    """Wait until Redis answers a PING, at most ``startup_timeout`` seconds (each attempt at
    most 1 s, then 0.2 s apart). Raises :class:`StartupError` when it never does, at once
    when the answer says waiting cannot help (wrong password, TLS or a certificate file)."""
    url = redact_url(settings.redis.url)
    where = (
        f"--redis-url/{ENV_PREFIX}REDIS_URL (or {SHARED_ENV['redis_url']}) and "
        f"{ENV_PREFIX}REDIS_PASSWORD / {ENV_PREFIX}REDIS_TLS_*"
    )
    deadline = time.monotonic() + settings.server.startup_timeout
    try:
        client = connect_sync(
            settings.redis.url,
            **settings.redis.options,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
        )
    except (RedisURLError, OSError) as exc:
        raise StartupError(f"cannot use Redis at {url}: {exc} ({where})") from exc
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.NoPermissionError:
                return  # connected and authenticated; PING is not in this user's ACL
            except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError) as e:
                raise StartupError(f"Redis at {url} refused the gateway: {e} ({where})") from e
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                # a cluster not formed yet ("All slots are not covered"), no node answering
                redis.exceptions.RedisClusterException,
            ) as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, (FileNotFoundError, PermissionError)) or (
                    isinstance(cause, OSError) and "SSL" in type(cause).__name__
                ):
                    raise StartupError(
                        f"cannot connect to Redis at {url}: {cause} ({where})"
                    ) from exc
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"Redis at {url} did not answer within "
                        f"{settings.server.startup_timeout:g} s "
                        f"({exc}): start it, or point {where.split(' and ')[0]} at it"
                    ) from exc
                time.sleep(0.2)
            except (OSError, ValueError) as exc:  # a certificate file missing or unreadable
                raise StartupError(f"cannot connect to Redis at {url}: {exc} ({where})") from exc
    finally:
        client.close()


def serve(settings: Settings) -> None:
    """Run a replica (``settings.server.workers`` processes) until a signal ends it. Raises
    :class:`StartupError` when it cannot start (see the module docstring)."""
    errors, warnings = check_uvicorn()
    for warning in warnings:
        log.warning("%s", warning)
    if errors:
        raise StartupError(errors[0])
    sock = bind_listener(settings)
    try:
        wait_for_redis(settings)
    except BaseException:
        sock.close()
        raise
    options = uvicorn_options(settings)
    if settings.server.workers > 1:
        # Workers are separate processes (one Redis subscription each) that read the same
        # settings from the environment and share the socket bound above; uvicorn's
        # supervisor relays signals to them and each closes its streams as uvicorn stops it
        # (gateway.replica.lifespan._chain_exit_signals). Each configures logging as this
        # process does.
        # Each worker names itself after this replica and its pid (create_app_from_env), so a
        # replica name given to the whole process (GATEWAY_REPLICA: a pod's name) stays
        # unique per subscription, probe channel and per-key stream count.
        os.environ.update(settings.to_env())
        options["log_config"] = logging_config(
            settings.server.log_level, settings.server.log_format
        )
        config = uvicorn.Config(
            "gateway.http.app:create_app_from_env",
            factory=True,
            workers=settings.server.workers,
            **options,
        )
        host, port = sock.getsockname()[:2]
        log.info("listening on http://%s:%d with %d workers", host, port, settings.server.workers)
        if not run_workers(config, sock):
            raise StartupError("a worker failed to start: its log lines above say why")
        return
    server = Server(uvicorn.Config(create_app(settings), **options))
    server.run(sockets=[sock])
    if not server.started:
        raise StartupError("the replica stopped before it started serving: see the log above")
