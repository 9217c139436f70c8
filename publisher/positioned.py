"""Publishing what another ordered source holds, exactly once: the bridge's publisher.

A :class:`PositionedPublisher` writes each event with its *position* in the source it came
from (another Redis stream's entry id, for instance), and the publish script
(:data:`publisher.bus.PUBLISH_AT_SCRIPT`) applies a position only once, in increasing order,
and keeps the last one applied in the gateway's Redis in the same atomic step. So a bridge that
dies after a write and before it learned the answer re-reads its source from
:meth:`PositionedPublisher.applied` and publishes nothing twice, and one that dies before the
write loses nothing. The writes are fenced by a lease: while another process holds it, the
script refuses (:class:`NotHolder`), however stale the caller is.

It shares the wire contract with :class:`~publisher.client.AsyncPublisher` (same history,
live channel, epoch, payloads), not its queue: the caller is the queue (a bridge stops
reading its source while a write fails, and retries the same call, which is idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from .bus import Bus
from .keys import DEFAULT_PREFIX, Keys
from .schema import KernelEvent, SourceGap, encode_event, encode_gap

__all__ = [
    "NotHolder",
    "Position",
    "PositionedPublisher",
    "format_position",
    "parse_position",
]

#: ``(epoch, major, minor, after)``: a source's epoch (raised when the source lost its own data
#: and numbers its entries anew), its entry id (a Redis stream id's milliseconds and
#: sequence), and a place after that entry (0 for the entry itself; 1, 2, ... for what the
#: publisher adds after it, e.g. events reconciled after a gap). Ordered as tuples; each
#: part an unsigned 64-bit integer.
Position = tuple[int, int, int, int]
_PARTS: Final = 4

_PART: Final = 2**64
_WIDTH: Final = 20


class NotHolder(ResponseError):
    """The write was refused: the caller does not hold the lease that fences it."""


def format_position(position: Position) -> str:
    """The 80-digit form the script compares; ``ValueError`` for a part out of range."""
    if len(position) != _PARTS or not all(
        isinstance(p, int) and not isinstance(p, bool) and 0 <= p < _PART for p in position
    ):
        raise ValueError(f"a position is four integers 0..2**64-1, got {position!r}")
    return "".join(f"{part:0{_WIDTH}d}" for part in position)


def parse_position(text: str) -> Position:
    """The inverse of :func:`format_position`; ``ValueError`` for anything else."""
    if len(text) != _PARTS * _WIDTH or not text.isascii() or not text.isdigit():
        raise ValueError(f"not a position: {text[:100]!r}")
    parts = [int(text[i : i + _WIDTH]) for i in range(0, _PARTS * _WIDTH, _WIDTH)]
    if any(part >= _PART for part in parts):
        raise ValueError(f"position out of range: {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


Entry = tuple[Position, KernelEvent | SourceGap | None]


class PositionedPublisher:
    """Publishes ``(position, event)`` entries of one source, in position order, exactly once.

    ``publisher_id`` names the source (one per bridged installation): its position key is
    ``<prefix>:pubpos:<publisher_id>``. ``lease`` names the lease that fences the writes
    (``<prefix>:bridge:<lease>:lease``); each call says who the caller is (``holder``).
    """

    def __init__(
        self,
        client: aredis.Redis,
        publisher_id: str,
        *,
        lease: str,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int = 100_000,
        exact_trim: bool = False,
    ) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        self.keys = Keys.on(client, prefix)
        self.bus = Bus(self.keys)
        self.publisher_id = publisher_id
        self._client = client
        self._script: Any = self.bus.publish_at_script(client)
        self._script_keys = self.bus.publish_at_keys(publisher_id, lease)
        self._head = [str(maxlen), self.keys.channel, "=" if exact_trim else "~"]

    async def applied(self) -> Position | None:
        """The last position applied, or None before the first write (or after the
        gateway's Redis lost its data). Raises ``redis`` errors."""
        text = await self.bus.applied_position(self._client, self.publisher_id)
        return None if text is None else parse_position(text)

    async def publish(self, entries: Sequence[Entry], *, holder: str) -> list[str | None]:
        """Write the entries in one atomic step: per entry, its stream id; None for an entry
        without an event (it only moves the position on) or one applied before (a retry).
        Positions must increase within the call (``ValueError``); ones at or below the
        applied position are skipped, so calling again with the same entries after an error
        writes each at most once.

        Raises :class:`NotHolder` (``holder`` does not hold the lease: stop writing),
        :class:`~publisher.schema.InvalidEvent`, and ``redis`` errors (retry the call)."""
        if not entries:
            return []
        args: list[str | bytes] = [*self._head, holder]
        previous: Position | None = None
        for position, event in entries:
            if previous is not None and position <= previous:
                raise ValueError(f"positions must increase: {position} after {previous}")
            previous = position
            if event is None:
                payload = b""
            elif isinstance(event, SourceGap):
                payload = encode_gap(event)
            else:
                payload = encode_event(event)
            args += [format_position(position), payload]
        try:
            reply = await self._script(keys=self._script_keys, args=args)
        except ResponseError as exc:
            if str(exc).startswith("NOTHOLDER"):
                raise NotHolder(str(exc)) from None
            raise
        ids: list[str | None] = []
        for raw in reply:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            ids.append(text if text not in ("", "skip") else None)
        return ids
