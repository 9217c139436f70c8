"""Publish kernel lifecycle events to Redis: an asyncio and a blocking publisher.

Every publish runs one server-side script that ``XADD``s the payload to the bounded history
stream and ``PUBLISH``es ``<stream id> <payload>`` on the live channel, atomically: a live
message always carries the id that history holds, and history never lacks an id that went
live. A batch is split into chunks of at most ``chunk_size`` events, one script call per
chunk, and the chunks are sent in one pipeline: one round trip, order kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Self

import redis
import redis.asyncio as aredis

from .connection import connect_async, connect_sync
from .keys import DEFAULT_PREFIX, Keys
from .schema import KernelEvent, encode_event

__all__ = ["DEFAULT_MAXLEN", "AsyncPublisher", "SyncPublisher"]

DEFAULT_MAXLEN: Final = 100_000
DEFAULT_CHUNK: Final = 256

# KEYS[1] history stream; ARGV[1] maxlen, ARGV[2] channel, ARGV[3] "~" or "=", ARGV[4..] payloads.
PUBLISH_SCRIPT: Final = """
local ids = {}
for i = 4, #ARGV do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], ARGV[1], '*', 'e', ARGV[i])
  redis.call('PUBLISH', ARGV[2], id .. ' ' .. ARGV[i])
  ids[#ids + 1] = id
end
return ids
"""


class _Config:
    """What the two publishers share: names, bounds and the chunking of batches."""

    def __init__(self, *, prefix: str, maxlen: int, exact_trim: bool, chunk_size: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.keys = Keys(prefix)
        self.maxlen = maxlen
        self.chunk_size = chunk_size
        self._head = [str(maxlen), self.keys.channel, "=" if exact_trim else "~"]

    def chunks(self, events: Iterable[KernelEvent]) -> list[list[bytes | str]]:
        """Script argument lists, one per chunk; encodes (and so validates) every event
        before anything is sent, so a bad event fails the whole batch, not half of it."""
        payloads = [encode_event(event) for event in events]
        return [
            [*self._head, *payloads[i : i + self.chunk_size]]
            for i in range(0, len(payloads), self.chunk_size)
        ]


def _ids(replies: Sequence[Any]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for reply in replies for i in reply]


class AsyncPublisher:
    """Publishes events from asyncio code.

    >>> async with AsyncPublisher.from_url("redis://127.0.0.1:6379/0") as pub:
    ...     stream_id = await pub.publish(ref.started())
    """

    def __init__(
        self,
        client: aredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        exact_trim: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        owns_client: bool = False,
    ) -> None:
        self._config = _Config(
            prefix=prefix, maxlen=maxlen, exact_trim=exact_trim, chunk_size=chunk_size
        )
        self._client = client
        self._owns_client = owns_client
        self._script = client.register_script(PUBLISH_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """A publisher with its own client for ``url`` (see :mod:`publisher.connection`)."""
        return cls(connect_async(url), owns_client=True, **options)

    @property
    def keys(self) -> Keys:
        return self._config.keys

    async def publish(self, event: KernelEvent) -> str:
        """Publish one event; returns its stream id."""
        (args,) = self._config.chunks((event,))
        reply = await self._script(keys=[self._config.keys.history], args=args)
        return _ids([reply])[0]

    async def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        """Publish a batch in order, in one round trip; returns the stream ids in order."""
        chunks = self._config.chunks(events)
        if not chunks:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for args in chunks:
                await self._script(keys=[self._config.keys.history], args=args, client=pipe)
            replies = await pipe.execute()
        return _ids(replies)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncPublisher:
    """The blocking twin of :class:`AsyncPublisher`; same script, same bytes."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        exact_trim: bool = False,
        chunk_size: int = DEFAULT_CHUNK,
        owns_client: bool = False,
    ) -> None:
        self._config = _Config(
            prefix=prefix, maxlen=maxlen, exact_trim=exact_trim, chunk_size=chunk_size
        )
        self._client = client
        self._owns_client = owns_client
        self._script = client.register_script(PUBLISH_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        return cls(connect_sync(url), owns_client=True, **options)

    @property
    def keys(self) -> Keys:
        return self._config.keys

    def publish(self, event: KernelEvent) -> str:
        (args,) = self._config.chunks((event,))
        return _ids([self._script(keys=[self._config.keys.history], args=args)])[0]

    def publish_many(self, events: Iterable[KernelEvent]) -> list[str]:
        chunks = self._config.chunks(events)
        if not chunks:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for args in chunks:
                self._script(keys=[self._config.keys.history], args=args, client=pipe)
            replies = pipe.execute()
        return _ids(replies)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
