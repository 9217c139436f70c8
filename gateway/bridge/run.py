"""The bridge: Backend.AI's bus in, the gateway's history and live channel out.

One process per bridged installation is active (:mod:`.lease`); others wait as standbys.
The active one, in a loop that never ends on bad input:

1. reads a batch from Backend.AI's bus (:mod:`.source`: the stream after its cursor, or the
   broadcast channel), each message decoded safely (:mod:`.wire`) and interpreted
   (:mod:`.lifecycle`); malformed ones are dropped and counted, others ignored;
2. finds whose each step is in Backend.AI's PostgreSQL (:mod:`.database`, cached);
3. publishes the batch through :class:`publisher.positioned.PositionedPublisher`, each event
   at its source position, and the position of the batch's last message with it, in one
   atomic step fenced by the lease: history, exactly-once writes, the epoch, resume and both
   API views apply as to any publisher's events.

Whatever fails is waited out without losing the place: PostgreSQL down (the batch waits),
the gateway's Redis down (the write is retried, the same positions, so nothing is written
twice), Backend.AI's Redis down (read again from the cursor). What the bus itself lost (a
stream trimmed past the cursor, a Pub/Sub span not followed, a source that lost its data) is
a gap (:meth:`Bridge._gap`): a :class:`~publisher.schema.SourceGap` marker that every stream
is told as ``history_truncated``, followed by the terminal events PostgreSQL shows for the
sessions that ended meanwhile (:mod:`.reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.fanout.frames import StreamId
from gateway.fanout.stats import ThrottledLog
from gateway.settings import BridgeSettings
from publisher.connection import connect_async, redact_url
from publisher.partitions import check_partitions
from publisher.positioned import NotHolder, Position, PositionedPublisher
from publisher.schema import InvalidEvent, KernelEvent, SourceGap
from publisher.tasks import cancel_and_wait

from .database import Database, Lookup, Owner
from .lease import Lease, LeaseLost, holder_name
from .lifecycle import Step, interpret
from .metrics import BridgeMetrics
from .reconcile import Reconciler
from .source import (
    BROADCAST_CHANNEL,
    EVENTS_STREAM,
    Format,
    PubSubSource,
    SourceLost,
    StreamSource,
    detect_format,
)
from .wire import Malformed, SourceMessage, decode_broadcast, decode_stream_entry

__all__ = ["Bridge", "build_event"]

log = logging.getLogger(__name__)

#: seconds between two records of how far the Pub/Sub source was followed
_FOLLOWED_EVERY: Final = 1.0
#: the state hash's fields (:meth:`publisher.keys.Keys.bridge_state`)
_FOLLOWED: Final = "followed_until"
_FORMAT: Final = "format"


def build_event(step: Step, owner: Owner, group: str | None, timestamp: float) -> KernelEvent:
    """The gateway's event for ``step`` of ``owner``'s kernel or session. Raises
    :class:`~publisher.schema.InvalidEvent` when the row lacks what the schema needs (a
    session name that is not a slug, no access key, no domain, no group)."""
    kernel = step.lookup == "kernel"
    return KernelEvent(
        name=step.name,
        session_id=owner.session_name or "",
        session_uuid=owner.session_uuid,
        kernel_id=owner.kernel_id,
        owner_access_key=owner.access_key or "",
        owner_user_id=str(owner.user_uuid) if owner.user_uuid else "",
        domain=owner.domain or "",
        group=group or "",
        reason=step.reason,
        exit_code=step.exit_code,
        cluster_role=owner.cluster_role if kernel else "main",
        cluster_idx=owner.cluster_idx if kernel else 0,
        timestamp=timestamp,
    )


#: how long after a gap a session end it reconciled is not published again from the bus
_RECONCILED_FOR: Final = 600.0
_RECONCILED_MAX: Final = 100_000


def _end_key(event: KernelEvent) -> tuple[object, str, object]:
    """An end's identity: its session, its name, and for a kernel's end the kernel."""
    kernel = event.kernel_id if event.name.startswith("kernel_") else None
    return (event.session_uuid, event.name, kernel)


def _error(exc: Exception) -> Malformed:
    """An exception a message made decoding or interpreting raise, as that message's fault:
    logged once per exception type with its traceback (a bug to fix), dropped and counted."""
    if type(exc) not in _ERRORS_LOGGED:
        _ERRORS_LOGGED.add(type(exc))
        log.error("a message of backend.ai's bus could not be read; dropped", exc_info=exc)
    return Malformed("error", f"{type(exc).__name__}: {str(exc)[:100]}")


_ERRORS_LOGGED: set[type[BaseException]] = set()


class Bridge:
    """One bridge process (see the module docstring). :meth:`run` until cancelled."""

    def __init__(self, settings: BridgeSettings, *, holder: str | None = None) -> None:
        self.settings = settings
        cfg = settings.bridge
        if settings.redis.partitions != 1:
            # Its positions (one per bridge, advanced in the same script as the history) live
            # in one slot; writing to several partitions needs one position per partition.
            raise ValueError(
                f"the bridge writes to one partition only; GATEWAY_REDIS_PARTITIONS is "
                f"{settings.redis.partitions}"
            )
        self.name = cfg.name
        self.holder = holder or holder_name()
        self.metrics = BridgeMetrics()
        # No hidden retries: each loop here retries what failed, keeping its place.
        self.gateway = connect_async(
            settings.redis.url,
            **settings.redis.options,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        # XREAD BLOCK waits a second at most: the socket's timeout is well above it
        self.source = connect_async(
            cfg.source_url,
            socket_timeout=10.0,
            socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self.db = Database(cfg.from_db)
        self.lookup = Lookup(
            self.db,
            cache_size=cfg.cache_size,
            timeout=cfg.lookup_timeout,
            on_unavailable=self._database_state,
        )
        self.publisher = PositionedPublisher(
            self.gateway, cfg.name, lease=cfg.name, prefix=settings.redis.prefix, maxlen=cfg.maxlen
        )
        self.bus = self.publisher.bus
        self.lease = Lease(
            self.gateway, self.bus, self.bus.keys.bridge_lease(cfg.name), self.holder,
            cfg.lease_ttl, name=f"the active bridge {cfg.name}",
        )  # fmt: skip
        self.reconciler = Reconciler(
            self.db, self.lookup, self.gateway, self.bus, source=cfg.name,
            limit=cfg.reconcile_limit,
        )  # fmt: skip
        #: ``active`` from taking the lease until it is lost (or given up by :meth:`close`)
        self.role = "standby"
        self.format: Format | None = None
        self.source_ok = False
        self.gateway_ok = True
        self._drops = ThrottledLog(logger=log)
        self._last: Position | None = None
        #: ends published by reconciliation -> until when their late messages are dropped
        self._reconciled: dict[tuple[object, str, object], float] = {}
        #: the stream generation's last published position, kept in case the gateway's
        #: Redis loses the stored one
        self._cursor: Position | None = None
        self.metrics.database_up.set(1)

    # -- the process ------------------------------------------------------------------------

    async def run(self) -> None:
        """Wait for the lease, follow the bus while holding it, and again: until cancelled."""
        log.info(
            "bridge %s (%s): backend.ai's redis %s, its database %s, the gateway's redis %s",
            self.name,
            self.holder,
            redact_url(self.settings.bridge.source_url),
            self.db.where,
            redact_url(self.settings.redis.url),
        )
        # Every process of the deployment must have the same partitions (PartitionMismatch
        # names both numbers, and ends the bridge)
        while True:
            try:
                await check_partitions(self.gateway, self.bus.keys, 1)
                break
            except (RedisError, RedisClusterException) as exc:
                log.warning("cannot check the partitions yet (the gateway's redis: %s)", exc)
                await asyncio.sleep(1.0)
        while True:
            await self.lease.acquire()
            self.role = "active"
            self.metrics.active.set(1)
            self.metrics.takeovers.inc()
            log.info("active: %s holds the lease %s", self.holder, self.name)
            # Not a TaskGroup: its one cancel of each child can be swallowed by redis-py's
            # wait_for on Python 3.11 (publisher.tasks), and the bridge would never stop.
            keep = asyncio.create_task(self.lease.keep(), name="bridge-lease")
            follow = asyncio.create_task(self._follow(), name="bridge-follow")
            try:
                done, _ = await asyncio.wait({keep, follow}, return_when=FIRST_COMPLETED)
                for task in done:
                    task.result()  # LeaseLost, or a bug: both end the follow
            except LeaseLost as lost:
                log.warning("standby again: %s", lost)
                self.role = "standby"
            finally:
                await cancel_and_wait(keep, follow)
                self.metrics.active.set(0)
                self.metrics.source_up.set(0)
                self.source_ok = False

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def state(self) -> dict[str, object]:
        """What /health and /ready show."""
        return {
            "role": self.role,
            "format": self.format,
            "source": "ok" if self.source_ok else "not followed",
            "database": "ok" if self.lookup.available else "unavailable",
            "gateway": "ok" if self.gateway_ok and self.lease.reachable else "unavailable",
        }

    @property
    def ready(self) -> bool:
        """Doing its part: active and following with PostgreSQL answering, or a standby
        that reaches the gateway's Redis (it can take over)."""
        if self.role == "active":
            return self.source_ok and self.lookup.available and self.gateway_ok
        return self.lease.reachable

    async def close(self) -> None:
        """Give up the lease if held (a standby takes over at once) and close every
        connection. Call it once :meth:`run` has ended."""
        if self.role == "active":
            await self.lease.release()
        self.role = "standby"
        await self.db.close()
        for client in (self.source, self.gateway):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def _database_state(self, reason: str | None) -> None:
        self.metrics.database_up.set(0 if reason else 1)

    async def _follow(self) -> None:
        """Follow the bus while the lease is held: Backend.AI's Redis failing is waited out
        (the place is kept: the cursor is in the gateway's Redis); a lost lease ends it."""
        # PostgreSQL first: a wrong password or an unreachable server shows in /ready and
        # the log at once, not at the first event (the bus keeps its place meanwhile)
        await self.lookup.ask(self.db.has_sessions)
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                fmt = await self._format()
                self.source_ok = True
                if fmt == "stream":
                    await self._follow_stream()
                else:
                    await self._follow_pubsub()
            except (RedisError, OSError, SourceLost) as exc:
                self.source_ok = False
                self.metrics.source_up.set(0)
                if time.monotonic() - started > 30.0:  # it had been following: a new outage
                    delay = 0.5
                log.warning(
                    "backend.ai's redis: %s: %s; following again in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:  # pragma: no cover - the loops end only by raising
                delay = 0.5

    async def _format(self) -> Format:
        """The generation to follow: ``--format``, or detected (waiting until there is
        something to detect), remembered in the bridge's state."""
        wanted = self.settings.bridge.format
        if wanted != "auto":
            log.info("following backend.ai's bus as %s (--format %s)", wanted, wanted)
            self.format = wanted
            return wanted
        told = ""
        while True:
            fmt, why = await detect_format(self.source)
            if fmt is not None:
                log.info("following backend.ai's bus as %s (detected: %s)", fmt, why)
                self.format = fmt
                await self.gateway.hset(self.bus.keys.bridge_state(self.name), _FORMAT, fmt)
                return fmt
            if why != told:
                log.warning("cannot tell backend.ai's bus generation yet: %s", why)
                told = why
            await asyncio.sleep(2.0)

    # -- the stream generation --------------------------------------------------------------

    async def _follow_stream(self) -> None:
        source = StreamSource(self.source, count=self.settings.bridge.batch)
        applied = await self._applied()
        if applied is None and self._cursor is not None:
            # the gateway's Redis lost its data (the position with it): this process still
            # knows where it was, so nothing of the source is skipped
            log.warning(
                "the gateway's redis no longer holds the bridge's position: going on from %s",
                self._cursor,
            )
            applied = self._cursor
        if applied is None:
            newest = await source.newest()
            applied = (0, *newest, 0)
            await self._publish([(applied, None)])
            log.info("first run: following %s from its newest entry %s-%s", EVENTS_STREAM, *newest)
        epoch, cursor = applied[0], (applied[1], applied[2])
        told_gap: StreamId | None = None
        told_reset: StreamId | None = None
        self.metrics.source_up.set(1)
        while True:
            snap = await source.snapshot(cursor)
            if snap.reset(cursor):
                # Rolled back (an XDEL of the newest entries, a restart from an older RDB or
                # AOF, a failover to a lagging replica) or made anew: either way what it holds
                # up to the cursor was published or is older than it. Nothing is published
                # again; entries after the cursor follow as they come.
                if told_reset != cursor:
                    log.warning(
                        "backend.ai's %s stream went back (its newest entry %s is older than "
                        "the cursor %s-%s): rolled back or made anew; going on after the cursor",
                        EVENTS_STREAM, snap.newest, *cursor,
                    )  # fmt: skip
                    await self._gap((epoch, *cursor), cursor[0] / 1000, "source_reset", [])
                    told_reset = told_gap = cursor
                await source.wait(1.0)
                continue
            if snap.lost_after(cursor) and cursor != told_gap:
                log.warning(
                    "backend.ai's %s stream was trimmed past the cursor %s-%s (oldest now %s): "
                    "what it held after it may be lost",
                    EVENTS_STREAM, *cursor, snap.oldest,
                )  # fmt: skip
                survivors = [self._message(fields, count=False) for _, fields in snap.entries]
                await self._gap((epoch, *cursor), cursor[0] / 1000, "trimmed", survivors)
                told_gap = cursor
            if not snap.entries:
                await source.wait(1.0)
                continue
            batch = [
                ((epoch, ms, seq, 0), self._message(fields), ms / 1000)
                for (ms, seq), fields in snap.entries
            ]
            await self._publish_batch(batch)
            cursor = snap.entries[-1][0]
            self._cursor = (epoch, *cursor, 0)

    def _message(self, fields: Any, *, count: bool = True) -> SourceMessage | Malformed:
        try:
            message = decode_stream_entry(fields)
        except Malformed as exc:
            return exc
        except Exception as exc:  # a message must never stop the bridge (it would stop every
            return _error(exc)  # bridge at this entry, for good): dropped, logged, counted
        if count:
            self.metrics.read.labels("stream").inc()
        return message

    # -- the Pub/Sub generation -------------------------------------------------------------

    async def _follow_pubsub(self) -> None:
        source = PubSubSource(self.source)
        applied = await self._applied()
        since = await self._followed_until()
        if since is None and applied is not None:
            since = applied[1] / 1000
        self._last = applied or (0, 0, 0, 0)
        batch: list[tuple[Position, SourceMessage | Malformed, float]] = []
        size = self.settings.bridge.batch
        recorded = 0.0
        subscribed = False
        async for data in source.messages():
            now = time.time()
            if not subscribed:
                subscribed = True
                self.metrics.source_up.set(1)
                log.info("subscribed to %s", BROADCAST_CHANNEL)
                if since is not None:  # a span not followed: before this process, or a drop
                    await self._gap(self._next_position(now)[:3], since, "not_followed", [])
                since = now
            if data is not None:
                self.metrics.read.labels("pubsub").inc()
                try:
                    message: SourceMessage | Malformed = decode_broadcast(data)
                except Malformed as exc:
                    message = exc
                except Exception as exc:  # as in _message
                    message = _error(exc)
                batch.append((self._next_position(now), message, now))
                if len(batch) < size:
                    continue
            if batch:
                await self._publish_batch(batch)
                batch = []
            if now - recorded >= _FOLLOWED_EVERY:
                # everything received until now is published: a later start looks back to here
                recorded = now
                try:
                    await self.gateway.hset(self.bus.keys.bridge_state(self.name), _FOLLOWED, now)
                except (RedisError, OSError) as exc:  # the next publish will say more
                    log.debug("could not record how far the bus was followed: %s", exc)

    def _next_position(self, now: float) -> Position:
        """A position after every one used: the clock's milliseconds (never backwards)."""
        epoch, ms, seq, _ = self._last or (0, 0, 0, 0)
        now_ms = int(now * 1000)
        position = (epoch, now_ms, 0, 0) if now_ms > ms else (epoch, ms, seq + 1, 0)
        self._last = position
        return position

    async def _followed_until(self) -> float | None:
        raw = await self.gateway.hget(self.bus.keys.bridge_state(self.name), _FOLLOWED)
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None

    # -- both -------------------------------------------------------------------------------

    async def _applied(self) -> Position | None:
        delay = 0.2
        while True:
            try:
                return await self.publisher.applied()
            except (RedisError, OSError) as exc:
                self._gateway_failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _publish_batch(
        self, batch: Sequence[tuple[Position, SourceMessage | Malformed, float]]
    ) -> None:
        """Look up, build and publish one batch of messages; the last one's position is
        written with it even when it publishes nothing, so the place moves on."""
        steps: list[tuple[Position, Step, float]] = []
        for position, message, at in batch:
            if isinstance(message, Malformed):
                self._drop(message.kind, message)
                continue
            try:
                step = interpret(message)
            except Malformed as exc:
                self._drop(exc.kind, exc)
                continue
            except Exception as exc:  # as in _message
                self._drop("error", _error(exc))
                continue
            if step is None:
                self.metrics.ignored.inc()
                continue
            steps.append((position, step, at))
        entries: list[tuple[Position, KernelEvent | SourceGap | None]] = []
        if steps:
            started = time.perf_counter()
            events = await self._events([(step, at) for _, step, at in steps])
            self.metrics.lookup.observe(time.perf_counter() - started)
            entries = [
                (pos, ev)
                for (pos, _, _), ev in zip(steps, events, strict=True)
                if ev is not None and not self._reconciled_already(ev)
            ]
        last = batch[-1][0]
        if not entries or entries[-1][0] != last:
            entries.append((last, None))
        await self._publish(entries)
        self.metrics.lag.set(max(0.0, time.time() - batch[-1][2]))

    async def _events(self, steps: Sequence[tuple[Step, float]]) -> list[KernelEvent | None]:
        """The gateway's events for ``steps`` (None for one whose row never showed, or that
        the schema refuses: dropped and counted)."""
        owners = await self.lookup.owners((step.lookup, step.key) for step, _ in steps)
        groups = await self.lookup.group_names(
            o.group_id for o in owners.values() if o.group_id is not None
        )
        out: list[KernelEvent | None] = []
        for step, at in steps:
            owner = owners.get((step.lookup, step.key))
            if owner is None:
                self._drop("not_found", f"{step.name}: no {step.lookup} row {step.key}")
                out.append(None)
                continue
            group = groups.get(owner.group_id) if owner.group_id else None
            try:
                out.append(build_event(step, owner, group, at))
            except InvalidEvent as exc:
                self._drop("invalid", f"{step.name} of {step.lookup} {step.key}: {exc}")
                out.append(None)
        return out

    async def _gap(
        self,
        at: tuple[int, int, int],
        since: float,
        why: str,
        survivors: Sequence[SourceMessage | Malformed],
    ) -> None:
        """Tell a gap after ``at`` (an entry's position, its ``after`` part to come): the
        marker, then the terminal events of the sessions that ended since ``since`` and whose
        end is neither in the gateway's history nor among ``survivors`` (what the source
        still holds after the gap)."""
        until = time.time()
        seen: list[Step] = []
        for message in survivors:
            if isinstance(message, SourceMessage):
                with contextlib.suppress(Malformed):
                    step = interpret(message)
                    if step is not None:
                        seen.append(step)
        delay = 0.2
        while True:  # it reads the gateway's history: that Redis failing is waited out here
            try:
                events = await self.reconciler.events(since, until, seen)
                break
            except (RedisError, OSError) as exc:
                self._gateway_failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        marker = SourceGap(gap="source", source=self.name, since=since, until=until)
        entries: list[tuple[Position, KernelEvent | SourceGap | None]] = [((*at, 1), marker)]
        entries += [((*at, i + 2), event) for i, event in enumerate(events)]
        log.warning(
            "gap in backend.ai's bus (%s) from %.3f to %.3f: streams told; %d terminal events "
            "reconciled from its database",
            why, since, until, len(events),
        )  # fmt: skip
        ids = await self._publish(entries)
        self.metrics.gaps.labels(why).inc()
        self.metrics.reconciled.inc(sum(1 for i in ids[1:] if i))
        expires = time.monotonic() + _RECONCILED_FOR
        for event in events:  # their own messages may still come (committed, not yet sent)
            self._reconciled[_end_key(event)] = expires
        while len(self._reconciled) > _RECONCILED_MAX:
            self._reconciled.pop(next(iter(self._reconciled)))

    def _reconciled_already(self, event: KernelEvent) -> bool:
        """Whether ``event`` is an end the last gaps published already by reconciliation:
        the manager commits an end, then sends it, so its message can follow the gap."""
        if not self._reconciled:
            return False
        key = _end_key(event)
        expires = self._reconciled.get(key)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._reconciled[key]
            return False
        self.metrics.ignored.inc()
        return True

    async def _publish(
        self, entries: Sequence[tuple[Position, KernelEvent | SourceGap | None]]
    ) -> list[str | None]:
        """Write until the gateway's Redis takes it (the same entries each time, so each is
        written once); :class:`LeaseLost` when the lease is someone else's."""
        delay = 0.2
        while True:
            try:
                ids = await self.publisher.publish(entries, holder=self.holder)
            except NotHolder as exc:
                raise LeaseLost(str(exc)) from exc
            except (RedisError, OSError) as exc:
                self.metrics.retries.inc()
                self._gateway_failed(exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not self.gateway_ok:
                log.info("the gateway's redis takes writes")
                self.gateway_ok = True
            self.metrics.published.inc(sum(1 for i in ids if i))
            return ids

    def _gateway_failed(self, exc: BaseException, delay: float) -> None:
        if self.gateway_ok or delay <= 0.2:
            log.warning(
                "the gateway's redis: %s: %s; trying again (the place is kept)",
                type(exc).__name__,
                exc,
            )
        self.gateway_ok = False

    def _drop(self, reason: str, detail: object) -> None:
        self.metrics.dropped.labels(reason).inc()
        self._drops.warn(reason, "dropped a message of backend.ai's bus (%s): %s", reason, detail)
