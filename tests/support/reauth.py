"""What the re-authorization and identity-loss tests share: a plain SSE watcher that stamps
every event with its arrival time, a steady publisher, and the changes channel's clock."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import httpx
import redis.asyncio as aredis

from gateway.identity.changes import changes_channel
from gateway.identity.signing import signed_headers
from publisher import AsyncPublisher
from publisher.keys import Keys
from tests.support.http import STREAM_PATH
from tests.support.identities import ALICE, Person, session_of


@dataclass
class Watch:
    """One stream's events as ``(time.monotonic(), event, data)``; ``status`` its answer."""

    events: list[tuple[float, str, str]] = field(default_factory=list)
    status: int | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)

    def kernel_events(self) -> int:
        return sum(1 for _, name, _ in self.events if name.startswith("kernel_"))

    def close(self) -> tuple[float, str] | None:
        """When the ``server_close`` came and its data, if one did."""
        return next(((t, d) for t, n, d in self.events if n == "server_close"), None)


def closed_within(watches: list[Watch], since: float, reason: str) -> list[float]:
    """Per replica, seconds from ``since`` to its ``server_close``; checks the reason."""
    figures = []
    for i, w in enumerate(watches):
        close = w.close()
        assert close is not None, f"replica {i}: no server_close; got {w.events[-3:]}"
        assert json.loads(close[1])["reason"] == reason, close
        assert w.events[-1][1] == "server_close", "nothing may follow server_close"
        figures.append(close[0] - since)
    return figures


async def watch(
    base_url: str,
    into: Watch,
    *,
    person: Person | None = None,
    cookie: str | None = None,
    params: dict[str, str] | None = None,
) -> None:
    """Read one stream until it ends, signed as ``person`` or with the session ``cookie``."""
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5)) as client:
            headers = {"Accept": "text/event-stream"}
            if cookie is not None:
                headers["Cookie"] = f"kev_session={cookie}"
            request = client.build_request(
                "GET", base_url + STREAM_PATH, params=params, headers=headers
            )
            if person is not None:
                target = request.url.raw_path.decode("ascii")
                request.headers.update(
                    signed_headers(
                        "GET", target, request.headers["host"], person.access_key,
                        person.secret_key,
                    )
                )  # fmt: skip
            response = await client.send(request, stream=True)
            try:
                into.status = response.status_code
                if response.status_code != 200:
                    return
                name, data = "message", ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                    elif line == "" and data:
                        into.events.append((time.monotonic(), name, data))
                        name, data = "message", ""
            finally:
                await response.aclose()
    finally:
        into.ended.set()


async def publish_steadily(redis_url: str, stop: anyio.Event, interval: float = 0.02) -> None:
    """Alice's events (domain ``default``, group ``default``) every ``interval`` s."""
    ref = session_of(ALICE, "reauth")
    async with AsyncPublisher.from_url(redis_url) as pub:
        i = 0
        while not stop.is_set():
            await pub.publish(ref.started(f"n={i}"))
            i += 1
            await anyio.sleep(interval)


@contextlib.asynccontextmanager
async def change_clock(redis_url: str) -> AsyncIterator[list[float]]:
    """The arrival times (``time.monotonic()``) of every identity change message, as a
    subscriber next to the replicas sees them: the moment a change is committed."""
    client = aredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(changes_channel(Keys()))
    times: list[float] = []

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                times.append(time.monotonic())

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            yield times
            tg.cancel_scope.cancel()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
