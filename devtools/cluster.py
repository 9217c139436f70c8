"""``python -m devtools cluster`` (``scripts/demo``): the deployment in miniature on
loopback, without Docker.

A private redis-server, N gateway replicas (one process each), nginx in front of them with
the very ``deploy/nginx/nginx.conf`` docker-compose uses, and optionally the demo publisher.
The end-to-end tests use :class:`LocalCluster` too, so what they prove is what ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import httpx

from gateway.settings import Settings

from .localredis import PrivateRedis, free_port

__all__ = ["NGINX_CONF", "ClusterError", "LocalCluster", "PortInUse", "check_port"]

#: the shipped config; present in a source checkout (not in an installed wheel)
NGINX_CONF: Final = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf"
#: where nginx runs (its listen address), the replicas' one trusted proxy
NGINX_ADDRESS: Final = "127.0.0.1"


class ClusterError(RuntimeError):
    """The cluster could not start; the message is one line saying what went wrong."""


class PortInUse(ClusterError):
    """The front door's port is taken (by another demo, or anything else)."""


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """Raise :class:`PortInUse` when ``host``:``port`` cannot be bound (checked first, so a
    second demo never reports the first one's URL as its own)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use") from exc
            raise ClusterError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _relay(stream: IO[bytes], prefix: str) -> None:
    """Copy ``stream`` to stderr line by line, each line behind ``prefix`` (a thread per
    process; ends when the process closes its end)."""
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            sys.stderr.write(f"{prefix} {line}\n")
            sys.stderr.flush()


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    """Send ``sig`` unless it has ended, wait up to ``timeout``, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = ""
) -> None:
    """Poll ``url`` until it answers 200; raises :class:`ClusterError` when ``proc`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if proc is not None and proc.poll() is not None:
            name = what or str(proc.args)
            raise ClusterError(f"{name} exited with status {proc.returncode} (its log is above)")
        time.sleep(0.05)
    raise ClusterError(f"{what or url}: {url} did not answer 200 within {timeout:g}s")


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
        self._relays: list[threading.Thread] = []
        #: replicas whose death :meth:`dead_replicas` has reported already
        self._reported: set[int] = set()

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

    def _popen(
        self, args: list[str], name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a component; unless quiet, its output goes to stderr line by line behind
        ``[name]``, so the log of a cluster says which process each line came from."""
        if self.quiet:
            out, err = subprocess.DEVNULL, subprocess.DEVNULL
        else:
            out, err = subprocess.PIPE, subprocess.STDOUT
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env)
        if proc.stdout is not None:
            relay = threading.Thread(
                target=_relay, args=(proc.stdout, f"[{name}]"), name=f"relay-{name}", daemon=True
            )
            relay.start()
            self._relays.append(relay)
        return proc

    def replica_name(self, index: int) -> str:
        return f"local-{self.replica_ports[index]}"

    def dead_replicas(self) -> list[str]:
        """One line for each replica that has exited since the last call (a crash, or a
        kill from outside): which one, its pid and status, and that the others go on."""
        lines = []
        for index, proc in enumerate(self.replicas):
            if proc.poll() is not None and index not in self._reported:
                self._reported.add(index)
                alive = sum(p.poll() is None for p in self.replicas)
                lines.append(
                    f"replica {self.replica_name(index)} (pid {proc.pid}) exited with status "
                    f"{proc.returncode}; {alive} of {len(self.replicas)} still serving"
                )
        return lines

    def start(self) -> None:
        """Start every component and wait until each answers: every replica's ``/ready``,
        then nginx's own health and ``/ready`` through it. Raises :class:`PortInUse` (the
        front door's port is taken: checked before anything starts) or
        :class:`ClusterError`."""
        from .demo import seed_demo_identities  # the demo's keypairs, also for the tests

        check_port(self.port)
        if self._redis_url is None:
            self._redis = PrivateRedis(aof=True)  # a restart keeps identities (README faults)
            self._redis.start()
            self._redis_url = self._redis.url
        # its own thread and loop: start() may be called from async code (the tests)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(
                asyncio.run, seed_demo_identities(self.redis_url, self.base_settings.redis.prefix)
            ).result()
        if not self.use_nginx:
            self.replica_count = 1
        for _ in range(self.replica_count):
            # without nginx the only replica is the front door, on its port
            self.replica_ports.append(free_port() if self.use_nginx else self.port)
            self.replicas.append(self._spawn_replica(self.replica_ports[-1]))
        for index, (url, proc) in enumerate(zip(self.replica_urls, self.replicas, strict=True)):
            _wait_http(url + "/ready", 20, proc, f"replica {self.replica_name(index)}")
        if self.use_nginx:
            self._start_nginx()
        if self.publisher_rate > 0:
            env = {**os.environ, "KEV_REDIS_URL": self.redis_url,
                   "KEV_PREFIX": self.base_settings.redis.prefix}  # fmt: skip
            self.publisher = self._popen(
                [sys.executable, "-m", "publisher.cli", "demo", "--rate",
                 str(self.publisher_rate)],
                "publisher", env=env,
            )  # fmt: skip

    def replica_settings(self, port: int, redis_url: str) -> Settings:
        """The settings of the replica on ``port``: the base ones, and behind nginx, nginx
        trusted as the proxy whose X-Forwarded-For names the client (so the login throttle
        counts clients, not nginx: README, "Limits at the edge")."""
        settings = self.base_settings.replace(
            port=port, redis_url=redis_url, replica=f"local-{port}"
        )
        if self.use_nginx and not settings.browser.trusted_proxies:
            settings = settings.replace(trusted_proxies=(NGINX_ADDRESS,))
        return settings

    def _spawn_replica(self, port: int) -> subprocess.Popen[bytes]:
        settings = self.replica_settings(port, self.redis_url)
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        return self._popen(
            [sys.executable, "-m", "gateway.cli", "serve"], settings.server.replica, env=env
        )

    def _start_nginx(self) -> None:
        conf_dir = self._dir / "conf"
        conf_dir.mkdir()
        (conf_dir / "nginx.conf").symlink_to(NGINX_CONF)
        servers = "\n".join(
            f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;" for p in self.replica_ports
        )
        # keepalive_timeout under the replicas' header_timeout (15 s): nginx never reuses a
        # connection the replica is closing
        (conf_dir / "upstream.conf").write_text(
            f"upstream gateways {{\n    least_conn;\n{servers}\n"
            "    keepalive 32;\n    keepalive_timeout 10s;\n}\n"
        )
        (conf_dir / "listen.conf").write_text(f"listen {NGINX_ADDRESS}:{self.port};\n")
        prefix = self._dir / "nginx"
        prefix.mkdir()
        prefix.chmod(0o777)  # as root, nginx's workers run as an unprivileged user
        self.nginx = self._popen(
            [
                "nginx", "-p", f"{prefix}/", "-c", str(conf_dir / "nginx.conf"),
                "-e", "stderr", "-g", "daemon off;",
            ],
            "nginx",
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{self.port}/lb-health", 10, self.nginx, "nginx")
        # nginx proxies to the replicas (it answers /ready and /metrics itself with 404:
        # those are for probes of each replica, never through the load balancer)
        _wait_http(f"http://127.0.0.1:{self.port}/", 10, self.nginx, "nginx -> replicas")

    def kill(self, index: int) -> None:
        """SIGKILL replica ``index``: no drain, no goodbye (a crash)."""
        self.replicas[index].kill()
        self.replicas[index].wait(timeout=5)

    def restart(self, index: int) -> None:
        stop_process(self.replicas[index])
        self.replicas[index] = self._spawn_replica(self.replica_ports[index])
        self._reported.discard(index)
        _wait_http(
            self.replica_urls[index] + "/ready", 20, self.replicas[index],
            f"replica {self.replica_name(index)}",
        )  # fmt: skip

    def stop(self) -> None:
        if self.publisher is not None:
            stop_process(self.publisher, signal.SIGINT)
        for proc in self.replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # drain all at once
        for proc in self.replicas:
            stop_process(proc, timeout=self.base_settings.server.drain_deadline + 5)
        if self.nginx is not None:
            stop_process(self.nginx, signal.SIGQUIT)
        if self._redis is not None:
            self._redis.close()
        for relay in self._relays:  # each ends when its process has closed its output
            relay.join(timeout=2)
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
