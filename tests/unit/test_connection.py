"""One stream's write machine (``gateway.fanout.connection``), in process: the byte cap, the
close rules, the direct path's dirty marking, the writer task through a fake ASGI ``send``,
and the replay hold with its floor. No sockets; a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fanout.connection import Connection, chunk, write_out
from gateway.fanout.filters import Filter
from gateway.fanout.frames import CloseReason, server_close_frame
from tests.support.fakes import FakeClock, FakeDirect, FakeSink, RecordingSend
from tests.support.wait import until

RETRY_MS = 1500
END = {"type": "http.response.body", "body": b"", "more_body": False}


def _connection(cap: int = 1 << 20, clock: FakeClock | None = None) -> Connection:
    return Connection(Filter(), "AK", cap, clock=clock or FakeClock(), retry_ms=RETRY_MS)


def _never_notified(connection: Connection) -> None:
    raise AssertionError("a connection without a sink never asks the hub for a flush")


async def _no_disconnect() -> MutableMapping[str, Any]:
    await asyncio.Event().wait()  # the client never goes: only the writer ends the stream
    raise AssertionError("unreachable")


async def _writing(send: RecordingSend, clock: FakeClock | None = None) -> Connection:
    """A connection on a server without the direct path: everything goes through ``send``."""
    connection = _connection(clock=clock)
    connection.attach(send, None)
    connection.start_writing(None, _never_notified)
    return connection


# -- the cap ------------------------------------------------------------------------------------


def test_the_push_that_crosses_the_cap_evicts_and_drops_the_queue() -> None:
    connection = _connection(cap=10)
    assert connection.push(b"x" * 6) is False
    assert connection.push(b"y" * 4) is False  # exactly at the cap: still queued
    assert connection.buffered == 10 and not connection.closed
    assert connection.push(b"z") is True
    assert connection.closed and connection.close_reason == "slow_consumer"
    assert connection.buffered == 0 and connection.take() == b""
    assert connection.push(b"w") is False  # closed: neither queued nor evicted again
    assert connection.take() == b""


def test_frames_held_during_replay_past_their_share_are_left_to_history() -> None:
    # A live burst during a long replay never evicts the reader: past half the cap the held
    # frames are dropped (history has them all) and replay is told how far to read.
    connection = _connection(cap=20)
    connection.begin_replay()
    assert connection.push(b"a" * 8, (1, 0)) is False
    assert connection.take() == b"" and connection.buffered == 0  # held, not queued
    assert connection.held_overflow is None
    assert connection.push(b"b" * 8, (2, 0)) is False  # 16 > 20 // 2: over its share
    assert not connection.closed and connection.held_overflow == (2, 0)
    assert connection.push(b"c" * 8, (3, 0)) is False  # held again, after the drop
    connection.end_replay((2, 0))  # replay read history up to the overflow
    assert connection.take() == b"c" * 8


# -- the close rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        ("shutdown", True),
        ("revoked", True),
        ("resume_failed", True),
        ("slow_consumer", False),
        ("write_timeout", False),
        ("disconnect", False),
    ],
)
def test_a_deliberate_close_keeps_the_queue_and_an_eviction_drops_it(
    reason: CloseReason, kept: bool
) -> None:
    connection = _connection()
    connection.push(b"one\n\n")
    connection.push(b"two\n\n")
    connection.close(reason)
    assert connection.closed and connection.close_reason == reason
    assert connection.buffered == (10 if kept else 0)
    assert connection.take() == (b"one\n\ntwo\n\n" if kept else b"")
    assert connection.buffered == 0
    connection.close("slow_consumer")  # the first reason stands
    assert connection.close_reason == reason
    assert connection.push(b"late\n\n") is False and connection.take() == b""


def test_a_close_during_replay_drops_the_held_frames() -> None:
    connection = _connection()
    connection.begin_replay()
    connection.push(b"held\n\n", (5, 0))
    connection.close("shutdown")
    connection.end_replay((1, 0))  # the resume task finishing late must not resurrect them
    assert connection.take() == b""


# -- the writer task (an ASGI server without the direct path) -----------------------------------


@pytest.mark.anyio
async def test_a_send_that_raises_closes_the_stream_and_ends_its_request() -> None:
    """uvloop's transport of a closed connection raises RuntimeError on write: the stream
    closes (``write_error``, logged), its writer task ends with nothing left in flight and
    no goodbye tried on the broken transport, and the stream's request is ended (here, with
    no transport to abort, its task is cancelled), so a client still there learns at once."""

    class Broken(RecordingSend):
        async def __call__(self, message: MutableMapping[str, Any]) -> None:
            await super().__call__(message)
            raise RuntimeError("unable to perform operation: the handler is closed")

    send = Broken()
    connection = _connection()

    async def request() -> None:  # the stream's request task, as the HTTP edge runs it
        connection.attach(send, None)
        connection.start_writing(None, _never_notified)
        await asyncio.sleep(3600)

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    connection.push(b"data: 0\n\n")
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled() and connection.abort_requested
    # write_error is said by the writer's own except (the task did not die with the error)
    assert connection.closed and connection.close_reason == "write_error"
    assert connection.writing_since == 0.0 and connection.unsent() == 0
    await connection.finish()
    assert len(send.messages) == 1  # no goodbye tried on the broken transport


@pytest.mark.anyio
async def test_the_writer_task_coalesces_the_queue_into_one_send() -> None:
    send = RecordingSend()
    connection = await _writing(send)
    for i in range(3):
        connection.push(b"data: %d\n\n" % i)
    await until(lambda: len(send.messages) == 1, 2, "the first send")
    assert send.messages == [
        {
            "type": "http.response.body",
            "body": b"data: 0\n\ndata: 1\n\ndata: 2\n\n",
            "more_body": True,
        }
    ]
    assert connection.buffered == 0
    await connection.finish()


@pytest.mark.anyio
async def test_a_send_in_flight_is_timed_from_the_clock_for_the_write_deadline() -> None:
    clock, send = FakeClock(), RecordingSend()
    connection = await _writing(send, clock)
    send.gate.clear()  # the client stops reading: send waits
    connection.push(b"stuck\n\n")
    await until(lambda: connection.writing_since == clock.now, 2, "the write to start")
    assert connection.buffered == 0 and send.messages == []
    connection.push(b"behind\n\n")  # queued behind the stuck write, not sent around it
    clock.now += 30
    send.gate.set()
    await until(lambda: send.body == b"stuck\n\nbehind\n\n", 2, "both writes")
    await until(lambda: connection.writing_since == 0.0, 2, "no write in flight")
    await connection.finish()


@pytest.mark.parametrize(
    ("reason", "after_first"),
    [
        ("shutdown", b"queued\n\n" + server_close_frame("shutdown", RETRY_MS)),
        ("revoked", b"queued\n\n" + server_close_frame("revoked", RETRY_MS)),
        ("slow_consumer", server_close_frame("slow_consumer", RETRY_MS)),
        ("write_timeout", b""),
        ("disconnect", b""),
    ],
)
@pytest.mark.anyio
async def test_the_writer_ends_the_stream_by_the_close_rules(
    reason: CloseReason, after_first: bytes
) -> None:
    send = RecordingSend()
    connection = await _writing(send)
    connection.push(b"first\n\n")
    await until(lambda: send.body == b"first\n\n", 2, "the first write")
    connection.push(b"queued\n\n")  # the writer is woken for it, but the close comes first
    connection.close(reason)
    await asyncio.wait_for(connection.until_gone(_no_disconnect), 2)  # the writer finished
    assert send.body == b"first\n\n" + after_first
    # announced closes end the response; a stuck or vanished client gets nothing more
    assert send.ended is (after_first != b"")
    if send.ended:
        assert send.messages[-1] == END
    await connection.finish()


@pytest.mark.anyio
async def test_a_shutdown_during_a_slow_write_still_writes_what_was_queued() -> None:
    send = RecordingSend()
    connection = await _writing(send)
    send.gate.clear()
    connection.push(b"first\n\n")
    await until(lambda: connection.writing_since != 0.0, 2, "the first write to start")
    connection.push(b"queued\n\n")
    connection.close("shutdown")
    send.gate.set()
    try:
        await asyncio.wait_for(connection.until_gone(_no_disconnect), 2)
        assert send.body == b"first\n\nqueued\n\n" + server_close_frame("shutdown", RETRY_MS)
    finally:
        await connection.finish()


@pytest.mark.anyio
async def test_an_aborted_write_aborts_the_transport_and_sends_no_goodbye() -> None:
    send, direct = RecordingSend(), FakeDirect()
    connection = _connection()
    connection.attach(send, direct)
    connection.start_writing(None, _never_notified)  # no chunked response: the writer task
    send.gate.clear()
    connection.push(b"stuck\n\n")
    await until(lambda: connection.writing_since != 0.0, 2, "the write to start")
    connection.close("shutdown")  # say the replica is stopping while the write is stuck ...
    connection.abort_write()  # ... and the deadline passes
    assert direct.transport.aborted and connection.abort_requested
    send.gate.set()
    await asyncio.wait_for(connection.until_gone(_no_disconnect), 2)
    assert send.body == b"stuck\n\n" and not send.ended
    await connection.finish()


# -- the direct path ----------------------------------------------------------------------------


def test_a_direct_connection_asks_for_one_flush_per_batch() -> None:
    notified: list[Connection] = []
    sink, connection = FakeSink(), _connection()
    connection.push(b"before\n\n")
    connection.go_direct(sink, notified.append)
    assert notified == [connection]  # data was waiting: flush at once
    write_out([connection])
    assert sink.writes == [b"before\n\n"]
    write_out([connection])
    assert sink.writes == [b"before\n\n"]  # nothing left
    connection.push(b"a\n\n")
    connection.push(b"b\n\n")
    assert notified == [connection, connection]  # one request for the batch
    write_out([connection])
    connection.push(b"c\n\n")
    assert notified == [connection, connection, connection]
    assert sink.writes == [b"before\n\n", b"a\n\nb\n\n"]


class FramedSink(FakeSink):
    """Keeps each framed chunk as written, to see which ones are one object."""

    def __init__(self) -> None:
        super().__init__()
        self.framed: list[bytes] = []

    def write_chunk(self, framed: bytes) -> None:
        self.framed.append(framed)
        super().write_chunk(framed)


def test_the_same_frame_is_framed_once_for_every_connection_of_a_flush() -> None:
    frame = b"data: shared\n\n"
    connections = [_connection() for _ in range(3)]
    sinks = [FramedSink() for _ in connections]
    for connection, sink in zip(connections, sinks, strict=True):
        connection.go_direct(sink, lambda c: None)
        connection.push(frame)
    write_out(connections)
    framed = [sink.framed[0] for sink in sinks]
    assert framed[0] is framed[1] is framed[2] and framed[0] == chunk(frame)
    assert all(sink.writes == [frame] for sink in sinks)


class BrokenSink(FakeSink):
    def write_chunk(self, framed: bytes) -> None:
        raise ConnectionResetError("gone")


def test_a_write_that_raises_closes_only_its_own_stream() -> None:
    bad, good = _connection(), _connection()
    good_sink = FakeSink()
    bad.go_direct(BrokenSink(), lambda c: None)
    good.go_direct(good_sink, lambda c: None)
    for connection in (bad, good):
        connection.push(b"x\n\n")
    write_out([bad, good])
    assert bad.closed and bad.close_reason == "write_error"
    assert not good.closed and good_sink.writes == [b"x\n\n"]


def test_a_paused_or_closed_sink_is_not_written_directly() -> None:
    notified: list[Connection] = []
    sink, connection = FakeSink(), _connection()
    connection.go_direct(sink, notified.append)
    sink.blocked = True
    connection.push(b"a\n\n")
    write_out([connection])
    assert sink.writes == [] and connection.buffered == 3  # left to the writer task
    sink.blocked = False
    connection.push(b"b\n\n")
    write_out([connection])
    assert sink.writes == [b"a\n\nb\n\n"]
    connection.push(b"c\n\n")
    connection.close("shutdown")
    write_out([connection])
    assert sink.writes == [b"a\n\nb\n\n"]  # the close is the writer task's


class ModelSink(FakeSink):
    """A sink that may be paused, broken, or pause itself inside a write (as a transport past
    its high-water mark calls its protocol's ``pause_writing``)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.pauses_on_write = False

    def write_chunk(self, framed: bytes) -> None:
        if self.broken:
            raise ConnectionResetError("gone")
        super().write_chunk(framed)
        if self.pauses_on_write:
            self.blocked = True


_FRAMES = [b"data: %d\n\n" % n for n in range(3)]  # shared objects, as in a broadcast
_MODEL_CAP = 40  # four frames: pushes past it evict
_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["push", "push", "push", "pause", "resume", "fill", "break", "close", "flush"]
        ),
        st.integers(0, 3),
        st.integers(0, len(_FRAMES) - 1),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(_OPS)
def test_flushes_write_each_queue_once_in_order(ops: list[tuple[str, int, int]]) -> None:
    """Model-based: four direct streams with a small cap, frames pushed, sinks paused,
    resumed, broken or pausing themselves within a write, streams closed, flushes of the
    notified ones plus a duplicate. Each push to an open stream asks for a flush; each flush
    writes a stream's whole queue as one chunk or nothing; what a sink got is every frame
    pushed while its stream was open, in order, up to the last flush that could write it; a
    stream over its cap or whose write raised is closed with its queue dropped. (No writer
    task here: a paused stream's queue waits; tests below cover the handback.)"""
    dirty: list[Connection] = []
    connections = [_connection(cap=_MODEL_CAP) for _ in range(4)]
    sinks = [ModelSink() for _ in connections]
    for connection, sink in zip(connections, sinks, strict=True):
        connection.go_direct(sink, dirty.append)
    queued: list[list[bytes]] = [[] for _ in connections]
    written = [b"" for _ in connections]
    dropped = [False for _ in connections]  # evicted: slow_consumer or write_error
    for op, i, f in ops:
        connection, sink = connections[i], sinks[i]
        if op == "push":
            was_open = not connection.closed
            evicted = connection.push(_FRAMES[f])
            if was_open:
                size = sum(map(len, queued[i])) + len(_FRAMES[f])
                assert evicted is (size > _MODEL_CAP)
                if evicted:
                    assert connection.close_reason == "slow_consumer"
                    queued[i], dropped[i] = [], True
                else:
                    queued[i].append(_FRAMES[f])
                    assert connection in dirty  # asked for a flush
        elif op == "pause":
            sink.blocked = True
        elif op == "resume":
            sink.blocked = sink.pauses_on_write = False
        elif op == "fill":
            sink.pauses_on_write = True
        elif op == "break":
            sink.broken = True
        elif op == "close":
            connection.close("shutdown")  # its queue is the writer task's now
        else:
            before = [len(s.writes) for s in sinks]
            paused = [s.blocked for s in sinks]
            open_ = [not c.closed for c in connections]
            batch, dirty[:] = [*dirty, connection], []  # a duplicate does no harm
            write_out(batch)
            for n, (c, s) in enumerate(zip(connections, sinks, strict=True)):
                assert len(s.writes) - before[n] <= 1  # one chunk per stream per flush
                if c in batch and queued[n] and open_[n] and not paused[n]:
                    if s.broken:
                        assert c.closed and c.close_reason == "write_error"
                        dropped[n] = True
                    else:
                        written[n] += b"".join(queued[n])
                    queued[n] = []
        for n, (c, s) in enumerate(zip(connections, sinks, strict=True)):
            assert b"".join(s.writes) == written[n]
            assert c.buffered == (0 if dropped[n] else sum(map(len, queued[n])))


@pytest.mark.anyio
async def test_a_write_in_flight_hands_back_to_the_flush_when_it_ends() -> None:
    """A flush that finds the writer task busy leaves the queue to it, and asks for nothing
    more: the task hands the stream back to the hub's flush when its write ends."""
    send, sink, dirty = RecordingSend(), FakeSink(), []
    connection = _connection()
    connection.attach(send, None)
    connection.go_direct(sink, dirty.append)
    sink.blocked = True
    send.gate.clear()  # the client stopped reading: the writer's send blocks
    connection.push(b"a\n\n")
    write_out(dirty)
    dirty.clear()  # paused: the writer task is woken and takes it
    await until(lambda: connection.writing_since > 0, 2, "the writer task's send")
    sink.blocked = False
    connection.push(b"b\n\n")
    assert dirty == [connection]
    write_out(dirty)
    dirty.clear()  # a write in flight: nothing written directly
    assert sink.writes == []
    send.gate.set()  # the send ends; the writer hands back to the hub
    await until(lambda: dirty == [connection], 2, "the handback to the flush")
    write_out(dirty)
    assert send.body == b"a\n\n" and sink.writes == [b"b\n\n"]
    await connection.finish()


def test_a_stream_whose_take_raises_is_closed_and_the_others_still_written() -> None:
    class Exploding(FakeSink):
        @property
        def blocked(self) -> bool:
            raise RuntimeError("boom")

        @blocked.setter
        def blocked(self, value: bool) -> None:
            pass

    good, bad, other = _connection(), _connection(), _connection()
    sinks = [FakeSink(), Exploding(), FakeSink()]
    for connection, sink in zip((good, bad, other), sinks, strict=True):
        connection.go_direct(sink, lambda c: None)
        connection.push(b"x\n\n")
    write_out([good, bad, other])
    assert bad.closed and bad.close_reason == "write_error" and bad.buffered == 0
    assert sinks[0].writes == [b"x\n\n"] and sinks[2].writes == [b"x\n\n"]
    assert not good.closed and not other.closed


def test_chunk_framing() -> None:
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(b"x" * 255).startswith(b"ff\r\n")


# -- resume: the hold and the floor -------------------------------------------------------------


def test_replay_holds_live_frames_and_releases_those_after_its_last_id() -> None:
    connection = _connection()
    connection.begin_replay()
    for n in (1, 2, 3):
        assert connection.push(b"live %d\n\n" % n, (n, 0)) is False
    assert connection.take() == b"" and connection.buffered == 0
    connection.push(b"replayed\n\n")  # replay itself writes without ids, past the hold
    assert connection.take() == b"replayed\n\n"
    connection.end_replay((2, 0))
    assert connection.take() == b"live 3\n\n"
    assert connection.buffered == 0
    # a held frame newer than the replay was released: no floor, live ids flow on
    connection.push(b"live 4\n\n", (4, 0))
    assert connection.take() == b"live 4\n\n"


@pytest.mark.parametrize("held", [[], [(2, 0), (3, 0)]])
def test_the_floor_drops_live_frames_replay_already_sent(held: list[tuple[int, int]]) -> None:
    connection = _connection()
    connection.begin_replay()
    for stream_id in held:
        connection.push(b"held\n\n", stream_id)
    connection.end_replay((3, 0))  # history ran ahead of the channel up to 3-0
    assert connection.take() == b"" and connection.buffered == 0
    assert connection.push(b"late 2\n\n", (2, 0)) is False
    assert connection.push(b"late 3\n\n", (3, 0)) is False
    assert connection.take() == b""
    connection.push(b"new 4\n\n", (4, 0))
    connection.push(b"new 5\n\n", (5, 0))
    assert connection.take() == b"new 4\n\nnew 5\n\n"


def test_the_handover_after_a_replay_never_evicts_the_reader() -> None:
    # the replay paces its own frames at half the cap and the hold keeps at most the other
    # half: releasing both must not count as a slow consumer
    connection = _connection(cap=1000)
    connection.begin_replay()
    connection.push(b"h" * 450, (10, 0))  # held
    connection.push(b"r" * 600)  # replayed (no id), queued
    connection.end_replay((5, 0))
    assert not connection.closed
    assert connection.take() == b"r" * 600 + b"h" * 450


def test_lag_is_the_age_of_the_oldest_unacknowledged_byte() -> None:
    """``lag`` from the kernel's counters (a fake here): bytes the client's TCP has not
    acknowledged age from the first tick that saw them taken; acknowledging them resets it,
    a stream with nothing written is not even asked, and a vanished socket reads as 0."""
    conn = _connection()
    kernel = {"acked": 0, "unacked": 0, "asked": 0}

    def progress() -> tuple[int, int]:
        kernel["asked"] += 1
        return kernel["acked"], kernel["unacked"]

    conn._progress = progress
    assert conn.lag(0.0) == 0.0 and kernel["asked"] == 0  # nothing written: not asked
    conn.push(b"a" * 100)
    conn.take()
    kernel["unacked"] = 100
    assert conn.lag(1.0) == 0.0  # first seen now
    assert conn.lag(3.0) == 2.0  # nothing acknowledged since
    conn.push(b"b" * 50)
    conn.take()
    kernel["acked"], kernel["unacked"] = 60, 90  # part of the first write acknowledged
    assert conn.lag(4.0) == 3.0  # its rest is still the oldest
    kernel["acked"], kernel["unacked"] = 120, 30  # the first write is through
    assert conn.lag(5.0) == 1.0  # the second was first seen at 4.0
    kernel["acked"], kernel["unacked"] = 150, 0
    assert conn.lag(6.0) == 0.0
    asked = kernel["asked"]
    assert conn.lag(7.0) == 0.0 and kernel["asked"] == asked  # caught up: not asked again

    def gone() -> tuple[int, int]:
        raise OSError("bad file descriptor")

    conn._progress = gone
    conn.push(b"c")
    conn.take()
    assert conn.lag(8.0) == 0.0


def test_server_close_hints_are_jittered() -> None:
    """Each stream's reconnect hint is retry_ms plus 0..retry_jitter_ms at random."""
    conn = Connection(Filter(), "AK", 1024, clock=FakeClock(), retry_ms=1000, retry_jitter_ms=500)
    hints = {conn.retry_hint() for _ in range(200)}
    assert min(hints) >= 1000 and max(hints) < 1500 and len(hints) > 50
    assert b"retry: 1234\n" in server_close_frame("shutdown", 1234, field=True)
    assert b"retry:" not in server_close_frame("shutdown", 1234)
