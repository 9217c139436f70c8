"""Publish at a fixed rate through the publisher library, the publish time inside each event.

The SSE data a client sees carries ``sessionId``, ``ownerAccessKey`` and ``reason`` only (not
the event's ``timestamp``), so the publish time travels in ``reason`` as ``t=<unix seconds>``;
each event is built right before the call that publishes it. Events due in one tick (5 ms
at high rates) go out as one ``publish_many`` batch: one round trip, order kept.

Where they go is the ``sink``: the publisher library on the bench's Redis (the gateway's
path), or anything with the same two calls (:class:`bench.nchan.NchanSink`: one HTTP POST per
event to nchan, the bench's peer), so both get the same events at the same rate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Final, Protocol

from publisher import KernelEvent, SyncPublisher

from .procs import DOMAIN, GROUP, ROOT_KEY, ROOT_USER, users

__all__ = ["RatePublisher", "Sink", "session_name"]

_MIN_TICK: Final = 0.005
_SESSION_UUID: Final = uuid.UUID(int=1)
_KERNEL_ID: Final = uuid.UUID(int=2)


def session_name(i: int) -> str:
    return f"s{i:05d}"


class Sink(Protocol):
    """Where :class:`RatePublisher` sends its events (:class:`publisher.SyncPublisher` is one)."""

    def publish(self, event: KernelEvent, /) -> object: ...

    def publish_many(self, events: list[KernelEvent], /) -> object: ...

    def close(self) -> object: ...


class RatePublisher:
    """Round-robins events over ``sessions`` session ids (one: every event the same session)
    and counts how many each session got, so the driver knows what every client is owed.

    Every event is the bench superadmin's, or with ``owners`` one of that many bench users'
    (:func:`bench.procs.users`): session ``i``'s events are owner ``i % owners``'s, and with one
    session the owner turns with every event, so the events spread over the deployment's
    ``partitions`` (the publisher's setting; 1 leaves the publisher as it always was)."""

    def __init__(
        self,
        redis_url: str,
        *,
        sessions: int = 1,
        pad: int = 0,
        sink: Sink | None = None,
        owners: int = 0,
        partitions: int = 1,
    ) -> None:
        if sink is not None:
            self._pub: Sink = sink
        elif partitions > 1:  # only then: bench.fanout --against runs older publishers too
            self._pub = SyncPublisher.from_url(redis_url, partitions=partitions)
        else:
            self._pub = SyncPublisher.from_url(redis_url)
        self._names = [session_name(i) for i in range(sessions)]
        self._owners = [(u.access_key, u.user_id) for u in users(owners)] or [(ROOT_KEY, ROOT_USER)]
        self._pad = " " + "x" * (pad - 1) if pad > 0 else ""
        self._next = 0
        self._sent = 0
        self.counts = [0] * sessions

    def close(self) -> None:
        self._pub.close()

    def __enter__(self) -> RatePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_counts(self) -> None:
        self.counts = [0] * len(self.counts)

    def _event(self) -> KernelEvent:
        i = self._next
        self._next = (i + 1) % len(self._names)
        self.counts[i] += 1
        turn = i if len(self._names) > 1 else self._sent
        self._sent += 1
        owner_key, owner_user = self._owners[turn % len(self._owners)]
        now = time.time()
        return KernelEvent(
            name="kernel_started",
            session_id=self._names[i],
            session_uuid=_SESSION_UUID,
            kernel_id=_KERNEL_ID,
            owner_access_key=owner_key,
            owner_user_id=owner_user,
            domain=DOMAIN,
            group=GROUP,
            reason=f"t={now:.6f}{self._pad}",
            timestamp=now,
        )

    def run(
        self,
        rate: float,
        seconds: float,
        every: Callable[[float], None] | None = None,
    ) -> int:
        """Publish ``rate * seconds`` events evenly over ``seconds``; ``every(elapsed)`` is
        called once per tick. Returns how many were published."""
        total = round(rate * seconds)
        tick = max(_MIN_TICK, 1.0 / rate)
        start = time.monotonic()
        published = 0
        while published < total:
            elapsed = time.monotonic() - start
            if elapsed > seconds + 5.0:  # hopelessly behind: stop, the report shows the count
                break
            due = min(total, int(elapsed * rate) + 1) - published
            if due > 0:
                if due == 1:
                    self._pub.publish(self._event())
                else:
                    self._pub.publish_many([self._event() for _ in range(due)])
                published += due
            if every is not None:
                every(elapsed)
            next_at = start + (published / rate if published < total else seconds)
            time.sleep(max(0.0, min(tick, next_at - time.monotonic())))
        if every is not None:
            every(time.monotonic() - start)
        return published
