"""redis-server with ACL users or TLS, on free loopback ports, for the least-privilege tests:
the same binary as :mod:`devtools.localredis`, extra arguments of the test's choosing."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
import trustme

from tests.support.redis_server import free_port

__all__ = ["Certs", "make_certs", "spawn_redis"]


@contextlib.contextmanager
def spawn_redis(
    args: Sequence[str],
    alive: Callable[[], object],
    *,
    conf: str | None = None,
    timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``redis-server`` (no persistence, loopback only) with ``args``; waits until
    ``alive()`` stops raising :class:`redis.RedisError` (at most ``timeout`` s), stops it by
    its PID when done. ``conf``: a config file, which must come first."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed: run scripts/install"
    workdir = tempfile.mkdtemp(prefix="kev-secure-redis-")
    base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir,
            "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        [binary, *([conf] if conf else []), *base, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                alive()
                break
            except redis.RedisError:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"redis-server {args} exited: {err[-2000:]}") from None
                assert time.monotonic() < deadline, f"redis-server {args} not up in {timeout}s"
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Certs:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client's."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: a CA that signed nothing here: verifying against it must fail
    other_ca: Path


def make_certs() -> Certs:
    """Certificates made with trustme in a new temporary directory."""
    out = Path(tempfile.mkdtemp(prefix="kev-certs-"))
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("kev-client")
    certs = Certs(
        out, out / "ca.pem", out / "server.crt", out / "server.key", out / "client.crt",
        out / "client.key", out / "other-ca.pem",
    )  # fmt: skip
    ca.cert_pem.write_to_path(str(certs.ca))
    other.cert_pem.write_to_path(str(certs.other_ca))
    server.cert_chain_pems[0].write_to_path(str(certs.server_cert))
    server.private_key_pem.write_to_path(str(certs.server_key))
    client.cert_chain_pems[0].write_to_path(str(certs.client_cert))
    client.private_key_pem.write_to_path(str(certs.client_key))
    return certs


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
