"""Least privilege on a real Redis Cluster: ``gateway acl --cluster``'s users loaded on all six
nodes (ACLs are not replicated), the ``default`` user the superuser behind its own password,
and every role on its
own user through ``redis+cluster://`` URLs.

Six redis-servers on loopback (3 masters, 3 replicas: :class:`LocalRedisCluster`); the users
come from the real CLI (``gateway acl --cluster --format commands``, passwords in
``KEV_ACL_*_PASSWORD``) and go to every node with ``ACL SETUSER`` through a plain client.
With ``default`` behind a password a replica can no longer sync as ``default``: each node gets
``masteruser``/``masterauth`` of the replication user the CLI writes (every node, since any
node can become a replica after a failover), and a test without it shows the links going
down. Then the gateway (``kev-gateway``, its own process), the publisher (``kev-publisher``),
``gateway import``/``user``/``keypair``/``reset-history`` (``kev-admin``), ``kev-publish
emit`` and the bridge (``kev-bridge``) run on the cluster, and the refusals of the
single-node test (tests/system/test_redis_acl.py) are NOPERM here too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.backendai import Installation
from devtools.postgres import BackendAIDatabase
from devtools.rediscluster import LocalRedisCluster, key_slot
from gateway.identity.store import IdentityStore
from publisher import AsyncPublisher, Keys
from publisher.connection import connect_async, connect_sync
from tests.support.acl_flows import browser_logins, publish_and_receive
from tests.support.bridge import spawned_bridge
from tests.support.gateway_server import gateway_settings, spawn_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, Person, import_doc, session_of
from tests.support.redis_server import RedisServer

HOST: Final = "127.0.0.1"
KEYS: Final = Keys("{kev}", cluster=True)
#: the deployment's one slot: every name is hash-tagged {kev}
SLOT: Final = key_slot(KEYS.history)
ROLES: Final = ("publisher", "gateway", "admin", "bridge", "replication")
PASSWORDS: Final = {role: f"{role}-pw-{i}Qx7" for i, role in enumerate(ROLES)}
SUPERUSER: Final = "superuser-pw-Qx7"
ALICE_PASSWORD: Final = "Correct-Horse-Battery-Staple-77"


def _process_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any Redis or ACL setting of the caller's, plus
    ``extra``: what a CLI started here sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    return {**env, **extra}


def _cli(module: str, *args: str, env: Mapping[str, str], timeout: float = 60.0) -> str:
    """``python -m module args`` (a real CLI process); its stdout, asserting exit status 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=_process_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{module} {args}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def acl_commands(*, replication: bool = True) -> list[str]:
    """The ``ACL SETUSER`` lines of ``gateway acl --cluster --format commands`` with the
    publisher, gateway, admin and bridge users (and the replication user), the ``default``
    user the superuser (the CLI's default)."""
    env = {f"KEV_ACL_{role.upper()}_PASSWORD": PASSWORDS[role] for role in ROLES}
    env["KEV_ACL_SUPERUSER_PASSWORD"] = SUPERUSER
    if not replication:
        del env["KEV_ACL_REPLICATION_PASSWORD"]
    out = _cli("gateway.cli", "acl", "--cluster", "--format", "commands", env=env)
    return out.splitlines()


def load_users(ports: list[int], lines: list[str], *, replication: bool = True) -> None:
    """On every node, through a plain client as the (still unrestricted) ``default`` user:
    the replica link's credentials (when ``replication``), every user but ``default``, and
    ``default`` last (this connection stays authenticated as it; new ones need its
    password)."""
    default = [line for line in lines if line.startswith("ACL SETUSER default ")]
    assert len(default) == 1 and default[0].endswith(' "~*" "&*" +@all'), lines
    others = [line for line in lines if line not in default]
    for port in ports:
        with redis.Redis(host=HOST, port=port, socket_timeout=5) as node:
            if replication:
                node.config_set("masteruser", "kev-replication")
                node.config_set("masterauth", PASSWORDS["replication"])
            for line in [*others, *default]:
                assert node.execute_command(*shlex.split(line)) in (b"OK", "OK", True), line


def seeds(cluster: LocalRedisCluster) -> str:
    return ",".join(f"{HOST}:{port}" for port in cluster.ports[:3])


def role_url(cluster: LocalRedisCluster, role: str, *, password: bool = True) -> str:
    secret = f":{PASSWORDS[role]}" if password else ""
    return f"redis+cluster://kev-{role}{secret}@{seeds(cluster)}"


def node_client(port: int, role: str) -> redis.Redis:
    """A plain client of one node as ``role`` (no retries: each check is its own)."""
    return redis.Redis(
        host=HOST,
        port=port,
        username=f"kev-{role}",
        password=PASSWORDS[role],
        socket_timeout=5,
        socket_connect_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )


def master_of_slot(cluster: LocalRedisCluster, slot: int = SLOT) -> int:
    """The master serving ``slot``, asked of a node as the gateway user (``default`` needs
    a password now, so :meth:`LocalRedisCluster.master_of_slot` cannot ask)."""
    with node_client(cluster.ports[0], "gateway") as node:
        for first, last, master, *_ in node.cluster("SLOTS"):
            if int(first) <= slot <= int(last):
                return int(master[1])
    raise AssertionError(f"no master serves slot {slot}")


def replication(port: int) -> dict[str, Any]:
    with node_client(port, "gateway") as node:
        info: dict[str, Any] = node.info("replication")
        return info


def history_ids(node: redis.Redis) -> list[str]:
    """The ids the bus' history holds, read on one node."""
    entries: list[tuple[bytes, Any]] = node.xrange(KEYS.history)  # type: ignore[assignment]
    return [raw.decode() for raw, _ in entries]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} ({last!r})")
        time.sleep(0.05)


def links(cluster: LocalRedisCluster) -> dict[int, str]:
    """Every replica's ``master_link_status``."""
    out = {}
    for port in cluster.ports:
        info = replication(port)
        if info["role"] == "slave":
            out[port] = str(info["master_link_status"])
    return out


def cut_replica_links(cluster: LocalRedisCluster) -> None:
    """Every master drops its replicas' links (``CLIENT KILL TYPE replica``, as the
    superuser): each replica must log in again to sync."""
    for port in cluster.ports:
        with redis.Redis(host=HOST, port=port, password=SUPERUSER, socket_timeout=5) as node:
            if node.info("replication")["role"] == "master":
                node.client_kill_filter(_type="replica")


def resyncs(client: redis.Redis) -> int:
    """How many replicas a master has synced so far, fully or partially (INFO stats)."""
    stats = client.info("stats")
    return int(stats["sync_full"]) + int(stats["sync_partial_ok"])


@dataclass(frozen=True)
class ACLCluster:
    cluster: LocalRedisCluster
    #: each master's :func:`resyncs` before the users were loaded
    resyncs_before: dict[int, int]

    def url(self, role: str, *, password: bool = True) -> str:
        return role_url(self.cluster, role, password=password)

    @property
    def master(self) -> int:
        return master_of_slot(self.cluster)

    def other_master(self) -> int:
        with node_client(self.cluster.ports[0], "gateway") as node:
            masters = {int(entry[2][1]) for entry in node.cluster("SLOTS")}
        return min(masters - {self.master})


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[ACLCluster]:
    with LocalRedisCluster() as cluster:
        before = {}
        for port in cluster.masters():
            with redis.Redis(host=HOST, port=port, socket_timeout=5) as node:
                before[port] = resyncs(node)
        load_users(cluster.ports, acl_commands())
        yield ACLCluster(cluster, before)


def _refused(call: Callable[[], object]) -> None:
    """``call`` is refused by the ACL: a NOPERM error (redis-py's NoPermissionError)."""
    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


# -- 1. the users on every node, replication on its own user ---------------------------------


def test_the_users_are_on_all_six_nodes_and_default_is_the_superuser(
    acl_cluster: ACLCluster,
) -> None:
    cluster = acl_cluster.cluster
    assert len(cluster.ports) == 6
    for port in cluster.ports:
        for role in ROLES:
            with node_client(port, role) as node:
                assert node.ping(), (port, role)
        with (
            pytest.raises(redis.AuthenticationError),
            redis.Redis(
                host=HOST, port=port, username="kev-admin", password="wrong",
                socket_timeout=5, retry=Retry(NoBackoff(), 0),
            ) as wrong,
        ):  # fmt: skip
            wrong.ping()
        with redis.Redis(host=HOST, port=port, socket_timeout=5) as anonymous:
            for command in (anonymous.ping, functools.partial(anonymous.get, KEYS.epoch)):
                with pytest.raises(redis.AuthenticationError):  # NOAUTH, PING included
                    command()
        with redis.Redis(host=HOST, port=port, password=SUPERUSER, socket_timeout=5) as root:
            assert root.execute_command("ACL", "WHOAMI") in (b"default", "default")


def test_replicas_sync_as_the_replication_user_with_default_behind_a_password(
    acl_cluster: ACLCluster,
) -> None:
    """A replica whose link drops (here: cut by the master, as a restart or a failover
    would) syncs again, which it can only do as ``kev-replication`` (``masteruser``/
    ``masterauth``: ``default`` needs the superuser's password now), and stays linked; an
    event published afterwards reaches the bus' replica."""
    cluster = acl_cluster.cluster
    cut_replica_links(cluster)

    def synced_again() -> bool:
        for port, before in acl_cluster.resyncs_before.items():
            with node_client(port, "gateway") as node:
                if resyncs(node) <= before:
                    return False
        return len(links(cluster)) == 3 and set(links(cluster).values()) == {"up"}

    wait_until("every master to sync its replica again, every link up", synced_again)
    master = acl_cluster.master

    async def publish() -> str:
        async with AsyncPublisher.from_url(acl_cluster.url("publisher")) as pub:
            stream_id = await pub.publish(session_of(ALICE, "cl-repl-01").started())
        assert stream_id is not None
        return stream_id

    stream_id = anyio.run(publish)
    (replica,) = [p for p in cluster.ports if replication(p).get("master_port") == master]

    def replicated() -> bool:
        with node_client(replica, "gateway") as node:
            node.execute_command("READONLY")
            return stream_id in history_ids(node)

    wait_until(f"{stream_id} on the bus' replica {replica}", replicated, timeout=10)
    time.sleep(1.5)  # a link that authenticated as default would be gone by now
    assert set(links(cluster).values()) == {"up"}


def test_default_behind_a_password_without_the_replication_user_cuts_every_replica_off() -> None:
    """Why the replication user is needed on a cluster too: with ``default`` behind a password
    and no ``masteruser``, a replica that reconnects is refused (NOAUTH) and stays down
    (README, "Redis Cluster", says only "load the file on every node")."""
    with LocalRedisCluster() as cluster:
        lines = acl_commands(replication=False)
        assert not any("kev-replication" in line for line in lines)
        load_users(cluster.ports, lines, replication=False)
        cut_replica_links(cluster)  # the links made as default before survive until then
        wait_until(
            "every replica's link down",
            lambda: len(links(cluster)) == 3 and set(links(cluster).values()) == {"down"},
            timeout=15,
        )
        time.sleep(2.0)  # the replicas retry every second: none gets through
        assert set(links(cluster).values()) == {"down"}


# -- 1. every role on its own user, end to end -----------------------------------------------


def test_gateway_publisher_and_import_each_on_its_own_user(
    acl_cluster: ACLCluster, tmp_path: Path
) -> None:
    # admin: the real `gateway import`, the URL (with the password) in a file
    (tmp_path / "admin.url").write_text(acl_cluster.url("admin") + "\n")
    doc = import_doc()
    next(u for u in doc["users"] if u["user_id"] == "alice")["password"] = ALICE_PASSWORD
    (tmp_path / "ids.json").write_text(json.dumps(doc))
    out = _cli(
        "gateway.cli", "import", str(tmp_path / "ids.json"),
        "--redis-url-file", str(tmp_path / "admin.url"), env={},
    )  # fmt: skip
    assert "imported 7 users" in out, out
    with node_client(acl_cluster.master, "admin") as node:
        assert node.hget(KEYS.keypair(ROOT.access_key), "user_id") == b"root"

    # gateway: its own process, kev-gateway:PW in GATEWAY_REDIS_URL
    settings = gateway_settings(acl_cluster.url("gateway"))
    with spawn_gateway(settings) as gw:
        anyio.run(publish_and_receive, gw.base_url, acl_cluster.url("publisher"), "cl-acl")
        browser_logins(gw.base_url, ALICE_PASSWORD)


# -- 1. least privilege: every refusal a NOPERM ----------------------------------------------


def test_each_role_is_refused_what_it_may_not_do(acl_cluster: ACLCluster) -> None:
    secret_key = KEYS.keypair("AKIACLUSTERSECRET001")
    with contextlib.ExitStack() as stack:
        admin = stack.enter_context(connect_sync(acl_cluster.url("admin"), socket_timeout=5))
        pub = stack.enter_context(connect_sync(acl_cluster.url("publisher"), socket_timeout=5))
        gw = stack.enter_context(connect_sync(acl_cluster.url("gateway"), socket_timeout=5))
        admin.hset(secret_key, mapping={"secret_key": "s3cr3t", "user_id": "root"})
        gw.hgetall(secret_key)  # allowed: the gateway verifies signatures with it

        # the publisher reads no secret and writes no identity
        _refused(lambda: pub.hgetall(secret_key))
        _refused(lambda: pub.hget(secret_key, "secret_key"))
        _refused(lambda: pub.get(KEYS.user("root")))
        _refused(lambda: pub.hset(secret_key, "user_id", "publisher"))
        _refused(lambda: pub.hset(KEYS.user("mallory"), "role", "superadmin"))
        _refused(lambda: pub.sadd(KEYS.users, "mallory"))
        _refused(lambda: pub.xrange(KEYS.history))
        _refused(lambda: pub.delete(KEYS.history))

        # the gateway reads the history and writes none of it
        assert isinstance(gw.xrange(KEYS.history, count=1), list)
        _refused(lambda: gw.xadd(KEYS.history, {"e": b"forged"}))
        _refused(lambda: gw.xtrim(KEYS.history, maxlen=0))
        _refused(lambda: gw.delete(KEYS.history))
        _refused(lambda: gw.hset(secret_key, "user_id", "gateway"))

        # the admin writes identities, no event, nothing on the live channel
        _refused(lambda: admin.xadd(KEYS.history, {"e": b"forged"}))
        _refused(lambda: admin.xrange(KEYS.history))
        _refused(lambda: admin.set(KEYS.epoch, "1-0"))
        _refused(lambda: admin.execute_command("SPUBLISH", KEYS.channel, b"x"))

        assert admin.hget(secret_key, "user_id") == b"root"
        assert not admin.exists(KEYS.user("mallory"))
    # the same refusals from a plain client of the slot's master (no cluster client between)
    with node_client(acl_cluster.master, "admin") as node:
        _refused(lambda: node.execute_command("SPUBLISH", KEYS.channel, b"x"))
        _refused(lambda: node.xadd(KEYS.history, {"e": b"forged"}))
    with node_client(acl_cluster.master, "publisher") as node:
        _refused(lambda: node.hget(secret_key, "secret_key"))
        # nor through a script of its own: a declared key is NOPERM; a key the script makes
        # up is refused inside it (Redis 7.0 answers ERR there, not NOPERM)
        sha = node.script_load("return redis.call('HGET', KEYS[1], 'secret_key')")
        _refused(lambda: node.evalsha(sha, 1, secret_key))
        sha = node.script_load("return redis.call('HGET', ARGV[1], 'secret_key')")
        with pytest.raises(redis.ResponseError, match="script can't run this command"):
            node.evalsha(sha, 0, secret_key)
    with node_client(acl_cluster.master, "gateway") as node:
        _refused(lambda: node.xadd(KEYS.history, {"e": b"forged"}))
    with node_client(acl_cluster.master, "admin") as node:
        node.delete(secret_key)


# -- 2. the CLIs on a redis+cluster:// URL ---------------------------------------------------


def _on_master_only(acl_cluster: ACLCluster, role: str, read: Callable[[redis.Redis], Any]) -> Any:
    """``read`` on a plain client of the bus slot's master (what it returns), and the same
    read on another master answers MOVED: the key lives in the {kev} slot."""
    with node_client(acl_cluster.master, role) as node:
        value = read(node)
    with node_client(acl_cluster.other_master(), role) as other:
        with pytest.raises(redis.exceptions.MovedError):
            read(other)
    return value


def test_kev_publish_emit_on_a_cluster_url(acl_cluster: ACLCluster) -> None:
    env = {
        "KEV_REDIS_URL": acl_cluster.url("publisher", password=False),
        "KEV_REDIS_PASSWORD": PASSWORDS["publisher"],
    }
    out = _cli(
        "publisher.cli", "emit", "--name", "kernel_started", "--session-id", "cl-cli-01",
        "--owner-access-key", ALICE.access_key, "--owner-user-id", "alice", env=env,
    )  # fmt: skip
    stream_id = out.strip()
    assert stream_id.count("-") == 1, out
    ids = _on_master_only(acl_cluster, "gateway", history_ids)
    assert stream_id in ids
    epoch = _on_master_only(acl_cluster, "gateway", lambda n: n.get(KEYS.epoch))
    assert epoch is not None


def _admin_env(acl_cluster: ACLCluster, tmp_path: Path) -> dict[str, str]:
    """The admin commands' Redis: the user in GATEWAY_REDIS_URL, its password in a file."""
    (tmp_path / "admin.pw").write_text(PASSWORDS["admin"] + "\n")
    return {
        "GATEWAY_REDIS_URL": acl_cluster.url("admin", password=False),
        "GATEWAY_REDIS_PASSWORD_FILE": str(tmp_path / "admin.pw"),
    }


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_admin_list_activate_and_remove_on_a_cluster_url(
    acl_cluster: ACLCluster, tmp_path: Path
) -> None:
    """``gateway import``, ``keypair list``/``deactivate``/``activate``/``remove``, ``user
    list``/``remove``, ``group add``/``list`` on ``redis+cluster://`` as ``kev-admin``; what
    they wrote is in the {kev} slot under the hash-tagged names."""
    env = _admin_env(acl_cluster, tmp_path)
    user, access_key = "carl@example.com", "AKIACARLCLUSTER00001"
    doc = {
        "users": [{"user_id": user, "role": "user", "domain": "default"}],
        "keypairs": [{"access_key": access_key, "secret_key": "c" * 40, "user_id": user}],
    }
    (tmp_path / "carl.json").write_text(json.dumps(doc))
    _cli("gateway.cli", "import", str(tmp_path / "carl.json"), env=env)
    listed = _cli("gateway.cli", "keypair", "list", "--user", user, "--json", env=env)
    assert _json_lines(listed) == [{"access_key": access_key, "user_id": user, "active": True}]
    users = _json_lines(_cli("gateway.cli", "user", "list", "--domain", "default", "--json",
                             env=env))  # fmt: skip
    assert {"user_id": user, "role": "user", "domain": "default", "password": False} in users
    _cli("gateway.cli", "keypair", "deactivate", access_key, env=env)
    listed = _cli("gateway.cli", "keypair", "list", "--user", user, "--json", env=env)
    assert _json_lines(listed)[0]["active"] is False
    _cli("gateway.cli", "keypair", "activate", access_key, env=env)
    _cli("gateway.cli", "group", "add", "cl-team", "--domain", "default", env=env)
    groups = _cli("gateway.cli", "group", "list", "--domain", "default", "--json", env=env)
    assert {"domain": "default", "name": "cl-team"} in _json_lines(groups)
    # where they are: the {kev} slot's master (MOVED on another), the hash-tagged names
    stored = _on_master_only(acl_cluster, "admin", lambda n: n.hgetall(KEYS.keypair(access_key)))
    assert stored[b"user_id"] == user.encode() and stored[b"secret_key"] == b"c" * 40
    assert _on_master_only(acl_cluster, "admin", lambda n: n.exists(KEYS.user(user))) == 1
    assert _on_master_only(acl_cluster, "admin", lambda n: n.sismember(KEYS.keypairs, access_key))
    assert (
        _on_master_only(acl_cluster, "admin", lambda n: n.exists(KEYS.group("default", "cl-team")))
        == 1
    )
    _cli("gateway.cli", "keypair", "remove", access_key, env=env)
    _cli("gateway.cli", "user", "remove", user, env=env)
    _cli("gateway.cli", "group", "remove", "cl-team", "--domain", "default", env=env)
    with node_client(acl_cluster.master, "admin") as node:
        assert not node.exists(
            KEYS.keypair(access_key), KEYS.user(user), KEYS.group("default", "cl-team")
        )


def test_user_add_and_keypair_add_on_a_cluster_url(acl_cluster: ACLCluster, tmp_path: Path) -> None:
    env = _admin_env(acl_cluster, tmp_path)
    user = "dora@example.com"
    out = _cli("gateway.cli", "user", "add", user, "--role", "user", "--domain", "default",
               "--json", env=env)  # fmt: skip
    assert json.loads(out)["user_id"] == user
    added = json.loads(_cli("gateway.cli", "keypair", "add", "--user", user, "--json", env=env))
    listed = _cli("gateway.cli", "keypair", "list", "--user", user, "--json", env=env)
    assert _json_lines(listed) == [
        {"access_key": added["access_key"], "user_id": user, "active": True}
    ]
    stored = _on_master_only(
        acl_cluster, "admin", lambda n: n.hgetall(KEYS.keypair(added["access_key"]))
    )
    assert stored[b"secret_key"].decode() == added["secret_key"]


def test_an_unknown_keypair_or_user_is_refused_on_a_cluster_url(
    acl_cluster: ACLCluster, tmp_path: Path
) -> None:
    env = {**_admin_env(acl_cluster, tmp_path)}
    unknown = "AKIANOSUCHKEYCLUSTER"
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keypair", "deactivate", unknown],
        env=_process_env(env), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    with node_client(acl_cluster.master, "admin") as node:
        stray = node.hgetall(KEYS.keypair(unknown))
        node.delete(KEYS.keypair(unknown))  # (what the bug left behind: EXISTS split by slot)
    assert stray == {}, stray
    assert done.returncode == 2 and "does not exist" in done.stderr, done
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "user", "remove", "nosuch@example.com"],
        env=_process_env(env), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "does not exist" in done.stderr, done


def test_reset_history_on_a_cluster_url(acl_cluster: ACLCluster) -> None:
    with node_client(acl_cluster.master, "publisher") as pub:  # hostile: an id in the future
        pub.execute_command("XADD", KEYS.history, "99999999999999-0", "e", "x")
    env = {"GATEWAY_REDIS_URL": acl_cluster.url("admin")}
    out = _cli("gateway.cli", "reset-history", "--yes", "--json", env=env)
    assert json.loads(out)["last_id"] == "99999999999999-0", out
    assert (
        _on_master_only(acl_cluster, "gateway", lambda n: n.exists(KEYS.history, KEYS.epoch)) == 0
    )
    # a new history begins where the publisher writes next
    emitted = _cli(
        "publisher.cli", "emit", "--name", "kernel_started", "--session-id", "cl-reset-01",
        "--owner-access-key", ALICE.access_key, "--owner-user-id", "alice",
        env={"KEV_REDIS_URL": acl_cluster.url("publisher")},
    ).strip()  # fmt: skip
    with node_client(acl_cluster.master, "gateway") as node:
        assert history_ids(node) == [emitted]
        assert node.get(KEYS.epoch) is not None
    assert int(emitted.split("-")[0]) < 99999999999999


# -- 3. the bridge into the cluster ----------------------------------------------------------


def test_the_bridge_publishes_into_the_cluster_and_a_gateway_delivers_it(
    acl_cluster: ACLCluster,
    private_redis: RedisServer,
    backendai_db_factory: Callable[[str], BackendAIDatabase],
) -> None:
    """A Backend.AI of 26.8 (its bus on a single redis-server, its PostgreSQL) beside the
    cluster: ``gateway bridge`` as ``kev-bridge``, a gateway as ``kev-gateway``, the owner's
    identities imported as ``kev-admin``; a session's life reaches a v5 stream."""

    async def scenario() -> None:
        db = backendai_db_factory("26.8")
        installation = await Installation.create(db, f"redis://{HOST}:{private_redis.port}", "26.8")
        try:
            owner = await installation.owner("alice")
            admin = connect_async(acl_cluster.url("admin"))
            try:
                await IdentityStore(admin, Keys.for_url(acl_cluster.url("admin"))).import_data(
                    {
                        "users": [{"user_id": str(owner.user_uuid), "role": "user",
                                   "domain": owner.domain}],
                        "keypairs": [{"access_key": owner.access_key,
                                      "secret_key": owner.secret_key,
                                      "user_id": str(owner.user_uuid)}],
                    }
                )  # fmt: skip
            finally:
                await admin.aclose()
            person = Person(
                str(owner.user_uuid), "user", owner.domain, owner.access_key, owner.secret_key
            )
            settings = installation.settings(acl_cluster.url("bridge"))
            with (
                spawn_gateway(gateway_settings(acl_cluster.url("gateway"))) as gw,
                spawned_bridge(settings) as bridge,
            ):
                life = installation.life(owner, "cl-bridged-01", kernels=1)
                seen: list[str] = []
                with anyio.fail_after(20):
                    async with stream_as(person, gw.base_url + "/events/session") as (_, events):
                        await life.rows()
                        await life.lifecycle()
                        async for event in events:
                            if event.event.startswith(("kernel_", "session_")):
                                seen.append(event.event)
                                if event.event == "session_success":
                                    break
                assert seen[0] == "session_enqueued" and "kernel_started" in seen, seen
                ready = bridge.ready()
                assert ready is not None and ready.get("role") == "active", ready
        finally:
            await installation.close()
        # the bridge's own names, in the {kev} slot, readable by its user
        position = KEYS.publisher_position(settings.bridge.name)
        assert _on_master_only(acl_cluster, "bridge", lambda n: n.exists(position)) == 1

    anyio.run(scenario)
