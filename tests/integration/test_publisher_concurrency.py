"""One publisher shared by many tasks or threads, against a real redis-server whose
connections are killed under it (``CLIENT KILL``): every event in history exactly once, in
the order the calls started, every id a call returned is the id history holds for its event,
and every event not confirmed is either in history after the flush or reported by close."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import anyio
import pytest
import redis
import redis.asyncio as aredis

from publisher import AsyncPublisher, CloseReport, Keys, SessionRef, SyncPublisher, decode_event
from tests.support.redis_server import RedisServer

REF = SessionRef(
    session_id="stress", owner_access_key="AK", owner_user_id="u", domain="d", group="g"
)


def _history(url: str) -> list[tuple[str, str]]:
    with redis.Redis.from_url(url) as client:
        return [
            (i.decode(), decode_event(f[b"e"]).reason) for i, f in client.xrange(Keys().history)
        ]


def _check(
    url: str,
    started: Sequence[str] | None,
    returned: dict[str, str],
    report: CloseReport,
    everything: set[str],
) -> list[str]:
    """The invariants; returns the history's reasons."""
    history = _history(url)
    reasons = [r for _, r in history]
    assert len(reasons) == len(set(reasons)), "an event was written twice"
    undelivered = {e.reason for e in report.undelivered}
    assert not undelivered & set(reasons), "reported undelivered, yet in history"
    assert set(reasons) | undelivered == everything, "an event vanished unreported"
    assert report.dropped == 0 and report.rejected == 0
    if started is not None:  # the documented order: the order the calls started
        assert reasons == [r for r in started if r not in undelivered]
    ids = dict((r, i) for i, r in history)
    wrong = {r: i for r, i in returned.items() if ids.get(r) != i}
    assert not wrong, f"ids returned that history does not hold for their event: {wrong}"
    return reasons


@pytest.mark.anyio
async def test_fifty_concurrent_publishes_are_all_written_in_call_order(
    redis_url: str,
) -> None:
    events = [REF.started(f"e{i}") for i in range(50)]
    async with AsyncPublisher.from_url(redis_url) as pub:
        ids = await asyncio.gather(*(pub.publish(e) for e in events))
    assert all(ids), ids  # every call confirmed, none reported '' or None
    history = _history(redis_url)
    assert [r for _, r in history] == [e.reason for e in events]
    assert [i for i, _ in history] == ids


async def _kill_connections(url: str, stop: anyio.Event, rng: random.Random) -> int:
    """``CLIENT KILL`` every other client, at random moments, until ``stop``."""
    kills = 0
    async with aredis.Redis.from_url(url) as admin:
        while not stop.is_set():
            await anyio.sleep(rng.uniform(0.005, 0.04))
            kills += await admin.client_kill_filter(_type="normal", skipme=True)
    return kills


@pytest.mark.anyio
@pytest.mark.parametrize("seed", [11, 12])
async def test_many_tasks_with_connection_drops_lose_nothing_and_keep_call_order(
    private_redis: RedisServer, seed: int
) -> None:
    rng = random.Random(seed)
    tasks, rounds = 60, 40
    started: list[str] = []
    returned: dict[str, str] = {}
    unconfirmed = 0
    pub = AsyncPublisher.from_url(
        private_redis.url, timeout=0.5, retry_interval=0.01, max_retry_interval=0.05,
        buffer_size=100_000,
    )  # fmt: skip

    async def publisher_task(t: int, task_rng: random.Random) -> None:
        nonlocal unconfirmed
        for k in range(rounds):
            batch = [REF.started(f"{t}-{k}-{j}") for j in range(task_rng.randint(1, 4))]
            started.extend(e.reason for e in batch)  # no await before the call starts
            ids = await pub.publish_many(batch)
            if ids:
                assert len(ids) == len(batch) and all(ids)
                returned.update(zip((e.reason for e in batch), ids, strict=True))
            else:
                unconfirmed += 1
            await anyio.sleep(task_rng.uniform(0, 0.03))

    stop = anyio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        kills = await _kill_connections(private_redis.url, stop, random.Random(seed + 1))

    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            async with anyio.create_task_group() as workers:
                for t in range(tasks):
                    workers.start_soon(publisher_task, t, random.Random(rng.random()))
            stop.set()
        assert await pub.flush(timeout=10)
    report = await pub.aclose()
    assert report.ok, report.summary()
    assert kills >= 10 and pub.health.errors.get("unreachable", 0) >= 1  # drops did happen
    reasons = _check(private_redis.url, started, returned, report, set(started))
    assert len(reasons) == len(started) > tasks * rounds


def test_one_sync_publisher_shared_by_threads_with_connection_drops(
    private_redis: RedisServer,
) -> None:
    threads, rounds = 16, 60
    returned: dict[str, str] = {}
    everything: set[str] = set()
    lock = threading.Lock()
    pub = SyncPublisher.from_url(
        private_redis.url, timeout=0.5, retry_interval=0.01, max_retry_interval=0.05,
        buffer_size=100_000,
    )  # fmt: skip

    stop = threading.Event()

    def worker(t: int) -> None:
        rng = random.Random(t)
        for k in range(rounds):
            batch = [REF.started(f"{t}-{k}-{j}") for j in range(rng.randint(1, 3))]
            with lock:
                everything.update(e.reason for e in batch)
            ids = pub.publish_many(batch)
            if ids:
                with lock:
                    returned.update(zip((e.reason for e in batch), ids, strict=True))
            stop.wait(rng.uniform(0, 0.02))

    kills = 0

    def killer() -> None:
        nonlocal kills
        rng = random.Random(99)
        with redis.Redis.from_url(private_redis.url) as admin:
            while not stop.wait(rng.uniform(0.005, 0.04)):
                kills += admin.client_kill_filter(_type="normal", skipme=True)

    running = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    kill_thread = threading.Thread(target=killer)
    kill_thread.start()
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(15)
    stop.set()
    kill_thread.join(5)
    assert not any(t.is_alive() for t in running)
    assert pub.flush(timeout=10)
    report = pub.close()
    assert report.ok, report.summary()
    assert kills >= 10 and pub.health.errors.get("unreachable", 0) >= 1
    reasons = _check(private_redis.url, None, returned, report, everything)
    # Each thread's own calls keep their order.
    for t in range(threads):
        mine = [r for r in reasons if r.startswith(f"{t}-")]
        assert mine == sorted(mine, key=lambda r: tuple(int(x) for x in r.split("-")[1:]))
