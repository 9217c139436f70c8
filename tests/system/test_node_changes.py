"""A replica that has seen no history yet (no epoch to compare) meets its Redis node changing
under it, for real: the rules table's row "a Redis restart ... over no history"
(ARCHITECTURE.md, "Watermark and epoch"). Its streams are told ``reset`` only where the
node's data does not carry on what the replica last looked at: a restart without
persistence. A failover to a replica (Sentinel; a cluster's ``CLUSTER FAILOVER``, or its
master killed; a replica attached after the gateway's session began) carries it on, which
the promoted node's replication ids prove (INFO replication's ``master_replid2`` is the old
master's id, held up to at least the offset the gateway last saw), and tells nothing. A
restart from an RDB file older than that offset is told, as is a cluster slot resharded to
another master: nothing proves that its keys came along.

Found in CI: a partition's master failed over before that partition's first event, and every
stream was told ``reset`` for a failover that lost nothing (the replica knew no epoch, and the
new master's run id was another).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import redis

from devtools.rediscluster import LocalRedisCluster, key_slot
from publisher import AsyncPublisher, Keys
from tests.support.gateway_server import gateway_settings, spawn_gateway
from tests.support.http import metric_value
from tests.support.identities import ALICE, seed, session_of
from tests.support.redis_server import RedisServer, free_port, is_master
from tests.support.sentinel import sentinel_set
from tests.support.tcp_proxy import tcp_proxy
from tests.support.wait import until
from tests.system.test_sentinel import _close_orphans
from tests.system.test_watermark import reading

pytestmark = pytest.mark.anyio

#: the gateway's probe interval (s): it looks at its Redis node at least this often
PROBE = 0.5

#: the change of a Redis deployment's node that the test makes (each deployment below yields
#: its URL, with the identities stored, and its change)
Change = Callable[[], Awaitable[None]]


@contextlib.asynccontextmanager
async def restart() -> AsyncIterator[tuple[str, Change]]:
    """One redis-server without persistence, SIGKILLed and started again: back empty."""
    with RedisServer() as server:
        await seed(server.url)

        async def change() -> None:
            server.restart()
            await seed(server.url)  # the identities went with the rest

        yield server.url, change


@contextlib.contextmanager
def replica_of(master: int) -> Iterator[int]:
    """A redis-server without persistence replicating the one on port ``master``, in sync;
    yields its port."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="kev-replica-")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--dir", workdir, "--replicaof", "127.0.0.1", str(master)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _in_sync(master, port):
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _in_sync(master: int, replica: int) -> bool:
    """The replica's link is up and it has all of the master's replication stream."""
    try:
        with redis.Redis(port=master) as m, redis.Redis(port=replica) as r:
            mine = r.info("replication")
            return bool(
                mine.get("master_link_status") == "up"
                and mine["master_repl_offset"] == m.info("replication")["master_repl_offset"]
            )
    except redis.ConnectionError:
        return False


@contextlib.asynccontextmanager
async def restart_from_rdb() -> AsyncIterator[tuple[str, Change]]:
    """A master with a replica (so its replication id outlives a restart) and an RDB file
    SAVEd before the gateway looked; a write after it, looked at; then the master is
    SIGKILLed and started again from the file, which lacks that write."""
    with RedisServer() as master, replica_of(master.port):
        await seed(master.url)
        with redis.Redis(port=master.port) as raw:
            raw.save()

        def probes() -> int:
            with redis.Redis(port=master.port) as raw:
                return int(raw.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))

        async def change() -> None:
            with redis.Redis(port=master.port) as raw:
                raw.set("kev-test:after-the-file", 1)
            # A probe reads the offset before its PUBLISH: the second PUBLISH after the write
            # is a probe's whose look came after it, past the file's offset.
            after = probes()
            await until(lambda: probes() >= after + 2, 10, "a look after the write")
            master.restart()

        yield master.url, change


@contextlib.asynccontextmanager
async def late_replica() -> AsyncIterator[tuple[str, Change]]:
    """A master without replicas, behind a TCP proxy. After the gateway looked, a replica
    attaches (which changes the master's replication id) and catches up; then it is
    promoted by hand (REPLICAOF NO ONE), the master SIGKILLed and the proxy sent to the
    new master: a failover as Sentinel makes one."""
    with RedisServer() as master, contextlib.ExitStack() as stack:
        await seed(master.url)
        proxy = stack.enter_context(tcp_proxy(master.port))
        url = proxy.url

        async def change() -> None:
            replica = stack.enter_context(replica_of(master.port))
            await anyio.sleep(3 * PROBE)  # looked at again since
            with redis.Redis(port=master.port) as raw:
                raw.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
            await until(lambda: _in_sync(master.port, replica), 10, "the replica caught up")
            with redis.Redis(port=replica) as raw:
                raw.execute_command("REPLICAOF", "NO", "ONE")
            master.stop(kill=True)
            proxy.close()
            stack.enter_context(tcp_proxy(replica, port=proxy.port))

        yield url, change


@contextlib.asynccontextmanager
async def sentinel() -> AsyncIterator[tuple[str, Change]]:
    """Master, replica, sentinel: the master SIGKILLed, the replica promoted."""
    with sentinel_set() as (master, _replica, url, replica_port):
        await seed(master.url)  # replicated to the replica

        async def change() -> None:
            master.stop(kill=True)
            await until(lambda: is_master(replica_port), 15, "the sentinel to promote the replica")

        yield url, change


@contextlib.asynccontextmanager
async def cluster(how: str) -> AsyncIterator[tuple[str, Change]]:
    """A local Redis Cluster whose bus slot's master fails over to its replica (``CLUSTER
    FAILOVER``), is SIGKILLed and its replica promoted, or whose bus slot is resharded to
    another master with its keys."""
    slot = key_slot(Keys("{kev}", cluster=True).history)
    with LocalRedisCluster() as nodes:
        await seed(nodes.url)

        def move() -> None:
            if how == "failover":
                nodes.failover(slot)
            elif how == "kill":
                nodes.kill_master(slot)
            else:
                old = nodes.master_of_slot(slot)
                nodes.reshard_slot(slot, next(p for p in nodes.masters() if p != old))

        async def change() -> None:
            await anyio.to_thread.run_sync(move)

        yield nodes.url, change


def deployment(change: str) -> contextlib.AbstractAsyncContextManager[tuple[str, Change]]:
    """The deployment whose node ``change`` changes (a key of :data:`NOTICES`)."""
    if change == "restart without persistence":
        return restart()
    if change.startswith("restart"):
        return restart_from_rdb()
    if change.startswith("a replica"):
        return late_replica()
    if change.startswith("cluster"):
        return cluster(change.split()[-1])
    return sentinel()


#: each change of the node, and the notices an open stream gets for it
NOTICES: dict[str, list[str]] = {
    "restart without persistence": ["reset"],
    # its previous replication id is the old one, but held only up to the file's offset
    "restart from an RDB file older than the last look": ["reset"],
    "a replica attached after the session began, then promoted": [],
    "Sentinel failover": [],
    "cluster failover": [],
    "cluster master kill": [],
    # Another master, unrelated to the old one: nothing proves the keys came with the slot
    # (a slot can be given to a node without them), so a replica that saw no history there
    # says so. (Once it has seen the history, the epoch proves it: test_redis_cluster.py.)
    "cluster reshard": ["reset"],
}


def _metric(base_url: str, name: str) -> float:
    return metric_value(httpx.get(base_url + "/metrics", timeout=5).text, name)


@pytest.mark.parametrize("change", list(NOTICES))
async def test_a_replica_that_saw_no_history_is_told_reset_only_where_data_was_lost(
    change: str,
) -> None:
    notices = NOTICES[change]
    async with deployment(change) as (url, make_change):
        with spawn_gateway(gateway_settings(url, probe_interval=PROBE)) as gw:
            async with reading(gw.base_url) as reader:
                await until(
                    lambda: httpx.get(gw.base_url + "/ready", timeout=5).json()["streams"] >= 1,
                    10,
                    "the stream",
                )
                sessions = _metric(gw.base_url, "kev_redis_reconnects_total")
                await make_change()
                # A session on the node there is now: the notice, if any, comes before the
                # event, which only that node has.
                await until(
                    lambda: _metric(gw.base_url, "kev_redis_reconnects_total") > sessions,
                    20,
                    "the subscription to start over",
                )
                async with AsyncPublisher.from_url(url) as pub:
                    # (queued while the publisher finds the new master, then sent)
                    await pub.publish(session_of(ALICE, "after").started("after"))
                    assert await pub.flush(timeout=15)
                await _close_orphans()  # the Sentinel pool's, when the master changed
                await until(lambda: len(reader.kernel()) >= 1, 20, "the event after the change")
                assert [json.loads(e.data)["reason"] for e in reader.kernel()] == ["after"]
                assert [n["reason"] for n in reader.notices()] == notices
                told = _metric(gw.base_url, "kev_new_histories_total")
                assert told == len(notices)


async def test_a_user_refused_info_replication_still_runs_a_replica(tmp_path: Path) -> None:
    """A hand-written ACL may grant only some INFO sections: without ``INFO replication`` the
    replica still serves (no proof of a carry-on: the rule as before it), and says so once."""
    with RedisServer() as server:
        await seed(server.url)
        with redis.Redis(port=server.port) as raw:
            raw.execute_command(
                "ACL", "SETUSER", "partial", "on", ">partial-password", "~*", "&*", "+@all",
                "-info", "+info|server", "+info|persistence",
            )  # fmt: skip
        url = f"redis://partial:partial-password@127.0.0.1:{server.port}/0"
        log = tmp_path / "gateway.log"
        with spawn_gateway(gateway_settings(url, probe_interval=PROBE), log=log) as gw:
            async with reading(gw.base_url) as reader:
                async with AsyncPublisher.from_url(server.url) as pub:
                    await pub.publish(session_of(ALICE, "partial").started("served"))
                await until(lambda: len(reader.kernel()) >= 1, 10, "the event")
            await anyio.sleep(3 * PROBE)  # probes go on: none may fail
            assert httpx.get(gw.base_url + "/ready", timeout=5).status_code == 200
        said = [line for line in log.read_text().splitlines() if "INFO replication" in line]
        assert len(said) == 1, said
