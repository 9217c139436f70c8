"""Publisher throughput against a private redis-server, next to raw redis-py as the baseline.

    python -m bench.publisher_bench [--seconds 1.0] [--repeats 3] [--out PATH] [--strict]

Measures, in one run and on one private ``redis-server`` (free loopback port, no persistence):

* raw redis-py pipelined ``PUBLISH`` of the same msgpack payloads (the baseline; asyncio and
  blocking clients), which writes nothing to history;
* like-for-like raw baselines for the one-event-per-call rows: 64 asyncio tasks each awaiting
  one raw ``PUBLISH`` per call on one pooled asyncio client, and 16 threads each doing one raw
  ``PUBLISH`` per call on one pooled blocking client;
* ``AsyncPublisher.publish_many`` in batches of 256 and 1024 events;
* ``AsyncPublisher.publish`` one event per round trip;
* ``SyncPublisher.publish_many`` in batches of 1024;
* concurrent publishing through one shared publisher: 64 asyncio tasks each calling
  ``publish`` one event at a time, 16 tasks each calling ``publish_many`` with 64 events, and
  16 threads each calling ``SyncPublisher.publish`` one event at a time. The publisher's one
  writer sends what the callers queued meanwhile together (group commit); only events whose
  call returned their stream id are counted, so a figure never includes an unconfirmed one.

The publishers are handed ``KernelEvent`` objects, so their figures include msgpack encoding
and validation; the baseline gets the payloads already encoded. History is filled to its
``maxlen`` before measuring, so every publisher figure includes the trimming of a full stream.
No subscriber is attached: both paths publish to the same unread channel, so fan-out to
subscribers (the same for both) is left out of the comparison.
Each method runs ``repeats`` times for ``seconds`` (methods interleaved so drift hits all of
them alike) and reports the median. Issue targets: batched and concurrent publishing at least
50,000 events/s, and within 2x of the raw pipelined ``PUBLISH`` (ratio >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import redis
import redis.asyncio as aredis

from devtools.localredis import PrivateRedis as RedisServer
from publisher import DEFAULT_MAXLEN, AsyncPublisher, KernelEvent, Keys, SyncPublisher
from publisher.demo import LifecycleGenerator
from publisher.schema import encode_event

TARGET_RATE: Final = 50_000.0
TARGET_RATIO: Final = 0.5  # "within 2x" of the raw pipelined PUBLISH
POOL: Final = 16_384  # distinct events, cycled through
PREFIX: Final = "bench"
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "results" / "publisher.json"


@dataclass(frozen=True, slots=True)
class Method:
    key: str
    label: str
    batch: int
    batched: bool  # the "batched publishing" targets apply
    run: Callable[[str, float], float]  # (redis url, seconds) -> events per second
    like: str | None = None  # the raw baseline of the same shape (callers, one per call)


T = TypeVar("T")


def _batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _timed_sync(step: Callable[[int], int], seconds: float) -> float:
    """Call ``step(i)`` (which publishes and returns the count) until ``seconds`` pass."""
    step(0)  # connect, load the script
    events, i = 0, 1
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        events += step(i)
        i += 1
    return events / (now - start)


async def _timed_async(step: Callable[[int], Awaitable[int]], seconds: float) -> float:
    await step(0)
    events, i = 0, 1
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        events += await step(i)
        i += 1
    return events / (now - start)


def build_methods(events: list[KernelEvent]) -> list[Method]:
    payloads = [encode_event(e) for e in events]
    channel = Keys(PREFIX).channel

    def raw_async(batch: int) -> Callable[[str, float], float]:
        chunks = _batches(payloads, batch)

        def run(url: str, seconds: float) -> float:
            async def go() -> float:
                client = aredis.Redis.from_url(url)
                try:

                    async def step(i: int) -> int:
                        chunk = chunks[i % len(chunks)]
                        async with client.pipeline(transaction=False) as pipe:
                            for payload in chunk:
                                pipe.publish(channel, payload)
                            await pipe.execute()
                        return len(chunk)

                    return await _timed_async(step, seconds)
                finally:
                    await client.aclose()

            return asyncio.run(go())

        return run

    def raw_sync(batch: int) -> Callable[[str, float], float]:
        chunks = _batches(payloads, batch)

        def run(url: str, seconds: float) -> float:
            with redis.Redis.from_url(url) as client:

                def step(i: int) -> int:
                    chunk = chunks[i % len(chunks)]
                    with client.pipeline(transaction=False) as pipe:
                        for payload in chunk:
                            pipe.publish(channel, payload)
                        pipe.execute()
                    return len(chunk)

                return _timed_sync(step, seconds)

        return run

    def raw_async_tasks(tasks: int) -> Callable[[str, float], float]:
        def run(url: str, seconds: float) -> float:
            async def go() -> float:
                client = aredis.Redis.from_url(url)  # a pool: one connection per busy task
                try:
                    await asyncio.gather(
                        *(client.publish(channel, payloads[0]) for _ in range(tasks))
                    )
                    done = 0
                    start = time.perf_counter()
                    deadline = start + seconds

                    async def worker(i: int) -> None:
                        nonlocal done
                        while time.perf_counter() < deadline:
                            await client.publish(channel, payloads[i % len(payloads)])
                            done += 1
                            i += tasks

                    await asyncio.gather(*(worker(i) for i in range(tasks)))
                    return done / (time.perf_counter() - start)
                finally:
                    await client.aclose()

            return asyncio.run(go())

        return run

    def raw_sync_threads(threads: int) -> Callable[[str, float], float]:
        def run(url: str, seconds: float) -> float:
            with redis.Redis.from_url(url) as client:  # a thread-safe pool
                client.publish(channel, payloads[0])
                counts = [0] * threads
                start = time.perf_counter()
                deadline = start + seconds

                def worker(t: int) -> None:
                    i = t
                    while time.perf_counter() < deadline:
                        client.publish(channel, payloads[i % len(payloads)])
                        counts[t] += 1
                        i += threads

                running = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
                for thread in running:
                    thread.start()
                for thread in running:
                    thread.join(seconds + 15)
                return sum(counts) / (time.perf_counter() - start)

        return run

    def async_many(batch: int) -> Callable[[str, float], float]:
        chunks = _batches(events, batch)

        def run(url: str, seconds: float) -> float:
            async def go() -> float:
                async with AsyncPublisher.from_url(url, prefix=PREFIX) as pub:

                    async def step(i: int) -> int:
                        chunk = chunks[i % len(chunks)]
                        await pub.publish_many(chunk)
                        return len(chunk)

                    return await _timed_async(step, seconds)

            return asyncio.run(go())

        return run

    def async_one(url: str, seconds: float) -> float:
        async def go() -> float:
            async with AsyncPublisher.from_url(url, prefix=PREFIX) as pub:

                async def step(i: int) -> int:
                    await pub.publish(events[i % len(events)])
                    return 1

                return await _timed_async(step, seconds)

        return asyncio.run(go())

    def sync_many(batch: int) -> Callable[[str, float], float]:
        chunks = _batches(events, batch)

        def run(url: str, seconds: float) -> float:
            with SyncPublisher.from_url(url, prefix=PREFIX) as pub:

                def step(i: int) -> int:
                    chunk = chunks[i % len(chunks)]
                    pub.publish_many(chunk)
                    return len(chunk)

                return _timed_sync(step, seconds)

        return run

    def async_tasks(tasks: int, batch: int) -> Callable[[str, float], float]:
        chunks = _batches(events, batch)

        def run(url: str, seconds: float) -> float:
            async def go() -> float:
                async with AsyncPublisher.from_url(url, prefix=PREFIX, timeout=10.0) as pub:
                    await pub.publish_many(chunks[0])  # connect, load the script
                    confirmed = 0
                    start = time.perf_counter()
                    deadline = start + seconds

                    async def worker(i: int) -> None:
                        nonlocal confirmed
                        while time.perf_counter() < deadline:
                            chunk = chunks[i % len(chunks)]
                            # (await first: `confirmed += await ...` would read it before)
                            if batch == 1:
                                done = int(await pub.publish(chunk[0]) is not None)
                            else:
                                done = len(await pub.publish_many(chunk))
                            confirmed += done
                            i += tasks

                    await asyncio.gather(*(worker(i) for i in range(tasks)))
                    return confirmed / (time.perf_counter() - start)

            return asyncio.run(go())

        return run

    def sync_threads(threads: int) -> Callable[[str, float], float]:
        def run(url: str, seconds: float) -> float:
            with SyncPublisher.from_url(url, prefix=PREFIX, timeout=10.0) as pub:
                pub.publish(events[0])
                counts = [0] * threads
                start = time.perf_counter()
                deadline = start + seconds

                def worker(t: int) -> None:
                    i = t
                    while time.perf_counter() < deadline:
                        counts[t] += pub.publish(events[i % len(events)]) is not None
                        i += threads

                running = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
                for thread in running:
                    thread.start()
                for thread in running:
                    thread.join(seconds + 15)
                return sum(counts) / (time.perf_counter() - start)

        return run

    return [
        Method(
            "raw_publish_async",
            "raw PUBLISH pipeline, redis-py asyncio",
            1024,
            False,
            raw_async(1024),
        ),
        Method(
            "raw_publish_sync",
            "raw PUBLISH pipeline, redis-py blocking",
            1024,
            False,
            raw_sync(1024),
        ),
        Method(
            "raw_tasks_64x1",
            "raw PUBLISH per call, asyncio, 64 tasks",
            1,
            False,
            raw_async_tasks(64),
        ),
        Method(
            "raw_threads_16x1",
            "raw PUBLISH per call, blocking, 16 threads",
            1,
            False,
            raw_sync_threads(16),
        ),
        Method("async_publish_many_256", "AsyncPublisher.publish_many", 256, True, async_many(256)),
        Method(
            "async_publish_many_1024", "AsyncPublisher.publish_many", 1024, True, async_many(1024)
        ),
        Method("async_publish", "AsyncPublisher.publish (one by one)", 1, False, async_one),
        Method("sync_publish_many_1024", "SyncPublisher.publish_many", 1024, True, sync_many(1024)),
        Method(
            "async_tasks_64x1",
            "AsyncPublisher.publish, 64 tasks",
            1,
            True,
            async_tasks(64, 1),
            like="raw_tasks_64x1",
        ),
        Method(
            "async_tasks_16x64",
            "AsyncPublisher.publish_many, 16 tasks",
            64,
            True,
            async_tasks(16, 64),
        ),
        Method(
            "sync_threads_16x1",
            "SyncPublisher.publish, 16 threads",
            1,
            True,
            sync_threads(16),
            like="raw_threads_16x1",
        ),
    ]


RAW: Final = ("raw_publish_async", "raw_publish_sync")


def summarise(
    methods: Sequence[Method],
    runs: dict[str, list[float]],
    env: dict[str, object],
    seconds: float,
    repeats: int,
    total: float,
) -> dict[str, Any]:
    """The JSON report: medians, ratios to both raw baselines, and the issue's targets.

    The "within 2x" target is checked against the faster of the two raw baselines, whichever
    client kind that is: the strictest reading of the issue.
    """
    medians = {key: statistics.median(values) for key, values in runs.items()}
    raw_async, raw_sync = (medians[k] for k in RAW)
    strictest = max(raw_async, raw_sync)
    results = [
        {
            "key": m.key,
            "method": m.label,
            "batch": m.batch,
            "events_per_s": round(medians[m.key]),
            "runs": [round(r) for r in runs[m.key]],
            "vs_raw_async": round(medians[m.key] / raw_async, 3),
            "vs_raw_sync": round(medians[m.key] / raw_sync, 3),
            **(
                {
                    "like_for_like": m.like,
                    "vs_like_for_like": round(medians[m.key] / medians[m.like], 3),
                }
                if m.like
                else {}
            ),
        }
        for m in methods
    ]
    targets: list[dict[str, Any]] = []
    for m in methods:
        if not m.batched:
            continue
        rate = medians[m.key]
        name = f"{m.label}({m.batch})"
        targets.append(
            {
                "target": f"{name} >= {TARGET_RATE:,.0f} events/s",
                "value": f"{rate:,.0f} events/s",
                "pass": rate >= TARGET_RATE,
            }
        )
        targets.append(
            {
                "target": f"{name} within 2x of the fastest raw PUBLISH pipeline",
                "value": f"{rate / strictest:.2f}x",
                "pass": rate / strictest >= TARGET_RATIO,
            }
        )
        if m.like:
            like = medians[m.like]
            targets.append(
                {
                    "target": f"{name} within 2x of raw PUBLISH per call, same callers",
                    "value": f"{rate / like:.2f}x",
                    "pass": rate / like >= TARGET_RATIO,
                }
            )
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "settings": {
            "seconds": seconds,
            "repeats": repeats,
            "pool": POOL,
            "maxlen": DEFAULT_MAXLEN,
            "total_seconds": round(total, 1),
        },
        "results": results,
        "targets": targets,
        "all_pass": all(t["pass"] for t in targets),
    }


def print_report(report: dict[str, Any]) -> None:
    env, settings = report["environment"], report["settings"]
    print(
        f"publisher throughput: redis-server {env['redis_server']}, redis-py {env['redis_py']} "
        f"({env['parser']}), Python {env['python']}, {env['cpus']} CPUs; median of "
        f"{settings['repeats']} x {settings['seconds']:g} s; {settings['total_seconds']:.0f} s"
    )
    print(
        f"{'method':<44} {'batch':>5} {'events/s':>10} {'vs raw async':>13} {'vs raw sync':>12}"
        f" {'vs same shape':>14}"
    )
    for r in report["results"]:
        like = f"{r['vs_like_for_like']:>13.2f}x" if "vs_like_for_like" in r else ""
        print(
            f"{r['method']:<44} {r['batch']:>5} {r['events_per_s']:>10,} "
            f"{r['vs_raw_async']:>12.2f}x {r['vs_raw_sync']:>11.2f}x {like}"
        )
    print(
        "targets (issue): batched and concurrent >= 50,000 events/s and within 2x of raw "
        "pipelined PUBLISH"
    )
    for t in report["targets"]:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['value']}")


def _environment(url: str) -> dict[str, object]:
    with redis.Redis.from_url(url) as client:
        info = client.info("server")
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": info.get("redis_version"),
        "redis_py": redis.__version__,
        "parser": parser,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher_bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 5 and 1 <= args.repeats <= 5):
        parser.error("--seconds must be in (0, 5] and --repeats in [1, 5] (bounded runtime)")

    events = LifecycleGenerator(random.Random(42), sessions=200).next_events(POOL)
    methods = build_methods(events)
    runs: dict[str, list[float]] = {m.key: [] for m in methods}
    started = time.perf_counter()
    with RedisServer() as server:
        env = _environment(server.url)
        # Fill history to its bound first: the figures then include trimming a full stream.
        with (
            redis.Redis.from_url(server.url) as client,
            SyncPublisher(client, prefix=PREFIX) as pub,
        ):
            while client.xlen(pub.keys.history) < DEFAULT_MAXLEN:
                pub.publish_many(events)
        for rep in range(args.repeats):
            for method in methods:
                rate = method.run(server.url, args.seconds)
                runs[method.key].append(rate)
                print(
                    f"  run {rep + 1}/{args.repeats} {method.label} [{method.batch}]: "
                    f"{rate:,.0f} events/s",
                    file=sys.stderr,
                )
    total = time.perf_counter() - started

    report = summarise(methods, runs, env, args.seconds, args.repeats, total)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if args.strict and not report["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
