"""The publisher's queue (``publisher.buffer``) and error classes (``publisher.errors``),
pure: each overflow policy keeps what it says and counts what it drops, never an event in
flight; a call reports ids only when all are confirmed; every Redis error has one class."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

from publisher.buffer import BufferFull, Call, OutageBuffer, Pending
from publisher.errors import classify, outcome_unknown


def test_overflow_policies_are_explicit_and_counted() -> None:
    def items(*seqs: int) -> list[Pending]:
        return [Pending(s, b"%d" % s) for s in seqs]

    oldest = OutageBuffer(3, "drop_oldest")
    oldest.add(items(1, 2, 3))
    oldest.add(items(4, 5))
    assert [p.seq for p in oldest.peek(10)] == [3, 4, 5] and oldest.dropped == 2
    oldest.add(items(6, 7, 8, 9))
    assert [p.seq for p in oldest.peek(10)] == [7, 8, 9] and oldest.dropped == 6

    newest = OutageBuffer(3, "drop_newest")
    newest.add(items(1, 2))
    newest.add(items(3, 4, 5))
    assert [p.seq for p in newest.peek(10)] == [1, 2, 3] and newest.dropped == 2

    strict = OutageBuffer(2, "raise")
    strict.add(items(1, 2))
    with pytest.raises(BufferFull, match="capacity 2"):
        strict.add(items(3))
    assert len(strict) == 2
    with pytest.raises(ValueError, match="policy"):
        OutageBuffer(1, "drop_everything")  # type: ignore[arg-type]


def test_overflow_never_drops_an_event_in_flight_and_settles_dropped_calls() -> None:
    call = Call(0, 4)
    queue = OutageBuffer(3, "drop_oldest")
    queue.add([Pending(s, b"", call) for s in range(3)])
    assert [p.seq for p in queue.take(2)] == [0, 1]  # the writer's attempt holds 0 and 1
    queue.add([Pending(3, b"", call)])
    assert [p.seq for p in queue.peek(10)] == [0, 1, 3] and queue.dropped == 1
    assert call.ids[2] is None and call.unsettled == 3  # 2 is settled: not written
    assert [p.seq for p in queue.pop_through(1)] == [0, 1] and queue.in_flight == 0

    # A waiting call's batch is queued whole; the bound applies once it gives up.
    big = OutageBuffer(2, "drop_newest")
    big.extend([Pending(s, b"") for s in range(5)])
    big.take(1)
    big.trim()
    assert [p.seq for p in big.peek(10)] == [0, 1] and big.dropped == 3


def test_events_sent_without_an_answer_stay_in_doubt_and_are_never_dropped() -> None:
    queue = OutageBuffer(3, "drop_oldest")
    queue.add([Pending(s, b"") for s in range(3)])
    queue.take(2)
    queue.doubt(1)  # the attempt carrying 0 and 1 timed out: they may be in Redis
    queue.release()
    assert queue.in_flight == 2
    queue.add([Pending(3, b""), Pending(4, b"")])
    assert [p.seq for p in queue.peek(10)] == [0, 1, 4] and queue.dropped == 2
    doubt, left = queue.drain()
    assert [p.seq for p in doubt] == [0, 1] and [p.seq for p in left] == [4]


def test_which_failures_leave_an_attempt_in_doubt() -> None:
    assert outcome_unknown(rex.TimeoutError("Timeout reading from socket"))
    assert outcome_unknown(rex.ConnectionError("Connection closed by server."))
    assert outcome_unknown(TimeoutError())
    assert not outcome_unknown(rex.ConnectionError("Error 111 connecting to 127.0.0.1:1."))
    assert not outcome_unknown(rex.TimeoutError("Timeout connecting to server"))
    assert not outcome_unknown(ConnectionRefusedError())
    assert not outcome_unknown(rex.ResponseError("OOM command not allowed"))
    assert not outcome_unknown(rex.ResponseError("WRONGTYPE"))


def test_a_call_reports_ids_only_when_every_event_is_confirmed() -> None:
    woken: list[int] = []
    call = Call(10, 2)
    call.wake = lambda: woken.append(call.unsettled)
    call.settle(10, "1-0")
    assert call.written == [] and woken == []
    call.settle(11, "")  # written by an earlier attempt whose reply was lost: id unknown
    assert call.written == [] and woken == [0]
    done = Call(0, 1)
    done.settle(0, "2-0")
    assert done.written == ["2-0"]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (rex.ConnectionError("Error 111 connecting"), "unreachable"),
        (rex.TimeoutError("Timeout reading from socket"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (OSError("reset"), "unreachable"),
        (rex.BusyLoadingError("LOADING Redis is loading"), "refused"),
        (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), "refused"),
        (rex.ResponseError("OOM command not allowed when used memory > 'maxmemory'"), "refused"),
        (rex.ReadOnlyError("You can't write against a read only replica."), "refused"),
        (rex.NoScriptError("No matching script"), "refused"),
        (rex.AuthenticationError("WRONGPASS invalid username-password pair"), "refused"),
        (rex.NoPermissionError("NOPERM this user has no permissions"), "refused"),
        (rex.ResponseError("MISCONF Redis is configured to save RDB snapshots"), "refused"),
        (rex.ResponseError("BUSY Redis is busy running a script"), "refused"),
        (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), "rejected"),
        (rex.ResponseError("ERR Error running script: attempt to compare nil"), "rejected"),
        (ValueError("a bug"), "rejected"),
    ],
)
def test_every_redis_error_has_one_class(error: BaseException, kind: str) -> None:
    assert classify(error) == kind
