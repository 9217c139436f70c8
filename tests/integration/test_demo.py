"""The demo publisher (``publisher.demo``) against a real redis-server: the rate for the
duration, every session a valid lifecycle, cancellation and stop with exact totals (the
simulator alone: tests/unit/test_demo.py). At the end, the local cluster ``bash scripts/demo``
runs: the port checked first, the banner only once everything answers, dead replicas told."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis.asyncio as aredis

from devtools.localredis import free_port
from publisher import AsyncPublisher, KernelEvent, Keys, decode_event
from publisher.demo import DemoStats, LifecycleDemo, LifecycleGenerator, run_demo
from tests.support.lifecycles import check_lifecycles


async def history(client: aredis.Redis, prefix: str) -> list[KernelEvent]:
    entries = await client.xrange(Keys(prefix).history)
    return [decode_event(fields[b"e"]) for _, fields in entries]


@pytest.mark.anyio
async def test_demo_publishes_the_rate_for_the_duration(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    rate, duration, tick = 400.0, 0.6, 0.025
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        stats = await run_demo(
            publisher, rate=rate, sessions=20, rng=random.Random(1), duration=duration, tick=tick
        )
    expected = math.floor(rate * duration)
    assert abs(stats.published - expected) <= rate * tick
    assert stats.behind == 0
    assert duration <= stats.elapsed < duration + 0.5
    assert await async_redis.xlen(Keys("demo").history) == stats.published
    assert sum(stats.by_name.values()) == stats.published


@pytest.mark.anyio
async def test_every_session_walks_a_valid_lifecycle(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        stats = await run_demo(
            publisher, rate=20_000, sessions=25, rng=random.Random(2), max_events=3000
        )
    assert stats.published == 3000
    events = await history(async_redis, "demo")
    assert len(events) == 3000
    names = check_lifecycles(events)
    assert stats.sessions_started == len(names)
    last: dict[str, str] = {}
    for event in events:
        last[event.session_id] = event.name
    finished = [n for n in last.values() if n in ("session_terminated", "session_cancelled")]
    assert stats.sessions_finished == len(finished)
    # Sessions still in flight when the run ended are a prefix; the rest are whole.
    assert stats.active_sessions == len(names) - len(finished) <= 25
    assert all(n[0] == "kernel_enqueued" for n in names.values())
    # Session ids are unique within a run.
    assert len({e.session_id for e in events}) == len({e.session_uuid for e in events})


@pytest.mark.anyio
async def test_cancelling_the_run_propagates_and_keeps_counts(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:
        demo = LifecycleDemo(publisher, rate=2000, sessions=10, rng=random.Random(5))
        with pytest.raises(TimeoutError):  # only if CancelledError came out of run()
            async with asyncio.timeout(0.3):
                await demo.run()
        stats = demo.stats()
        stored = await async_redis.xlen(Keys("demo").history)
        # A batch cut off on the wire may have landed without being counted.
        assert 0 < stats.published <= stored <= math.floor(2000 * stats.elapsed)
        assert 0.3 <= stats.elapsed < 1.0
        assert sum(stats.by_name.values()) == stats.published
        # The publisher is still usable after a cancelled batch.
        (event,) = LifecycleGenerator(random.Random(0), sessions=1).next_events(1)
        await publisher.publish(event)
    assert await async_redis.xlen(Keys("demo").history) == stored + 1


@pytest.mark.anyio
async def test_stop_ends_the_run_with_exact_totals(
    redis_url: str, async_redis: aredis.Redis
) -> None:
    seen: list[DemoStats] = []

    async with AsyncPublisher.from_url(redis_url, prefix="demo") as publisher:

        def progress(stats: DemoStats) -> None:
            seen.append(stats)
            if stats.published >= 100:
                demo.stop()

        demo = LifecycleDemo(
            publisher,
            rate=2000,
            sessions=10,
            rng=random.Random(6),
            progress=progress,
            progress_interval=0.05,
        )
        totals = await demo.run()
    assert totals.published >= 100
    assert await async_redis.xlen(Keys("demo").history) == totals.published
    assert seen[-1] == totals
    assert [s.published for s in seen] == sorted(s.published for s in seen)


# -- the local cluster as `bash scripts/demo` runs it (python -m devtools cluster) ------------


def _cluster_cmd(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "devtools", "cluster", "--port", str(port), "--rate", "0", *extra]


def test_the_demo_refuses_a_taken_port_at_once_and_suggests_another() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        start = time.monotonic()
        proc = subprocess.run(_cluster_cmd(port), capture_output=True, text=True, timeout=20)
    assert time.monotonic() - start < 10
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert f"port {port}" in last and "already in use" in last and "--port" in last, last
    assert "dashboard:" not in proc.stderr  # never the success banner


def test_the_demo_banner_comes_once_everything_answers_and_a_dead_replica_is_reported() -> None:
    port = free_port()
    proc = subprocess.Popen(
        _cluster_cmd(port, "--replicas", "2"), stderr=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stderr is not None
    lines: list[str] = []

    def read_until(needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {timeout}s:\n" + "\n".join(lines))

    try:
        read_until("Ctrl-C stops everything", 20)
        # the banner promised it: every replica ready, nginx proxying, right now
        front = next(line for line in lines if "in front of" in line)
        replicas = re.findall(r"http://127\.0\.0\.1:\d+", front)
        assert len(replicas) == 2
        for url in replicas:
            assert httpx.get(url + "/ready", timeout=2).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
        printed = re.findall(r"http://127\.0\.0\.1:\d+/\S*", "\n".join(lines))
        for url in printed:  # every URL the banner prints answers (the stream needs a key)
            expected = 400 if "/stream/" in url else 200
            assert httpx.get(url, timeout=2).status_code == expected, url
        exports = [line.strip() for line in lines if line.strip().startswith("export ")]
        assert [e.split("=")[0] for e in exports] == [
            "export KEV_REDIS_URL",
            "export BACKEND_ENDPOINT",
            "export BACKEND_ACCESS_KEY",
            "export BACKEND_SECRET_KEY",
        ]
        assert f"export BACKEND_ENDPOINT=http://127.0.0.1:{port}" in exports
        # each replica's lines carry its name; find the first one's pid and kill it
        victim = replicas[0].rsplit(":", 1)[1]
        started = next(
            line for line in lines if line.startswith(f"[local-{victim}]") and "process [" in line
        )
        pid = int(re.findall(r"process \[(\d+)\]", started)[0])
        os.kill(pid, signal.SIGKILL)
        report = read_until("exited with status", 5)
        assert f"replica local-{victim} (pid {pid}) exited with status -9" in report
        assert "1 of 2 still serving" in report
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    assert code == 0
