"""Real uvicorn serving the gateway on a free loopback port, in a thread or a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from gateway.http.app import TransportScope, create_app
from gateway.http.server import uvicorn_options
from gateway.replica.state import GatewayState
from gateway.settings import Settings
from tests.support.redis_server import free_port


@dataclass
class RunningGateway:
    settings: Settings
    server: uvicorn.Server | None = None
    app: TransportScope | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.settings.server.port}"

    @property
    def state(self) -> GatewayState:
        assert self.app is not None, "only an in-thread gateway has its state at hand"
        state: GatewayState = self.app.state.gateway
        return state

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"


def _wait_ready(base_url: str, timeout: float, alive: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/ready", timeout=1).status_code == 200:
                return
        if isinstance(alive, subprocess.Popen) and alive.poll() is not None:
            raise RuntimeError(f"gateway exited with {alive.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"gateway at {base_url} not ready within {timeout}s")


def gateway_settings(redis_url: str, **changes: object) -> Settings:
    base: dict[str, object] = {
        "port": free_port(),
        "redis_url": redis_url,
        "probe_interval": 0.5,
        "identity_cache_ttl": 0.0,
        "max_streams_per_key": 10_000,  # the fleets below are mostly one superadmin key
    }
    base.update(changes)
    return Settings.load({}, **base)


@contextlib.contextmanager
def run_gateway(settings: Settings, timeout: float = 15.0) -> Iterator[RunningGateway]:
    """uvicorn in a thread of this process (so tests can look at the hub)."""
    app = create_app(settings)
    config = uvicorn.Config(app, **uvicorn_options(settings))  # production's: uvloop, httptools
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, name=f"gateway-{settings.server.port}", daemon=True
    )
    thread.start()
    running = RunningGateway(settings, server=server, app=app)
    try:
        _wait_ready(running.base_url, timeout)
        yield running
    finally:
        app.request_shutdown()
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "gateway thread did not stop"


@contextlib.contextmanager
def spawn_gateway(
    settings: Settings, timeout: float = 20.0, *, log: Path | None = None
) -> Iterator[RunningGateway]:
    """``gateway serve`` as its own process (one process = one Redis subscription); with
    ``log``, its output goes to that file (else to the test's)."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    env["GATEWAY_LOG_LEVEL"] = "warning"
    args = [sys.executable, "-m", "gateway.cli", "serve"]
    if log is None:
        proc = subprocess.Popen(args, env=env)
    else:
        with log.open("wb") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = RunningGateway(settings, proc=proc)
    try:
        _wait_ready(running.base_url, timeout, alive=proc)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=settings.server.drain_deadline + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
