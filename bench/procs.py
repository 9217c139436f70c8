"""The processes a fan-out scenario runs against: gateway replicas (``python -m gateway.cli
serve``, each its own process), their identities in Redis, and what we read off them (CPU and
RSS through psutil, Prometheus counters through ``/metrics``, pub/sub clients through Redis).
What the scenarios read off a server is :class:`Server`: a gateway, or the peer
(:class:`bench.nchan.Nchan`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import psutil
import redis
import redis.asyncio as aredis

from devtools.localredis import free_port
from gateway.identity.store import IdentityStore
from publisher.keys import Keys

__all__ = [
    "ROOT_KEY",
    "ROOT_SECRET",
    "ROOT_USER",
    "Gateway",
    "Owner",
    "Server",
    "cpu_by_process",
    "gateways",
    "others_cpu",
    "pin_load",
    "pubsub_owners",
    "raise_nofile",
    "seed",
    "users",
]

PREFIX: Final = "kev"
ROOT_USER: Final = "bench-root"
ROOT_KEY: Final = "AKIABENCHROOT0000000"
ROOT_SECRET: Final = "bench-root-secret-" + "s" * 24
DOMAIN: Final = "default"
GROUP: Final = "default"


@dataclass(frozen=True, slots=True)
class Owner:
    """A bench user (role ``user``) and its keypair: events spread over owners
    (``Scenario.owners``) are theirs, and each opens the filtered streams of its sessions."""

    user_id: str
    access_key: str
    secret_key: str


def users(n: int) -> list[Owner]:
    """The first ``n`` bench users, the same in every process: UUIDs as Backend.AI's user ids
    are (the partition of an event is a hash of its owner's, :func:`publisher.partitions.
    partition_of`), 20-character access keys."""
    return [
        Owner(str(uuid.UUID(int=(0xBE4C << 96) + i)), f"AKIABENCHUSER{i:07d}",
              f"bench-user-{i:07d}-secret-" + "s" * 16)
        for i in range(n)
    ]  # fmt: skip


#: what every bench gateway runs with; pings are off so that the per-delivery figures count
#: deliveries only (a ping round is one write per client: at 10,000 clients it would double
#: the filtered scenario's cost). Scenarios add their own on top.
BASE_ENV: Final[Mapping[str, str]] = {
    "GATEWAY_MAX_STREAMS_PER_KEY": "100000",
    "GATEWAY_MAX_STREAMS": "100000",
    "GATEWAY_LOG_LEVEL": "warning",
    "GATEWAY_IDENTITY_CACHE_TTL": "60",
    "GATEWAY_PROBE_INTERVAL": "5",
    "GATEWAY_PING_INTERVAL": "0",
    "GATEWAY_DRAIN_DEADLINE": "3",
}


#: CPU pinning (see :func:`pin_load`): gateway ``i`` runs on core ``i % cpus``; None: unpinned
_gateway_cores: list[int] | None = None


def pin_load() -> dict[str, Any]:
    """Keep the load (this driver, and what it starts after: redis-server, the load client,
    the publisher) off core 0, which the first gateway gets to itself (``--pin``). On one core
    there is nothing to separate. Returns what was done, for the report."""
    global _gateway_cores
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"pinned": False, "cpus": cpus}
    os.sched_setaffinity(0, cpus[1:])
    _gateway_cores = cpus
    return {"pinned": True, "gateway_cores": "i % cpus", "load_cores": cpus[1:]}


def cpu_by_process() -> dict[tuple[int, float], float]:
    """CPU seconds (user + system) of every process now, keyed by (pid, start time)."""
    out: dict[tuple[int, float], float] = {}
    for proc in psutil.process_iter(["create_time", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[(proc.pid, proc.info["create_time"])] = times.user + times.system
    return out


def others_cpu(
    before: dict[tuple[int, float], float], after: dict[tuple[int, float], float], ours: set[int]
) -> float:
    """CPU seconds spent between two snapshots by processes that are not ``ours`` (those
    that both started and ended in between are missed: a lower bound)."""
    return sum(cpu - before.get(key, 0.0) for key, cpu in after.items() if key[0] not in ours)


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the gateways inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def seed(redis_url: str, owners: int = 0) -> None:
    """One superadmin keypair, which opens every bench stream but the filtered streams of
    ``owners`` bench users (:func:`users`), seeded too; on a Redis Cluster as well (the names
    are the ones the gateway reads there, ``{kev}:...``)."""
    bench_users = users(owners)
    doc = {
        "users": [{"user_id": ROOT_USER, "role": "superadmin", "domain": DOMAIN}]
        + [{"user_id": u.user_id, "role": "user", "domain": DOMAIN} for u in bench_users],
        "keypairs": [{"access_key": ROOT_KEY, "secret_key": ROOT_SECRET, "user_id": ROOT_USER}]
        + [
            {"access_key": u.access_key, "secret_key": u.secret_key, "user_id": u.user_id}
            for u in bench_users
        ],
        "groups": [{"domain": DOMAIN, "name": GROUP}],
    }

    async def go() -> None:
        if redis_url.partition("://")[0].endswith("+cluster"):
            # bench.cluster's Redis Cluster. Imported here: ``bench.fanout --against REF``
            # runs this module with the publisher of REF, which may predate clusters.
            from publisher.connection import connect_async

            client = connect_async(redis_url)
            keys = Keys.on(client, PREFIX)
        else:
            client = aredis.Redis.from_url(redis_url)
            keys = Keys(PREFIX)
        try:
            await IdentityStore(client, keys).import_data(doc)
        finally:
            await client.aclose()

    asyncio.run(go())


class Server(Protocol):
    """What a scenario reads off the server it measures (a gateway process, or the peer)."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def ps(self) -> psutil.Process:
        """The process that holds the streams and the Redis connections."""
        ...

    @property
    def pids(self) -> list[int]:
        """Every process of it, for the CPU the others on the machine spent."""
        ...

    def cpu(self) -> float: ...

    def user_cpu(self) -> float: ...

    def rss(self) -> int: ...

    def metrics(self) -> dict[str, float]: ...


@dataclass
class Gateway:
    """One running gateway process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    ps: psutil.Process

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _processes(self) -> list[psutil.Process]:
        """``gateway serve`` and, with ``workers`` > 1, its worker processes (uvicorn's
        supervisor forks them: each holds streams and a subscription of its own)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.ps]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes()]

    def cpu(self) -> float:
        """User + system CPU seconds so far, of every process of this gateway (a worker
        that exited takes its seconds with it: the bench's workers live for the run)."""
        total = 0.0
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def user_cpu(self) -> float:
        """User CPU seconds so far (:meth:`cpu` without the kernel's share, the system
        calls: what the gateway's own code and its libraries cost)."""
        total = 0.0
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.cpu_times().user
        return total

    def rss(self) -> int:
        """Resident bytes of every process of this gateway."""
        total = 0
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.host}{path}", timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{"name{labels}": value}``."""
        _, body = self.get("/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                if self.get("/ready", timeout=1)[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} on port {self.port} not ready within {timeout}s")

    def stop(self) -> None:
        """SIGTERM (the gateway drains with server_close), SIGKILL past the deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def gateways(
    redis_url: str, count: int, env: Mapping[str, str], log_dir: Path
) -> Iterator[list[Gateway]]:
    """``count`` gateway processes on free ports behind the same Redis, all ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    running: list[Gateway] = []
    try:
        for n in range(count):
            port = free_port()
            name = f"gateway-{n + 1}"
            proc_env = {
                **base,
                **BASE_ENV,
                **env,
                "GATEWAY_REDIS_URL": redis_url,
                "GATEWAY_PORT": str(port),
                "GATEWAY_REPLICA": f"bench-{n + 1}",
                "PYTHONUNBUFFERED": "1",
            }
            with (log_dir / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "serve"],
                    env=proc_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            ps = psutil.Process(proc.pid)
            if _gateway_cores is not None and proc_env.get("GATEWAY_WORKERS", "1") == "1":
                ps.cpu_affinity([_gateway_cores[n % len(_gateway_cores)]])
            running.append(Gateway(name, port, proc, ps))
        for gw in running:
            gw.wait_ready(timeout=30)
        yield running
    finally:
        for gw in running:
            gw.stop()


def pubsub_owners(redis_url: str, gws: Sequence[Server]) -> dict[str, int]:
    """Pub/sub connections Redis sees (``CLIENT LIST TYPE pubsub``), by owning process."""
    with redis.Redis.from_url(redis_url) as client:
        listed = client.client_list(_type="pubsub")
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    ports: dict[int, str] = {}
    for gw in gws:
        for pid in gw.pids:  # with workers, each has its own subscription
            with contextlib.suppress(psutil.NoSuchProcess):
                for conn in psutil.Process(pid).net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == redis_port:
                        ports[conn.laddr.port] = gw.name
    owners = {gw.name: 0 for gw in gws}
    owners["other"] = 0
    for entry in listed:
        port = int(str(entry["addr"]).rsplit(":", 1)[1])
        owners[ports.get(port, "other")] += 1
    return owners
