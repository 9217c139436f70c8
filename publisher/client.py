"""Publish kernel lifecycle events to Redis: an asyncio and a blocking publisher.

Every publish runs one server-side script that ``XADD``s the payload to the bounded history
stream and ``PUBLISH``es ``<stream id> <payload>`` on the live channel, atomically: a live
message always carries the id that history holds, and history never lacks an id that went
live. A batch is split into chunks of at most ``chunk_size`` events, one script call per
chunk, and the chunks are sent in one pipeline: one round trip, order kept.

While Redis is unreachable, events wait in a bounded :class:`~publisher.buffer.OutageBuffer`
and are flushed in order when it is back; a publish never blocks longer than ``timeout``.
Each event carries the publisher's sequence number and the script skips numbers it has
already applied, so a retry after an ambiguous failure (Redis ran the script, the reply was
lost) does not publish twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final, Generic, Self, TypeVar

import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .buffer import OutageBuffer, OverflowPolicy, Pending
from .connection import connect_async, connect_sync
from .keys import DEFAULT_PREFIX, Keys
from .schema import KernelEvent, encode_event

__all__ = ["DEFAULT_MAXLEN", "AsyncPublisher", "SyncPublisher"]

log = logging.getLogger(__name__)

ClientT = TypeVar("ClientT", aredis.Redis, redis.Redis)

DEFAULT_MAXLEN: Final = 100_000
DEFAULT_CHUNK: Final = 256
SEQ_TTL: Final = 7 * 24 * 3600

# KEYS[1] history stream, KEYS[2] this publisher's last applied sequence number, KEYS[3] the
# history's epoch: the id of the first entry this history ever held, set once (NX). A Redis
# that lost its data has no epoch until the next publish, so gateways tell a new history from
# the old one (ARCHITECTURE.md, "Watermark and epoch").
# ARGV[1] maxlen, ARGV[2] channel, ARGV[3] "~" or "=", ARGV[4] seq key ttl,
# ARGV[5] sequence number of the first payload, ARGV[6..] payloads.
PUBLISH_SCRIPT: Final = """
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
local seq = tonumber(ARGV[5])
local ids = {}
local marked = false
for i = 6, #ARGV do
  if seq > last then
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1], '*', 'e', ARGV[i])
    redis.call('PUBLISH', ARGV[2], id .. ' ' .. ARGV[i])
    ids[#ids + 1] = id
    if not marked then
      redis.call('SET', KEYS[3], id, 'NX')
      marked = true
    end
  else
    ids[#ids + 1] = ''
  end
  seq = seq + 1
end
if seq - 1 > last then
  redis.call('SET', KEYS[2], seq - 1, 'EX', ARGV[4])
end
return ids
"""

#: what "Redis is unreachable" looks like; anything else is a bug or a refusal and raises
_UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class _Core:
    """What the two publishers share: names, bounds, sequence numbers, the outage buffer."""

    def __init__(
        self,
        *,
        prefix: str,
        maxlen: int,
        exact_trim: bool,
        chunk_size: int,
        timeout: float,
        buffer_size: int,
        overflow: OverflowPolicy,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.keys = Keys(prefix)
        self.seq_key = f"{prefix}:pubseq:{uuid.uuid4().hex}"
        self.maxlen = maxlen
        self.chunk_size = chunk_size
        self.timeout = timeout
        self.buffer = OutageBuffer(buffer_size, overflow)
        self.next_seq = 0
        self._head = [str(maxlen), self.keys.channel, "=" if exact_trim else "~", str(SEQ_TTL)]

    def pending(self, events: Iterable[KernelEvent]) -> list[Pending]:
        """Encode (and so validate) every event before anything is sent, so a bad event
        fails the whole batch, not half of it; then number them."""
        payloads = [encode_event(event) for event in events]
        first, self.next_seq = self.next_seq, self.next_seq + len(payloads)
        return [Pending(first + i, p) for i, p in enumerate(payloads)]

    def chunks(self, items: Sequence[Pending]) -> list[list[bytes | str]]:
        return [
            [*self._head, str(items[i].seq), *(p.payload for p in items[i : i + self.chunk_size])]
            for i in range(0, len(items), self.chunk_size)
        ]

    @property
    def script_keys(self) -> list[str]:
        return [self.keys.history, self.seq_key, self.keys.epoch]


def _ids(replies: Sequence[Any]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for reply in replies for i in reply]


def _client_options(timeout: float) -> dict[str, Any]:
    # No hidden retries: the publisher's own buffer is the retry, and it keeps order.
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }


class _Publisher(Generic[ClientT]):
    """What both publishers are made of: the client, the script, names, bounds, sequence
    numbers and the outage buffer (:class:`_Core`)."""

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
        owns_client: bool = False,
    ) -> None:
        self._core = _Core(
            prefix=prefix, maxlen=maxlen, exact_trim=exact_trim, chunk_size=chunk_size,
            timeout=timeout, buffer_size=buffer_size, overflow=overflow,
        )  # fmt: skip
        self._client: ClientT = client
        self._owns_client = owns_client
        self._script: Any = client.register_script(PUBLISH_SCRIPT)  # sync or async Script
        self._retry_interval = retry_interval

    @property
    def keys(self) -> Keys:
        return self._core.keys

    @property
    def buffered(self) -> int:
        """Events waiting for Redis."""
        return len(self._core.buffer)

    @property
    def dropped(self) -> int:
        """Events lost to the overflow policy since this publisher started."""
        return self._core.buffer.dropped


class AsyncPublisher(_Publisher[aredis.Redis]):
    """Publishes events from asyncio code.

    >>> async with AsyncPublisher.from_url("redis://127.0.0.1:6379/0") as pub:
    ...     stream_id = await pub.publish(ref.started())

    ``publish`` returns the event's stream id, or ``None`` when Redis is unreachable and the
    event was buffered (it is flushed in order, in the background, when Redis is back).
    """

    def __init__(self, client: aredis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0, **options: Any) -> Self:
        """A publisher with its own client for ``url`` (see :mod:`publisher.connection`)."""
        client = connect_async(url, **_client_options(timeout))
        return cls(client, owns_client=True, timeout=timeout, **options)

    async def publish(self, event: KernelEvent) -> str | None:
        """Publish one event; its stream id, or ``None`` if it was buffered."""
        ids = await self.publish_many((event,))
        return ids[0] if ids else None

    async def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        """Publish a batch in order, in one round trip; the stream ids in order, or ``[]``
        when the batch was buffered behind an outage."""
        items = self._core.pending(events)
        if not items:
            return []
        if self._core.buffer:  # keep order: queue behind what already waits
            self._buffer(items)
            return []
        try:
            async with asyncio.timeout(self._core.timeout):
                return await self._send(items)
        except _UNREACHABLE as exc:
            log.warning("redis unreachable (%s); buffering %d events", exc, len(items))
            self._buffer(items)
            return []

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the buffer is empty (True) or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._core.buffer:
            if deadline is not None and loop.time() >= deadline:
                return False
            self._ensure_flusher()
            await asyncio.sleep(0.01)
        return True

    async def _send(self, items: Sequence[Pending]) -> list[str]:
        chunks = self._core.chunks(items)
        keys = self._core.script_keys
        if len(chunks) == 1:
            return _ids([await self._script(keys=keys, args=chunks[0])])
        async with self._client.pipeline(transaction=False) as pipe:
            for args in chunks:
                await self._script(keys=keys, args=args, client=pipe)
            return _ids(await pipe.execute())

    def _buffer(self, items: list[Pending]) -> None:
        self._core.buffer.add(items)
        self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        buffer = self._core.buffer
        while buffer:
            batch = buffer.peek(self._core.chunk_size * 8)
            try:
                async with asyncio.timeout(self._core.timeout):
                    await self._send(batch)
            except _UNREACHABLE:
                await asyncio.sleep(self._retry_interval)
                continue
            buffer.pop(len(batch))
        log.info("redis is back: outage buffer flushed")

    async def aclose(self, flush_timeout: float = 0.0) -> None:
        """Close; with ``flush_timeout``, first give buffered events that long to go out."""
        if flush_timeout > 0 and self._core.buffer:
            await self.flush(flush_timeout)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncPublisher(_Publisher[redis.Redis]):
    """The blocking twin of :class:`AsyncPublisher`: same script, same bytes.

    There is no background thread: buffered events are flushed, in order, before the next
    publish goes out, and by :meth:`flush`."""

    def __init__(self, client: redis.Redis, **options: Any) -> None:
        super().__init__(client, **options)
        self._next_try = 0.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0, **options: Any) -> Self:
        client = connect_sync(url, **_client_options(timeout))
        return cls(client, owns_client=True, timeout=timeout, **options)

    def publish(self, event: KernelEvent) -> str | None:
        ids = self.publish_many((event,))
        return ids[0] if ids else None

    def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        items = self._core.pending(events)
        if not items:
            return []
        if self._core.buffer and not self._try_flush():
            self._core.buffer.add(items)
            return []
        try:
            return self._send(items)
        except _UNREACHABLE as exc:
            log.warning("redis unreachable (%s); buffering %d events", exc, len(items))
            self._core.buffer.add(items)
            self._next_try = time.monotonic() + self._retry_interval
            return []

    def flush(self, timeout: float | None = None) -> bool:
        """Send what waits; True once the buffer is empty, False if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._core.buffer:
            self._next_try = 0.0
            if self._try_flush():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self._retry_interval)
        return True

    def _try_flush(self) -> bool:
        """One attempt (at most every ``retry_interval``) to empty the buffer."""
        if time.monotonic() < self._next_try:
            return False
        buffer = self._core.buffer
        try:
            while buffer:
                batch = buffer.peek(self._core.chunk_size * 8)
                self._send(batch)
                buffer.pop(len(batch))
        except _UNREACHABLE:
            self._next_try = time.monotonic() + self._retry_interval
            return False
        return True

    def _send(self, items: Sequence[Pending]) -> list[str]:
        chunks = self._core.chunks(items)
        keys = self._core.script_keys
        if len(chunks) == 1:
            return _ids([self._script(keys=keys, args=chunks[0])])
        with self._client.pipeline(transaction=False) as pipe:
            for args in chunks:
                self._script(keys=keys, args=args, client=pipe)
            return _ids(pipe.execute())

    def close(self, flush_timeout: float = 0.0) -> None:
        if flush_timeout > 0 and self._core.buffer:
            self.flush(flush_timeout)
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
