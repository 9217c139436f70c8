"""One stream's write machine, in one unit: its filter, bounded buffer, ways out, pacing,
eviction and error isolation.

Two ways out of the buffer:

* **direct** (uvicorn's httptools protocol, the normal case): after the headers have gone
  out through ASGI the response is chunked, so :meth:`Connection.go_direct` hands the
  connection its :class:`DirectPath` as its :class:`Sink` (the HTTP edge builds it:
  :mod:`gateway.http.uvicorn_internals`). ``push`` only queues and marks the connection dirty;
  the hub's one flush per loop iteration writes every dirty connection's queue as one chunk,
  framed by :func:`chunk` exactly as uvicorn's ``send`` would, straight to the transport. No
  task wakes up per connection per event.
* **the writer task** (any other ASGI server; and, in direct mode, whenever the transport is
  above its high-water mark, and for the close): the connection's own task takes the queue
  and awaits ASGI ``send``, which waits for the socket to drain. That wait is what the write
  deadline measures.

Eviction: a ``push`` over the byte cap closes the connection on the spot (``slow_consumer``);
the hub's timer closes one whose write has been in flight past the write deadline
(``write_timeout``) and aborts its transport. A deliberate close (shutdown, revoked) still
writes what is queued, then ``server_close``; an evicted or gone client's queue is dropped.
Whatever happens to one connection (its transport failing, its task cancelled) stays in its
own writer task; the hub never awaits a connection.

During a resume (:mod:`gateway.fanout.resume`) the connection is registered before history is
read; live frames that arrive meanwhile wait in ``_held`` with their ids and are released by
:meth:`Connection.end_replay`, minus those replay already sent. History can also be ahead of
the live channel (an event is in the stream before its PUBLISH reaches this process), so after
replay ``_floor`` drops live frames up to the last replayed id until a newer one passes. No
gap, no duplicate.

Why direct writes: ASGI ``send`` costs a coroutine and three wrapper frames per call, and the
writer task behind it a wake-up per connection per event; for a hub that sends the same small
frame to thousands of streams that was most of the CPU (ARCHITECTURE.md, measured deviations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, Protocol

from .filters import Filter
from .frames import EVICTIONS, CloseReason, StreamId, View, server_close_frame
from .stats import HubStats

__all__ = [
    "Connection",
    "DirectPath",
    "Progress",
    "Sink",
    "chunk",
    "socket_progress",
    "write_out",
]

log = logging.getLogger(__name__)

#: ASGI ``send`` as this module uses it (a plain dict message, no framework types)
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class Sink(Protocol):
    """Writes straight to the client's connection, bypassing ASGI ``send``."""

    #: True while the transport holds more than its high-water mark, and once the client is
    #: gone: the writer task, not the hub's flush, writes then (an attribute, not a call: it
    #: is read for every stream at every flush)
    blocked: bool

    def write_chunk(self, framed: bytes) -> None:
        """Write ``framed``, which is :func:`chunk` of the data."""
        ...


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str) -> Any: ...


class DirectPath(Sink, Protocol):
    """What the server offers a stream besides ASGI ``send`` (uvicorn's httptools protocol:
    :class:`gateway.http.uvicorn_internals.UvicornStream`): its transport (socket options,
    the lag probe, abort), and once the headers went out chunked, itself as the sink."""

    @property
    def transport(self) -> _Transport: ...

    def chunked(self) -> bool:
        """The response is chunked (known once the headers went out)."""
        ...


#: what the kernel knows of one stream's socket: ``(acked, unacked)`` bytes, where ``acked`` is
#: every byte the client's TCP has acknowledged since the connection opened and ``unacked``
#: what was written to the socket and is not acknowledged yet (sent or not); ``acked`` is
#: read only when ``unacked`` is not 0 (``(0, 0)`` otherwise: nothing waits, so nothing ages);
#: None where the platform cannot tell
Progress = Callable[[], "tuple[int, int] | None"]

#: Linux ``struct tcp_info``: ``tcpi_bytes_acked`` (u64, kernel 4.1+) and the length up to it
_ACKED_AT: Final = 120
_INFO_LEN: Final = 128
_U64: Final = struct.Struct("=Q")
_INT: Final = struct.Struct("=i")
_NO_OUTQ: Final = b"\0\0\0\0"
#: ``struct linger`` {on, 0 s}: close() resets the connection and drops the send queue
_RESET: Final = struct.pack("ii", 1, 0)

if sys.platform == "linux":
    import fcntl
    import termios

    def socket_progress(sock: Any) -> tuple[int, int] | None:
        """:data:`Progress` of a TCP socket (anything with ``getsockopt`` and ``fileno``):
        ``SIOCOUTQ`` (sent or not, unacknowledged), then, only when that is not 0,
        ``tcpi_bytes_acked`` from ``TCP_INFO``. A stream that keeps up costs one ioctl on its
        descriptor: uvloop's socket object makes a ``socket.socket`` for every
        ``getsockopt`` (with a ``getsockname``), which was 3% of the gateway's CPU at a25.
        None on a kernel without ``tcpi_bytes_acked``. ``OSError`` (or ``ValueError``, a
        descriptor of -1) once the socket is gone."""
        (unacked,) = _INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _NO_OUTQ))
        if not unacked:
            return 0, 0
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _INFO_LEN)
        if len(info) < _INFO_LEN:
            return None
        return _U64.unpack_from(info, _ACKED_AT)[0], unacked

else:  # pragma: no cover - the lag bound is Linux-only (README, "Faults, and what clients see")

    def socket_progress(sock: Any) -> tuple[int, int] | None:
        return None


class _SocketProbe:
    """:data:`Progress` of one socket (:func:`socket_progress`): 48 bytes per stream, where
    a ``functools.partial`` of it was 192."""

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def __call__(self) -> tuple[int, int] | None:
        return socket_progress(self._sock)


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, the framing uvicorn's ``send`` gives a body part."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def write_out(dirty: list[Connection]) -> None:
    """The hub's flush: each connection in ``dirty`` writes everything queued through its sink
    (:meth:`Connection.go_direct`) as one HTTP chunk (coalescing). Nothing is written for one
    with nothing queued, closed, or whose writer task has it (a write in flight, a paused
    transport: the task is woken). A stream whose take or write raises is closed
    (``write_error``), never the flush: one failing stream cannot strand the others.

    Two passes. First every queue is taken and framed; in a broadcast most queue the very
    same frame objects, which are then joined and framed once for all. Then the writes, one
    system call each, reading little besides each transport. Each write runs the kernel's
    TCP path, so in one pass every connection's state was read right after a system call;
    py-spy put the Python lines around the writes at ~22% of the gateway's samples at a25
    with one pass and ~13% with two (most likely cache misses: there are no cache counters
    on this VM), and the bench at 0.90x the CPU per write (ARCHITECTURE.md, "The data
    path").

    Between the passes a stream's taken bytes are counted nowhere (:meth:`Connection.unsent`
    reads 0 for it). That is safe only because nothing else runs in between: no await, and a
    transport's ``write`` calls nothing but its own protocol's ``pause_writing``. Keep it so:
    a drain that ran there would record a position past bytes not yet written."""
    # Parallel lists, not a tuple per write: the second pass then reads each write's
    # callable and chunk from two arrays, without a tuple made a whole pass earlier.
    clients: list[Connection] = []
    writes: list[Callable[[bytes], None]] = []
    chunks: list[bytes] = []
    # The last distinct frame and list of frames taken, and their chunk: in a broadcast
    # most streams queue the very same frames, framed (and joined) once for all.
    frame: bytes | None = None
    frames: list[bytes] | None = None
    framed = b""
    for client in dirty:
        try:
            queue = client.staged()
        except Exception:  # its queue is lost with it; the others' still go out
            client.write_failed()
            continue
        if queue is None:
            continue
        if isinstance(queue, bytes):
            if queue is not frame:
                frame, frames, framed = queue, None, chunk(queue)
        elif queue != frames:  # compared element by element, identity first
            frame, frames, framed = None, queue, chunk(b"".join(queue))
        clients.append(client)
        writes.append(client.sink.write_chunk)  # type: ignore[union-attr]  # staged: a sink
        chunks.append(framed)
    for client, write, framed in zip(clients, writes, chunks, strict=True):
        try:
            write(framed)
        except Exception:
            client.write_failed()


def body(data: bytes) -> dict[str, Any]:
    """An ASGI body message with more to come."""
    return {"type": "http.response.body", "body": data, "more_body": True}


class Connection:
    """One stream: what it may see (``filter``), whose it is (``access_key``), and its
    bounded outgoing buffer (``cap`` bytes) with everything that empties it."""

    __slots__ = (
        "_chunks",
        "_clock",
        "_dirty",
        "_drain_limit",
        "_drain_waiter",
        "_floor",
        "_held",
        "_held_bytes",
        "_in_flight",
        "_marks",
        "_notify",
        "_progress",
        "_retry_jitter_ms",
        "_retry_ms",
        "_send",
        "_stats",
        "_task",
        "_transport",
        "_waiter",
        "_writer",
        "_wrote",
        "abort_requested",
        "access_key",
        "buffered",
        "cap",
        "close_reason",
        "closed",
        "expires_at",
        "filter",
        "grant",
        "handoff",
        "held_overflow",
        "retry_field",
        "sink",
        "view",
        "writing_since",
    )

    def __init__(
        self,
        filter: Filter,
        access_key: str,
        cap: int,
        *,
        clock: Callable[[], float],
        retry_ms: int = 3000,
        retry_jitter_ms: int = 0,
        stats: HubStats | None = None,
        view: View = "v4",
    ) -> None:
        self.filter = filter
        #: which API generation (and v5 scope) this stream shows (gateway.fanout.frames)
        self.view = view
        self.access_key = access_key
        #: what the HTTP edge proved about the caller when the stream opened (opaque here;
        #: the edge re-checks it when identities change)
        self.grant: object = None
        #: set by the HTTP edge for a stream its client cannot resume (the official SDKs):
        #: what the drain records for its reconnect. Such a stream ends a shutdown without
        #: ``server_close``, so the SDK reconnects by itself (gateway.replica.handoff).
        self.handoff: object = None
        #: monotonic time the hub's timer ends the stream with ``rebalance`` (0.0: never);
        #: set by the HTTP edge, only for clients that resume
        self.expires_at = 0.0
        self.cap = cap
        self.buffered = 0
        self.closed = False
        self.close_reason: CloseReason | Literal["disconnect"] | None = None
        #: monotonic time the current ASGI write started, or 0.0 when none is in flight
        self.writing_since = 0.0
        #: the direct way out, when the server offers one (:meth:`go_direct`)
        self.sink: Sink | None = None
        #: set by :meth:`abort_write`: the cancellation that follows is ours, not the server's
        self.abort_requested = False
        self._clock = clock
        self._retry_ms = retry_ms
        self._retry_jitter_ms = retry_jitter_ms
        #: the ``server_close`` also carries a ``retry:`` field (EventSource reads only that;
        #: the official SDKs would read a standalone one as an event, so only browsers get it)
        self.retry_field = False
        #: the kernel's view of the socket (:meth:`lag`), when the server gives one
        self._progress: Progress | None = None
        #: (bytes the kernel had taken from this stream, monotonic time) at the hub's ticks,
        #: oldest first, while some of them are unacknowledged; None while none is
        self._marks: deque[tuple[int, float]] | None = None
        #: data was taken for writing since the last :meth:`lag`
        self._wrote = False
        self._stats = stats
        self._chunks: list[bytes] = []
        self._held: list[tuple[StreamId, bytes]] | None = None
        self._held_bytes = 0
        #: bytes the writer task took and is sending (ASGI send waits for the transport
        #: to drain before it writes): neither queued nor in the transport's buffer yet
        self._in_flight = 0
        #: the newest id of the live frames dropped from ``_held`` while it was over its share
        #: of the cap; resume reads history at least that far before it ends the replay
        self.held_overflow: StreamId | None = None
        self._floor: StreamId | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._drain_limit = 0
        self._waiter: asyncio.Future[None] | None = None
        self._dirty = False
        self._notify: Callable[[Connection], None] | None = None
        self._send: Send | None = None
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._transport: _Transport | None = None

    # -- wiring (the HTTP edge, once per stream) ---------------------------------------------

    def attach(self, send: Send, direct: DirectPath | None, *, send_buffer: int = 0) -> None:
        """Bind the connection to its ASGI ``send`` and, where the server offers one, its
        direct path; the calling task is the one :meth:`abort_write` cancels where there is
        no transport.
        ``send_buffer`` (bytes, 0 = the kernel's autotuning) bounds what the kernel holds for
        a client that stopped reading; past it the transport pauses and the write deadline
        starts to count."""
        self._send = send
        self._task = asyncio.current_task()
        self._transport = direct.transport if direct is not None else None
        if self._transport is not None and send_buffer:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                self._progress = _SocketProbe(sock)

    def start_writing(
        self, direct: DirectPath | None, notify: Callable[[Connection], None]
    ) -> None:
        """The headers are out: write directly when the response went out chunked on a
        direct path, else through the writer task."""
        if direct is not None and direct.chunked():
            self.go_direct(direct, notify)
        else:
            self._ensure_writer()

    def go_direct(self, sink: Sink, notify: Callable[[Connection], None]) -> None:
        """From now on, queued data goes out through ``sink`` when the hub's flush runs;
        ``notify`` (the hub's) is told once per batch that this connection has data."""
        self.sink = sink
        self._notify = notify
        if self._chunks:
            notify(self)

    # -- the hub's side (never awaits) -------------------------------------------------------

    def push(self, frame: bytes, stream_id: StreamId | None = None) -> bool:
        """Queue ``frame``; returns True when this push evicted the connection (over its cap)."""
        if self.closed:
            return False
        if stream_id is not None and self._floor is not None:
            if stream_id <= self._floor:
                return False  # replay already sent it
            self._floor = None  # ids only grow from here
        if self._held is not None and stream_id is not None:
            # Held live frames are all in history too: past half the cap they are dropped
            # and replay reads them from there, so a live burst never evicts a resuming
            # reader and never counts against the replay's own pacing.
            self._held.append((stream_id, frame))
            self._held_bytes += len(frame)
            if self._held_bytes > self.cap // 2:
                self.held_overflow = stream_id
                self._held = []
                self._held_bytes = 0
            return False
        self._chunks.append(frame)
        self.buffered += len(frame)
        if self.buffered > self.cap:
            self.close("slow_consumer")
            return True
        if not self._dirty:  # _signal, inlined: this runs once per delivery
            self._dirty = True
            notify = self._notify
            if notify is not None:
                notify(self)
            else:
                self._wake()
        return False

    def _signal(self) -> None:
        """Data is queued: tell the one who writes it, once until it is taken. That is the
        hub (its next flush, :func:`write_out`) on the direct path, else the writer task."""
        self._dirty = True
        if self._notify is not None:
            self._notify(self)
        else:
            self._wake()

    def staged(self) -> bytes | list[bytes] | None:
        """For the hub's flush (:func:`write_out`): what is queued, taken for one write
        through the sink (:meth:`_take_queue`: one frame, or the list of them, not joined:
        the flush joins each distinct list once), or None when nothing is to be written
        now: nothing queued, closed, no sink, or the writer task has it (a write in flight,
        a paused transport: it is woken)."""
        self._dirty = False
        sink = self.sink
        if self.closed or sink is None or not self._chunks:
            return None
        if self.writing_since or sink.blocked:
            self._wake()
            return None
        return self._take_queue()

    def write_failed(self) -> None:
        """Taking or writing this stream's queue (the hub's flush, the writer task) raised
        (call it from the ``except``: the traceback is logged): this stream closes
        (``write_error``), never the flush."""
        log.exception("write to key=%s failed; closing its stream", self.access_key)
        self.close("write_error")

    def unsent(self) -> int:
        """Bytes of this stream that have not left the process: queued, being sent, or in
        the transport's buffer (where the server gives the transport). What the kernel
        holds goes out after the process ends too: a shutdown closes without a reset
        (:meth:`abort_write`). Not what the hub's flush has taken and not yet written: no
        caller can run between its two passes (:func:`write_out`)."""
        unsent = self.buffered + self._in_flight
        transport = self._transport
        if transport is not None:
            unsent += transport.get_write_buffer_size()
        return unsent

    def wrote_since_probe(self) -> bool:
        """Data was taken for writing since the last :meth:`lag` (the hub's tick)."""
        return self._wrote

    def settled(self) -> bool:
        """Nothing of this stream is left in the process (:meth:`unsent` is 0)."""
        return not self.unsent()

    def discard_queue(self) -> None:
        """Drop what is queued (a drain that recorded a position before it: the reconnect
        sends it again)."""
        self._chunks = []
        self.buffered = 0
        self._release_drain()

    def take(self) -> bytes:
        """Everything queued, as one write (coalescing), or b"" when nothing is."""
        self._dirty = False
        if not self._chunks:
            return b""
        queue = self._take_queue()
        return queue if isinstance(queue, bytes) else b"".join(queue)

    def _take_queue(self) -> bytes | list[bytes]:
        """The queue (not empty), taken: one frame as itself, popped from the list, which
        stays (no list made per write: one frame per write is the usual case); more as the
        list, replaced by a new one. The connection's count and drain waiter follow."""
        queue = self._chunks
        taken: bytes | list[bytes]
        if len(queue) == 1:
            taken = queue.pop()
            self.buffered -= len(taken)
        else:
            taken, self._chunks = queue, []
            self.buffered -= sum(map(len, queue))
        self._wrote = True
        if self._drain_waiter is not None:
            self._release_drain()
        return taken

    async def drained(self, limit: int) -> None:
        """Return once at most ``limit`` bytes are queued (or the stream closed): the queue
        empties as the client really reads, so a producer that awaits this (resume) goes at
        the client's pace. No polling: ``take`` wakes it."""
        if self.buffered <= limit or self.closed:
            return
        self._drain_limit = limit
        self._drain_waiter = asyncio.get_running_loop().create_future()
        await self._drain_waiter

    def _release_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and (self.closed or self.buffered <= self._drain_limit):
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self, reason: CloseReason | Literal["disconnect"]) -> None:
        """Mark the stream for closing and wake its writer. What is queued is still written
        on a deliberate close (shutdown, revoked); it is dropped for an evicted or gone
        client."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._held = None
        self._held_bytes = 0
        if reason in EVICTIONS or reason == "disconnect":
            self._chunks = []
            self.buffered = 0
        if reason in EVICTIONS:
            # every path that evicts comes through here, so every eviction is counted
            if self._stats is not None:
                self._stats.evictions[reason] += 1
            log.info("evicted key=%s: %s (cap %d bytes)", self.access_key, reason, self.cap)
        self._release_drain()
        self._wake()

    def retry_hint(self) -> int:
        """The reconnect hint for this stream, ms: ``retry_ms`` plus 0..``retry_jitter_ms`` at
        random, so the clients of one drain (or one crash) do not all come back at once."""
        return self._retry_ms + int(random.random() * self._retry_jitter_ms)

    def lag(self, now: float) -> float:
        """Seconds the oldest byte written to this stream's socket has been waiting for the
        client's TCP to acknowledge it, at ``now`` (monotonic), or 0.0 when none is waiting
        or the kernel cannot tell. For the hub's timer: two system calls, only for a stream
        written to since the last call or still behind. A client that stopped reading keeps
        its receive window shut, so what was written stays unacknowledged in our send queue
        and ages; what its own kernel already took (its receive buffer) is acknowledged and
        cannot be seen here.

        Each call records how many bytes the kernel has taken so far (acknowledged plus
        unacknowledged); the oldest record above the acknowledged count is the earliest time
        the oldest unacknowledged byte is known to have been there (a lower bound, one tick
        coarse)."""
        probe = self._progress
        if probe is None or not (self._wrote or self._marks):
            return 0.0
        self._wrote = False
        try:
            progress = probe()
        except (OSError, ValueError):  # the socket is gone (its fd -1 once closed: ValueError,
            # seen killing the hub timer): the disconnect closes the stream
            self._progress = None
            return 0.0
        if progress is None:
            self._progress = None  # an old kernel: never again
            return 0.0
        acked, unacked = progress
        if not unacked:
            self._marks = None
            return 0.0
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        taken = acked + unacked  # only grows
        if not marks or marks[-1][0] < taken:
            marks.append((taken, now))
        while marks[0][0] <= acked:  # the newest is above ``acked``: the loop stops there
            marks.popleft()
        return now - marks[0][1]

    def abort_write(self) -> None:
        """End a write stuck past the deadline: under uvicorn the transport is aborted (the
        pending ``send`` returns, the socket is gone); elsewhere the stream's task is
        cancelled, and the edge knows it was us by :attr:`abort_requested`.

        The socket closes with a reset (``SO_LINGER`` 0): a plain close would leave the kernel
        trickling its whole send queue (up to ``send_buffer``) to the client that could not
        take it, as an orphan, and the client would read that backlog before learning. Not
        after a shutdown: a drain recorded where each stream stood counting what had reached
        the kernel as delivered, which a reset would discard; the process ends soon anyway."""
        self.abort_requested = True
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            if sock is not None and self.close_reason != "shutdown":
                # ValueError: uvloop's socket object of a connection already closed (fd -1)
                with contextlib.suppress(OSError, AttributeError, ValueError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self._transport.abort()
        elif self._task is not None:
            self._task.cancel()

    # -- resume ------------------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """Between :meth:`begin_replay` and :meth:`end_replay`."""
        return self._held is not None

    def begin_replay(self) -> None:
        """Hold live frames (with their ids) until :meth:`end_replay`."""
        self._held = []
        self._held_bytes = 0
        self.held_overflow = None

    def end_replay(self, last_sent: StreamId) -> None:
        """Release the live frames held during replay, skipping ids replay already sent, and
        keep skipping them if they are still on their way. The caller has read history at
        least up to :attr:`held_overflow`."""
        held, self._held = self._held or [], None
        self._held_bytes = 0
        released = [frame for stream_id, frame in held if stream_id > last_sent]
        if released and not self.closed:
            # The handover is bounded already (the replay's half of the cap, the hold's half):
            # it must not evict the reader the replay paced.
            self._chunks.extend(released)
            self.buffered += sum(map(len, released))
            if not self._dirty:
                self._signal()
        if not held or held[-1][0] <= last_sent:
            self._floor = last_sent

    # -- the writer task ---------------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self._send is not None:
            self._ensure_writer()

    def _resume_direct(self) -> None:
        """The transport drained: what is queued goes out with the hub's next flush."""
        if self._chunks and not self._dirty:
            self._signal()

    async def _wait(self) -> None:
        """Return once the writer task has something to do: queued data it must write (no
        sink, or the sink is paused) or the close."""
        if self.closed or (self._chunks and (self.sink is None or self.sink.blocked)):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        await waiter

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """Writes through ASGI send while the direct path cannot: no sink, a full transport
        (send waits for the drain, and the write deadline measures that wait), the close."""
        send, clock = self._send, self._clock
        assert send is not None
        while True:
            await self._wait()
            data = self.take()
            if data:
                # The hub's timer evicts a connection whose write is stuck past the deadline.
                self.writing_since = clock() or 1e-9
                self._in_flight = len(data)
                try:
                    await send(body(data))
                except Exception:  # a broken transport (uvloop's, closed): no goodbye either
                    self._in_flight = 0
                    self.writing_since = 0.0
                    self.write_failed()
                    self.abort_write()  # a client still there learns at once, and reconnects
                    return
                self._in_flight = 0
                self.writing_since = 0.0
            if self.closed:
                if self._chunks:
                    continue  # a deliberate close still writes what was queued meanwhile
                break
            sink = self.sink
            if sink is not None and not sink.blocked:
                self._resume_direct()  # drained: the hub's flush takes over again
                return
        reason = self.close_reason
        # A stuck or vanished client cannot take a goodbye; every other close is announced.
        if reason not in (None, "disconnect", "write_timeout") and not self.abort_requested:
            assert reason is not None and reason != "disconnect"
            self.writing_since = clock() or 1e-9
            if reason != "shutdown" or self.handoff is None:
                goodbye = server_close_frame(reason, self.retry_hint(), field=self.retry_field)
                await send(body(goodbye))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.writing_since = 0.0

    async def until_gone(self, receive: Receive) -> None:
        """For a server without the direct path, which may not wake a pending ``receive()``
        when the response ends: return when the client disconnects or the writer finishes."""
        listener = asyncio.ensure_future(self._listen_for_disconnect(receive))
        assert self._writer is not None
        try:
            await asyncio.wait({listener, self._writer}, return_when="FIRST_COMPLETED")
        finally:
            listener.cancel()
            await asyncio.wait({listener})

    async def _listen_for_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.close("disconnect")

    async def finish(self) -> None:
        """The stream is over: mark it gone and wait for its writer task to end."""
        self.close("disconnect")
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.wait({writer})
