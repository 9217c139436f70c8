"""Least privilege in Redis, for real: a redis-server loaded with ``gateway acl``'s users.

The publisher's credential publishes (and a gateway on the gateway user delivers it) but can
neither read a secret nor write an identity; the gateway user serves streams, logins and
logouts but writes no identity; the admin user imports identities and touches nothing else.
Every flow runs on its own user only, so a key or command the code starts to use without an
ACL grant fails here (``tests/unit/test_acl.py`` checks the names statically).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aredis

from gateway.cli import main as gateway_main
from gateway.cli.acl import PROFILES, Profile, render
from gateway.consumer import SSEEvent
from gateway.fanout.history import read_after
from publisher import AsyncPublisher, Keys
from publisher.bus import Bus
from publisher.schema import encode_event
from tests.support.acl_flows import browser_logins, publish_and_receive
from tests.support.gateway_server import (
    RunningGateway,
    gateway_settings,
    run_gateway,
    spawn_gateway,
)
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, import_doc, session_of
from tests.support.redis_server import free_port
from tests.support.secure_redis import spawn_redis

PASSWORDS = {p: f"{p}-pw-{i}x9Q" for i, p in enumerate(PROFILES)}
USERS = {p: f"kev-{p}" for p in PROFILES}
SUPERUSER = "superuser-pw-7Zk"


def url(port: int, profile: Profile, *, password: bool = True) -> str:
    secret = f":{PASSWORDS[profile]}" if password else ""
    return f"redis://{USERS[profile]}{secret}@127.0.0.1:{port}/0"


@pytest.fixture(scope="module")
def acl_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    aclfile = tmp_path_factory.mktemp("acl") / "users.acl"
    aclfile.write_text(render(Keys("kev"), PASSWORDS, USERS, superuser_password=SUPERUSER))
    port = free_port()
    with spawn_redis(
        ["--port", str(port), "--aclfile", str(aclfile)],
        lambda: redis.Redis(port=port, password=SUPERUSER, socket_timeout=1).ping(),
    ):
        yield port


def test_without_a_user_nothing_and_the_superuser_everything(acl_port: int) -> None:
    """The default user is the operator's superuser (what an AOF replays as): without its
    password a client gets NOAUTH for every command, PING included."""
    with redis.Redis(port=acl_port) as anonymous:
        for command in (anonymous.ping, lambda: anonymous.get("kev:epoch"),
                        lambda: anonymous.hgetall(f"kev:keypair:{ROOT.access_key}")):  # fmt: skip
            with pytest.raises(redis.exceptions.AuthenticationError, match=r"NOAUTH|authenticated"):
                command()
    with redis.Redis(port=acl_port, password="wrong") as guess, pytest.raises(redis.RedisError):
        guess.ping()
    with redis.Redis(port=acl_port, password=SUPERUSER) as superuser:
        assert superuser.acl_whoami() == "default"
        assert superuser.config_get("appendonly")  # @admin: every right


def test_each_user_does_its_part_end_to_end(acl_port: int, tmp_path: Path) -> None:
    # admin: the real CLI imports the identities, the URL given as a file
    (tmp_path / "admin.url").write_text(url(acl_port, "admin") + "\n")
    doc = import_doc()
    next(u for u in doc["users"] if u["user_id"] == "alice")["password"] = (
        "Correct-Horse-Battery-Staple-77"
    )
    (tmp_path / "ids.json").write_text(json.dumps(doc))
    args = ["import", str(tmp_path / "ids.json"), "--redis-url-file", str(tmp_path / "admin.url")]
    assert gateway_main(args) == 0

    # gateway: its user in the URL, the password from a setting (GATEWAY_REDIS_PASSWORD_FILE)
    settings = gateway_settings(
        url(acl_port, "gateway", password=False), redis_password=PASSWORDS["gateway"]
    )
    with run_gateway(settings) as gw:
        anyio.run(publish_and_receive, gw.base_url, url(acl_port, "publisher"), "acl")
        browser_logins(gw.base_url, "Correct-Horse-Battery-Staple-77")


def _denied(call: object) -> None:
    with pytest.raises(redis.ResponseError, match=r"(?i)permission|can.t"):
        assert callable(call)
        call()


def test_a_publisher_can_neither_read_a_secret_nor_write_an_identity(acl_port: int) -> None:
    secret_key = f"kev:keypair:{ROOT.access_key}"
    with redis.Redis.from_url(url(acl_port, "admin")) as admin:
        admin.hset(secret_key, mapping={"secret_key": "s3cr3t", "user_id": "root"})
    with redis.Redis.from_url(url(acl_port, "publisher")) as pub:
        _denied(lambda: pub.hgetall(secret_key))
        _denied(lambda: pub.hget(secret_key, "secret_key"))
        _denied(lambda: pub.get(secret_key))
        _denied(lambda: pub.get("kev:websession:abc"))
        _denied(lambda: pub.get("kev:user:root"))
        _denied(lambda: pub.scan(0, match="kev:keypair:*"))
        _denied(lambda: pub.keys("*"))
        _denied(lambda: pub.hset(secret_key, "user_id", "publisher"))
        _denied(lambda: pub.hset("kev:user:mallory", "role", "superadmin"))
        _denied(lambda: pub.set("kev:user:mallory", "x"))
        _denied(lambda: pub.sadd("kev:users", "mallory"))
        _denied(lambda: pub.xrange("kev:events"))
        _denied(lambda: pub.delete("kev:events"))
        _denied(lambda: pub.publish("kev:identity:changes", b"x"))
        _denied(lambda: pub.execute_command("SUBSCRIBE", "kev:live"))
        _denied(lambda: pub.flushall())
        _denied(lambda: pub.config_get("*"))
        # nor through a script of its own: Redis checks what a script does, key by key
        sha = pub.script_load("return redis.call('HGET', KEYS[1], 'secret_key')")
        _denied(lambda: pub.evalsha(sha, 1, secret_key))
        sha = pub.script_load("return redis.call('HGET', ARGV[1], 'secret_key')")
        _denied(lambda: pub.evalsha(sha, 0, secret_key))
        sha = pub.script_load("return redis.call('HSET', ARGV[1], 'role', 'superadmin')")
        _denied(lambda: pub.evalsha(sha, 0, "kev:user:root"))
    with redis.Redis.from_url(url(acl_port, "admin")) as admin:
        assert admin.hget(secret_key, "user_id") == b"root"
        assert not admin.exists("kev:user:mallory")


def test_the_gateway_reads_the_history_but_cannot_write_it(acl_port: int) -> None:
    async def scenario() -> None:
        async with AsyncPublisher.from_url(url(acl_port, "publisher")) as pub:
            first = await pub.publish(session_of(ALICE, "acl-ro-1").started())
            second = await pub.publish(session_of(ALICE, "acl-ro-2").started())
        assert first is not None and second is not None
        gw = aredis.Redis.from_url(url(acl_port, "gateway"))
        try:
            # the read path, script and all, on the gateway user (loads the script if needed)
            read = [e async for batch, _ in read_after(gw, Bus(Keys()), first, max_payload=1 << 20)
                    for e in batch]  # fmt: skip
            assert [sid.decode() for sid, _ in read] == [second]
        finally:
            await gw.aclose()

    anyio.run(scenario)
    with redis.Redis.from_url(url(acl_port, "gateway")) as gw:
        before = gw.xinfo_stream("kev:events")["entries-added"]
        _denied(lambda: gw.xadd("kev:events", {"e": b"forged"}))
        _denied(lambda: gw.xtrim("kev:events", maxlen=0))
        _denied(lambda: gw.xdel("kev:events", "0-1"))
        _denied(lambda: gw.delete("kev:events"))
        # nor through a script: EVALSHA needs write access to its declared keys, and EVALSHA_RO
        # refuses a write whatever the ACL says
        sha = gw.script_load("return redis.call('XADD', KEYS[1], '*', 'e', 'forged')")
        _denied(lambda: gw.evalsha(sha, 1, "kev:events"))
        undeclared = gw.script_load("return redis.call('XADD', ARGV[1], '*', 'e', 'forged')")
        _denied(lambda: gw.evalsha(undeclared, 0, "kev:events"))
        with pytest.raises(redis.ResponseError):
            gw.evalsha_ro(sha, 1, "kev:events")
        assert gw.xinfo_stream("kev:events")["entries-added"] == before
        gw.set("kev:epoch", "0-1", nx=True)  # allowed: it dates a pre-epoch history (no-op here)


def test_the_gateway_reads_identities_but_writes_none(acl_port: int) -> None:
    with redis.Redis.from_url(url(acl_port, "gateway")) as gw:
        gw.hgetall(f"kev:keypair:{ROOT.access_key}")  # allowed: it verifies signatures
        _denied(lambda: gw.hset(f"kev:keypair:{ROOT.access_key}", "user_id", "x"))
        _denied(lambda: gw.delete("kev:user:root"))
        _denied(lambda: gw.sadd("kev:users", "mallory"))
        _denied(lambda: gw.flushall())
        _denied(lambda: gw.config_get("*"))
        _denied(lambda: gw.execute_command("ACL", "LIST"))
        _denied(lambda: gw.keys("*"))
    with redis.Redis.from_url(url(acl_port, "admin")) as admin:
        _denied(lambda: admin.xadd("kev:events", {"e": b"forged"}))
        _denied(lambda: admin.get("kev:websession:abc"))
        _denied(lambda: admin.flushall())


def test_the_admin_may_start_a_new_history_and_write_no_event(acl_port: int) -> None:
    """``gateway reset-history`` runs on the admin user (XINFO, DEL of the history and its
    epoch: ACL selectors), and that is all the admin may do to the event bus."""
    with redis.Redis.from_url(url(acl_port, "publisher")) as pub:
        pub.execute_command("XADD", "kev:events", "99999999999999-0", "e", "x")  # hostile
    args = ["reset-history", "--yes", "--redis-url", url(acl_port, "admin")]
    assert gateway_main(args) == 0
    with redis.Redis.from_url(url(acl_port, "publisher")) as pub:  # a new history begins
        new_id = pub.execute_command("XADD", "kev:events", "*", "e", "x")
    with redis.Redis.from_url(url(acl_port, "gateway")) as gateway:
        assert [i for i, _ in gateway.xrange("kev:events")] == [new_id]
    with redis.Redis.from_url(url(acl_port, "admin")) as admin:
        _denied(lambda: admin.xadd("kev:events", {"e": b"x"}))
        _denied(lambda: admin.xrange("kev:events"))
        _denied(lambda: admin.publish("kev:live", b"x"))
        _denied(lambda: admin.set("kev:epoch", "1-0"))


class Reader:
    """One stream of ROOT's, read in the background into ``events``."""

    def __init__(self) -> None:
        self.events: list[SSEEvent] = []

    def kernel(self) -> list[SSEEvent]:
        return [e for e in self.events if e.event.startswith("kernel_")]

    @contextlib.asynccontextmanager
    async def reading(self, base_url: str) -> AsyncIterator[None]:
        async with stream_as(ROOT, base_url) as (_, events), anyio.create_task_group() as tg:

            async def pump() -> None:
                async for event in events:
                    self.events.append(event)

            tg.start_soon(pump)
            yield
            tg.cancel_scope.cancel()


def _metric(base_url: str, sample: str) -> float:
    for line in httpx.get(base_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def _forgeries(now_ms: int, forged: bytes, real: bytes) -> list[bytes]:
    """Live messages no publisher sends, each a kind: an id a little ahead (the review's
    probe: within the skew, the largest sequence), the id the next real event will likely
    get with a forged payload, a real event's payload under an id history does not hold, an
    id far ahead, an id in the past."""
    return [
        b"%d-18446744073709551615 " % (now_ms + 200) + forged,
        b"%d-0 " % (now_ms + 1) + forged,
        b"%d-0 " % (now_ms + 50) + real,
        b"%d-0 " % (now_ms + 3_600_000) + forged,
        b"1-0 " + forged,
    ]


@pytest.mark.parametrize("forger", ["publisher", "gateway", "bridge"])
def test_forged_live_messages_hide_no_real_event_on_any_replica(
    acl_port: int, tmp_path: Path, forger: Profile
) -> None:
    """Issue 22 item 1, second half: every user that may PUBLISH on the live channel sends
    forged, valid live messages ten times a second while real events are published; both
    replicas deliver exactly the real events, in order, and no forged one; nothing is
    counted a duplicate; the forged ids are counted ``unproven``; resuming from the last
    real id skips nothing."""
    (tmp_path / "admin.url").write_text(url(acl_port, "admin") + "\n")
    (tmp_path / "ids.json").write_text(json.dumps(import_doc()))
    args = ["import", str(tmp_path / "ids.json"), "--redis-url-file", str(tmp_path / "admin.url")]
    assert gateway_main(args) == 0
    ref = session_of(ALICE, f"forged-by-{forger}")
    forged = encode_event(ref.started("forged"))
    settings = [
        gateway_settings(
            url(acl_port, "gateway", password=False), redis_password=PASSWORDS["gateway"]
        )
        for _ in range(2)
    ]

    async def scenario(replicas: list[RunningGateway]) -> None:
        readers = [Reader() for _ in replicas]
        async with contextlib.AsyncExitStack() as stack:
            for gw, reader in zip(replicas, readers, strict=True):
                await stack.enter_async_context(reader.reading(gw.base_url))
            real: list[str] = []
            with redis.Redis.from_url(url(acl_port, forger)) as raw:
                async with AsyncPublisher.from_url(url(acl_port, "publisher")) as pub:
                    for i in range(20):  # 2 s: ten forgeries a second, a real event each 0.4 s
                        now_ms = int(time.time() * 1000)  # Redis' clock: the same host
                        real_payload = encode_event(ref.started(f"real-{i}"))
                        for message in _forgeries(now_ms, forged, real_payload):
                            raw.publish(Keys("kev").channel, message)
                        if i % 4 == 3:
                            stream_id = await pub.publish(ref.started(f"real-{i}"))
                            assert stream_id is not None
                            real.append(stream_id)
                        await anyio.sleep(0.1)
            with anyio.fail_after(10):
                while any([e.id for e in r.kernel()] != real for r in readers):
                    await anyio.sleep(0.05)
            for reader in readers:
                assert all(json.loads(e.data)["reason"] != "forged" for e in reader.kernel())
        for gw in replicas:
            assert _metric(gw.base_url, "kev_events_duplicate_total") == 0
            assert _metric(gw.base_url, 'kev_payloads_dropped_total{kind="unproven"}') >= 20
            assert httpx.get(gw.base_url + "/ready", timeout=5).status_code == 200
        # a client resuming from a real id gets the real events after it, nothing forged
        async with stream_as(ROOT, replicas[1].base_url, last_event_id=real[1]) as (_, events):
            got: list[str] = []
            with anyio.fail_after(10):
                async for event in events:
                    if event.event.startswith("kernel_"):
                        got.append(event.id)
                        if len(got) == len(real) - 2:
                            break
            assert got == real[2:]

    with spawn_gateway(settings[0]) as first, spawn_gateway(settings[1]) as second:
        anyio.run(scenario, [first, second])
