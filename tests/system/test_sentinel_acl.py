"""Least privilege with Sentinel, for real: a master and a replica loaded with ``gateway acl``'s
users (the replica logs in as the replication user), two Sentinels monitoring them as the
monitoring user, one of them with ACL users of its own. A gateway (``kev-gateway``), the
publisher (``kev-publisher``) and ``gateway import`` (``kev-admin``) all go through
``redis+sentinel://``, and keep working across a failover the Sentinel runs with its
monitoring user only. The publisher's credential still reads no secret, nor do the
replication and monitoring users."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import redis

from gateway.cli.acl import PROFILES, ServiceUser, render
from publisher import AsyncPublisher, Keys
from publisher.connection import connect_sync
from tests.support.gateway_server import gateway_settings, spawn_gateway
from tests.support.http import stream_as
from tests.support.identities import ALICE, ROOT, import_doc, session_of
from tests.support.redis_server import free_port
from tests.support.secure_redis import spawn_redis
from tests.support.wait import until, wait_until
from tests.system.test_sentinel import _close_orphans

pytestmark = pytest.mark.slow

PASSWORDS = {p: f"{p}-pw-{i}s3N" for i, p in enumerate(PROFILES)}
SUPERUSER = "superuser-pw-S3n"  # the default user: what the nodes' AOF would replay as
USERS = {p: f"kev-{p}" for p in PROFILES}
SERVICES: dict[ServiceUser, tuple[str, str]] = {
    "replication": ("kev-replication", "replication-pw-7rQ"),
    "sentinel": ("kev-sentinel", "sentinel-pw-4tK"),
}
#: the guarded Sentinel's own users: one for clients (master discovery only), one for the
#: test and the other Sentinel
SENTINEL_CLIENT = ("kev-client", "sentinel-client-pw-2wE")
SENTINEL_ADMIN = ("kev-sentinel-admin", "sentinel-admin-pw-9zU")


@dataclass
class SentinelSet:
    ports: list[int]  # [first master, first replica]
    guarded: int  # the Sentinel with ACL users
    open: int  # the Sentinel without a password

    def url(self, sentinel: int, user: str, query: str = "") -> str:
        return f"redis+sentinel://{user}@127.0.0.1:{sentinel}/kev/0" + (
            f"?{query}" if query else ""
        )

    def node(self, port: int) -> redis.Redis:
        """The node as the monitoring user (INFO, ROLE, nothing else)."""
        name, password = SERVICES["sentinel"]
        return redis.Redis(port=port, username=name, password=password, socket_timeout=2)

    def role(self, port: int) -> str:
        with self.node(port) as r:
            return str(r.info("replication")["role"])

    def linked(self, port: int) -> bool:
        with self.node(port) as r:
            return bool(r.info("replication").get("master_link_status") == "up")

    def admin_of_guarded(self) -> redis.Redis:
        return redis.Redis(
            port=self.guarded, username=SENTINEL_ADMIN[0], password=SENTINEL_ADMIN[1]
        )


def _node_conf(path: Path, port: int, aclfile: Path, replicaof: int | None = None) -> Path:
    """A node's config file (Sentinel's CONFIG REWRITE needs one): the aclfile, and the
    replication user for when this node is (or becomes) a replica."""
    user, password = SERVICES["replication"]
    text = f"port {port}\naclfile {aclfile}\nmasteruser {user}\nmasterauth {password}\n"
    if replicaof is not None:
        text += f"replicaof 127.0.0.1 {replicaof}\n"
    path.write_text(text)
    return path


def _sentinel_conf(path: Path, port: int, master: int, *, guarded: bool) -> Path:
    user, password = SERVICES["sentinel"]
    text = (
        f"port {port}\ndir {path.parent}\n"
        f"sentinel monitor kev 127.0.0.1 {master} 1\n"
        f"sentinel auth-user kev {user}\nsentinel auth-pass kev {password}\n"
        "sentinel down-after-milliseconds kev 1000\nsentinel failover-timeout kev 5000\n"
    )
    if guarded:
        text += (
            "user default off\n"
            f"user {SENTINEL_CLIENT[0]} on >{SENTINEL_CLIENT[1]} -@all +ping +hello +auth "
            "+sentinel|masters +sentinel|get-master-addr-by-name "
            "+sentinel|replicas +sentinel|slaves\n"
            f"user {SENTINEL_ADMIN[0]} on >{SENTINEL_ADMIN[1]} +@all\n"
        )
    else:  # how it reaches the guarded one (hello messages tell it where that one is)
        text += f"sentinel sentinel-user {SENTINEL_ADMIN[0]}\n"
        text += f"sentinel sentinel-pass {SENTINEL_ADMIN[1]}\n"
    path.write_text(text)
    return path


@contextlib.contextmanager
def acl_sentinel_set(tmp: Path) -> Iterator[SentinelSet]:
    aclfile = tmp / "users.acl"
    aclfile.write_text(
        render(Keys("kev"), PASSWORDS, USERS, services=SERVICES, superuser_password=SUPERUSER)
    )
    master, replica, guarded, open_ = (free_port() for _ in range(4))
    found = SentinelSet([master, replica], guarded, open_)

    def pings(port: int, password: str | None = None) -> object:
        with redis.Redis(port=port, password=password, socket_timeout=1) as r:
            return r.ping()

    with contextlib.ExitStack() as stack:
        for port, of in ((master, None), (replica, master)):
            conf = _node_conf(tmp / f"n{port}.conf", port, aclfile, replicaof=of)
            stack.enter_context(
                spawn_redis([], lambda port=port: pings(port, SUPERUSER), conf=str(conf))  # type: ignore[misc]
            )
        wait_until(lambda: found.linked(replica), 10, "the replica to sync as kev-replication")
        for port, is_guarded in ((guarded, True), (open_, False)):
            conf = _sentinel_conf(tmp / f"s{port}.conf", port, master, guarded=is_guarded)
            alive = found.admin_of_guarded().ping if is_guarded else (lambda: pings(open_))
            stack.enter_context(spawn_redis(["--sentinel"], alive, conf=str(conf)))
        yield found


def _sentinel_knows_the_replica(found: SentinelSet, sentinel: int) -> bool:
    """The Sentinel learned of the replica from the master's INFO (which it may run as the
    monitoring user only) and sees it up."""
    with (
        redis.Redis(
            port=sentinel,
            username=SENTINEL_ADMIN[0],
            password=SENTINEL_ADMIN[1],
            decode_responses=True,
        )
        if sentinel == found.guarded
        else redis.Redis(port=sentinel, decode_responses=True) as s
    ):
        replicas = s.sentinel_slaves("kev")
    # redis-py parses the flags (slave, s_down, disconnected...) into is_* booleans
    return any(
        r["is_slave"] and not (r["is_sdown"] or r["is_disconnected"]) for r in replicas or []
    )


def _denied(call: object) -> None:
    with pytest.raises(redis.ResponseError, match=r"(?i)permission"):
        assert callable(call)
        call()


@pytest.mark.slow
@pytest.mark.anyio
async def test_per_role_users_through_sentinel_and_a_failover(tmp_path: Path) -> None:
    with acl_sentinel_set(tmp_path) as found:
        for sentinel in (found.guarded, found.open):
            wait_until(
                functools.partial(_sentinel_knows_the_replica, found, sentinel),
                15,
                f"Sentinel {sentinel} to see the replica as kev-sentinel",
            )
        client_query = (
            f"sentinel_username={SENTINEL_CLIENT[0]}&sentinel_password={quote(SENTINEL_CLIENT[1])}"
        )
        # The guarded Sentinel refuses a client without its credentials, and the master's
        # password is not sent to a Sentinel (the open one would refuse any AUTH).
        no_creds = connect_sync(
            found.url(found.guarded, USERS["publisher"]), password=PASSWORDS["publisher"],
            socket_timeout=2,
        )  # fmt: skip
        with pytest.raises(redis.RedisError):
            no_creds.ping()
        no_creds.close()

        # admin: `gateway import` through the guarded Sentinel, its credentials in the query
        doc = import_doc()
        (tmp_path / "ids.json").write_text(json.dumps(doc))
        admin_url = found.url(found.guarded, f"{USERS['admin']}:{PASSWORDS['admin']}", client_query)
        (tmp_path / "admin.url").write_text(admin_url + "\n")
        done = await anyio.run_process(
            [sys.executable, "-m", "gateway.cli", "import", str(tmp_path / "ids.json"),
             "--redis-url-file", str(tmp_path / "admin.url")],
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()

        # gateway: through the open Sentinel, its user in the URL, the password a setting
        settings = gateway_settings(
            found.url(found.open, USERS["gateway"]), redis_password=PASSWORDS["gateway"]
        )
        publisher_url = found.url(
            found.guarded, USERS["publisher"], f"sentinel_username={SENTINEL_CLIENT[0]}"
        )
        with spawn_gateway(settings) as gw:
            with anyio.fail_after(40):
                async with (
                    stream_as(ROOT, gw.base_url) as (_, events),
                    AsyncPublisher.from_url(
                        publisher_url,
                        password=PASSWORDS["publisher"],
                        sentinel_password=SENTINEL_CLIENT[1],
                        timeout=1.0,
                    ) as pub,  # fmt: skip
                ):
                    first = await pub.publish(session_of(ALICE, "sacl-01").started())
                    assert first is not None
                    await _next_started(events, "sacl-01")

                    # a failover the Sentinel runs with its monitoring user only (SLAVEOF NO
                    # ONE, CONFIG REWRITE, CLIENT KILL in a MULTI); it turns the old master
                    # into a replica only some 10 s later, which this test does not wait for
                    new = found.ports[1]
                    with found.admin_of_guarded() as s:
                        assert s.execute_command("SENTINEL", "FAILOVER", "kev")
                    await until(lambda: found.role(new) == "master", 15, "the promotion")

                    second = None
                    while second is None:  # queued until the publisher finds the new master
                        second = await pub.publish(session_of(ALICE, "sacl-02").started())
                    await _next_started(events, "sacl-02")
            await _close_orphans()  # the publisher's pool forgets the old master's
        # the publisher's credential, through Sentinel: publishes, reads no secret, writes
        # no identity
        pub_sync = connect_sync(
            publisher_url, password=PASSWORDS["publisher"], sentinel_password=SENTINEL_CLIENT[1]
        )
        secret_key = f"kev:keypair:{ROOT.access_key}"
        _denied(lambda: pub_sync.hgetall(secret_key))
        _denied(lambda: pub_sync.hset(secret_key, "user_id", "publisher"))
        _denied(lambda: pub_sync.get("kev:websession:abc"))
        pub_sync.close()
        # nor do the service users read anything
        for name, password in SERVICES.values():
            with redis.Redis(port=new, username=name, password=password) as r:
                _denied(functools.partial(r.hgetall, secret_key))


async def _next_started(events: object, session_id: str) -> None:
    async for event in events:  # type: ignore[attr-defined]
        if event.event == "kernel_started" and json.loads(event.data)["sessionId"] == session_id:
            return
