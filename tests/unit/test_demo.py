"""The demo publisher's simulator (``publisher.demo``), in process against a recording sink:
every lifecycle path, seeds, pacing, batching, falling behind, bad settings, the identities."""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Sequence

import pytest

from publisher import KernelEvent
from publisher.demo import LifecycleDemo, LifecycleGenerator, demo_identities, run_demo
from tests.support.lifecycles import ALLOWED_NEXT, SESSION_NEXT, check_lifecycles


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


def test_the_mix_covers_every_path() -> None:
    generator = LifecycleGenerator(random.Random(3), sessions=50)
    events = generator.next_events(30_000)
    names = check_lifecycles(events)
    assert {n for shown in names.values() for n in shown} == set(ALLOWED_NEXT) - {None}
    assert set(SESSION_NEXT) - {None} <= set(generator.by_name)  # v5's session events too
    assert any(e.cluster_idx == 1 for e in events)  # and clusters of two kernels
    terminated = [e for e in events if e.name == "kernel_terminated"]
    successes = sum(e.result == "SUCCESS" for e in terminated)
    assert 0.6 * len(terminated) < successes < len(terminated)
    reasons = {e.reason for e in terminated} | {
        e.reason for e in events if e.name == "session_cancelled"
    }
    for reason in ("user-requested", "self-terminated", "failed-to-start", "idle-timeout"):
        assert reason in reasons
    assert any(e.name == "session_cancelled" for e in events)
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
