from __future__ import annotations

import asyncio
import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence

import pytest
import redis.asyncio as aredis

from publisher import AsyncPublisher, KernelEvent, Keys, decode_event
from publisher.demo import (
    DemoStats,
    LifecycleDemo,
    LifecycleGenerator,
    demo_identities,
    run_demo,
)
from publisher.schema import SLUG_PATTERN

# What a Backend.AI session may do next, written out here rather than taken from the
# simulator, so the test checks the simulator against the lifecycle and not against itself.
ALLOWED_NEXT: dict[str | None, set[str]] = {
    None: {"kernel_enqueued"},
    "kernel_enqueued": {"kernel_preparing", "kernel_cancelled"},
    "kernel_preparing": {"kernel_pulling", "kernel_creating", "kernel_cancelled"},
    "kernel_pulling": {"kernel_creating", "kernel_cancelled"},
    "kernel_creating": {"kernel_started", "kernel_terminating"},
    "kernel_started": {"kernel_success", "kernel_failure", "kernel_terminating"},
    "kernel_success": {"kernel_terminating"},
    "kernel_failure": {"kernel_terminating"},
    "kernel_terminating": {"kernel_terminated"},
    "kernel_terminated": set(),
    "kernel_cancelled": set(),
}


class RecordingSink:
    """A publisher that keeps what it is given, optionally taking its time about it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[KernelEvent]] = []

    async def publish_many(self, events: Sequence[KernelEvent], /) -> list[str]:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.batches.append(list(events))
        return [f"0-{i}" for i in range(len(events))]

    @property
    def events(self) -> list[KernelEvent]:
        return [event for batch in self.batches for event in batch]


async def history(client: aredis.Redis, prefix: str) -> list[KernelEvent]:
    entries = await client.xrange(Keys(prefix).history)
    return [decode_event(fields[b"e"]) for _, fields in entries]


def check_lifecycles(events: Sequence[KernelEvent]) -> dict[str, list[str]]:
    """Assert every session's events follow the lifecycle; returns names per session id."""
    owners = {k.access_key: k for k in demo_identities().keypairs}
    by_session: dict[str, list[KernelEvent]] = defaultdict(list)
    for event in events:
        by_session[str(event.session_uuid)].append(event)
    names: dict[str, list[str]] = {}
    for session in by_session.values():
        first = session[0]
        assert re.match(SLUG_PATTERN, first.session_id)
        owner = owners[first.owner_access_key]
        assert owner.role != "monitor"
        assert (first.owner_user_id, first.domain) == (owner.user_id, owner.domain)
        assert first.group in owner.groups
        previous: str | None = None
        for event in session:
            assert (event.session_id, event.kernel_id, event.owner_access_key, event.group) == (
                first.session_id,
                first.kernel_id,
                first.owner_access_key,
                first.group,
            )
            assert event.name in ALLOWED_NEXT[previous], [e.name for e in session]
            if event.name == "kernel_terminated":
                assert event.result in ("SUCCESS", "FAILURE")
                assert event.reason == session[-2].reason != ""
            else:
                assert event.result is None
            if event.name == "kernel_cancelled":
                assert event.reason
            previous = event.name
        names[first.session_id] = [e.name for e in session]
    return names


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
    finished = [n for n in names.values() if n[-1] in ("kernel_terminated", "kernel_cancelled")]
    assert stats.sessions_finished == len(finished)
    # Sessions still in flight when the run ended are a prefix; the rest are whole.
    assert stats.active_sessions == len(names) - len(finished) <= 25
    assert all(n[0] == "kernel_enqueued" for n in names.values())
    # Session ids are unique within a run.
    assert len({e.session_id for e in events}) == len({e.session_uuid for e in events})


def test_the_mix_covers_every_path() -> None:
    generator = LifecycleGenerator(random.Random(3), sessions=50)
    events = generator.next_events(30_000)
    assert set(generator.by_name) == set(ALLOWED_NEXT) - {None}
    check_lifecycles(events)
    terminated = [e for e in events if e.name == "kernel_terminated"]
    successes = sum(e.result == "SUCCESS" for e in terminated)
    assert 0.6 * len(terminated) < successes < len(terminated)
    reasons = {e.reason for e in terminated} | {
        e.reason for e in events if e.name == "kernel_cancelled"
    }
    for reason in ("user-requested", "self-terminated", "failed-to-start", "idle-timeout"):
        assert reason in reasons
    assert any(e.name == "kernel_cancelled" for e in events)
    owners = {e.owner_access_key for e in events}
    assert owners == {k.access_key for k in demo_identities().owners()}
    assert {e.domain for e in events} == {"default", "research"}


@pytest.mark.anyio
async def test_a_seed_fixes_the_sequence() -> None:
    def key(events: Sequence[KernelEvent]) -> list[tuple[object, ...]]:
        return [(e.name, e.session_id, e.session_uuid, e.reason, e.result) for e in events]

    runs = []
    for seed in (7, 7, 8):
        sink = RecordingSink()
        await run_demo(sink, rate=1e6, sessions=10, rng=random.Random(seed), max_events=500)
        runs.append(key(sink.events))
    assert len(runs[0]) == 500
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.anyio
async def test_count_bound_paces_at_the_rate() -> None:
    sink = RecordingSink()
    stats = await run_demo(sink, rate=1000, sessions=5, rng=random.Random(4), max_events=150)
    assert stats.published == len(sink.events) == 150
    assert 0.149 <= stats.elapsed < 1.0
    # One publish_many per tick: about 25 events each at 1000/s and 25 ms.
    assert all(len(batch) <= 60 for batch in sink.batches)


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


@pytest.mark.anyio
async def test_a_slow_publisher_is_reported_behind() -> None:
    sink = RecordingSink(delay=0.05)
    demo = LifecycleDemo(
        sink, rate=10_000, sessions=5, rng=random.Random(7), duration=0.2, max_batch=200
    )
    stats = await demo.run()
    assert stats.behind > 0
    assert stats.published == len(sink.events)
    assert stats.published + stats.behind == 2000
    # The run ends at its deadline (plus the batch in flight), not when it has caught up.
    assert stats.elapsed < 0.2 + 0.2


def test_stats_before_the_run_are_zero() -> None:
    demo = LifecycleDemo(RecordingSink(), rate=10, sessions=3, rng=random.Random(9))
    stats = demo.stats()
    assert (stats.published, stats.elapsed, stats.rate, stats.active_sessions) == (0, 0.0, 0.0, 0)


@pytest.mark.anyio
async def test_max_batch_bounds_each_publish() -> None:
    sink = RecordingSink(delay=0.02)
    demo = LifecycleDemo(
        sink, rate=100_000, sessions=5, rng=random.Random(8), max_events=2000, max_batch=300
    )
    stats = await demo.run()
    assert stats.published == 2000
    assert max(len(batch) for batch in sink.batches) <= 300
    with pytest.raises(RuntimeError):
        await demo.run()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"sessions": 0}, "sessions"),
        ({"duration": -1.0}, "duration"),
        ({"max_events": -1}, "max_events"),
        ({"tick": 0.0}, "tick"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_invalid_settings_name_the_field(options: dict[str, float], field: str) -> None:
    settings: dict[str, float] = {"rate": 10.0, "sessions": 1, **options}
    with pytest.raises(ValueError, match=field):
        LifecycleDemo(RecordingSink(), rng=random.Random(), **settings)  # type: ignore[arg-type]


def test_demo_identities_cover_every_role() -> None:
    identities = demo_identities()
    keypairs = identities.keypairs
    roles = [k.role for k in keypairs]
    assert roles.count("superadmin") >= 1
    assert roles.count("user") >= 2
    assert roles.count("monitor") >= 1
    domains = {g.domain for g in identities.groups}
    assert domains == {"default", "research"}
    for domain in domains:
        assert any(k.role == "admin" and k.domain == domain for k in keypairs)
    assert len({k.access_key for k in keypairs}) == len(keypairs)
    assert len({k.secret_key for k in keypairs}) == len(keypairs)
    groups = {(g.domain, g.name) for g in identities.groups}
    for keypair in keypairs:
        assert re.fullmatch(r"AKIA[A-Z0-9]{16}", keypair.access_key)
        assert len(keypair.secret_key) == 40
        assert all((keypair.domain, name) in groups for name in keypair.groups)
