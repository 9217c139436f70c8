"""A private redis-server on a free loopback port, for the demo, the local cluster, the bench
and the tests: its own temporary directory, stopped with its owner. No persistence unless
asked: ``aof`` (what the demo and the local cluster use, like every shipped configuration:
an append-only file fsynced every second, so a restart keeps the identities and the history)
or ``durable`` (fsync on every write)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["PrivateRedis", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """Start, stop (gracefully or with SIGKILL) and restart a redis-server on one port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        maxclients: int = 20_000,
        durable: bool = False,
        aof: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.maxclients = maxclients
        #: fsync every write to an append-only file, so a SIGKILL loses nothing acknowledged
        self.durable = durable
        #: an append-only file fsynced every second (the shipped configurations' setting):
        #: a restart loses at most the last second of writes
        self.aof = aof
        self.dir = Path(tempfile.mkdtemp(prefix="kev-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            raise RuntimeError("redis-server is already running")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/install")
        # fmt: off
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.durable or self.aof else "no",
            "--appendfsync", "always" if self.durable else "everysec",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--maxclients", str(self.maxclients),
        ]
        # fmt: on
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc = None
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
