"""README, "Beside an existing Backend.AI": its shell commands, run as written, in order, by an
operator's shell against a Backend.AI-shaped installation (Backend.AI's Redis and PostgreSQL
of one schema generation, both with admin rights; the gateway's Redis), then a session's life
on Backend.AI's bus, which must reach the gateway's history through the bridge the README
started, with the least rights it created (the shipped read-only role, the Redis users)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aredis

from devtools.backendai_bus import BackendAIBus
from devtools.postgres import SCHEMAS, BackendAIDatabase, PostgresServer
from tests.support.bridge import Installation, gateway_history, names, wait_for
from tests.support.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Beside an existing Backend.AI"


def section_commands() -> list[str]:
    """The section's ``sh`` commands, in order (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(SECTION) :]
    body = body[: body.index("\n## ", len(SECTION))]
    body = body.split("\n### Identities from Backend.AI")[0]  # tests/system/test_sync_serve.py
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        joined = block.replace("\\\n", " ")
        commands += [line for line in joined.splitlines() if line.strip()]
    return commands


COMMANDS = section_commands()


def test_the_section_has_the_commands_this_test_runs() -> None:
    assert [c.split()[0] for c in COMMANDS] == [
        "umask", "psql", "redis-cli", "gateway", "echo", "echo",
        "GATEWAY_BRIDGE_FROM_REDIS_FILE=secrets/from-redis.url",
    ]  # fmt: skip
    assert COMMANDS[-1].split()[3:5] == ["gateway", "bridge"]
    assert "--format" in COMMANDS[-1]


@pytest.mark.anyio
@pytest.mark.parametrize("generation", ["23.09", "26.8"])
async def test_the_readme_commands_bridge_a_backendai(
    generation: str,
    private_postgres: PostgresServer,
    private_redis: RedisServer,
    redis_server: RedisServer,
    redis_url: str,
    tmp_path: Path,
) -> None:
    schema = "23.09" if generation == "23.09" else "26.8"
    private_postgres.create_database("backend", SCHEMAS[schema])
    db = BackendAIDatabase(private_postgres, schema, "backend")
    shell_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))},
        "PATH": f"{Path(sys.executable).parent}:{private_postgres.bindir}:{os.environ['PATH']}",
        "BACKENDAI_REDIS": f"127.0.0.1:{private_redis.port}",
        "BACKENDAI_DB": f"127.0.0.1:{private_postgres.port}",
        "GATEWAY_REDIS": f"127.0.0.1:{redis_server.port}",
        "BACKENDAI_DB_OWNER_DSN": db.dsn,
        "BACKENDAI_REDIS_ADMIN_URL": f"redis://127.0.0.1:{private_redis.port}/4",
        "GATEWAY_REDIS_ADMIN_URL": redis_url,
    }
    *setup, bridge_command = COMMANDS
    for command in setup:
        command = command.replace(" deploy/", f" {ROOT}/deploy/")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path, env=shell_env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, f"`{command}`: {done.stderr}{done.stdout}"
        assert "ERR" not in done.stdout, f"`{command}`: {done.stdout}"  # redis-cli's errors

    # the role reads only what it must: not a keypair's secret, and it writes nothing
    readonly = (tmp_path / "secrets" / "from-db.dsn").read_text().strip()
    conn = await asyncpg.connect(readonly)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT secret_key FROM keypairs")
        with pytest.raises(
            (asyncpg.ReadOnlySQLTransactionError, asyncpg.InsufficientPrivilegeError)
        ):
            await conn.execute("DELETE FROM kernels")
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0  # its columns: yes
    finally:
        await conn.close()

    source = aredis.Redis.from_url(f"redis://127.0.0.1:{private_redis.port}/4")
    gateway = aredis.Redis.from_url(redis_url)
    bus = BackendAIBus(source, generation, source="i-agent-01")
    installation = Installation(db, "unused", generation, source, bus, readonly)
    # what a running manager leaves on its bus, by which the bridge tells the generation
    manager = source.pubsub()
    if installation.format == "stream":  # its stream
        await bus.emit("session_enqueued", "00000000-0000-0000-0000-000000000000", "x")
    else:  # its subscription to the broadcast channel
        await manager.subscribe("events_all")
    # the README names the 25.11+ generation; the 23.09 installation is told its own
    command = bridge_command.replace("--format pubsub", f"--format {installation.format}")
    owner = await installation.owner("alice")

    async def history_names() -> list[str]:
        return names(await gateway_history(gateway))

    try:
        with running(command, tmp_path, shell_env):
            life = installation.life(owner, "readme-01")
            await life.rows()
            await life.lifecycle()

            async def arrived() -> list[str]:
                got = await history_names()
                return got if "session_success" in got else []

            got = await wait_for(arrived, 20, "the session's life in the gateway's history")
            assert got[0] == "session_enqueued" and got[-1] == "session_success"
            assert got.count("kernel_terminated") == 2  # both kernels, each once

        # A gap while no bridge runs (the stream trimmed past the cursor; on the channel, a
        # span no one followed): the restarted bridge reconciles it from PostgreSQL, reading
        # the gateway's history with the README's least rights (the review found EVALSHA_RO
        # missing from them: a bridge stuck for good after any gap).
        if installation.format == "stream":
            await source.xtrim("events", maxlen=0)
        second = installation.life(owner, "readme-02")
        await second.rows()
        await second.lifecycle()
        with running(command, tmp_path, shell_env):

            async def reconciled() -> list[str]:
                got = await history_names()
                return got if got.count("session_success") == 2 else []

            got = await wait_for(reconciled, 30, "the gap told and the second session's end")
            assert "GAP" in got
    finally:
        await manager.aclose()
        await source.aclose()
        await gateway.aclose()


@contextlib.contextmanager
def running(command: str, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """The README's bridge command until the block ends, active and following; then SIGTERM,
    and it must have stopped cleanly."""
    port = free_port()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd, env={**env, "GATEWAY_BRIDGE_PORT": str(port)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                state = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).json()
            except httpx.HTTPError:
                state = {}
            if state.get("ready") and state.get("role") == "active":
                break
            assert time.monotonic() < deadline, f"the README's bridge is not following: {state}"
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the shell and the bridge
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode in (0, -signal.SIGTERM), out  # the shell may go first
    assert "bridge backendai stopped" in out, out  # the bridge itself stopped cleanly
    assert "Traceback" not in out and "NoPermission" not in out, out
