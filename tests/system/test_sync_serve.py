"""``gateway sync-identities`` as a process beside two gateway replicas, against a real
PostgreSQL with Backend.AI's schema read by the column-limited "identity" role: a keypair that
exists only in PostgreSQL streams after one sync; a key deactivated with SQL ends its open
streams on both replicas within one interval plus the re-authorization bound (measured);
PostgreSQL stopped revokes nothing and shows in the syncer's /ready; a second syncer waits
as a standby."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis.asyncio as aredis

from devtools.postgres import SCHEMAS, BackendAIDatabase, Owner, PostgresServer, owner_sql
from gateway.identity.store import IdentityStore
from gateway.settings import SyncSettings
from publisher.keys import Keys
from tests.support.gateway_server import RunningGateway
from tests.support.http import stream_as
from tests.support.identities import Person
from tests.support.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

V4 = "/stream/kernel/_/events"
INTERVAL = 1.0
ALICE = Owner(
    user_uuid=uuid.UUID("00000000-0000-4000-8000-00000000a11c"),
    email="alice@example.com",
    access_key="AKIASYNCALICE0000001",
    secret_key="alice-secret-".ljust(40, "x"),
    group_id=uuid.UUID("0b3f2c1d-7a8e-4f60-8c2b-5d9e1f3a4b02"),
    group_name="research",
)


@contextlib.contextmanager
def syncer(dsn: str, redis_url: str) -> Iterator[str]:
    """``gateway sync-identities`` until the block ends; yields its base URL."""
    settings = SyncSettings.load(
        {}, from_db=dsn, redis_url=redis_url, interval=INTERVAL, port=free_port(), lease_ttl=2.0
    )
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "sync-identities"], env=env)
    try:
        yield f"http://127.0.0.1:{settings.sync.port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises it
        finally:
            if proc.poll() is None:
                proc.kill()


def _synced(url: str) -> bool:
    """The syncer is active and has applied a sync. ``ready`` alone is not that: a syncer
    that has not taken the lease yet is a standby, ready as soon as it reaches Redis (a
    stream opened then, before any sync, got 401: seen once in CI)."""
    body = _ready(url)
    return bool(body.get("ready") and body.get("role") == "active" and body.get("last_success"))


def _ready(url: str) -> dict[str, object]:
    try:
        body: dict[str, object] = httpx.get(url + "/ready", timeout=2).json()
    except httpx.HTTPError:
        return {}
    return body


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.05)


@pytest.mark.parametrize("backendai_db", ["26.8"], indirect=True)
async def test_backendai_s_identities_drive_open_streams_on_every_replica(
    backendai_db: BackendAIDatabase,
    postgres_server: PostgresServer,
    redis_url: str,
    start_gateway: object,
) -> None:
    backendai_db.execute(owner_sql(backendai_db.version, ALICE))
    dsn = backendai_db.create_readonly_role(f"kevsync{uuid.uuid4().hex[:8]}", "pw", ("identity",))
    replicas: list[RunningGateway] = [start_gateway(), start_gateway()]  # type: ignore[operator]
    alice = Person(str(ALICE.user_uuid), "user", "default", ALICE.access_key, ALICE.secret_key)
    with syncer(dsn, redis_url) as url:
        await _until(lambda: _synced(url), 20, "the syncer's first sync")
        assert _ready(url)["keypairs"] == 1
        # --once never writes beside the active syncer (the review: a stale snapshot from a
        # cron job could switch a just-deactivated key back on)
        env = {**os.environ, **SyncSettings.load({}, from_db=dsn, redis_url=redis_url).to_env()}
        once = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "sync-identities", "--once"],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert once.returncode == 1 and "is the active syncer; not run" in once.stdout, once
        async with contextlib.AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(stream_as(alice, r.base_url + V4)) for r in replicas
            ]
            # a key that exists only in PostgreSQL streams (a non-200 would have raised)
            started = time.monotonic()
            backendai_db.execute(
                f"UPDATE keypairs SET is_active = false WHERE access_key = '{ALICE.access_key}'"
            )
            ended: list[float] = []
            for _, events in streams:
                with anyio.fail_after(INTERVAL + 10):
                    async for event in events:
                        if event.event == "server_close":
                            break
                ended.append(time.monotonic() - started)
        print(f"deactivated in PostgreSQL -> both streams closed in {max(ended):.2f}s")
        assert max(ended) < INTERVAL + 5  # one interval, then the re-authorization bound

        # PostgreSQL down: nothing revoked, the syncer says so
        syncs = _sync_count(url)
        backendai_db.execute(
            f"UPDATE keypairs SET is_active = true WHERE access_key = '{ALICE.access_key}'"
        )
        await _until(lambda: _sync_count(url) >= syncs + 2, 10, "a sync after the reactivation")
        postgres_server.stop()
        try:
            await _until(lambda: _ready(url).get("database") == "unavailable", 20, "not ready")
            assert not _ready(url)["ready"]
            async with stream_as(alice, replicas[0].base_url + V4):
                pass  # still streams (a refusal raises): nothing was revoked
        finally:
            postgres_server.start()


U = str(ALICE.user_uuid)
#: a change made in Backend.AI's database -> SQL; each must end alice's open streams
CHANGES = {
    "key deactivated": f"UPDATE keypairs SET is_active = false WHERE \"user\" = '{U}'",
    "user inactive": f"UPDATE users SET status = 'inactive' WHERE uuid = '{U}'",
    "user deleted": f"DELETE FROM association_groups_users WHERE user_id = '{U}';"
    f"DELETE FROM keypairs WHERE \"user\" = '{U}'; DELETE FROM users WHERE uuid = '{U}'",
    "secret rotated": f"UPDATE keypairs SET secret_key = '{'r' * 40}' WHERE \"user\" = '{U}'",
    "demoted": f"UPDATE users SET role = 'user' WHERE uuid = '{U}'",
    "moved to another domain": f"UPDATE users SET domain_name = 'other' WHERE uuid = '{U}'",
    "domain deactivated": "UPDATE domains SET is_active = false WHERE name = 'default'",
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("backendai_db", ["23.09"], indirect=True)
async def test_each_change_in_backendai_ends_the_streams_on_every_replica(
    change: str,
    backendai_db: BackendAIDatabase,
    redis_url: str,
    start_gateway: object,
) -> None:
    admin = dataclasses.replace(ALICE, role="admin")  # so that a demotion narrows
    other = Owner(
        user_uuid=uuid.uuid4(), email="olga@example.com", access_key="AKIASYNCOLGA00000001",
        secret_key="o" * 40, group_id=uuid.uuid4(), group_name="lab", domain="other",
    )  # fmt: skip
    backendai_db.execute(owner_sql(backendai_db.version, admin) + owner_sql("23.09", other))
    dsn = backendai_db.create_readonly_role(f"kevsync{uuid.uuid4().hex[:8]}", "pw", ("identity",))
    replicas: list[RunningGateway] = [start_gateway(), start_gateway()]  # type: ignore[operator]
    alice = Person(U, "admin", "default", ALICE.access_key, ALICE.secret_key)
    with syncer(dsn, redis_url) as url:
        await _until(lambda: _synced(url), 20, "the syncer's first sync")
        async with contextlib.AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(stream_as(alice, r.base_url + V4)) for r in replicas
            ]
            started = time.monotonic()
            backendai_db.execute(CHANGES[change])
            ended: list[float] = []
            for _, events in streams:
                with anyio.fail_after(INTERVAL + 10):
                    async for event in events:
                        if event.event == "server_close":
                            break
                ended.append(time.monotonic() - started)
    print(f"{change} in PostgreSQL -> both replicas' streams closed in {max(ended):.2f}s")
    assert max(ended) < INTERVAL + 5  # one interval, then the re-authorization bound


def _sync_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=2).text
    for line in text.splitlines():
        if line.startswith('kev_sync_runs_total{result="ok"}'):
            return float(line.split()[1])
    return 0.0


# -- README, "Identities from Backend.AI": its commands, as written -----------------------------

README_SECTION = "### Identities from Backend.AI"


def _readme_commands() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = text[text.index(README_SECTION) :]
    body = body[: body.index("\n## ")]
    (block,) = re.findall(r"```sh\n(.*?)```", body, re.S)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


async def test_the_readme_commands_sync_a_backendai(
    private_postgres: PostgresServer, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    *setup, run = _readme_commands()
    assert "--once" in setup[-1] and "--once" not in run
    private_postgres.create_database("backend", SCHEMAS["26.8"])
    db = BackendAIDatabase(private_postgres, "26.8", "backend")
    db.execute(owner_sql(db.version, ALICE))
    root = Path(__file__).resolve().parents[2]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))},
        "PATH": f"{Path(sys.executable).parent}:{private_postgres.bindir}:{os.environ['PATH']}",
        "BACKENDAI_DB": f"127.0.0.1:{private_postgres.port}",
        "GATEWAY_REDIS": f"127.0.0.1:{redis_server.port}",
        "BACKENDAI_DB_OWNER_DSN": db.dsn,
        "GATEWAY_REDIS_ADMIN_URL": redis_url,
        "GATEWAY_SYNC_PORT": str(free_port()),
    }
    for command in setup:
        command = command.replace(" deploy/", f" {root}/deploy/")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"`{command}`: {done.stderr}{done.stdout}"
        assert "ERR" not in done.stdout, f"`{command}`: {done.stdout}"
    assert "1 keypairs from backend.ai" in done.stdout  # --once said what it did
    client = aredis.Redis.from_url(redis_url)
    store = IdentityStore(client, Keys(), cache_ttl=0)
    try:
        resolved = await store.resolve(ALICE.access_key)
        assert resolved is not None and resolved[1].user_id == str(ALICE.user_uuid)
    finally:
        await client.aclose()
    proc = subprocess.Popen(
        ["bash", "-c", run], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{env['GATEWAY_SYNC_PORT']}"
        await _until(lambda: _ready(url).get("ready"), 20, "the README's syncer to be ready")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert "identity sync stopped" in out and "Traceback" not in out, out
