"""Issue 22, item 1, for real: a redis-server loaded with the shipped ``deploy/redis/users.acl``
(the demo passwords), two ``gateway serve`` processes on the kev-gateway user behind the
shipped nginx. Every ACL user that may move the history's last id writes one far ahead of
Redis' clock, each way its rights allow (kev-publisher: XADD with an explicit id; kev-bridge:
that, and XSETID), both the largest id a stream can hold and one merely far in the future.
Each time, every replica says so within a few looks of its watch (``/ready`` 503 naming the
id and the fix, ``kev_history_ahead_seconds`` > 0, one log line, not one per look), and
``gateway reset-history --yes`` on the kev-admin user brings both back: ready, the gauge at
0, and an event published afterwards by kev-publisher reaches a stream on each replica (and
one through nginx), told ``history_truncated`` (``reset``) first. Every other ACL user is
refused each of those writes, and the fleet stays ready."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

import anyio
import httpx
import pytest
import redis

from gateway.consumer import SSEEvent
from publisher import AsyncPublisher
from tests.support.gateway_server import (
    RunningGateway,
    _wait_ready,
    gateway_settings,
    spawn_gateway,
)
from tests.support.http import metric_value, stream_as
from tests.support.identities import ROOT, seed, session_of
from tests.support.proxies import needs_nginx, run_nginx
from tests.support.redis_server import free_port
from tests.support.redis_users import ACLFILE, REDIS_DIR
from tests.support.secure_redis import spawn_redis
from tests.support.wait import until

#: what the gauge may read with nothing ahead: an entry written within the last few ms, against
#: Redis' clock as the replica estimates it (to half a round trip)
CLOCK_NOISE = 0.05

pytestmark = [pytest.mark.slow, pytest.mark.anyio, needs_nginx]

HISTORY: Final = "kev:events"
#: the largest id a stream can hold (no id is left after it), and one in the year 5138
MAXIMAL: Final = "18446744073709551615-18446744073709551615"
FUTURE: Final = "99999999999999-0"
#: the replicas' probe_interval, which is also how often their history watch looks
INTERVAL: Final = 0.5
#: "within seconds": a few looks, and a margin for a loaded machine
DETECT_WITHIN: Final = 5 * INTERVAL + 1.5
#: the users.acl users whose rights let them move the history's last id, and how
WRITERS: Final = {"kev-publisher": ("xadd",), "kev-bridge": ("xadd", "xsetid")}
#: what the watch logs, once per replica per hostile write (gateway.replica.history_watch)
SAID: Final = "not ready: the history's last id"
UNSAID: Final = "the history takes new events again"


def _acl_users() -> dict[str, str]:
    """Every user of the shipped users.acl -> its demo password (the ``default`` user's is
    the superuser's)."""
    users: dict[str, str] = {}
    for line in ACLFILE.read_text().splitlines():
        match = re.match(r"user (\S+) ", line)
        if match is None:
            continue
        name = match.group(1)
        assert "nopass" not in line.split(), line
        role = "superuser" if name == "default" else name.removeprefix("kev-")
        file = REDIS_DIR / f"demo-{role}.password"
        assert file.is_file(), f"{name}: no demo password file {file}"
        users[name] = file.read_text().strip()
    return users


USERS: Final = _acl_users()


def _url(port: int, user: str, *, password: bool = True) -> str:
    secret = USERS[user]
    auth = f"{quote(user)}:{quote(secret, safe='')}" if password else quote(user)
    return f"redis://{auth}@127.0.0.1:{port}/0"


@dataclass
class Replica:
    gateway: RunningGateway
    log: Path

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    def log_lines(self, since: int, text: str) -> list[str]:
        data = self.log.read_bytes()[since:].decode(errors="replace")
        return [line for line in data.splitlines() if text in line]

    def log_size(self) -> int:
        return self.log.stat().st_size


@dataclass
class Fleet:
    port: int
    replicas: list[Replica] = field(default_factory=list)

    def url(self, user: str) -> str:
        return _url(self.port, user)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("history-ahead-fleet")
    port = free_port()
    with spawn_redis(
        ["--port", str(port), "--aclfile", str(ACLFILE)],  # the shipped file itself
        lambda: redis.Redis.from_url(_url(port, "kev-gateway"), socket_timeout=1).ping(),
    ):
        anyio.run(seed, _url(port, "kev-admin"))  # identities: the admin's part
        settings = [
            gateway_settings(
                _url(port, "kev-gateway", password=False),
                redis_password=USERS["kev-gateway"],
                probe_interval=INTERVAL,
                liveness_timeout=1.0,
            )
            for _ in range(2)
        ]
        logs = [tmp / f"gateway-{i}.log" for i in range(2)]
        with (
            spawn_gateway(settings[0], log=logs[0]) as first,
            spawn_gateway(settings[1], log=logs[1]) as second,
        ):
            yield Fleet(port, [Replica(first, logs[0]), Replica(second, logs[1])])


@pytest.fixture
def healthy(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet; after the test, a history Redis' clock can follow and the replicas ready
    (a failed test may leave the history ahead: the admin starts a new one, so the next
    test starts clean)."""
    yield fleet
    if _history_ahead(fleet) or not all(
        _get(r, "/ready").status_code == 200 for r in fleet.replicas
    ):
        _reset_history(fleet)
        for replica in fleet.replicas:
            _wait_ready(replica.base_url, DETECT_WITHIN + 5)


def _history_ahead(fleet: Fleet) -> bool:
    """Whether the history's last id is ahead of Redis' clock (read as the gateway user)."""
    with redis.Redis.from_url(fleet.url("kev-gateway")) as client:
        if not client.exists(HISTORY):
            return False
        last = client.xinfo_stream(HISTORY)["last-generated-id"]
        seconds, micros = client.time()
        return int(last.split(b"-")[0]) > seconds * 1000 + micros // 1000 + 60_000


def _get(replica: Replica, path: str) -> httpx.Response:
    return httpx.get(replica.base_url + path, timeout=5)


def _ahead(replica: Replica) -> float:
    return metric_value(_get(replica, "/metrics").text, "kev_history_ahead_seconds")


def _reset_history(fleet: Fleet) -> subprocess.CompletedProcess[str]:
    """The operator's command, as its own process, on the admin user only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    args = ["reset-history", "--yes", "--redis-url", fleet.url("kev-admin")]
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _move_last_id(client: redis.Redis, how: str, stream_id: str) -> None:
    """The hostile write: ``XADD`` with an explicit id, ``XSETID`` (the last id moved with no
    entry written), or ``XADD`` from a script of the user's own (Redis checks what a script
    does against the caller's rights)."""
    if how == "xadd":
        client.execute_command("XADD", HISTORY, stream_id, "e", "x")
    elif how == "xsetid":
        client.execute_command("XSETID", HISTORY, stream_id)
    else:
        assert how == "script"
        sha = client.script_load("return redis.call('XADD', KEYS[1], ARGV[1], 'e', 'x')")
        client.evalsha(sha, 1, HISTORY, stream_id)


class Reader:
    """One stream of ROOT's, read in the background."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.events: list[SSEEvent] = []

    async def run(self, base_url: str, opened: anyio.Event) -> None:
        async with stream_as(ROOT, base_url) as (_, events):
            opened.set()
            async for event in events:
                self.events.append(event)

    def kernel_ids(self) -> list[str]:
        return [e.id for e in self.events if e.event.startswith("kernel_")]


async def _wait(check: Callable[[], bool], what: str, timeout: float = DETECT_WITHIN) -> None:
    await until(check, timeout, what)


async def _all_ready(fleet: Fleet, status: int) -> None:
    for i, replica in enumerate(fleet.replicas):
        await _wait(
            lambda r=replica: _get(r, "/ready").status_code == status,
            f"/ready of replica {i} to answer {status}",
        )


WRITES = [
    pytest.param(user, how, stream_id, id=f"{user}-{how}-{name}")
    for user, ways in WRITERS.items()
    for how in ways
    for name, stream_id in (("maximal", MAXIMAL), ("future", FUTURE))
]


@pytest.mark.parametrize(("user", "how", "stream_id"), WRITES)
async def test_every_replica_sees_a_future_id_and_the_admin_undoes_it(
    tmp_path: Path, healthy: Fleet, user: str, how: str, stream_id: str
) -> None:
    fleet, replicas = healthy, healthy.replicas
    await _all_ready(fleet, 200)
    ref = session_of(ROOT, f"fleet-{user}-{how}")
    addresses = [r.base_url.removeprefix("http://") for r in replicas]
    readers = [Reader("replica 0"), Reader("replica 1"), Reader("nginx")]
    async with (
        run_nginx(tmp_path, addresses) as nginx,
        AsyncPublisher.from_url(fleet.url("kev-publisher")) as pub,
        anyio.create_task_group() as tg,
    ):
        urls = [*(r.base_url for r in replicas), f"http://127.0.0.1:{nginx.port}"]
        for reader, url in zip(readers, urls, strict=True):
            opened = anyio.Event()
            tg.start_soon(reader.run, url, opened)
            with anyio.fail_after(10):
                await opened.wait()
        before = await pub.publish(ref.started("before"))
        assert before is not None  # published, not buffered
        for reader in readers:
            await _wait(lambda r=reader: before in r.kernel_ids(), f"{reader.where}: before")
        for replica in replicas:
            assert _ahead(replica) < CLOCK_NOISE
        marks = [r.log_size() for r in replicas]

        with redis.Redis.from_url(fleet.url(user)) as hostile:
            _move_last_id(hostile, how, stream_id)

        await _all_ready(fleet, 503)
        for i, replica in enumerate(replicas):
            # (the first ask starts the liveness clock; asked again below)
            assert _get(replica, "/health").status_code == 200, i
            body = _get(replica, "/ready").json()
            assert body["ready"] is False and body["probe_ok"], (i, body)
            assert stream_id in body["history"], (i, body)  # names what was written
            assert "ahead of Redis' clock" in body["history"], (i, body)
            assert "gateway reset-history" in body["history"], (i, body)  # and the way out
            assert _ahead(replica) > 3600, i  # far ahead, not a skew
        await anyio.sleep(4 * INTERVAL)  # more looks, past liveness_timeout
        for i, replica in enumerate(replicas):
            body = _get(replica, "/ready").json()
            assert body["ready"] is False, (i, body)
            # still only the history: the subscription stands, streams are served
            assert body["subscribed"] and body["probe_ok"], (i, body)
            assert _ahead(replica) > 3600, i
            # no liveness restart over a history every replica shares
            assert _get(replica, "/health").status_code == 200, i
            said = replica.log_lines(marks[i], SAID)
            assert len(said) == 1, (i, said)  # once, not once per look
            assert stream_id in said[0] and "gateway reset-history" in said[0], said

        done = _reset_history(fleet)
        assert done.returncode == 0, done.stderr
        assert "started a new history" in done.stdout, done.stdout
        await _all_ready(fleet, 200)
        for i, replica in enumerate(replicas):
            assert _get(replica, "/ready").json()["history"] == "ok", i
            assert _ahead(replica) < CLOCK_NOISE, i

        after = await pub.publish(ref.started("after"))
        assert after is not None
        for reader in readers:
            await _wait(lambda r=reader: after in r.kernel_ids(), f"{reader.where}: after")
        tg.cancel_scope.cancel()

    for reader in readers:
        names = [(e.event, e.id) for e in reader.events if e.event != "ping"]
        told = [i for i, e in enumerate(reader.events) if e.event == "history_truncated"]
        assert len(told) == 1, (reader.where, names)
        assert json.loads(reader.events[told[0]].data)["reason"] == "reset", reader.where
        assert reader.kernel_ids() == [before, after], (reader.where, names)  # once each
        assert reader.events.index(next(e for e in reader.events if e.id == after)) > told[0]
    for i, replica in enumerate(replicas):
        assert len(replica.log_lines(marks[i], SAID)) == 1, i
        assert len(replica.log_lines(marks[i], UNSAID)) == 1, i


def _refused_ways(user: str) -> tuple[str, ...]:
    ways = WRITERS.get(user, ())
    # (a writer's own script does what its XADD does: allowed, and the same write)
    return tuple(
        how
        for how in ("xadd", "xsetid", "script")
        if how not in ways and not (how == "script" and "xadd" in ways)
    )


REFUSALS = [
    pytest.param(user, _refused_ways(user), id=user)
    for user in USERS
    if _refused_ways(user) and user != "default"  # the operator's superuser may do anything
]


@pytest.mark.parametrize(("user", "ways"), REFUSALS)
async def test_every_other_user_is_refused_and_the_fleet_stays_ready(
    healthy: Fleet, user: str, ways: tuple[str, ...]
) -> None:
    fleet = healthy
    await _all_ready(fleet, 200)
    async with AsyncPublisher.from_url(fleet.url("kev-publisher")) as pub:
        assert await pub.publish(session_of(ROOT, "refused").started()) is not None
    with redis.Redis.from_url(fleet.url("kev-gateway")) as reader:
        before = reader.xinfo_stream(HISTORY)
    marks = [r.log_size() for r in fleet.replicas]
    with redis.Redis.from_url(fleet.url(user)) as hostile:
        for how in ways:
            for stream_id in (MAXIMAL, FUTURE):
                with pytest.raises(redis.ResponseError, match=r"(?i)noperm|permission|can.t"):
                    _move_last_id(hostile, how, stream_id)
    with redis.Redis.from_url(fleet.url("kev-gateway")) as reader:
        now = reader.xinfo_stream(HISTORY)
    assert now["last-generated-id"] == before["last-generated-id"]
    assert now["entries-added"] == before["entries-added"]
    await anyio.sleep(2 * INTERVAL)  # a few looks of every watch
    for i, replica in enumerate(fleet.replicas):
        assert _get(replica, "/ready").status_code == 200, i
        assert _ahead(replica) < CLOCK_NOISE, i
        assert replica.log_lines(marks[i], SAID) == [], i
