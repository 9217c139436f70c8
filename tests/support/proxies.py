"""Real load balancers on loopback with the shipped configs: nginx (``deploy/nginx/``, its
upstream list pointed at local replicas) and haproxy, started and stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import pytest

from tests.support.deploy import GATEWAYS, HAPROXY_CFG, NGINX_CONF, NGINX_DIR
from tests.support.redis_server import free_port

__all__ = [
    "HAPROXY",
    "NGINX",
    "PROXY_RUNNERS",
    "Proxy",
    "RunProxy",
    "haproxy_loopback",
    "loopback_upstreams",
    "needs_haproxy",
    "needs_nginx",
    "nginx_args",
    "nginx_prefix",
    "run_haproxy",
    "run_nginx",
    "run_proxy",
    "stop_proxy",
]


def binary(name: str) -> str | None:
    # /usr/sbin is not on every user's PATH, and Debian installs both there.
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


NGINX = binary("nginx")
HAPROXY = binary("haproxy")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed: scripts/install")
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed: scripts/install"
)


@dataclass
class Proxy:
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def loopback_upstreams(addresses: list[str]) -> str:
    """deploy/nginx/upstream.compose.conf with the gateways at ``addresses`` (its balancing,
    passive checks and keepalive as shipped). Docker's resolver and ``resolve`` (nginx >=
    1.27.3) have no use for literal addresses."""
    text = (NGINX_DIR / "upstream.compose.conf").read_text()
    text = re.sub(r"(?m)^resolver .*$", "", text)
    for name, address in zip(GATEWAYS, addresses, strict=True):
        text, count = re.subn(rf"\b{name}:8081 resolve\b", address, text)
        assert count == 1, f"upstream.compose.conf: no 'server {name}:8081 resolve'"
    return text


def nginx_prefix(tmp: Path, upstreams: str, listen: str) -> Path:
    """A prefix for an unprivileged nginx: the shipped nginx.conf (a symlink, so nginx reads
    the file itself and its includes resolve here), the two includes, room for pid and temp."""
    prefix = tmp / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").symlink_to(NGINX_CONF)
    (prefix / "upstream.conf").write_text(upstreams)
    (prefix / "listen.conf").write_text(listen)
    return prefix


def nginx_args(prefix: Path, *extra: str) -> list[str]:
    assert NGINX is not None
    directives = "daemon off;"
    if os.geteuid() == 0:
        # As root nginx runs its workers as "nobody", who cannot enter pytest's private tmp
        # dir: no temp files, so a config that buffers responses would go unnoticed.
        directives += " user root;"
    conf = str(prefix / "nginx.conf")
    return [NGINX, "-p", f"{prefix}/", "-c", conf, "-e", "stderr", "-g", directives, *extra]


async def stop_proxy(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM (fast shutdown for both nginx and haproxy), then SIGKILL to its process group."""
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers go too
        proc.wait(timeout=timeout)


@contextlib.asynccontextmanager
async def run_proxy(args: list[str], port: int, log: Path) -> AsyncIterator[Proxy]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{args[0]} did not listen on {port}:\n{log.read_text()}")
            await anyio.sleep(0.02)
        yield Proxy(port, log)
    finally:
        await stop_proxy(proc)
    assert proc.returncode is not None


@contextlib.asynccontextmanager
async def run_nginx(
    tmp: Path, addresses: list[str], *, backups: list[str] = ()
) -> AsyncIterator[Proxy]:
    """The shipped nginx in front of ``addresses`` (``host:port``), then ``backups`` marked
    ``backup`` (sent requests only while every other one is down: a test's way to know which
    replica serves, and where its clients go next); fewer than the compose file's three
    gateways in all repeat the last of ``addresses``."""
    primaries = len(GATEWAYS) - len(backups)
    named = [*addresses, *[addresses[-1]] * (primaries - len(addresses)), *backups]
    upstreams = loopback_upstreams(named)
    for address in backups:
        upstreams, count = re.subn(
            rf"(server {re.escape(address)}\b[^;]*);", r"\1 backup;", upstreams, count=1
        )
        assert count == 1, upstreams
    port = free_port()
    prefix = nginx_prefix(tmp, upstreams, f"listen 127.0.0.1:{port};\n")
    async with run_proxy(nginx_args(prefix), port, prefix / "output.log") as proxy:
        yield proxy
    # (An unprivileged nginx may fail to raise its open-file limit: harmless for a test.)
    trouble = [
        line
        for line in proxy.output().splitlines()
        if re.search(r"\[(crit|alert|emerg)\]", line) and "setrlimit(RLIMIT_NOFILE" not in line
    ]
    assert not trouble, proxy.output()


def haproxy_loopback(text: str, port: int, addresses: list[str]) -> str:
    """The shipped haproxy.cfg bound to a loopback port, the gateways at ``addresses``."""
    text, count = re.subn(r"(?m)^(\s*)bind :8080$", rf"\1bind 127.0.0.1:{port}", text)
    assert count == 1, "haproxy.cfg: no 'bind :8080'"
    for name, address in zip(GATEWAYS, addresses, strict=True):
        text, count = re.subn(rf"(?m)^(\s*server {name}) {name}:8081$", rf"\1 {address}", text)
        assert count == 1, f"haproxy.cfg: no 'server {name} {name}:8081'"
    return text


@contextlib.asynccontextmanager
async def run_haproxy(tmp: Path, addresses: list[str]) -> AsyncIterator[Proxy]:
    assert HAPROXY is not None
    port = free_port()
    tmp.mkdir(exist_ok=True)
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_loopback(HAPROXY_CFG.read_text(), port, addresses))
    # -n: a connection limit this machine's open-file limit allows (haproxy refuses to start
    # when the configured maxconn needs more descriptors than it may open).
    args = [HAPROXY, "-db", "-n", "1000", "-f", str(cfg)]
    async with run_proxy(args, port, tmp / "haproxy.log") as proxy:
        yield proxy
    assert "[ALERT]" not in proxy.output(), proxy.output()


RunProxy = Callable[[Path, list[str]], AbstractAsyncContextManager[Proxy]]
#: a test parametrized over both shipped load balancers (``runner``), each skipped when absent
PROXY_RUNNERS: Final = [
    pytest.param(run_nginx, id="nginx", marks=pytest.mark.skipif(not NGINX, reason="nginx")),
    pytest.param(
        run_haproxy, id="haproxy", marks=pytest.mark.skipif(not HAPROXY, reason="haproxy")
    ),
]
