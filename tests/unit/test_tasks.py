"""publisher.tasks.cancel_and_wait, nested: an owner stopped by it stops its own tasks with it
in its ``finally``, and the outer call re-cancels the owner on every turn of the loop. Each
task of every level must have ended when the outermost call returns: a child left running
after its owner's resources were closed reopens them (a Redis client reconnects, a database
pool is made again) and leaks them (the bridge's follow task did, under its own run task)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import anyio
import pytest

from publisher.tasks import cancel_and_wait

pytestmark = pytest.mark.anyio


def _child(turns: int, *, swallow: bool, ended: list[str], name: str) -> asyncio.Task[None]:
    """A task whose cleanup takes ``turns`` turns of the loop; with ``swallow`` it also swallows
    the first cancellation, as Python 3.11's ``wait_for`` can (publisher.tasks)."""

    async def run() -> None:
        swallowed = not swallow
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not swallowed:
                    swallowed = True
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                try:  # a cleanup that awaits is cancelled again: the loop cancels every turn
                    for _ in range(turns):
                        await asyncio.sleep(0)
                finally:
                    ended.append(name)
                raise

    return asyncio.create_task(run(), name=name)


def _owner(depth: int, turns: int, *, swallow: bool, ended: list[str]) -> asyncio.Task[None]:
    """An owner ``depth`` levels deep: it waits on its children and stops them in its
    ``finally`` with cancel_and_wait, as gateway.bridge.run.Bridge.run does."""

    async def run() -> None:
        children = [
            _child(turns, swallow=swallow, ended=ended, name=f"child-{depth}")
            if depth == 1
            else _owner(depth - 1, turns, swallow=swallow, ended=ended)
        ]
        try:
            await asyncio.wait(children)
        finally:
            try:
                await cancel_and_wait(*children)
            finally:  # the cancellation propagates: the owner ends once its children have
                assert all(child.done() for child in children)
                ended.append(f"owner-{depth}")

    return asyncio.create_task(run(), name=f"owner-{depth}")


@pytest.mark.parametrize("swallow", [False, True], ids=["plain", "swallowing"])
@pytest.mark.parametrize("turns", [0, 1, 2, 5])
@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_every_task_of_every_level_has_ended_when_the_outer_call_returns(
    depth: int, turns: int, swallow: bool
) -> None:
    ended: list[str] = []
    before = asyncio.all_tasks()
    owner = _owner(depth, turns, swallow=swallow, ended=ended)
    for _ in range(3):
        await asyncio.sleep(0)  # every level has started
    async with asyncio.timeout(5):
        await cancel_and_wait(owner)
    left = [t.get_name() for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    assert left == [], f"still running after the owner stopped: {left}"
    assert ended == ["child-1", *(f"owner-{d}" for d in range(1, depth + 1))]


async def test_the_callers_cancellation_still_propagates_once_its_tasks_ended() -> None:
    ended: list[str] = []
    child = _child(3, swallow=True, ended=ended, name="child")
    await asyncio.sleep(0)  # the child is waiting

    async def caller() -> None:
        await cancel_and_wait(child)

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child.done() and ended == ["child"]


def _stubborn(stop: asyncio.Event) -> asyncio.Task[None]:
    """A task whose cleanup ignores every cancellation until ``stop`` is set."""

    async def run() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            give_up = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < give_up:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)

    return asyncio.create_task(run())


@pytest.mark.parametrize("scope", ["asyncio.timeout", "anyio.move_on_after"])
async def test_a_deadline_around_the_call_is_late_by_at_most_the_grace(scope: str) -> None:
    """gateway/worker.py bounds a worker's stop with asyncio.timeout around cancel_and_wait:
    a task that never ends must not hold the caller past the deadline plus ``grace``."""
    stop = asyncio.Event()
    task = _stubborn(stop)
    await asyncio.sleep(0)
    started = time.monotonic()
    try:
        if scope == "asyncio.timeout":
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await cancel_and_wait(task, grace=0.3)
        else:
            with anyio.move_on_after(0.2) as moved:
                await cancel_and_wait(task, grace=0.3)
            assert moved.cancelled_caught
        took = time.monotonic() - started
        assert 0.45 <= took < 0.85, took  # the deadline, then the grace asked for
        assert not task.done()  # left behind, cancelled, as the caller's deadline wants
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    finally:
        stop.set()
        await asyncio.wait([task], timeout=5)
    assert task.done()
