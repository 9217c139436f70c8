"""Which partitions a replica subscribes to (gateway.replica.partitions), with fake
subscriptions and a fake clock: a stream's pin starts and waits for them, the last unpin lets
them linger, then they stop and their lane forgets its watermark; linger 0 runs them all."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.errors import Unavailable
from gateway.fanout.hub import Hub
from gateway.replica import partitions as keeper_module
from gateway.replica.partitions import PartitionKeeper
from gateway.settings import FanoutSettings
from publisher.keys import Keys
from publisher.partitions import Partitions
from tests.support.fakes import FakeClock

pytestmark = pytest.mark.anyio


class FakeSubscription:
    """Live ``delay`` seconds after it starts running (None: never)."""

    def __init__(self, p: int, delay: float | None = 0.0, fail: bool = False) -> None:
        self.p = p
        self.delay = delay
        self.ready = False
        self.closed = False
        self.reconnects = self.new_histories = self.probe_failures = 0
        self.fail = fail

    async def run(self) -> None:
        if self.fail:
            raise RuntimeError("a bug")
        if self.delay is not None:
            await asyncio.sleep(self.delay)
            self.ready = True
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def _keeper(
    linger: float, delay: float | None = 0.0, failing: tuple[int, ...] = ()
) -> tuple[PartitionKeeper, Hub, list, FakeClock]:  # type: ignore[type-arg]
    hub = Hub(FanoutSettings(), clock=FakeClock(), partitions=Partitions(Keys(), 4))
    made: list[FakeSubscription] = []

    def make(p: int) -> FakeSubscription:
        made.append(FakeSubscription(p, delay, fail=p in failing))
        return made[-1]

    clock = FakeClock()
    keeper = PartitionKeeper(hub, make, linger=linger, clock=clock)  # type: ignore[arg-type]
    return keeper, hub, made, clock


async def test_a_pin_starts_what_it_needs_and_waits_until_live() -> None:
    keeper, _hub, made, _clock = _keeper(linger=30)
    assert keeper.needs(None) == (1, 2, 3) and keeper.needs(0) == () and keeper.needs(2) == (2,)
    pin = await keeper.pin([2])
    assert [s.p for s in made] == [2] and made[0].ready
    assert keeper.states() == [None, None, True, None]
    again = await keeper.pin([2, 3])  # 2 is running: not started twice
    assert [s.p for s in made] == [2, 3]
    pin.release()
    pin.release()  # idempotent
    again.release()
    await keeper.aclose()
    assert all(s.closed for s in made)


async def test_the_last_unpin_lingers_then_stops_and_forgets_the_watermark() -> None:
    keeper, hub, made, clock = _keeper(linger=4)
    pin = await keeper.pin([1])
    hub.lanes[1].last_id = (5, 0)
    runner = asyncio.ensure_future(keeper.run())
    try:
        pin.release()
        clock.now += 3
        await asyncio.sleep(1.1)  # one period (linger/4, at most 1 s)
        assert 1 in keeper.subscribers  # not yet: 3 of 4 seconds
        clock.now += 2
        await asyncio.sleep(1.1)
        assert 1 not in keeper.subscribers and made[0].closed
        assert hub.lanes[1].last_id is None
        pin = await keeper.pin([1])  # a new subscription, located afresh
        assert len(made) == 2 and made[1].ready
        pin.release()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await keeper.aclose()


async def test_a_held_partition_is_never_stopped() -> None:
    keeper, _hub, _made, clock = _keeper(linger=1)
    first, second = await keeper.pin([3]), await keeper.pin([3])
    runner = asyncio.ensure_future(keeper.run())
    try:
        first.release()
        clock.now += 10
        await asyncio.sleep(0.4)
        assert 3 in keeper.subscribers  # still held by the second stream
        second.release()
        clock.now += 10
        await asyncio.sleep(0.4)
        assert 3 not in keeper.subscribers
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await keeper.aclose()


async def test_linger_0_runs_every_partition() -> None:
    keeper, _hub, made, _clock = _keeper(linger=0)
    runner = asyncio.ensure_future(keeper.run())
    try:
        await asyncio.sleep(0.05)
        assert sorted(s.p for s in made) == [1, 2, 3]
        assert keeper.ready() and keeper.states() == [None, True, True, True]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await keeper.aclose()


async def test_a_partition_that_does_not_go_live_is_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keeper_module, "START_TIMEOUT", 0.1)
    keeper, _hub, _made, _clock = _keeper(linger=30, delay=None)
    with pytest.raises(Unavailable, match="partition 2"):
        await keeper.pin([2])
    assert keeper.held() == ()  # the failed pin holds nothing
    await keeper.aclose()


async def test_the_subscriptions_counters_only_grow_across_stops_and_restarts() -> None:
    """/metrics adds every partition's reconnects, new histories and probe failures
    (:meth:`PartitionKeeper.count`): a partition that stops keeps its share counted."""
    keeper, _hub, made, clock = _keeper(linger=4)
    pins = [await keeper.pin([1]), await keeper.pin([2])]
    made[0].reconnects, made[0].new_histories, made[1].probe_failures = 3, 1, 2
    seen = {c: keeper.count(c) for c in keeper_module.COUNTERS}
    assert seen == {"reconnects": 3, "new_histories": 1, "probe_failures": 2}
    runner = asyncio.ensure_future(keeper.run())
    try:
        pins[0].release()
        clock.now += 5
        await asyncio.sleep(1.1)  # one period: partition 1 has lingered, and stops
    finally:
        runner.cancel()
    assert keeper.states() == [None, None, True, None] and made[0].closed
    assert {c: keeper.count(c) for c in keeper_module.COUNTERS} == seen
    again = await keeper.pin([1])  # a new subscription, its own counters from 0
    made[-1].reconnects = 1
    assert keeper.count("reconnects") == 4
    again.release()
    pins[1].release()
    await keeper.aclose()
    assert keeper.count("reconnects") == 4 and keeper.count("probe_failures") == 2


async def test_a_partition_not_live_is_named_and_only_a_dead_task_is_not_alive() -> None:
    """Per-partition readiness: a subscription that is not live (its Redis unreachable) is
    named by :meth:`not_live` once it has had START_TIMEOUT to go live, and the keeper stays
    :meth:`alive`; only a subscription whose task ended (a bug) makes it not alive."""
    keeper, _hub, made, clock = _keeper(linger=30, delay=None, failing=(2,))  # never live
    waiting = asyncio.ensure_future(keeper.pin([1]))
    await asyncio.sleep(0.05)
    assert keeper.not_live() == [] and keeper.alive()  # still within its start
    clock.now += keeper_module.START_TIMEOUT
    assert keeper.not_live() == [1] and keeper.alive() and not keeper.ready()
    made[0].ready = True  # its Redis is back
    pin = await waiting
    assert keeper.not_live() == [] and keeper.alive() and keeper.ready()
    other = asyncio.ensure_future(keeper.pin([2]))
    await asyncio.sleep(0.05)
    assert not keeper.alive()
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other
    pin.release()
    await keeper.aclose()
