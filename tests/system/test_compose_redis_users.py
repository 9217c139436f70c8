"""docker-compose.yml's Redis wiring, run for real without Docker: redis-server with the
compose command line (the shipped ``users.acl``, the append-only file), the seed job's
``gateway import`` on its env (kev-admin), a gateway on the gateway services' env
(kev-gateway, password from the file ``GATEWAY_REDIS_PASSWORD_FILE`` names) serving a stream,
and the demo publisher's ``kev-publish demo`` on its env (kev-publisher). A service wired to
the wrong user, a password file that does not match ``users.acl``, or a right missing from
a profile fails here. (The files read, not run: tests/integration/test_deploy_files.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import redis

from gateway.consumer import open_stream
from gateway.settings import Settings
from tests.support.deploy import GATEWAYS, ROOT
from tests.support.gateway_server import run_gateway
from tests.support.redis_server import free_port
from tests.support.redis_users import compose, redis_client_of, redis_command
from tests.support.secure_redis import spawn_redis

HOST = "127.0.0.1"


def _env(doc: dict[str, Any], service: str, port: int) -> dict[str, str]:
    """The service's compose environment, Redis pointed at ``port`` and the password file at
    the checkout's copy of its secret."""
    spec = doc["services"][service]
    env = {k: str(v) for k, v in spec["environment"].items()}
    return env | redis_client_of(doc, service).env(HOST, port)


def _process_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    return base | extra | {"PYTHONUNBUFFERED": "1"}


def _container_file(doc: dict[str, Any], service: str, path: str) -> Path:
    for volume in doc["services"][service].get("volumes", []):
        host, container, *_ = volume.split(":")
        if container == path:
            return ROOT / str(host)
    raise AssertionError(f"{service}: {path} is not mounted")


def _secret_file(doc: dict[str, Any]) -> Path:
    """The checkout's file behind the redis service's one secret."""
    (name,) = doc["services"]["redis"]["secrets"]
    return ROOT / doc["secrets"][name]["file"]


def _healthcheck(
    doc: dict[str, Any], port: int, secret: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The redis service's healthcheck as compose runs it (``CMD-SHELL``: ``sh -c``, ``$$``
    unescaped), its secret read from the checkout's file (or ``secret``) and redis-cli pointed
    at ``port``."""
    kind, command = doc["services"]["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL", kind
    (name,) = doc["services"]["redis"]["secrets"]
    file = secret or _secret_file(doc)
    command = command.replace("$$", "$").replace(f"/run/secrets/{name}", str(file))
    assert command.count("redis-cli ") == 1, command
    command = command.replace("redis-cli ", f"redis-cli -h {HOST} -p {port} ")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)


def _healthy(doc: dict[str, Any], port: int) -> None:
    done = _healthcheck(doc, port)
    if done.returncode != 0:
        raise redis.ConnectionError(f"healthcheck: {done.returncode} {done.stderr}")


def test_the_compose_services_run_on_their_redis_users(tmp_path: Path) -> None:
    doc = compose()
    args, mounts = redis_command(doc)
    args = [str(mounts.get(a, a)) for a in args]  # the aclfile: the checkout's copy
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    with spawn_redis(
        # after the compose arguments: a port of our own, the data in tmp_path (the helper's
        # --appendonly no comes first, so the compose command's "yes" wins)
        [*args, "--port", str(port), "--dir", str(data)],
        lambda: _healthy(doc, port),  # its healthcheck, run for real
    ):
        # the check is not vacuous: the superuser's password is what makes it pass
        assert _healthcheck(doc, port, secret=Path("/dev/null")).returncode != 0
        crlf = tmp_path / "superuser-crlf.password"  # the same secret, saved with CRLF
        crlf.write_bytes(_secret_file(doc).read_bytes().rstrip(b"\n") + b"\r\n")
        assert _healthcheck(doc, port, secret=crlf).returncode == 0
        # seed: `gateway import /seed/demo-identities.json` as kev-admin
        seed_cmd = doc["services"]["seed"]["command"]
        ids = _container_file(doc, "seed", seed_cmd[2])
        seeded = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *seed_cmd[1:2], str(ids)],
            env=_process_env(_env(doc, "seed", port)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert seeded.returncode == 0, seeded.stderr
        assert seeded.stdout.startswith("imported ")

        settings = Settings.load(_env(doc, GATEWAYS[0], port), port=free_port(), probe_interval=0.5)
        assert settings.redis.password  # read from the file, the URL names the user only
        keypair = json.loads(ids.read_text())["keypairs"][0]  # the demo superadmin
        with run_gateway(settings) as gw:
            anyio.run(_stream_while_publishing, gw.base_url, keypair, _env(doc, "publisher", port))
    # the append-only file of the compose command line was written
    assert any(p.stat().st_size > 0 for p in data.rglob("*.aof")), list(data.rglob("*"))


async def _stream_while_publishing(
    base_url: str, keypair: dict[str, str], env: dict[str, str]
) -> None:
    command = ["demo", "--rate", "40", "--count", "20", "--seed", "7"]
    seen: list[str] = []
    with anyio.fail_after(20):
        async with open_stream(
            base_url, access_key=keypair["access_key"], secret_key=keypair["secret_key"]
        ) as (_, events):
            async with await anyio.open_process(
                [sys.executable, "-m", "publisher.cli", *command], env=_process_env(env)
            ) as publisher:
                async for event in events:
                    if event.event.startswith(("kernel_", "session_")):
                        seen.append(event.event)
                    if len(seen) >= 5:
                        break
                assert await publisher.wait() == 0
    assert len(seen) >= 5
