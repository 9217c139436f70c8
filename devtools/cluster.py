"""``python -m devtools cluster`` (``scripts/demo``): the deployment in miniature on
loopback, without Docker.

A private redis-server, N gateway replicas (one process each), nginx in front of them with
the very ``deploy/nginx/nginx.conf`` docker-compose uses, and optionally the demo publisher.
The end-to-end tests use :class:`LocalCluster` too, so what they prove is what ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx

from gateway.settings import Settings

from .localredis import PrivateRedis, free_port

__all__ = ["NGINX_CONF", "LocalCluster"]

#: the shipped config; present in a source checkout (not in an installed wheel)
NGINX_CONF: Final = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s")


class LocalCluster:
    """Start with ``with LocalCluster(...) as cluster:``; ``cluster.url`` is the front door."""

    def __init__(
        self,
        *,
        replicas: int = 3,
        port: int | None = None,
        redis_url: str | None = None,
        publisher_rate: float = 0.0,
        nginx: bool = True,
        settings: Settings | None = None,
        quiet: bool = True,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self.replica_count = replicas
        self.port = port or free_port()
        self.publisher_rate = publisher_rate
        self.use_nginx = nginx and shutil.which("nginx") is not None and NGINX_CONF.exists()
        self.base_settings = settings or Settings.load({})
        self.quiet = quiet
        self._redis_url = redis_url
        self._redis: PrivateRedis | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="kev-cluster-"))
        self.replicas: list[subprocess.Popen[bytes]] = []
        self.replica_ports: list[int] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.publisher: subprocess.Popen[bytes] | None = None

    @property
    def redis_url(self) -> str:
        assert self._redis_url is not None, "the cluster is not started"
        return self._redis_url

    @property
    def url(self) -> str:
        """nginx when it runs, else the only replica."""
        port = self.port if self.use_nginx else self.replica_ports[0]
        return f"http://127.0.0.1:{port}"

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.replica_ports]

    def _output(self) -> int | None:
        return subprocess.DEVNULL if self.quiet else None

    def start(self) -> None:
        from .demo import seed_demo_identities  # the demo's keypairs, also for the tests

        if self._redis_url is None:
            self._redis = PrivateRedis()
            self._redis.start()
            self._redis_url = self._redis.url
        # its own thread and loop: start() may be called from async code (the tests)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                asyncio.run, seed_demo_identities(self.redis_url, self.base_settings.prefix)
            ).result()
        if not self.use_nginx:
            self.replica_count = 1
        for _ in range(self.replica_count):
            self.replica_ports.append(free_port())
            self.replicas.append(self._spawn_replica(self.replica_ports[-1]))
        for url, proc in zip(self.replica_urls, self.replicas, strict=True):
            _wait_http(url + "/ready", 20, proc)
        if self.use_nginx:
            self._start_nginx()
        if self.publisher_rate > 0:
            env = {**os.environ, "KEV_REDIS_URL": self.redis_url,
                   "KEV_PREFIX": self.base_settings.prefix}  # fmt: skip
            self.publisher = subprocess.Popen(
                [sys.executable, "-m", "publisher.cli", "demo", "--rate",
                 str(self.publisher_rate)],
                env=env, stdout=self._output(), stderr=self._output(),
            )  # fmt: skip

    def _spawn_replica(self, port: int) -> subprocess.Popen[bytes]:
        settings = self.base_settings.replace(
            port=port, redis_url=self.redis_url, replica=f"local-{port}"
        )
        env = {**os.environ, **settings.to_env()}
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            env=env,
            stdout=self._output(),
            stderr=self._output(),
        )

    def _start_nginx(self) -> None:
        conf_dir = self._dir / "conf"
        conf_dir.mkdir()
        (conf_dir / "nginx.conf").symlink_to(NGINX_CONF)
        servers = "\n".join(
            f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;" for p in self.replica_ports
        )
        (conf_dir / "upstream.conf").write_text(
            f"upstream gateways {{\n    least_conn;\n{servers}\n    keepalive 32;\n}}\n"
        )
        (conf_dir / "listen.conf").write_text(f"listen 127.0.0.1:{self.port};\n")
        prefix = self._dir / "nginx"
        prefix.mkdir()
        prefix.chmod(0o777)  # as root, nginx's workers run as an unprivileged user
        self.nginx = subprocess.Popen(
            [
                "nginx", "-p", f"{prefix}/", "-c", str(conf_dir / "nginx.conf"),
                "-e", "stderr", "-g", "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._output(),
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{self.port}/lb-health", 10, self.nginx)

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``: no drain, no goodbye (a crash)."""
        self.replicas[index].kill()
        self.replicas[index].wait(timeout=5)

    def restart(self, index: int) -> None:
        _stop(self.replicas[index])
        self.replicas[index] = self._spawn_replica(self.replica_ports[index])
        _wait_http(self.replica_urls[index] + "/ready", 20, self.replicas[index])

    def stop(self) -> None:
        if self.publisher is not None:
            _stop(self.publisher, signal.SIGINT)
        for proc in self.replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # drain all at once
        for proc in self.replicas:
            _stop(proc, timeout=self.base_settings.drain_deadline + 5)
        if self.nginx is not None:
            _stop(self.nginx, signal.SIGQUIT)
        if self._redis is not None:
            self._redis.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
