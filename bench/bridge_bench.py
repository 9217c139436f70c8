"""The bridge's throughput and added latency, with real parts, on this machine.

    python -m bench.bridge_bench [--sessions 1000] [--rate 100] [--seconds 15] [--rounds 2]
                                 [--generation 23.09] [--out PATH]

Runs a private PostgreSQL (the manager's schema of the generation, the bridge's read-only
role), a private Redis as Backend.AI's bus and another as the gateway's, one gateway replica
and ``gateway bridge`` as a process of its own, and measures:

* **catch-up**: the bridge is stopped, ``--sessions`` two-kernel sessions' lives (17 bus
  messages each on the stream generations) are written to Backend.AI's bus, and a fresh bridge
  (cold cache: every kernel and session looked up in PostgreSQL) follows from its cursor.
  Events published per second while it catches up, and its CPU per event (psutil);
* **added latency**: with the bridge following, kernel events at ``--rate`` messages/s on
  Backend.AI's bus (each kernel new to the bridge, so each first event is a PostgreSQL
  lookup) to a v5 SSE client of the replica (``/events/session?scope=kernel``, the bench's
  superadmin), p50/p99; next to the same client's latency for the same events published
  directly with :class:`publisher.AsyncPublisher` at the same rate (the baseline; rounds
  alternate). The difference is what the bridge adds.

Timestamps are taken in this process on both ends (the emit before the ``XADD``, the receipt
when the SSE event is parsed), so client-side parsing is in both figures alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aredis

from bench.procs import BASE_ENV, PREFIX, ROOT_KEY, ROOT_SECRET, gateways, seed
from devtools.backendai import SCHEMA_OF, Installation, bridge_settings
from devtools.backendai_bus import BackendAIBus
from devtools.localredis import PrivateRedis
from devtools.postgres import SCHEMAS, BackendAIDatabase, Owner, PostgresServer, owner_sql
from gateway.consumer import KernelEventStream
from gateway.settings import BridgeSettings
from publisher import AsyncPublisher, KernelEvent

KERNEL_STEPS = ("kernel_preparing", "kernel_pulling", "kernel_creating", "kernel_started")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def bridge_process(settings: BridgeSettings) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "bridge"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not _active(settings.bridge.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway bridge did not become active ({proc.poll()})")
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def _active(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            state = json.load(response)
    except (OSError, ValueError):
        return False
    return bool(state.get("ready")) and state.get("role") == "active"


def bridge_counters(port: int) -> dict[str, float]:
    """kev_bridge_events_{read,published,ignored} and the dropped total, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {"read": 0.0, "published": 0.0, "ignored": 0.0, "dropped": 0.0}
    for what in out:
        for match in re.finditer(
            rf"^kev_bridge_events_{what}_total(?:{{[^}}]*}})? (\S+)$", text, re.M
        ):
            out[what] += float(match.group(1))
    return out


async def catch_up(
    installation: Installation, settings: BridgeSettings, sessions: int
) -> dict[str, Any]:
    """Stop the bridge, write ``sessions`` lives to the bus, start a fresh bridge: events/s
    and CPU per event while it catches up."""
    owner = installation.owners[0]
    lives = [installation.life(owner, f"bench-{n:06d}") for n in range(sessions)]
    for start in range(0, len(lives), 200):  # the rows, in a few psql runs
        sql = "\n".join(life.rows_sql() for life in lives[start : start + 200])
        await asyncio.to_thread(installation.db.execute, sql)
    with bridge_process(settings):  # its first run: it follows from the newest entry
        pass
    messages = 0
    for life in lives:
        messages += len(await life.lifecycle(database=False))
    port = settings.bridge.port
    with bridge_process(settings) as proc:
        ps = psutil.Process(proc.pid)
        started = time.monotonic()
        cpu0 = sum(ps.cpu_times()[:2])
        first: float | None = None
        while True:
            counters = await asyncio.to_thread(bridge_counters, port)
            if first is None and counters["published"] > 0:
                first, cpu_first, at_first = time.monotonic(), sum(ps.cpu_times()[:2]), counters
            if counters["read"] >= messages:
                break
            if time.monotonic() - started > 600:
                raise RuntimeError(f"the bridge did not catch up: {counters} of {messages}")
            await asyncio.sleep(0.02)
        done, cpu_done = time.monotonic(), sum(ps.cpu_times()[:2])
    assert first is not None
    published = counters["published"] - at_first["published"]
    return {
        "messages": messages,
        "published": counters["published"],
        "dropped": counters["dropped"],
        "ignored": counters["ignored"],
        "seconds": round(done - first, 3),
        "events_per_s": round(published / max(done - first, 1e-9), 1),
        "cpu_us_per_event": round((cpu_done - cpu_first) / max(published, 1) * 1e6, 1),
        "cpu_total_s": round(cpu_done - cpu0, 3),
    }


async def _receive(
    url: str,
    expected: set[tuple[str, str]],
    seen: dict[tuple[str, str], float],
    ready: asyncio.Event,
) -> None:
    stream = KernelEventStream(
        url + "/events/session", access_key=ROOT_KEY, secret_key=ROOT_SECRET,
        params={"scope": "kernel"}, include_control=True,
    )  # fmt: skip
    async for event in stream:
        ready.set()
        if not event.data or not event.event.startswith("kernel_"):
            continue
        data = json.loads(event.data)
        key = (data.get("kernelId", ""), event.event)
        if key in expected and key not in seen:
            seen[key] = time.monotonic()


async def latency_round(
    gateway_url: str, seconds: float, rate: float, send: Any, make_keys: Any
) -> dict[str, Any]:
    """``send(i)`` emits message ``i`` and returns its key; the client's receipt times."""
    count = int(seconds * rate)
    expected = make_keys(count)
    seen: dict[tuple[str, str], float] = {}
    sent: dict[tuple[str, str], float] = {}
    ready = asyncio.Event()
    receiver = asyncio.create_task(_receive(gateway_url, set(expected), seen, ready))
    await asyncio.sleep(1.0)  # connected (the first ping or event sets ready; 1 s suffices)
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[expected[i]] = time.monotonic()
        await send(i)
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await receiver
    lat = [(seen[k] - sent[k]) * 1000 for k in expected if k in seen]
    return {
        "sent": count,
        "received": len(lat),
        "p50_ms": round(statistics.median(lat), 2) if lat else None,
        "p99_ms": round(percentile(lat, 0.99), 2) if lat else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    generation = args.generation
    schema = SCHEMA_OF[generation]
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresServer())
        pg.create_database("backend", SCHEMAS[schema])  # type: ignore[index]
        db = BackendAIDatabase(pg, schema, "backend")  # type: ignore[arg-type]
        dsn = db.create_readonly_role("kev_bridge", "bench-pw", ("bridge", "reconcile"))
        source_redis = PrivateRedis()
        source_redis.start()
        stack.callback(source_redis.close)
        gateway_redis = PrivateRedis()
        gateway_redis.start()
        stack.callback(gateway_redis.close)
        await asyncio.to_thread(seed, gateway_redis.url)
        source_url = f"redis://127.0.0.1:{source_redis.port}/4"
        client = aredis.Redis.from_url(source_url)
        bus = BackendAIBus(client, generation, source="i-bench-agent")
        installation = Installation(db, source_url, generation, client, bus, dsn)
        owner = Owner(
            user_uuid=uuid.uuid4(), email="bench@example.com", access_key="AKIABENCHOWNER000001",
            secret_key="b" * 40, group_id=uuid.uuid4(), group_name="default",
        )  # fmt: skip
        db.execute(owner_sql(db.version, owner))
        installation.owners.append(owner)
        settings = bridge_settings(
            source_url, dsn, gateway_redis.url, lease_ttl=5.0, log_level="warning",
            format="pubsub" if installation.format == "pubsub" else "stream",
        )  # fmt: skip
        result: dict[str, Any] = {"generation": generation}
        if installation.format == "stream":
            await bus.emit("session_enqueued", str(uuid.uuid4()), "x")  # the manager's stream
            result["catch_up"] = await catch_up(installation, settings, args.sessions)
        log_dir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
        gws = stack.enter_context(gateways(gateway_redis.url, 1, BASE_ENV, log_dir))
        gateway_url = f"http://{gws[0].host}"
        rounds: list[dict[str, Any]] = []
        with bridge_process(settings):
            for r in range(args.rounds):
                rounds.append({"via": "bridge", "round": r, **await bridge_round(
                    installation, gateway_url, args.seconds, args.rate)})  # fmt: skip
                rounds.append({"via": "direct", "round": r, **await direct_round(
                    gateway_redis.url, gateway_url, args.seconds, args.rate)})  # fmt: skip
        await client.aclose()
        result["latency"] = rounds
        for via in ("bridge", "direct"):
            mine = [x for x in rounds if x["via"] == via and x["p50_ms"] is not None]
            result[f"{via}_p50_ms"] = round(statistics.median(x["p50_ms"] for x in mine), 2)
            result[f"{via}_p99_ms"] = round(statistics.median(x["p99_ms"] for x in mine), 2)
        result["added_p50_ms"] = round(result["bridge_p50_ms"] - result["direct_p50_ms"], 2)
        result["added_p99_ms"] = round(result["bridge_p99_ms"] - result["direct_p99_ms"], 2)
        return result


async def bridge_round(
    installation: Installation, gateway_url: str, seconds: float, rate: float
) -> dict[str, Any]:
    """Kernel events of fresh sessions on Backend.AI's bus, each kernel's first a lookup."""
    count = int(seconds * rate)
    lives = [installation.life(installation.owners[0], f"lat-{uuid.uuid4().hex[:10]}", kernels=1)
             for _ in range(count // len(KERNEL_STEPS) + 1)]  # fmt: skip
    await asyncio.to_thread(installation.db.execute, "\n".join(x.rows_sql() for x in lives))
    plan = [(life, step) for life in lives for step in KERNEL_STEPS][:count]

    def keys(n: int) -> list[tuple[str, str]]:
        return [(str(life.main.id), step) for life, step in plan[:n]]

    async def send(i: int) -> None:
        life, step = plan[i]
        await installation.bus.emit(step, life.main.id, life.session, "")

    return await latency_round(gateway_url, seconds, rate, send, keys)


async def direct_round(
    redis_url: str, gateway_url: str, seconds: float, rate: float
) -> dict[str, Any]:
    """The same shape of events through the publisher library: the baseline."""
    count = int(seconds * rate)
    session = uuid.uuid4()
    events = [
        KernelEvent(
            name=KERNEL_STEPS[i % len(KERNEL_STEPS)], session_id=f"direct-{i // 4}",  # type: ignore[arg-type]
            session_uuid=session, kernel_id=uuid.UUID(int=i // 4 + 1 + (session.int >> 64)),
            owner_access_key="AKIABENCHOWNER000001", owner_user_id="bench", domain="default",
            group="default",
        )
        for i in range(count)
    ]  # fmt: skip

    def keys(n: int) -> list[tuple[str, str]]:
        return [(str(e.kernel_id), e.name) for e in events[:n]]

    async with AsyncPublisher.from_url(redis_url, prefix=PREFIX) as pub:

        async def send(i: int) -> None:
            await pub.publish(events[i])

        return await latency_round(gateway_url, seconds, rate, send, keys)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge_bench", description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generation", default="23.09", choices=sorted(SCHEMA_OF))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    result["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
