"""A Redis Sentinel set on loopback for the tests: a master, one replica and one sentinel that
promotes the replica half a second after the master stops answering."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.redis_server import RedisServer, free_port

__all__ = ["sentinel_set"]


@contextmanager
def sentinel_set() -> Iterator[tuple[RedisServer, subprocess.Popen[bytes], str, int]]:
    """(master, replica process, sentinel URL, replica port)."""
    master = RedisServer()
    master.start()
    workdir = Path(tempfile.mkdtemp(prefix="kev-sentinel-"))
    replica_port, sentinel_port = free_port(), free_port()
    replica = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(replica_port), "--save", "",
         "--dir", str(workdir), "--replicaof", "127.0.0.1", str(master.port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {sentinel_port}\ndir {workdir}\n"
        f"sentinel monitor kev 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds kev 500\n"
        "sentinel failover-timeout kev 5000\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=replica_port) as r:
                    if r.info("replication").get("master_link_status") == "up":
                        break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        # The sentinel learns of replicas from the master's INFO, every 10 s at worst: it
        # must know this one before it can promote it.
        while True:
            try:
                with redis.Redis(port=sentinel_port) as s:
                    if s.execute_command("SENTINEL", "REPLICAS", "kev"):
                        break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline + 15, "the sentinel never found the replica"
            time.sleep(0.1)
        yield master, replica, f"redis+sentinel://127.0.0.1:{sentinel_port}/kev", replica_port
    finally:
        for proc in (sentinel, replica):
            proc.kill()
            proc.wait()
        master.close()
        shutil.rmtree(workdir, ignore_errors=True)
