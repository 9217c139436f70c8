"""One stream's state in the hub: its filter and its bounded outgoing buffer.

Two ways out of the buffer:

* **direct** (uvicorn, the normal case): the stream hands the client a :class:`Sink` over
  its transport. ``push`` only queues and marks the client dirty; the hub's one flush per
  loop iteration writes every dirty client's queue as one chunk, straight to the transport.
  No task wakes up per client per event.
* **through the writer task** (any other ASGI server; and, in direct mode, whenever the
  transport is above its high-water mark): the stream's own task takes the queue and awaits
  ASGI ``send``, which waits for the socket to drain. That wait is what the write deadline
  measures.

During a resume the client is registered before history is read; live frames that arrive
meanwhile wait in ``_held`` with their ids and are released by :meth:`Client.end_replay`,
minus those replay already sent. History can also be ahead of the live channel (an event is
in the stream before its PUBLISH reaches this process), so after replay ``_floor`` drops live
frames up to the last replayed id until a newer one passes. No gap, no duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

from .filters import Filter
from .frames import CloseReason

__all__ = ["Aborter", "Client", "Sink", "StreamId"]

StreamId = tuple[int, int]


class Aborter(Protocol):
    def __call__(self) -> None: ...


class Sink(Protocol):
    """Writes straight to the client's connection, bypassing ASGI ``send``."""

    def paused(self) -> bool:
        """True while the transport holds more than its high-water mark."""
        ...

    def write_chunk(self, framed: bytes) -> None:
        """Write ``framed``, which is :func:`gateway.direct.chunk` of the data."""
        ...


class Client:
    __slots__ = (
        "_chunks",
        "_dirty",
        "_floor",
        "_held",
        "_notify",
        "_waiter",
        "abort",
        "access_key",
        "buffered",
        "cap",
        "close_reason",
        "closed",
        "filter",
        "on_wake",
        "sink",
        "writing_since",
    )

    def __init__(self, filter: Filter, access_key: str, cap: int) -> None:
        self.filter = filter
        self.access_key = access_key
        self.cap = cap
        self.buffered = 0
        self.closed = False
        self.close_reason: CloseReason | Literal["disconnect"] | None = None
        #: monotonic time the current ASGI write started, or 0.0 when none is in flight
        self.writing_since = 0.0
        #: how the hub stops a write that is stuck past the deadline (set by the stream)
        self.abort: Aborter | None = None
        #: the direct way out, when the server offers one (set by the stream)
        self.sink: Sink | None = None
        self._chunks: list[bytes] = []
        self._held: list[tuple[StreamId, bytes]] | None = None
        self._floor: StreamId | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._dirty = False
        self._notify: Callable[[Client], None] | None = None
        #: called when the writer task is needed and none is waiting (set by the stream,
        #: which then starts one): the close, or data the direct path cannot write now
        self.on_wake: Callable[[], None] | None = None

    def go_direct(self, sink: Sink, notify: Callable[[Client], None]) -> None:
        """From now on, queued data goes out through ``sink`` when the hub's flush runs;
        ``notify`` (the hub's) is told once per batch that this client has data."""
        self.sink = sink
        self._notify = notify
        if self._chunks:
            notify(self)

    def push(self, frame: bytes, stream_id: StreamId | None = None) -> bool:
        """Queue ``frame``; returns True when this push evicted the client (over its cap)."""
        if self.closed:
            return False
        if stream_id is not None and self._floor is not None:
            if stream_id <= self._floor:
                return False  # replay already sent it
            self._floor = None  # ids only grow from here
        if self._held is not None and stream_id is not None:
            self._held.append((stream_id, frame))
            self.buffered += len(frame)
            return self._over_cap()
        self._chunks.append(frame)
        self.buffered += len(frame)
        if self._over_cap():
            return True
        if self._notify is not None:
            if not self._dirty:
                self._dirty = True
                self._notify(self)
        else:
            self._wake()
        return False

    def _over_cap(self) -> bool:
        if self.buffered > self.cap:
            self.close("slow_consumer")
            return True
        return False

    def take_for_sink(self) -> bytes | None:
        """For the hub's flush: what to write through the sink now, or None when there is
        nothing, or when it is left to the writer task (an ASGI write in flight, or the
        transport is full)."""
        self._dirty = False
        sink = self.sink
        if self.closed or sink is None or not self._chunks:
            return None
        if self.writing_since or sink.paused():
            self._wake()
            return None
        return self.take()

    def take(self) -> bytes:
        """Everything queued, as one write (coalescing), or b"" when nothing is."""
        if not self._chunks:
            return b""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self.buffered -= len(data)
        return data

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self.on_wake is not None:
            self.on_wake()

    def resume_direct(self) -> None:
        """The transport drained: what is queued goes out with the hub's next flush."""
        if self._chunks and self._notify is not None and not self._dirty:
            self._dirty = True
            self._notify(self)

    async def wait(self) -> None:
        """Return once the writer task has something to do: queued data it must write (no
        sink, or the sink is paused) or the close."""
        if self.closed or (self._chunks and (self.sink is None or self.sink.paused())):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        await waiter

    def begin_replay(self) -> None:
        self._held = []

    def end_replay(self, last_sent: StreamId) -> None:
        """Release the live frames held during replay, skipping ids replay already sent, and
        keep skipping them if they are still on their way."""
        held, self._held = self._held or [], None
        for stream_id, frame in held:
            self.buffered -= len(frame)
            if stream_id > last_sent:
                self.push(frame)
        if not held or held[-1][0] <= last_sent:
            self._floor = last_sent

    def close(self, reason: CloseReason | Literal["disconnect"]) -> None:
        """Mark the stream for closing and wake its writer. What is queued is still written
        on a deliberate close (shutdown, revoked); it is dropped for an evicted or gone
        client."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._held = None
        if reason in ("slow_consumer", "write_timeout", "disconnect"):
            self._chunks = []
            self.buffered = 0
        self._wake()
