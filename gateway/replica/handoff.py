"""Where each SDK watcher stood when its replica drained, so that its reconnect resumes there.

The official SDKs (20.03 and later) end their command on ``server_close``, and after a stream
that just ends they reconnect by themselves, after their retry delay (5 s), re-sending the
stream request exactly as first signed: the same ``Date``, so the same signature, and no
``Last-Event-ID`` (``SSEResponse.fetch_events`` and ``SSEContextManager.reconnect`` in
``src/ai/backend/client/request.py``, backend.ai-client-py 20.03.10 and lablup/backend.ai
26.8.1; the request's date is set once, in ``connect_events``). So on drain a keypair-signed
stream that cannot resume by itself (no ``Last-Event-ID``, not ``resumable=1``) ends without
``server_close``, and where it stood is written under its access key and a digest of its
``Authorization`` header, kept ``handoff_ttl`` seconds. A request that re-sends that very
signed request pops it and resumes from it (:func:`gateway.fanout.resume.replay`), on
whichever replica the load balancer picks, once, even when its date is by then older than
``max_clock_skew`` (:meth:`Handoff.claim`, the signature still checked): a watcher may have
streamed for hours. Any other request, an identical second watcher included (it signed at
another moment), finds nothing and starts live.

Where a stream stood (:meth:`gateway.fanout.hub.Hub.handoff_position`): a position whose
every event has left the process (reached the kernel, which sends it after the process ends:
a shutdown closes without a reset). That is the hub's watermark when nothing of the stream is
left; for a replay, how far it went less the bytes still unsent
(:class:`gateway.fanout.progress.ReplayTrail`); live with a backlog, where the hub's tick last
found nothing left; else where the stream began (:attr:`Ticket.began_at`). What is
still queued is dropped at the drain: the reconnect sends it again. A watcher gets
duplicates rather than a gap, as long as it comes back within ``handoff_ttl``. One that
takes longer than that to read what had reached its own kernel comes back to no record
and starts live.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aredis
from redis.exceptions import RedisError

from gateway.fanout.frames import format_stream_id, parse_stream_id
from publisher.keys import Keys
from publisher.partitions import decode_vector, encode_vector, is_vector

__all__ = ["Handoff", "Ticket"]

log = logging.getLogger(__name__)


def request_digest(authorization: str) -> str:
    """What names one signed request (its ``Authorization`` header carries the signature,
    over its method, target, date and host)."""
    return hashlib.blake2b(authorization.encode("utf-8", "replace"), digest_size=16).hexdigest()


@dataclass(slots=True, frozen=True)
class Ticket:
    """What a stream that cannot resume keeps for its drain (``Connection.handoff``)."""

    #: :func:`request_digest` of the request that opened it
    request: str
    #: where the stream began: the resume point its replay began from (a handed-off stream),
    #: or where the hub stood when it opened (None: not located yet)
    began_at: str | None = None


class Handoff:
    """The records in Redis (``<prefix>:handoff:<access key>:<request digest>``, lists of
    stream ids), written at drain and popped by the request they name."""

    def __init__(self, redis: aredis.Redis, keys: Keys, ttl: float) -> None:
        """``ttl``: seconds a record waits for its reconnect (the SDKs come back after 5)."""
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(1, int(ttl * 1000))

    def key(self, access_key: str, request: str) -> str:
        return self._keys.stream_handoff(access_key, request)

    async def record(self, stands: Iterable[tuple[str, str, str]]) -> int:
        """Push ``(access key, request digest, stream id)`` records, in one round trip; how
        many. Raises ``RedisError``."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for access_key, request, stream_id in stands:
            key = self.key(access_key, request)
            pipe.rpush(key, stream_id)
            pipe.pexpire(key, self._ttl_ms)
            count += 1
        if count:
            await pipe.execute()
        return count

    async def claim(self, access_key: str, authorization: str) -> str | None:
        """The record left for this very signed request, removed (``LPOP``: of concurrent
        copies of it, one gets it), or None: the signature check's one allowance for a
        stale date (``SignedRequests(claim=...)``). The stream endpoint then resumes from
        it (``SignedCredential.handed_off``)."""
        return await self.take(access_key, request_digest(authorization))

    async def give_back(self, access_key: str, request: str, stream_id: str) -> None:
        """Put a record :meth:`take` returned back at the head, for the next try (this
        request was refused after all)."""
        key = self.key(access_key, request)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.lpush(key, stream_id)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not give back a handoff of key=%s: %s", access_key, exc)

    async def take(self, access_key: str, request: str) -> str | None:
        """The position recorded for this request (removed), or None (also when Redis cannot
        say: the stream then starts live, as it would without a handoff)."""
        try:
            raw = await self._redis.lpop(self.key(access_key, request))
        except RedisError as exc:
            log.warning("could not look for a handoff of key=%s: %s", access_key, exc)
            return None
        if raw is None:
            return None
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            if is_vector(text):  # a stream spanning partitions (publisher.partitions)
                return encode_vector(decode_vector(text, int(text.partition("_")[0])))
            return format_stream_id(parse_stream_id(text))
        except ValueError:
            log.warning("ignored a handoff record that is no stream id: %r", text[:48])
            return None
