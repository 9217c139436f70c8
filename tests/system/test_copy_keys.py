"""``gateway copy-keys`` moves a deployment between Redis topologies: a single redis-server
(identities seeded, a browser session, a history published by the real publisher) copied onto
a real Redis Cluster (:class:`devtools.rediscluster.LocalRedisCluster`), where a gateway
authenticates the same keypair and cookie and resumes a client from its old ``Last-Event-ID``
with the very ids the old Redis gave; and back from the cluster, and between two prefixes of
single servers. Every run is the CLI as an operator runs it (a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from devtools.rediscluster import LocalRedisCluster
from gateway.cli.copykeys import ENV_TO, glob_escape, kind_of
from gateway.identity.sessions import SESSION_COOKIE
from publisher import AsyncPublisher, Keys
from tests.support.gateway_server import gateway_settings, run_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, PEOPLE, ROOT, seed, session_of
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

#: keypairs the cast holds: one per person, alice's second and bob's inactive one
KEYPAIRS = len(PEOPLE) + 2
EVENTS = 10


@pytest.fixture(scope="module")
def running_cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster(running_cluster: LocalRedisCluster) -> LocalRedisCluster:
    """The module's cluster, emptied for the test (every master; replicas follow)."""
    for port in running_cluster.masters():
        with redis.Redis(port=port) as node:
            node.flushall()
    return running_cluster


def copy_keys(source: str, *args: str, env: dict[str, str] | None = None,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``gateway copy-keys ARGS`` with ``source`` as GATEWAY_REDIS_URL, in a process of its
    own (nothing of this environment's GATEWAY_*, KEV_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    clean.update({"GATEWAY_REDIS_URL": source, **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "copy-keys", *args],
        env=clean,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return proc.stdout.splitlines()


def refused(proc: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The one line a failed run printed (and nothing on stdout, no traceback)."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("gateway copy-keys: ")
    return proc.stderr


async def publish_history(url: str, count: int = EVENTS) -> list[str]:
    """``count`` events published by the real publisher; their stream ids."""
    ids: list[str] = []
    async with AsyncPublisher.from_url(url) as pub:
        for i in range(count):
            stream_id = await pub.publish(session_of(ALICE, f"move-{i:02}").started())
            assert stream_id is not None  # written, not buffered
            ids.append(stream_id)
    return ids


def stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def history_ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [i.decode() for i, _ in client.xrange(keys.history)]


def key_names(client: redis.Redis, match: str) -> set[str]:
    return {k.decode() for k in client.scan_iter(match=match)}


def cluster_client(cluster: LocalRedisCluster) -> redis.RedisCluster:
    return redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])


def cluster_keys(cluster: LocalRedisCluster) -> set[str]:
    names: set[str] = set()
    for port in cluster.masters():
        with redis.Redis(port=port) as node:
            names |= {k.decode() for k in node.scan_iter()}
    return names


# -- single -> cluster: a gateway there serves the same identities, sessions and ids --------


async def test_a_deployment_moves_onto_a_cluster_and_its_clients_resume_there(
    redis_url: str, cluster: LocalRedisCluster
) -> None:
    await seed(redis_url)
    with run_gateway(gateway_settings(redis_url)) as old:
        login = {"access_key": ALICE.access_key, "secret_key": ALICE.secret_key}
        response = httpx.post(f"{old.base_url}/auth/login", json=login, timeout=10)
        token = response.cookies[SESSION_COOKIE]
    ids = await publish_history(redis_url)
    with redis.Redis.from_url(redis_url) as single:
        epoch = single.get("kev:epoch")
        assert epoch is not None and history_ids(single, Keys()) == ids
        source_keys = key_names(single, "kev:*")

    proc = copy_keys(redis_url, "--to", cluster.url)
    assert proc.returncode == 0, proc.stderr
    out = lines(proc)
    assert out[0] == f"copying from {redis_url} (prefix kev) to {cluster.url} (prefix {{kev}}):"
    assert f"keypairs: {KEYPAIRS} keys" in out
    assert f"users: {len(PEOPLE)} keys" in out and "groups: 4 keys" in out
    assert "browser sessions: 1 key" in out
    assert f"history: 1 key ({EVENTS} entries)" in out and "epoch: 1 key" in out
    # identities and sessions before the history, the publishers' state after it
    order = [line.split(":")[0] for line in out[1:-1]]
    assert order.index("keypairs") < order.index("browser sessions") < order.index("history")
    assert order.index("history") < order.index("epoch") < order.index("publisher state")
    assert out[-1] == f"total: {len(source_keys)} keys copied"

    # every key under its cluster name, in the one slot of the hash tag
    assert cluster_keys(cluster) == {"{kev}" + name[3:] for name in source_keys}
    with cluster_client(cluster) as on_cluster:
        assert history_ids(on_cluster, Keys("{kev}", cluster=True)) == ids
        assert on_cluster.get("{kev}:epoch") == epoch

    with run_gateway(gateway_settings(cluster.url)) as new:
        assert new.state.keys.history == "{kev}:events"
        # the browser session opened on the old Redis is valid on the cluster
        cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
        me = httpx.get(f"{new.base_url}/auth/me", headers=cookie, timeout=5)
        assert me.status_code == 200, me.text
        # a client that had seen ids[3] gets exactly the events after it, with their ids, and
        # then what a publisher writes to the cluster, with an id after the old history's
        async with stream_as(ROOT, new.base_url, last_event_id=ids[3]) as (_, events):
            got: list[str] = []
            with anyio.fail_after(15):
                async for event in events:
                    if not event.event.startswith("kernel_"):
                        continue
                    got.append(event.id)
                    if len(got) == len(ids) - 4:
                        break
                assert got == ids[4:]
                later = await publish_history(cluster.url, 1)
                assert stream_id(later[0]) > stream_id(ids[-1])
                async for event in events:
                    if event.event.startswith("kernel_"):
                        assert event.id == later[0]
                        assert json.loads(event.data)["sessionId"] == "move-00"
                        break


# -- cluster -> single, and single -> single under another prefix and database ---------------


async def test_a_cluster_deployment_moves_back_onto_a_single_redis(
    cluster: LocalRedisCluster, private_redis: RedisServer
) -> None:
    await seed(cluster.url)
    ids = await publish_history(cluster.url)
    proc = copy_keys(cluster.url, "--to", private_redis.url)
    assert proc.returncode == 0, proc.stderr
    assert f"keypairs: {KEYPAIRS} keys" in lines(proc)
    copied = {name for name in cluster_keys(cluster) if name.startswith("{kev}:")}
    with redis.Redis.from_url(private_redis.url) as single:
        assert key_names(single, "*") == {"kev" + name[5:] for name in copied}
        assert history_ids(single, Keys()) == ids
        # TTLs are kept: the publisher's sequence number still expires
        (seq_key,) = key_names(single, "kev:pubseq:*")
        assert single.pttl(seq_key) > 0
    with run_gateway(gateway_settings(private_redis.url)) as gw:
        async with stream_as(ROOT, gw.base_url, last_event_id=ids[-2]) as (_, events):
            with anyio.fail_after(15):
                async for event in events:
                    if event.event.startswith("kernel_"):
                        assert event.id == ids[-1]
                        break


async def test_single_to_single_under_another_prefix_and_database(
    redis_url: str, redis_server: RedisServer
) -> None:
    await seed(redis_url)
    ids = await publish_history(redis_url, 3)
    target = redis_url.rsplit("/", 1)[0] + "/5"
    proc = copy_keys(redis_url, "--to", target, "--to-prefix", "kev2")
    assert proc.returncode == 0, proc.stderr
    with redis.Redis.from_url(redis_url) as db0, redis.Redis.from_url(target) as db5:
        names = key_names(db0, "kev:*")
        assert key_names(db5, "*") == {"kev2" + name[3:] for name in names}
        assert history_ids(db5, Keys("kev2")) == ids
        key = Keys().keypair(ROOT.access_key)
        assert db5.hgetall("kev2" + key[3:]) == db0.hgetall(key)
    # the target is the source: refused before anything is read
    assert "the target is the source" in refused(copy_keys(redis_url, "--to", redis_url))


# -- refusals, dry runs and what is printed -------------------------------------------------


async def test_a_target_holding_the_prefix_is_refused_unless_replace(
    redis_url: str, cluster: LocalRedisCluster
) -> None:
    await seed(redis_url)
    with cluster_client(cluster) as on_cluster:
        on_cluster.set("{kev}:keypairs", "not a set")
        line = refused(copy_keys(redis_url, "--to", cluster.url))
        assert "already holds keys of prefix '{kev}'" in line and "--replace" in line
        assert cluster_keys(cluster) == {"{kev}:keypairs"}  # nothing copied
        assert on_cluster.get("{kev}:keypairs") == b"not a set"

        proc = copy_keys(redis_url, "--to", cluster.url, "--replace")
        assert proc.returncode == 0, proc.stderr
        assert on_cluster.type("{kev}:keypairs") == b"set"
        assert len(on_cluster.smembers("{kev}:keypairs")) == KEYPAIRS
    # another prefix on the same cluster is not in the way
    proc = copy_keys(redis_url, "--to", cluster.url, "--to-prefix", "other")
    assert proc.returncode == 0, proc.stderr
    assert f"{{other}}:keypair:{ROOT.access_key}" in cluster_keys(cluster)


async def test_a_dry_run_counts_and_copies_nothing(
    redis_url: str, cluster: LocalRedisCluster
) -> None:
    await seed(redis_url)
    await publish_history(redis_url, 4)
    proc = copy_keys(redis_url, "--to", cluster.url, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = lines(proc)
    assert out[0].startswith("would copy from ")
    assert f"keypairs: {KEYPAIRS} keys" in out and "history: 1 key (4 entries)" in out
    assert "browser sessions: 0 keys" in out
    assert out[-1].endswith("keys (dry run: nothing copied)")
    assert cluster_keys(cluster) == set()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--to", "http://127.0.0.1:6379"], "scheme must be one of"),
        (["--to", "redis+cluster://127.0.0.1:7000/3"], "database 0 only"),
        (["--to", "redis+cluster://127.0.0.1"], "is not host:port"),
        (["--to", "redis://127.0.0.1:1/0", "--to-prefix", "bad prefix"], "key prefix"),
        (["--to", "redis://127.0.0.1:1/0", "--prefix", "no*glob"], "GATEWAY_PREFIX"),
        ([], "the target is needed"),
        (["--to-file", "/nonexistent/to.url"], "cannot read /nonexistent/to.url"),
    ],
)
async def test_a_bad_target_or_prefix_is_one_line_and_status_2(
    redis_url: str, args: list[str], says: str
) -> None:
    await seed(redis_url)
    assert says in refused(copy_keys(redis_url, *args))


async def test_an_empty_source_is_refused(redis_url: str, private_redis: RedisServer) -> None:
    line = refused(copy_keys(redis_url, "--to", private_redis.url, "--prefix", "nothing"))
    assert "no key of prefix 'nothing'" in line


async def test_redis_errors_are_one_line_and_status_1(redis_url: str) -> None:
    await seed(redis_url)
    line = refused(copy_keys(redis_url, "--to", "redis://127.0.0.1:1/0"), status=1)
    assert "the target, redis://127.0.0.1:1/0:" in line
    line = refused(copy_keys(redis_url, "--to", "redis+cluster://127.0.0.1:1"), status=1)
    assert "the target" in line


async def test_a_cluster_node_named_by_a_plain_url_is_refused_before_any_write(
    redis_url: str, cluster: LocalRedisCluster
) -> None:
    await seed(redis_url)
    node = f"redis://127.0.0.1:{cluster.masters()[0]}/0"
    line = refused(copy_keys(redis_url, "--to", node))
    assert f"the target, {node}, is a Redis Cluster node" in line and "redis+cluster://" in line
    assert cluster_keys(cluster) == set()


async def test_a_failed_restore_names_the_error_never_the_payload(
    redis_url: str, private_redis: RedisServer
) -> None:
    """redis-py's own message for a pipeline's error quotes the command, and a RESTORE's
    arguments are a DUMP payload: a keypair's secret, a session. The line holds neither."""
    await seed(redis_url)
    with redis.Redis.from_url(private_redis.url) as target:
        target.config_set("maxmemory", 1)  # every write refused: OOM
        line = refused(copy_keys(redis_url, "--to", private_redis.url), status=1)
        target.config_set("maxmemory", 0)
    assert f"the target, {private_redis.url}: command not allowed when used memory" in line
    assert "RESTORE" not in line and "secret" not in line and "AKIA" not in line


async def test_the_targets_password_is_never_printed(
    redis_url: str, private_redis: RedisServer, tmp_path: Path
) -> None:
    await seed(redis_url)
    password = "s3cret-Target-pw"
    with redis.Redis.from_url(private_redis.url) as target:
        target.config_set("requirepass", password)
    host = private_redis.url.removeprefix("redis://")
    url = f"redis://:{password}@{host}"
    (tmp_path / "to.url").write_text(url + "\n")
    runs = [
        copy_keys(redis_url, "--to", url, "--dry-run"),
        copy_keys(redis_url, "--to-file", str(tmp_path / "to.url"), "--dry-run"),
        copy_keys(redis_url, "--to", "-", "--dry-run", stdin=url + "\n"),
        copy_keys(redis_url, env={f"{ENV_TO}_FILE": str(tmp_path / "to.url")}),
        copy_keys(redis_url, env={ENV_TO: url}),  # refused: it holds the keys now
        copy_keys(redis_url, "--to", f"redis://:wrong-{password}@{host}"),  # AUTH fails
    ]
    for proc in runs:
        assert password not in proc.stdout + proc.stderr
    assert [proc.returncode for proc in runs] == [0, 0, 0, 0, 2, 1]
    assert f"redis://:***@{host} (prefix kev)" in runs[0].stdout
    assert "redis://:***@" in runs[4].stderr and "redis://:***@" in runs[5].stderr
    with redis.Redis.from_url(url) as target:
        assert target.exists(Keys().keypair(ROOT.access_key))


def test_names_and_kinds() -> None:
    assert glob_escape("{kev}") == "{kev}"
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    assert kind_of("keypair:AKIA") == "keypairs" and kind_of("keypairs") == "identity state"
    assert kind_of("user:alice") == "users" and kind_of("websessions:AK") == "identity state"
    assert kind_of("websession:abc") == "browser sessions"
    assert kind_of("events") == "history" and kind_of("epoch") == "epoch"
    assert kind_of("pubseq:p1") == "publisher state" and kind_of("bridge:b:lease") == (
        "publisher state"
    )
    assert kind_of("streams:AK") == "other" and kind_of("login-throttle:x:y") == "other"
    # a name no Keys member makes: another deployment's, under a longer prefix
    assert kind_of("staging:keypair:AKIA") is None and kind_of("staging:events") is None


def test_every_keys_member_has_a_kind() -> None:
    """A key the deployment writes and copy-keys would not know is left behind: every name
    Keys makes (its arguments filled in) has a kind."""
    keys = Keys()
    for member in dir(Keys):
        if member.startswith("_") or member in ("prefix", "cluster", "on", "for_url"):
            continue
        value = getattr(keys, member)
        if callable(value):
            import inspect

            value = value(*("x" for _ in inspect.signature(value).parameters))
        rest = str(value)[len("kev:") :]
        if member == "probe_channel" or member == "channel" or member == "identity_changes":
            continue  # channels, not keys
        assert kind_of(rest) is not None, (member, value)


async def test_another_deployment_under_a_longer_prefix_is_left_alone(
    redis_url: str, cluster: LocalRedisCluster
) -> None:
    await seed(redis_url)
    await seed(redis_url, prefix="kev:staging")  # its keys match SCAN kev:* too
    proc = copy_keys(redis_url, "--to", cluster.url)
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("left alone: ") for line in lines(proc)), proc.stdout
    names = cluster_keys(cluster)
    assert not [n for n in names if n.startswith("{kev}:staging")], sorted(names)[:5]
    assert f"{{kev}}:keypair:{ROOT.access_key}" in names
