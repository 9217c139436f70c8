"""Shared by the fault tests: a fleet of resuming consumers and a steady publisher."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from gateway.consumer import KernelEventStream, SSEEvent
from publisher import AsyncPublisher
from tests.identities import ROOT, Person, session_of


@dataclass
class Consumer:
    ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    closes: int = 0
    log: list[str] = field(default_factory=list)


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
            elif event.id is not None:
                consumer.ids.append(event.id)
                consumer.reasons.append(json.loads(event.data)["reason"])

    async with anyio.create_task_group() as tg:
        for consumer in consumers:
            tg.start_soon(consume, consumer)
        yield consumers
        tg.cancel_scope.cancel()
    # Cancelled consumers closed their sockets; the close completes in a loop callback,
    # which must run before the test's loop ends (else: unclosed-socket warnings at GC).
    await anyio.sleep(0.05)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
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
    text = httpx.get(base_url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


class Publishing:
    """Publishes a numbered event every ``interval`` until stopped; remembers the order."""

    def __init__(self, pub: AsyncPublisher, interval: float = 0.01) -> None:
        self.pub = pub
        self.interval = interval
        self.reasons: list[str] = []
        self.stop = anyio.Event()

    async def run(self) -> None:
        ref = session_of(ROOT, "reliable")
        i = 0
        while not self.stop.is_set():
            reason = f"n={i}"
            await self.pub.publish(ref.started(reason))
            self.reasons.append(reason)
            i += 1
            await anyio.sleep(self.interval)


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


async def caught_up(consumers: list[Consumer], expected: list[str], timeout: float) -> None:
    """Wait until every consumer holds as many events as were published, then a little more,
    so a duplicate would have arrived too (assert_complete judges the result)."""
    await until(
        lambda: all(len(c.reasons) >= len(expected) for c in consumers),
        timeout,
        "every consumer to catch up",
    )
    await anyio.sleep(0.3)
