"""What the asyncio and the blocking publisher share: the one ordered queue every event goes
through, sequence numbers, the outcome of each write attempt, health and counters.

One writer (an asyncio task, or a thread) sends the head of the queue, one attempt at a time
on one connection, so the script sees sequence numbers in order and its exactly-once check
(skip numbers at or below the last applied one) never mistakes a concurrent call for a retry.
Calls that arrive while an attempt is in flight go out together in the next one (group
commit). Every method here takes the core's lock and never does I/O under it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import redis.exceptions as rex

from .buffer import Call, OutageBuffer, OverflowPolicy, Pending
from .bus import Bus
from .errors import (
    ErrorClass,
    PublisherClosed,
    PublishRejected,
    classify,
    explain,
    outcome_unknown,
)
from .keys import Keys
from .partitions import PartitionMismatch, Partitions
from .report import CloseReport
from .schema import KernelEvent, decode_event, encode_event

__all__ = ["SEQ_TTL", "Chunk", "CloseReport", "Core", "Health", "HealthState"]

log = logging.getLogger("publisher.client")

SEQ_TTL: Final = 7 * 24 * 3600
#: at most this often (seconds) a still-failing writer logs at WARNING (DEBUG in between)
_LOG_EVERY: Final = 30.0

HealthState = Literal["ok", "unreachable", "refused", "rejected", "closed"]

#: what one chunk of an attempt came back as: its ids, or the error Redis answered it with
ChunkResult = list[str] | BaseException


@dataclass(frozen=True, slots=True)
class Chunk:
    """One publish script call of an attempt: its KEYS (its partition's history, this
    publisher's sequence key there, the epoch), its ARGV, and how many events it carries."""

    keys: list[str]
    args: list[bytes | str]
    size: int


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of a publisher's state and counters (events, since it started)."""

    #: ``ok`` the last write succeeded; ``unreachable``/``refused`` the last attempt failed
    #: that way and the queue is being retried with backoff; ``rejected`` the last attempt
    #: was rejected (its events discarded); ``closed``
    state: HealthState
    #: ``time.monotonic()`` when ``state`` was entered
    since: float
    #: the last error, as ``"<class>: <message>"``, or None
    last_error: str | None
    #: events waiting (queued, in flight or held through an outage)
    buffered: int
    published: int
    dropped: int
    rejected: int
    #: failed attempts, by error class
    errors: Mapping[ErrorClass, int] = field(default_factory=dict)


def _classify(exc: BaseException) -> ErrorClass:
    """:func:`~publisher.errors.classify`, and for a :class:`PartitionMismatch` (raised before
    the first write: a configuration error, not Redis'): ``refused`` when the Redis user may
    not read or record the number of partitions (a NOPERM, chained: the events stay queued,
    as for any other NOPERM, until the ACL is regenerated), ``rejected`` when Redis records
    another number than this process has (no retry of this process can succeed)."""
    if isinstance(exc, PartitionMismatch):
        return "refused" if isinstance(exc.__cause__, rex.NoPermissionError) else "rejected"
    return classify(exc)


class Core:
    """The shared state of one publisher (thread-safe)."""

    def __init__(
        self,
        *,
        keys: Keys,
        maxlen: int,
        exact_trim: bool,
        chunk_size: int,
        timeout: float,
        buffer_size: int,
        overflow: OverflowPolicy,
        partitions: int = 1,
    ) -> None:
        """``partitions``: how many partitions the deployment has (every process of it must
        say the same: :func:`publisher.partitions.check_partitions`)."""
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.keys = keys
        self.bus = Bus(self.keys)
        self.partitions = Partitions(keys, partitions)
        name = uuid.uuid4().hex
        #: this publisher's sequence key in each partition (``seq_key``: partition 0's)
        self.seq_keys = [k.publisher_seq(name) for k in self.partitions.keys]
        self.seq_key = self.seq_keys[0]
        #: the next number in each partition (one partition: :attr:`next_seq` is used)
        self.next_in = [0] * partitions
        #: with several partitions, the events of each chunk of the last :meth:`chunks`
        #: (the writer's only: what :meth:`outcome` needs to discard only a rejected chunk)
        self.planned: list[int] = []
        self.maxlen = maxlen
        self.chunk_size = chunk_size
        self.max_batch = chunk_size * 8
        self.timeout = timeout
        self.buffer = OutageBuffer(buffer_size, overflow)
        self.next_seq = 0
        self.lock = threading.Lock()
        self.state: HealthState = "ok"
        self.since = time.monotonic()
        self.last_error: str | None = None
        self.published = 0
        self.rejected = 0
        self.errors: dict[ErrorClass, int] = {}
        self._last_warning = -_LOG_EVERY
        self._failing_since = 0.0
        self._heads = [
            Bus(k).publish_head(maxlen, exact_trim=exact_trim, ttl=SEQ_TTL)
            for k in self.partitions.keys
        ]
        pairs = zip(self.partitions.keys, self.seq_keys, strict=True)
        self._script_keys = [Bus(k).publish_keys(seq) for k, seq in pairs]

    # -- callers --------------------------------------------------------------------------

    def submit(
        self, events: Iterable[KernelEvent], wake: Callable[[], None] | None = None
    ) -> tuple[Call, bool]:
        """Encode (and so validate: a bad event fails the whole batch, nothing is queued),
        number and queue the events; the call, and whether the caller should wait for the
        writer (False while an outage is being retried: the call returns at once).

        Raises :class:`~publisher.schema.InvalidEvent`, :class:`~publisher.buffer.BufferFull`,
        :class:`~publisher.errors.PublisherClosed`."""
        if self.partitions.n > 1:
            events = list(events)  # read twice: their payloads, then their owners
        payloads = [encode_event(event) for event in events]
        with self.lock:
            if self.state == "closed":
                raise PublisherClosed("the publisher is closed")
            call = Call(self.next_seq, len(payloads))
            call.wake = wake  # under the lock: the writer may settle the call at once
            if self.partitions.n == 1:
                items = [Pending(call.first + i, p, call) for i, p in enumerate(payloads)]
            else:
                items = self._numbered(call, events, payloads)
            wait = self.state not in ("unreachable", "refused")
            if wait:  # the caller holds these until it returns; the bound applies then
                self.buffer.extend(items)
            else:
                self.buffer.add(items)  # BufferFull leaves next_seq as it was
            self.next_seq += len(payloads)
            if self.partitions.n > 1:  # numbers of events dropped on the way in stay a gap
                for item in items:
                    self.next_in[item.part] = max(self.next_in[item.part], item.number + 1)
            return call, wait

    def _numbered(
        self, call: Call, events: Iterable[KernelEvent], payloads: list[bytes]
    ) -> list[Pending]:
        """The events of a call as queued items of their partitions, each numbered after
        the last number taken there (under the lock)."""
        taken = list(self.next_in)
        items = []
        for i, (event, payload) in enumerate(zip(events, payloads, strict=True)):
            part = self.partitions.of(event.owner_user_id)
            items.append(Pending(call.first + i, payload, call, part, taken[part]))
            taken[part] += 1
        return items

    def result(self, call: Call) -> list[str]:
        """What a call returns once woken or out of time: every id, or ``[]``."""
        with self.lock:
            call.wake = None
            if call.error is not None:
                raise PublishRejected(explain(call.error)) from call.error
            written = call.written
            if not written:  # gave up: its events stay queued, under the bound
                self.buffer.trim()
            return written

    # -- the writer -----------------------------------------------------------------------

    def take(self) -> list[Pending]:
        with self.lock:
            return self.buffer.take(self.max_batch)

    def chunks(self, items: Sequence[Pending]) -> list[Chunk]:
        """The script calls of an attempt, in queue order: runs of events of one partition,
        at most ``chunk_size`` each. Each names the last number of the one before it in its
        partition (``""`` for the first), so a chunk never runs after one of its partition
        that failed (see the script); chunks of other partitions are independent."""
        if self.partitions.n == 1:
            keys, head = self._script_keys[0], self._heads[0]
            out: list[Chunk] = []
            for i in range(0, len(items), self.chunk_size):
                run = items[i : i + self.chunk_size]
                prev = str(items[i - 1].seq) if i else ""
                args: list[bytes | str] = [*head, str(run[0].seq), prev]
                args += [p.payload for p in run]
                out.append(Chunk(keys, args, len(run)))
            return out
        return self._partitioned_chunks(items)

    def _partitioned_chunks(self, items: Sequence[Pending]) -> list[Chunk]:
        out: list[Chunk] = []
        last: dict[int, int] = {}  # partition -> last number of its chunk before
        i = 0
        while i < len(items):
            part = items[i].part
            j = i + 1
            while j < len(items) and j - i < self.chunk_size and items[j].part == part:
                j += 1
            run = items[i:j]
            prev = str(last[part]) if part in last else ""
            args: list[bytes | str] = [*self._heads[part], str(run[0].number), prev]
            args += [p.payload for p in run]
            out.append(Chunk(self._script_keys[part], args, len(run)))
            last[part] = run[-1].number
            i = j
        self.planned = [c.size for c in out]
        return out

    @property
    def script_keys(self) -> list[str]:
        """The KEYS of partition 0's chunks."""
        return self._script_keys[0]

    def outcome(
        self,
        batch: Sequence[Pending],
        results: Sequence[ChunkResult],
        sizes: Sequence[int] = (),
    ) -> ErrorClass | None:
        """Apply an attempt's per-chunk results: confirm each chunk that came back with ids
        (until the first that did not), then handle that chunk's error. None when the whole
        batch is written (or the publisher is closed: the close reported the batch in
        doubt), else the error's class (the writer backs off unless ``rejected``).
        ``sizes``: the events of each chunk (with several partitions, a rejection discards
        only the rejected chunk's: chunks of other partitions after it may have run, and are
        sent again, which their script skips)."""
        with self.lock:
            if self.state == "closed":
                log.debug("an attempt in doubt at close was answered: %d events", len(batch))
                return None
            done = 0
            for k, result in enumerate(results):
                if isinstance(result, BaseException):
                    if self.partitions.n > 1 and sizes and classify(result) == "rejected":
                        return self._failed(batch[done : done + sizes[k]], result)
                    return self._failed(batch[done:], result)
                if not result:  # the chunk before it did not run: the error said why
                    break
                part = batch[done : done + len(result)]
                for item, stream_id in zip(part, result, strict=True):
                    if item.call is not None:
                        item.call.settle(item.seq, stream_id or "")
                self.buffer.pop_through(part[-1].seq)
                self.published += len(part)
                done += len(part)
            if done < len(batch):  # only after a chunk that failed; a retry decides
                skipped = rex.TryAgainError("TRYAGAIN a chunk was skipped after its predecessor")
                return self._failed(batch[done:], skipped)
            self.buffer.release()
            if self.state != "ok":
                if self.state in ("unreachable", "refused"):
                    log.warning(
                        "redis accepts writes again after %.1f s; %d events still queued",
                        time.monotonic() - self._failing_since,
                        len(self.buffer),
                    )
                self._enter("ok")
            return None

    def failed(self, batch: Sequence[Pending], exc: BaseException) -> ErrorClass | None:
        """The whole attempt raised ``exc`` (nothing confirmed). None once the publisher is
        closed (the close reported the batch; nothing is retried, nothing logged as such)."""
        with self.lock:
            if self.state == "closed":
                log.debug("the attempt in flight at close ended: %s: %s", type(exc).__name__, exc)
                return None
            if outcome_unknown(exc):
                self.buffer.doubt(batch[-1].seq)
            return self._failed(batch, exc)

    def _failed(self, batch: Sequence[Pending], exc: BaseException) -> ErrorClass:
        self.buffer.release()
        kind = _classify(exc)
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = explain(exc)
        misconfigured = isinstance(exc, PartitionMismatch)  # not a bug: no traceback
        if kind == "rejected":
            gone = self.buffer.pop_through(batch[-1].seq)
            self.rejected += len(gone)
            for item in gone:
                if item.call is not None:
                    item.call.fail(exc)
            if misconfigured:
                log.error("configuration error, %d events discarded: %s", len(gone), exc)
            else:
                log.error(
                    "redis rejected %d events, discarded: %s", len(gone), self.last_error,
                    exc_info=None if isinstance(exc, rex.RedisError) else exc,  # a bug
                )  # fmt: skip
            self._enter("rejected")
            return kind
        now = time.monotonic()
        if self.state not in ("unreachable", "refused"):
            self._failing_since = now
        if self.state != kind or now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            if misconfigured:
                log.error(
                    "configuration error, %d events queued, retrying with backoff: %s",
                    len(self.buffer), exc,
                )  # fmt: skip
            else:
                log.warning(
                    "redis %s (%s): %d events queued, retrying with backoff",
                    kind, self.last_error, len(self.buffer),
                )  # fmt: skip
        else:
            log.debug("redis still %s (%s)", kind, self.last_error)
        self._enter(kind)
        self.buffer.trim()
        # Whoever waits on an event that is not written now returns None: it stays queued.
        for item in self.buffer.peek(len(self.buffer)):
            if item.call is not None and item.call.wake is not None:
                item.call.wake()
        return kind

    def _enter(self, state: HealthState) -> None:
        if state != self.state:
            self.state = state
            self.since = time.monotonic()

    # -- state ----------------------------------------------------------------------------

    def health(self) -> Health:
        with self.lock:
            return Health(
                state=self.state,
                since=self.since,
                last_error=self.last_error,
                buffered=len(self.buffer),
                published=self.published,
                dropped=self.buffer.dropped,
                rejected=self.rejected,
                errors=dict(self.errors),
            )

    def close(self) -> CloseReport:
        """Mark closed (later calls raise) and report what is still queued: in doubt (in
        flight, or sent without an answer) or undelivered (never sent)."""
        with self.lock:
            self._enter("closed")
            doubt, left = self.buffer.drain()
            for item in (*doubt, *left):
                if item.call is not None:
                    item.call.settle(item.seq, None)
        report = CloseReport(
            published=self.published,
            undelivered=tuple(decode_event(item.payload) for item in left),
            in_doubt=tuple(decode_event(item.payload) for item in doubt),
            dropped=self.buffer.dropped,
            rejected=self.rejected,
            last_error=self.last_error,
            sequence_key=self.seq_key,
            in_doubt_seqs=tuple(item.seq if item.number < 0 else item.number for item in doubt),
            in_doubt_keys=tuple(self.seq_keys[item.part] for item in doubt)
            if self.partitions.n > 1
            else (),
        )
        if not report.ok:
            log.error("publisher closed: %s", report.summary())
        return report
