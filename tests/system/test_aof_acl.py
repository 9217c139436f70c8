"""The shipped ACL file keeps every write across a restart with the append-only file, tried
for real. A Redis whose EXEC re-checks ACLs while it loads the AOF (redis/redis#14541, fixed
by #14545; Debian bookworm's 7.0.15 has it) replays the AOF as the ``default`` user, so a
``default`` user limited to PING (the shipped file before) had every transaction and script
write refused at a restart and lost: identities, events, the epoch. The shipped ``default``
user is the superuser behind its own password; with it the shipped users' identity import and
publishes survive a SIGKILL, and Redis logs no NOPERM."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
import redis

from gateway.cli.acl import Profile
from publisher import Keys, SyncPublisher
from tests.support.identities import ROOT, seed, session_of
from tests.support.redis_server import free_port
from tests.support.redis_users import ACLFILE, DEMO_PASSWORDS, DEMO_SUPERUSER

SUPERUSER = DEMO_SUPERUSER.read_text().strip()


def _url(port: int, profile: Profile) -> str:
    """The shipped ACL user of ``profile`` (``kev-<profile>``) with its demo password."""
    secret = DEMO_PASSWORDS[profile].read_text().strip()
    return f"redis://kev-{profile}:{quote(secret, safe='')}@127.0.0.1:{port}/0"


@contextmanager
def _redis(port: int, workdir: Path, acl: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed: run scripts/install"
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
            "--aclfile", str(acl), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--logfile", str(workdir / "redis.log")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, password=SUPERUSER, socket_timeout=1) as client:
                    if client.info("persistence").get("loading") == 0:
                        break
            except redis.RedisError:
                assert proc.poll() is None, (workdir / "redis.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _state(port: int) -> tuple[int, int, bytes | None]:
    keys = Keys()
    with redis.Redis(port=port, password=SUPERUSER) as client:
        return client.scard(keys.keypairs), client.xlen(keys.history), client.get(keys.epoch)


def test_the_shipped_users_keep_every_write_across_a_sigkill(tmp_path: Path) -> None:
    port = free_port()
    with _redis(port, tmp_path, ACLFILE):  # the shipped file itself
        anyio.run(seed, _url(port, "admin"))  # the identity import: transactions
        with SyncPublisher.from_url(_url(port, "publisher")) as pub:  # the publish script
            ids = [pub.publish(session_of(ROOT, "aof").started(f"n={i}")) for i in range(5)]
        assert all(ids)
        before = _state(port)
    assert before[0] > 0 and before[1] == 5 and before[2] is not None, before
    with _redis(port, tmp_path, ACLFILE):  # the same files: the AOF replayed
        after = _state(port)
    assert after == before
    assert "NOPERM" not in (tmp_path / "redis.log").read_text()
