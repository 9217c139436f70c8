"""A real Redis Cluster on loopback, for the tests and the benchmarks: ``masters`` masters with
``replicas_per_master`` replicas each, every node a private ``redis-server`` (the one
:mod:`devtools.localredis` runs) on free 127.0.0.1 ports in a temporary directory of its own,
joined by ``redis-cli --cluster create`` and stopped with its owner.

Besides the seed URL (``redis+cluster://h:p,h:p,h:p``) it drives the topology changes a cluster
client must survive, each waiting (bounded) until every live node agrees again: a manual
failover, a master killed with SIGKILL and its replica promoted, a killed node restarted (it
rejoins as a replica), and one slot moved with its keys to another master the way
``redis-cli --cluster reshard`` moves it. Only plain one-node clients (``redis.Redis``) talk to
the nodes, never redis-py's cluster client: this is what that client is tested against."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.crc
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.localredis import free_port

__all__ = ["SLOTS", "ClusterNode", "LocalRedisCluster", "key_slot"]

HOST = "127.0.0.1"
#: the cluster's key space: every slot must be served for ``cluster_state:ok``
SLOTS = redis.crc.REDIS_CLUSTER_HASH_SLOTS
#: milliseconds a node may be unreachable before it is suspected (PFAIL), then failed
NODE_TIMEOUT_MS = 1000
#: seconds a master's fellow masters refuse to vote again for one of its replicas after they
#: voted for one (twice the node timeout, in redis 7.0's clusterSendFailoverAuthIfNeeded)
VOTE_PAUSE = 2 * NODE_TIMEOUT_MS / 1000 + 0.1
#: seconds before a manual failover is asked for again (redis gives up on one after 5 s)
MANUAL_FAILOVER_RETRY = 6.0
#: CLUSTER NODES flags of a node that is not (yet) a settled member
UNSETTLED = frozenset({"fail", "fail?", "handshake", "noaddr"})
#: (first slot, last slot, master port, sorted replica ports): one range of CLUSTER SLOTS
SlotRange = tuple[int, int, int, tuple[int, ...]]


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (its hash tag's, if it has one)."""
    return redis.crc.key_slot(key.encode() if isinstance(key, str) else key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _slot_map(client: redis.Redis) -> list[SlotRange]:
    ranges: list[SlotRange] = []
    for entry in client.cluster("SLOTS"):
        first, last, master, *replicas = entry
        listed = tuple(sorted(int(replica[1]) for replica in replicas))
        ranges.append((int(first), int(last), int(master[1]), listed))
    return sorted(ranges)


def _nodes_view(client: redis.Redis) -> dict[int, tuple[str, int | None, frozenset[str]]]:
    """One node's CLUSTER NODES: port -> (role, its master's port for a replica, flags). Read
    from the reply's text or from redis-py's dict of it (``{"ip:port": {"flags": ...}}``)."""
    reply = client.cluster("NODES")
    rows: list[tuple[str, str, str, str]] = []  # id, ip:port@cport, flags, master id or "-"
    if isinstance(reply, bytes | str):
        for line in _text(reply).splitlines():
            fields = line.split()
            if len(fields) >= 4:
                rows.append((fields[0], fields[1], fields[2], fields[3]))
    else:
        for address, entry in reply.items():
            rows.append(
                (_text(entry["node_id"]), _text(address), _text(entry["flags"]),
                 _text(entry["master_id"]))
            )  # fmt: skip
    ports = {
        node_id: int(address.split("@")[0].rpartition(":")[2]) for node_id, address, *_ in rows
    }
    view: dict[int, tuple[str, int | None, frozenset[str]]] = {}
    for node_id, _, flags, master_id in rows:
        flag_set = frozenset(flags.split(","))
        role = "slave" if "slave" in flag_set else "master"
        view[ports[node_id]] = (role, ports.get(master_id), flag_set)
    return view


#: tries to start the cluster on fresh ports when a node could not take its own
_START_ATTEMPTS = 3


def _redis_cli(args: list[str], what: str, timeout: float) -> None:
    """Run ``redis-cli`` with ``args``; RuntimeError with its output when it fails or takes
    over ``timeout`` seconds."""
    try:
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} took over {timeout} s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"{what} failed:\n{output}")


class _NoOwner(RuntimeError):
    """No node's slot map names a master for the slot (for a moment, mid-failover)."""


class _PortTaken(RuntimeError):
    """A node exited at start: its port (or its bus port) was taken meanwhile."""


class ClusterNode:
    """One redis-server of the cluster: its ports, its directory (``nodes.conf`` lives there, so
    a restart keeps the node's identity) and its process while it runs."""

    def __init__(self, port: int, bus_port: int, directory: Path) -> None:
        self.port = port
        #: the cluster bus port, given explicitly: the default (port + 10000) can pass 65535
        self.bus_port = bus_port
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"ClusterNode(port={self.port}, {state})"


class LocalRedisCluster:
    """Start a loopback Redis Cluster, change its topology on demand, stop it."""

    def __init__(
        self, masters: int = 3, replicas_per_master: int = 1, *, aof: bool = False
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master cannot be negative")
        self.masters_count = masters
        self.replicas_per_master = replicas_per_master
        #: an append-only file fsynced every second on every node
        self.aof = aof
        self._nodes: list[ClusterNode] = []
        #: master port -> when a replica of it last won an election (see VOTE_PAUSE)
        self._elected: dict[int, float] = {}
        self._started = False
        self._closed = False

    # -- what the cluster is --------------------------------------------------------------

    @property
    def nodes(self) -> list[ClusterNode]:
        return list(self._nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def url(self) -> str:
        """The seed URL: the first three nodes (a client discovers the rest)."""
        if len(self._nodes) < 3:
            raise RuntimeError("the cluster has not been started")
        seeds = ",".join(f"{HOST}:{node.port}" for node in self._nodes[:3])
        return f"redis+cluster://{seeds}"

    def node(self, port: int) -> ClusterNode:
        for node in self._nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port}")

    def live_ports(self) -> list[int]:
        return [node.port for node in self._nodes if node.alive]

    # -- start and stop -------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if self._closed:
            raise RuntimeError("the cluster was closed")
        if self._started:
            raise RuntimeError("the cluster was already started")
        cli = shutil.which("redis-cli")
        if shutil.which("redis-server") is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed: run scripts/install")
        self._started = True
        for attempt in range(_START_ATTEMPTS):
            try:
                self._start(cli, timeout)
                return
            except _PortTaken:
                # A free port is found by binding and releasing it: another process may take
                # it first (seen under pytest -n 2). Fresh ports, from the beginning.
                self._stop_nodes()
                if attempt == _START_ATTEMPTS - 1:
                    self.close()
                    raise
            except BaseException:
                self.close()
                raise

    def _start(self, cli: str, timeout: float) -> None:
        count = self.masters_count * (1 + self.replicas_per_master)
        taken: set[int] = set()
        for _ in range(count):
            port, bus_port = self.fresh_port(taken), self.fresh_port(taken)
            directory = Path(tempfile.mkdtemp(prefix=f"kev-rcluster-{port}-"))
            self._nodes.append(ClusterNode(port, bus_port, directory))
        for node in self._nodes:
            self._launch(node)
        for node in self._nodes:
            self._wait_for_ping(node, timeout)
        # fmt: off
        args = [
            cli, "--cluster", "create",
            *(f"{HOST}:{node.port}" for node in self._nodes),
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]
        # fmt: on
        _redis_cli(args, "redis-cli --cluster create", timeout)
        expected_replicas = self.masters_count * self.replicas_per_master

        def formed() -> bool:
            if not self._healthy():
                return False
            owners = {master for _, _, master, _ in self.slot_map()}
            replicas = sum(1 for port in self.live_ports() if self._role(port) == "slave")
            return len(owners) == self.masters_count and replicas == expected_replicas

        self._wait(
            f"the new cluster of {count} nodes to be ok on every node, agree on its "
            f"{self.masters_count} masters' slots and have {expected_replicas} linked replicas",
            formed,
            timeout,
        )

    @staticmethod
    def fresh_port(taken: set[int]) -> int:
        """A free loopback port not in ``taken`` (added to it): free when asked, so another
        process may take it before its node binds it (:meth:`start` tries again)."""
        while True:
            port = free_port()
            if port not in taken:
                taken.add(port)
                return port

    def _launch(self, node: ClusterNode) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/install")
        # fmt: off
        args = [
            binary,
            "--bind", HOST,
            "--port", str(node.port),
            "--cluster-enabled", "yes",
            "--cluster-port", str(node.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-allow-replica-migration", "no",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            # a replica's first sync starts at once, not after the default 5 s wait for others
            "--repl-diskless-sync-delay", "0",
            "--dir", str(node.dir),
            "--daemonize", "no",
            "--loglevel", "warning",
        ]
        # fmt: on
        node.proc = subprocess.Popen(
            args, cwd=node.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_for_ping(self, node: ClusterNode, timeout: float) -> None:
        def answers() -> bool:
            if node.proc is None or node.proc.poll() is not None:
                raise _PortTaken(f"redis-server on port {node.port} exited at start")
            with self._client(node.port) as client:
                return bool(client.ping())

        self._wait(f"redis-server on port {node.port} to answer PING", answers, timeout)

    def close(self) -> None:
        """Kill every process this cluster started (SIGKILL, by its handle) and remove the
        directories. Safe to call more than once."""
        self._closed = True
        self._stop_nodes()

    def _stop_nodes(self) -> None:
        nodes, self._nodes = self._nodes, []
        for node in nodes:
            if node.proc is not None:
                if node.proc.poll() is None:
                    node.proc.kill()
                node.proc.wait(timeout=10)
                node.proc = None
            shutil.rmtree(node.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the topology, as the nodes see it ------------------------------------------------

    key_slot = staticmethod(key_slot)

    def slot_map(self, port: int | None = None) -> list[SlotRange]:
        """CLUSTER SLOTS of one node (the first live one by default), normalised and sorted.

        Redis 7.0 leaves out of it the replicas whose replication offset it last heard was 0
        (every replica of a new cluster that has had no write yet) and the failed ones."""
        with self._client(self._any_live_port() if port is None else port) as client:
            return _slot_map(client)

    def master_of_slot(self, slot: int, *, port: int | None = None) -> int:
        """The port of the master serving ``slot``, per one live node's CLUSTER SLOTS."""
        self._check_slot(slot)
        for first, last, master, _ in self.slot_map(port):
            if first <= slot <= last:
                return master
        raise _NoOwner(f"slot {slot} is served by no node")

    def masters(self) -> list[int]:
        """The ports of the live nodes that are masters, sorted."""
        return sorted(port for port in self.live_ports() if self._role(port) == "master")

    def replicas_of(self, master_port: int) -> list[int]:
        """The ports of the live nodes replicating ``master_port``, sorted."""
        found = []
        for port in self.live_ports():
            with self._client(port) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", -1)) == master_port:
                found.append(port)
        return sorted(found)

    def node_id(self, port: int) -> str:
        with self._client(port) as client:
            return _text(client.cluster("MYID"))

    # -- topology changes -----------------------------------------------------------------

    def failover(self, slot: int, timeout: float = 30.0) -> int:
        """A manual failover (CLUSTER FAILOVER) to a replica of the slot's master; returns the
        new master's port once every live node has it serve the slot and the cluster is ok.

        A manual failover the master did not hear of (it drops the request of a node it does
        not yet know as its replica) ends unnoticed after 5 s: then it is asked for again."""
        master = self.master_of_slot(slot)
        replicas = self.replicas_of(master)
        if not replicas:
            raise RuntimeError(f"the master on port {master} has no replica to fail over to")
        replica = replicas[0]
        pause = self._elected.get(master, -VOTE_PAUSE) + VOTE_PAUSE - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # the other masters would not vote yet: the failover would stall
        asked = 0.0

        def promoted() -> bool:
            nonlocal asked
            if self._served_by(slot, {replica}) and self._healthy():
                return True
            if time.monotonic() - asked > MANUAL_FAILOVER_RETRY and self._role(replica) == "slave":
                with self._client(replica) as client:
                    client.cluster("FAILOVER")
                asked = time.monotonic()
            return False

        self._wait(
            f"the replica on port {replica} to serve slot {slot} on every live node after "
            f"CLUSTER FAILOVER (old master {master}), the cluster ok",
            promoted,
            timeout,
        )
        self._elected[master] = time.monotonic()
        return replica

    def kill_master(self, slot: int, timeout: float = 30.0) -> int:
        """SIGKILL the master of ``slot``; returns the port of the replica the cluster promoted
        once every live node has it serve the slot and the cluster is ok."""
        master = self.master_of_slot(slot)
        replicas = set(self.replicas_of(master))
        if not replicas:
            raise RuntimeError(f"the master on port {master} has no replica to promote")
        self.kill(master)
        self._wait(
            f"a replica of the killed master {master} ({sorted(replicas)}) to be promoted and "
            f"serve slot {slot} on every live node, the cluster ok",
            lambda: self._served_by(slot, replicas) and self._healthy(),
            timeout,
        )
        self._elected[master] = time.monotonic()
        return self.master_of_slot(slot)

    def kill(self, port: int) -> None:
        """SIGKILL one node (no waiting for the cluster to notice)."""
        node = self.node(port)
        if node.proc is None:
            raise RuntimeError(f"the node on port {port} is not running")
        node.proc.kill()
        node.proc.wait(timeout=10)
        node.proc = None

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again on its port and directory (its ``nodes.conf`` kept); waits
        until it has rejoined as a linked replica and the cluster is ok on every live node."""
        node = self.node(port)
        if node.alive:
            raise RuntimeError(f"the node on port {port} is still running")
        node.proc = None
        self._launch(node)
        self._wait_for_ping(node, timeout)
        self._wait(
            f"the restarted node on port {port} to rejoin as a replica, the cluster ok",
            lambda: self._role(port) == "slave" and self._healthy(),
            timeout,
        )

    def start_stopped(self, timeout: float = 30.0) -> None:
        """Start every killed node again (a whole cluster back from an outage: each in the
        role its ``nodes.conf`` says); waits until the cluster is ok on every node."""
        stopped = [node for node in self._nodes if not node.alive]
        for node in stopped:
            node.proc = None
            self._launch(node)
        for node in stopped:
            self._wait_for_ping(node, timeout)
        self._wait("the cluster ok on every node again", self._healthy, timeout)

    def reshard_slot(
        self,
        slot: int,
        to_port: int,
        timeout: float = 30.0,
        *,
        keys_per_migrate: int = 100,
        pause: float = 0.0,
    ) -> None:
        """Move one slot and its keys to the master on ``to_port``, as ``redis-cli --cluster
        reshard`` moves each slot: IMPORTING on the target, MIGRATING on the source, MIGRATE
        the keys ``keys_per_migrate`` at a time (``pause`` seconds between: a slow network,
        a large slot; meanwhile a script or transaction whose keys are split between the two
        nodes gets TRYAGAIN), then SETSLOT NODE on the target, the source and the other
        masters; waits until every live node has the target serve the slot."""
        source = self.master_of_slot(slot)
        if source == to_port:
            return
        if self._role(to_port) != "master":
            raise RuntimeError(f"the node on port {to_port} is not a master")
        source_id, target_id = self.node_id(source), self.node_id(to_port)
        with self._client(to_port) as target_client, self._client(source) as source_client:
            target_client.cluster("SETSLOT", slot, "IMPORTING", source_id)
            source_client.cluster("SETSLOT", slot, "MIGRATING", target_id)
            deadline = time.monotonic() + timeout
            while keys := source_client.cluster("GETKEYSINSLOT", slot, keys_per_migrate):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"migrating the keys of slot {slot} took over {timeout} s")
                source_client.migrate(HOST, to_port, keys, 0, 10_000, replace=True)
                time.sleep(pause)
            target_client.cluster("SETSLOT", slot, "NODE", target_id)
            source_client.cluster("SETSLOT", slot, "NODE", target_id)
        for port in self.masters():
            if port not in (source, to_port):
                with self._client(port) as client:
                    client.cluster("SETSLOT", slot, "NODE", target_id)
        self._wait(
            f"slot {slot} to be served by {to_port} (moved from {source}) on every live node, "
            "the cluster ok",
            lambda: self._served_by(slot, {to_port}) and self._healthy(),
            timeout,
        )

    def reshard_with_cli(self, slot: int, to_port: int, timeout: float = 30.0) -> None:
        """Move ``slot`` with ``redis-cli --cluster reshard --cluster-slots 1``. redis-cli picks
        the source's lowest slot, so ``slot`` must be the lowest its master serves."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        source = self.master_of_slot(slot)
        lowest = min(first for first, _, master, _ in self.slot_map() if master == source)
        if lowest != slot:
            raise ValueError(
                f"redis-cli moves a source's lowest slots first: {source}'s is {lowest}, not {slot}"
            )
        # fmt: off
        args = [
            cli, "--cluster", "reshard", f"{HOST}:{source}",
            "--cluster-from", self.node_id(source),
            "--cluster-to", self.node_id(to_port),
            "--cluster-slots", "1",
            "--cluster-yes",
        ]
        # fmt: on
        _redis_cli(args, "redis-cli --cluster reshard", timeout)
        self._wait(
            f"slot {slot} to be served by {to_port} (moved by redis-cli from {source}) on every "
            "live node, the cluster ok",
            lambda: self._served_by(slot, {to_port}) and self._healthy(),
            timeout,
        )

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _client(port: int) -> redis.Redis:
        # no retries: every wait polls again, and a node just killed must not hold it up
        return redis.Redis(
            host=HOST,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    @staticmethod
    def _check_slot(slot: int) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"a slot is in 0..{SLOTS - 1}, not {slot}")

    def _any_live_port(self) -> int:
        live = self.live_ports()
        if not live:
            raise RuntimeError("no node of the cluster is running")
        return live[0]

    def _role(self, port: int) -> str:
        with self._client(port) as client:
            return _text(client.info("replication").get("role", ""))

    def _served_by(self, slot: int, ports: set[int]) -> bool:
        """Every live node has one of ``ports`` serve ``slot``."""
        return all(self.master_of_slot(slot, port=port) in ports for port in self.live_ports())

    def _healthy(self) -> bool:
        """The cluster is settled: on every live node ``cluster_state:ok`` and the same slot
        owners in CLUSTER SLOTS, all 16384 slots served by live masters; every live replica
        linked to its master; and in every live node's CLUSTER NODES, every live node with the
        role (and master) it has itself, and no failure or handshake flag.

        The replicas CLUSTER SLOTS lists are left out of the comparison: redis 7.0 lists only
        those with a replication offset above 0 as some node last heard it (none, on a new
        cluster that has had no write), so the lists differ from node to node for a while."""
        live = self.live_ports()
        truth: dict[int, tuple[str, int | None]] = {}
        owners: list[list[tuple[int, int, int]]] = []
        views: list[dict[int, tuple[str, int | None, frozenset[str]]]] = []
        for port in live:
            with self._client(port) as client:
                if _text(client.cluster("INFO").get("cluster_state")) != "ok":
                    return False
                replication = client.info("replication")
                owners.append([(first, last, m) for first, last, m, _ in _slot_map(client)])
                views.append(_nodes_view(client))
            if replication.get("role") == "slave":
                if replication.get("master_link_status") != "up":
                    return False
                truth[port] = ("slave", int(replication["master_port"]))
            else:
                truth[port] = ("master", None)
        if not owners or any(other != owners[0] for other in owners[1:]):
            return False
        covered = sum(last - first + 1 for first, last, _ in owners[0])
        if covered != SLOTS or not {m for _, _, m in owners[0]} <= set(live):
            return False
        for view in views:
            for port, (role, master) in truth.items():
                seen = view.get(port)
                if seen is None or (seen[0], seen[1]) != (role, master) or seen[2] & UNSETTLED:
                    return False
        return True

    @staticmethod
    def _wait(what: str, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                if done():
                    return
            except (redis.RedisError, OSError, _NoOwner) as error:
                # (a node may leave a slot out of CLUSTER SLOTS for a moment mid-failover)
                last_error = error
            if time.monotonic() > deadline:
                detail = f" (last error: {last_error!r})" if last_error is not None else ""
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}{detail}")
            time.sleep(0.05)
