"""Shared by the fault tests: a fleet of resuming consumers and a steady publisher."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from gateway.consumer import KernelEventStream, SSEEvent
from publisher import AsyncPublisher
from tests.support.http import metric_value
from tests.support.identities import ROOT, Person, session_of
from tests.support.wait import until


@dataclass
class Consumer:
    """What one consumer of :func:`fleet` got: each kernel event's id and ``reason``, and
    how many times its stream had reconnected when that event came (0: the first stream)."""

    ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    closes: int = 0
    log: list[str] = field(default_factory=list)

    def first_after_reconnect(self) -> int | None:
        """The index of the first event that came over a reconnected stream, if any."""
        return next((i for i, r in enumerate(self.rounds) if r > 0), None)


@contextlib.asynccontextmanager
async def fleet(
    urls: str | Sequence[str], n: int, person: Person = ROOT
) -> AsyncIterator[list[Consumer]]:
    """``n`` consumers (superadmins by default) that reconnect with Last-Event-ID."""
    consumers = [Consumer() for _ in range(n)]

    async def consume(consumer: Consumer) -> None:
        stream = KernelEventStream(
            urls, access_key=person.access_key, secret_key=person.secret_key,
            include_control=True, max_backoff=1.0,
        )  # fmt: skip
        async for event in stream:
            consumer.log.append(
                f"{event.event} {event.id} {stream.url} r={stream.reconnects} {event.data[-12:]}"
            )
            if event.event == "server_close":
                consumer.closes += 1
            elif event.event.startswith("kernel_") and event.id is not None:
                consumer.ids.append(event.id)
                consumer.reasons.append(json.loads(event.data)["reason"])
                consumer.rounds.append(stream.reconnects)

    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            tg.start_soon(consume, consumer)
        yield consumers
        tg.cancel_scope.cancel()
    # Cancelled consumers closed their sockets; the close completes in a loop callback,
    # which must run before the test's loop ends (else: unclosed-socket warnings at GC).
    await anyio.sleep(0.05)


async def streams(base_url: str) -> int:
    async with httpx.AsyncClient() as http:
        return int((await http.get(base_url + "/ready")).json()["streams"])


async def until_streams(base_url: str, n: int, timeout: float = 10) -> None:
    """Wait until the replica at ``base_url`` holds ``n`` streams."""
    with anyio.fail_after(timeout):
        while await streams(base_url) < n:
            await anyio.sleep(0.05)


def metric(base_url: str, name: str) -> float:
    return metric_value(httpx.get(base_url + "/metrics", timeout=5).text, name)


FENCE = "fence"


class Publishing:
    """Publishes a numbered event every ``interval`` until stopped; remembers the order."""

    def __init__(self, pub: AsyncPublisher, interval: float = 0.01) -> None:
        self.pub = pub
        self.interval = interval
        self.reasons: list[str] = []
        #: publishes begun: one more than ``reasons`` while a call is in flight (its event
        #: may be delivered before the call returns)
        self.begun = 0
        self.stop = anyio.Event()
        self._ref = session_of(ROOT, "reliable")

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            reason = f"n={i}"
            self.begun += 1
            await self.pub.publish(self._ref.started(reason))
            self.reasons.append(reason)
            i += 1
            await anyio.sleep(self.interval)

    async def fence(self) -> list[str]:
        """Publish one last event (the fence), once the run is over; returns every reason
        published, the fence last. (Call it after a publisher's outage buffer is flushed.)"""
        assert self.stop.is_set(), "the fence goes after the run"
        await self.pub.publish(self._ref.started(FENCE))
        self.reasons.append(FENCE)
        return self.reasons


@contextlib.asynccontextmanager
async def publishing(pub: AsyncPublisher, interval: float = 0.01) -> AsyncIterator[Publishing]:
    """Publish steadily for as long as the block runs (the block is the fault scenario)."""
    steady = Publishing(pub, interval)
    async with anyio.create_task_group() as tg:
        tg.start_soon(steady.run)
        try:
            yield steady
        finally:
            steady.stop.set()


def assert_complete(consumers: list[Consumer], expected: list[str]) -> None:
    for i, consumer in enumerate(consumers):
        if consumer.reasons != expected:
            at = next(
                (
                    j
                    for j, (a, b) in enumerate(zip(consumer.reasons, expected, strict=False))
                    if a != b
                ),
                min(len(consumer.reasons), len(expected)),
            )
            window = "\n".join(consumer.log[max(0, at - 3) : at + 3])
            raise AssertionError(
                f"consumer {i}: {len(consumer.reasons)} events, expected {len(expected)}; "
                f"first difference at {at}:\n{window}"
            )
        assert len(set(consumer.ids)) == len(consumer.ids)


async def kernel_events(
    events: AsyncIterator[SSEEvent], n: int, timeout: float = 10
) -> list[SSEEvent]:
    """The next ``n`` kernel events of a stream (control events skipped)."""
    got: list[SSEEvent] = []
    with anyio.fail_after(timeout):
        async for event in events:
            if event.event.startswith("kernel_"):
                got.append(event)
                if len(got) == n:
                    break
    return got


async def caught_up(consumers: list[Consumer], steady: Publishing, timeout: float) -> list[str]:
    """Publish the fence and wait until every consumer has it; returns what was published.

    Each stream delivers in id order, so by the time the fence arrives, a gap or a duplicate
    of anything published before it has shown: :func:`assert_complete` judges the result."""
    expected = await steady.fence()
    await until(
        lambda: all(FENCE in c.reasons for c in consumers),
        timeout,
        "every consumer to get the fence",
    )
    return expected
