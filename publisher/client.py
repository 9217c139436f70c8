"""Publish kernel lifecycle events to Redis: an asyncio and a blocking publisher.

Every publish runs one server-side script that ``XADD``s the payload to the bounded history
stream and ``PUBLISH``es ``<stream id> <payload>`` on the live channel, atomically: a live
message always carries the id that history holds, and history never lacks an id that went
live.

Every event goes through one ordered queue (:mod:`publisher.writer`): a call numbers its
events when it starts, one writer (a task, or a thread for :class:`SyncPublisher`) sends the
head of the queue on one connection, and calls that arrive while an attempt is in flight go
out together in the next one, chunks of ``chunk_size`` events per script call in one
pipeline. So history holds the events in the order the calls started, each exactly once:
the script skips sequence numbers it has already applied (a retry after a lost reply), and
since numbers reach Redis in order, a concurrent call is never mistaken for a retry.

A call waits for its events at most ``timeout`` seconds. While Redis is unreachable or
refuses writes, events stay queued (bounded, ``overflow`` policy) and are retried with
backoff; see the README's "Publisher guarantees" table and :mod:`publisher.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, Generic, Self, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .buffer import OverflowPolicy, Pending
from .bus import fence_keys, fence_script
from .connection import connect_async, connect_sync, is_cluster, is_cluster_url
from .errors import ErrorClass, UndeliveredEvents
from .keys import DEFAULT_PREFIX, Keys
from .partitions import check_partitions, check_partitions_sync
from .schema import KernelEvent
from .tasks import cancel_and_wait
from .writer import SEQ_TTL, ChunkResult, CloseReport, Core, Health

__all__ = [
    "DEFAULT_MAXLEN",
    "AsyncPublisher",
    "SyncPublisher",
    "aresolve_in_doubt",
    "resolve_in_doubt",
]

log = logging.getLogger(__name__)

ClientT = TypeVar("ClientT", aredis.Redis, redis.Redis)

DEFAULT_MAXLEN: Final = 100_000
DEFAULT_CHUNK: Final = 256


def _doubt_keys(report: CloseReport) -> list[str]:
    """The sequence key of each event in doubt (its partition's)."""
    return list(report.in_doubt_keys) or [report.sequence_key] * len(report.in_doubt)


def _fences(report: CloseReport) -> dict[str, int]:
    """Per sequence key, the last number in doubt there."""
    out: dict[str, int] = {}
    for key, seq in zip(_doubt_keys(report), report.in_doubt_seqs, strict=True):
        out[key] = max(out.get(key, -1), seq)
    return out


def _not_written(report: CloseReport, applied: dict[str, int]) -> tuple[KernelEvent, ...]:
    keys = _doubt_keys(report)
    return tuple(
        e
        for e, key, seq in zip(report.in_doubt, keys, report.in_doubt_seqs, strict=True)
        if seq > applied[key]
    )


def resolve_in_doubt(client: redis.Redis, report: CloseReport) -> tuple[KernelEvent, ...]:
    """The events of ``report.in_doubt`` that are not in Redis, which from now on never
    will be: publish them again (then ``report.undelivered``). The others are in history.

    One atomic script on the closed publisher's sequence key: it reads the last number the
    publisher applied, and raises it past every number in doubt, so a write of the closed
    publisher still pending (a frozen Redis, a slow connection) can no longer land. Call it
    once Redis answers, within 7 days of the close (the key's lifetime), and not after Redis
    lost its data (the key and the history with it). Asking again gives the same answer.
    Raises ``redis`` errors as any call."""
    if not report.in_doubt:
        return ()
    fence = fence_script(client)
    applied = {
        key: int(fence(keys=fence_keys(key), args=[last, SEQ_TTL]))
        for key, last in _fences(report).items()
    }
    return _not_written(report, applied)


async def aresolve_in_doubt(client: aredis.Redis, report: CloseReport) -> tuple[KernelEvent, ...]:
    """As :func:`resolve_in_doubt`, on an asyncio client."""
    if not report.in_doubt:
        return ()
    fence = fence_script(client)
    applied = {
        key: int(await fence(keys=fence_keys(key), args=[last, SEQ_TTL]))
        for key, last in _fences(report).items()
    }
    return _not_written(report, applied)


def _ids(reply: Sequence[Any]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in reply]


def _results(replies: Sequence[Any]) -> list[ChunkResult]:
    return [r if isinstance(r, BaseException) else _ids(r) for r in replies]


def _noscript(results: Sequence[ChunkResult]) -> bool:
    """The pipeline's first chunk failed for want of the script on this master."""
    return bool(results) and isinstance(results[0], NoScriptError)


def _jitter(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def _client_options(timeout: float, *, blocking: bool, url: str) -> dict[str, Any]:
    # No hidden retries: the publisher's queue is the retry, and it keeps order. Each client
    # kind gets its own Retry class (redis-py 8.2 warns when an asyncio client gets the
    # blocking one, and converts it). On a cluster a read times out within half the call's
    # time: redis-py's cluster client looks for the slot's new master on its own timeout,
    # which never came when the call's cancel came first (an asyncio publisher stayed on a
    # frozen master for the whole freeze, 99 s, while its replica had taken over in 4 s).
    return {
        "socket_timeout": timeout / 2 if is_cluster_url(url) else timeout,
        "socket_connect_timeout": timeout,
        "retry": (Retry if blocking else AsyncRetry)(NoBackoff(), 0),
    }


class _Publisher(Generic[ClientT]):
    """What both publishers are made of: the client, the script, and the shared
    :class:`~publisher.writer.Core` (queue, numbers, health).

    ``partitions``: how many partitions the deployment's bus has (:mod:`publisher.partitions`;
    1 writes the names of an install without partitions). Checked against the number Redis
    records before the first write: another number rejects the events
    (:class:`~publisher.errors.PublishRejected` naming both; one error line in the log, a
    configuration error); a Redis user that may not read or record the number (an ACL made
    without ``--partitions``, with more than one) keeps them queued and retried, as any
    other NOPERM does, and logs that configuration error until the ACL is fixed."""

    def __init__(
        self,
        client: ClientT,
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        exact_trim: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        timeout: float = 2.0,
        buffer_size: int = 10_000,
        overflow: OverflowPolicy = "drop_oldest",
        retry_interval: float = 0.5,
        max_retry_interval: float = 5.0,
        owns_client: bool = False,
        partitions: int = 1,
    ) -> None:
        if not 0 < retry_interval <= max_retry_interval:
            raise ValueError(
                f"need 0 < retry_interval <= max_retry_interval, got {retry_interval} "
                f"and {max_retry_interval}"
            )
        self._core = Core(
            keys=Keys.on(client, prefix), maxlen=maxlen, exact_trim=exact_trim,
            chunk_size=chunk_size, timeout=timeout, buffer_size=buffer_size, overflow=overflow,
            partitions=partitions,
        )  # fmt: skip
        #: the number of partitions is checked against Redis' record before the first write
        #: (:func:`~publisher.partitions.check_partitions`), and again at each attempt until
        #: it passes: a mismatch rejects the events, a NOPERM keeps them queued (the
        #: writer's ``_classify``)
        self._partitions_checked = False
        self._client: ClientT = client
        self._owns_client = owns_client
        self._script: Any = self._core.bus.publish_script(client)  # sync or async Script
        #: a cluster's pipeline does not load the scripts it runs (redis-py 8.2): load the
        #: script on every master before the first pipelined send and after a NOSCRIPT (a
        #: failover to a master that never ran it)
        self._cluster = is_cluster(client)
        self._load_first = self._cluster
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._report: CloseReport | None = None

    @property
    def keys(self) -> Keys:
        return self._core.keys

    @property
    def health(self) -> Health:
        """State (``ok``, ``unreachable``, ``refused``, ``rejected``, ``closed``), the last
        error and the counters, as one snapshot."""
        return self._core.health()

    @property
    def buffered(self) -> int:
        """Events handed to the publisher and not yet confirmed in Redis."""
        return len(self._core.buffer)

    @property
    def published(self) -> int:
        """Events confirmed in Redis since this publisher started."""
        return self._core.published

    @property
    def dropped(self) -> int:
        """Events lost to the overflow policy since this publisher started."""
        return self._core.buffer.dropped

    @property
    def rejected(self) -> int:
        """Events Redis rejected for good (see :mod:`publisher.errors`)."""
        return self._core.rejected

    def _backoff(self, delay: float) -> float:
        return min(delay * 2, self._max_retry_interval)


class AsyncPublisher(_Publisher[aredis.Redis]):
    """Publishes events from asyncio code; safe to share between any number of tasks.

    >>> async with AsyncPublisher.from_url("redis://127.0.0.1:6379/0") as pub:
    ...     stream_id = await pub.publish(ref.started())

    ``publish`` returns the event's stream id once it is in Redis, or ``None`` when that
    was not confirmed within ``timeout`` (the event stays queued and is written, in order,
    exactly once, when Redis takes writes again, unless counted in ``dropped``).
    """

    def __init__(self, client: aredis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self._writer: asyncio.Task[None] | None = None
        self._work = asyncio.Event()  # something is queued
        self._retry_now = asyncio.Event()  # flush/close: cut a backoff short

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 2.0,
        password: str | None = None,
        sentinel_password: str | None = None,
        **options: Any,
    ) -> Self:
        """A publisher with its own client for ``url`` (see :mod:`publisher.connection`);
        ``password`` is used when the URL has none, ``sentinel_password`` for the Sentinels
        of a Sentinel URL without its own ``sentinel_password``."""
        client = connect_async(
            url, password=password, sentinel_password=sentinel_password,
            **_client_options(timeout, blocking=False, url=url),
        )  # fmt: skip
        return cls(client, owns_client=True, timeout=timeout, **options)

    async def publish(self, event: KernelEvent) -> str | None:
        """Publish one event: its stream id, or ``None`` if not confirmed within
        ``timeout`` (queued). Raises as :meth:`publish_many`."""
        ids = await self.publish_many((event,))
        return ids[0] if ids else None

    async def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        """Publish a batch, in order: every stream id, in order, once all are in Redis; ``[]``
        if that was not confirmed within ``timeout`` (the events stay queued, as in
        :meth:`publish`). Returns at once, ``[]``, while Redis is unreachable or refusing
        writes and the queue is being retried.

        Raises :class:`~publisher.schema.InvalidEvent` (nothing queued),
        :class:`~publisher.buffer.BufferFull` (policy ``raise``; nothing queued),
        :class:`~publisher.errors.PublishRejected` (Redis rejected them; none written),
        :class:`~publisher.errors.PublisherClosed`."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        call, wait = self._core.submit(events, wake)
        if not call.ids:
            return []
        self._start_writer()
        if wait:
            timer = loop.call_later(self._core.timeout, wake)  # cheaper than wait_for
            try:
                await done
            finally:
                timer.cancel()
        return self._core.result(call)

    async def flush(self, timeout: float | None = None) -> bool:
        """Retry at once, then wait until every queued event is in Redis (True) or
        ``timeout`` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if self._core.buffer:
            self._start_writer()
            self._retry_now.set()
        while self._core.buffer:
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _start_writer(self) -> None:
        self._work.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name="kev-publisher-writer"
            )

    async def _write_loop(self) -> None:
        core = self._core
        delay = self._retry_interval
        while True:
            self._work.clear()
            batch = core.take()
            if not batch:
                await self._work.wait()
                continue
            kind: ErrorClass | None
            try:
                async with asyncio.timeout(core.timeout):
                    results = await self._send(batch)
                sizes = core.planned
            except Exception as exc:  # classified: unreachable, refused or rejected
                kind = core.failed(batch, exc)
            else:
                kind = core.outcome(batch, results, sizes)
            if kind is None or kind == "rejected":
                delay = self._retry_interval
                continue
            self._retry_now.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_jitter(delay)):
                    await self._retry_now.wait()
            delay = self._backoff(delay)

    async def _send(self, items: Sequence[Pending]) -> list[ChunkResult]:
        if not self._partitions_checked:
            await check_partitions(self._client, self._core.keys, self._core.partitions.n)
            self._partitions_checked = True
        chunks = self._core.chunks(items)
        if len(chunks) == 1:
            return [_ids(await self._script(keys=chunks[0].keys, args=chunks[0].args))]
        for _ in range(2):
            if self._load_first:
                await self._client.script_load(self._script.script)
            async with self._client.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    await self._script(keys=chunk.keys, args=chunk.args, client=pipe)
                results = _results(await pipe.execute(raise_on_error=False))
            # NOSCRIPT: no chunk ran (the first failed, each later one waits on it); load
            # it and send again at once, as redis-py's own Script does for a single call
            self._load_first = self._cluster and _noscript(results)
            if not self._load_first:
                break
        return results

    async def aclose(self, timeout: float | None = None) -> CloseReport:
        """Give queued events up to ``timeout`` seconds (default: the publisher's
        ``timeout``) to reach Redis, stop, close an owned client, and report what was not
        confirmed (:attr:`CloseReport.ok`): ``undelivered`` (certainly not written) and
        ``in_doubt`` (may have been; :func:`resolve_in_doubt`). Idempotent: later calls
        return the same report."""
        if self._report is not None:
            return self._report
        await self.flush(self._core.timeout if timeout is None else timeout)
        if self._writer is not None:
            await cancel_and_wait(self._writer)
            self._writer = None
        self._report = self._core.close()
        if self._owns_client:
            await self._client.aclose()
        return self._report

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """Close; raises :class:`~publisher.errors.UndeliveredEvents` if an event handed to
        the publisher is not in Redis (unless the block raised: then that propagates, and
        the close was logged; or ``aclose`` was called in the block: it returned the report)."""
        if self._report is not None:
            return
        report = await self.aclose()
        if not report.ok and exc_type is None:
            raise UndeliveredEvents(report)


class SyncPublisher(_Publisher[redis.Redis]):
    """The blocking twin of :class:`AsyncPublisher`: same script, same bytes, same queue;
    safe to share between threads. One writer thread (a daemon, started by the first
    publish) does every write, so no caller is held longer than ``timeout``, whatever
    Redis does (a frozen server included)."""

    def __init__(self, client: redis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._work = threading.Event()
        self._retry_now = threading.Event()
        self._stopping = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 2.0,
        password: str | None = None,
        sentinel_password: str | None = None,
        **options: Any,
    ) -> Self:
        """As :meth:`AsyncPublisher.from_url`."""
        client = connect_sync(
            url, password=password, sentinel_password=sentinel_password,
            **_client_options(timeout, blocking=True, url=url),
        )  # fmt: skip
        return cls(client, owns_client=True, timeout=timeout, **options)

    def publish(self, event: KernelEvent) -> str | None:
        """As :meth:`AsyncPublisher.publish`."""
        ids = self.publish_many((event,))
        return ids[0] if ids else None

    def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        """As :meth:`AsyncPublisher.publish_many`; blocks at most ``timeout`` seconds."""
        done = threading.Event()
        call, wait = self._core.submit(events, done.set)
        if not call.ids:
            return []
        self._start_writer()
        if wait:
            done.wait(self._core.timeout)
        return self._core.result(call)

    def flush(self, timeout: float | None = None) -> bool:
        """As :meth:`AsyncPublisher.flush`."""
        if self._core.buffer:
            self._start_writer()
            self._retry_now.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._core.buffer:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _start_writer(self) -> None:
        self._work.set()
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(
                    target=self._write_loop, name="kev-publisher-writer", daemon=True
                )
                self._writer.start()

    def _write_loop(self) -> None:
        core = self._core
        delay = self._retry_interval
        while not self._stopping:
            self._work.clear()
            batch = core.take()
            if not batch:
                self._work.wait()
                continue
            kind: ErrorClass | None
            try:
                results = self._send(batch)
                sizes = core.planned
            except Exception as exc:  # classified: unreachable, refused or rejected
                kind = core.failed(batch, exc)
            else:
                kind = core.outcome(batch, results, sizes)
            if kind is None or kind == "rejected":
                delay = self._retry_interval
                continue
            self._retry_now.wait(_jitter(delay))
            self._retry_now.clear()
            delay = self._backoff(delay)

    def _send(self, items: Sequence[Pending]) -> list[ChunkResult]:
        if not self._partitions_checked:
            check_partitions_sync(self._client, self._core.keys, self._core.partitions.n)
            self._partitions_checked = True
        chunks = self._core.chunks(items)
        if len(chunks) == 1:
            return [_ids(self._script(keys=chunks[0].keys, args=chunks[0].args))]
        for _ in range(2):  # as AsyncPublisher._send
            if self._load_first:
                self._client.script_load(self._script.script)
            with self._client.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    self._script(keys=chunk.keys, args=chunk.args, client=pipe)
                results = _results(pipe.execute(raise_on_error=False))
            self._load_first = self._cluster and _noscript(results)
            if not self._load_first:
                break
        return results

    def close(self, timeout: float | None = None) -> CloseReport:
        """As :meth:`AsyncPublisher.aclose`; blocks at most ``timeout`` seconds (default: the
        publisher's ``timeout``) plus one second for the writer thread to stop."""
        with self._close_lock:
            if self._report is None:
                self._report = self._close(timeout)
            return self._report

    def _close(self, timeout: float | None) -> CloseReport:
        self.flush(self._core.timeout if timeout is None else timeout)
        # Closed first: an attempt failing from here on (the client closed under it) is
        # reported by the close (in doubt), neither retried nor logged as retrying.
        report = self._core.close()
        self._stopping = True
        self._work.set()
        self._retry_now.set()
        if self._owns_client:
            # Also wakes the writer if it waits on a frozen Redis: its socket is shut down.
            self._client.close()
        if self._writer is not None:
            self._writer.join(1.0)
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """As :meth:`AsyncPublisher.__aexit__`."""
        if self._report is not None:
            return
        report = self.close()
        if not report.ok and exc_type is None:
            raise UndeliveredEvents(report)
