"""What a replica runs besides its requests, for as long as it runs: :func:`running_replica`
builds every process-wide resource (:class:`~gateway.replica.state.GatewayState`) and owns it.

In order: the Redis clients, the identity store, the browser sessions and the password-check
threads, the auth methods, the hub, the exit signals (:func:`_chain_exit_signals`) and the
background tasks (the subscriber, the hub's timer, the re-authorization of open streams
(:mod:`.reauthorize`), the fleet-wide stream leases (:mod:`.limits`)), each supervised: one
that dies is logged, counted (``kev_task_restarts_total``) and restarted after a backoff, and
``/ready`` is 503 meanwhile. On the way out the tasks are cancelled and awaited before the
Redis clients close, so no reader outlives the connection it reads; then the password-check
threads end. No HTTP here: :mod:`gateway.http.app` runs this as the Starlette lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from types import FrameType
from typing import Any, Final

import msgspec
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.fanout.history import read_after
from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import Subscriber
from gateway.identity.backendai_sessions import BackendAISessions
from gateway.identity.changes import changes_channel
from gateway.identity.methods import AuthMethod, GatewaySessions, SignedRequests
from gateway.identity.passwords import PasswordChecks
from gateway.identity.sessions import SessionStore
from gateway.identity.store import IdentityStore
from gateway.identity.throttle import LoginThrottle
from gateway.settings import Settings
from publisher.bus import Bus
from publisher.connection import connect_async, connect_node_async, redact_url
from publisher.partitions import (
    Partitions,
    check_partitions,
    refuse_repartition,
)
from publisher.schema import KernelEvent, decode_event
from publisher.tasks import cancel_and_wait

from .handoff import Handoff
from .history_watch import HistoryWatch
from .limits import KeyLeases
from .partitions import PartitionKeeper
from .reauthorize import Reauthorizer
from .state import GatewayState

__all__ = ["EXIT_SIGNALS", "running_replica"]

log = logging.getLogger(__name__)


#: the signals that stop a replica (uvicorn's own set)
EXIT_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def _chain_exit_signals(state: GatewayState) -> Callable[[], None]:
    """On the first SIGINT or SIGTERM, drain (:meth:`GatewayState.drain`: not ready, no new
    stream, ``server_close`` to every client, then wait until they are gone or
    ``drain_deadline`` passed), and only then pass the signal on to the handler that was
    there before: the server's (uvicorn's: it closes the listener and stops), so load
    balancers see ``/ready`` fail while the replica still answers. A second signal is passed
    on at once. A signal that had no handler before keeps its default action, after the
    drain. Returns the undo.

    Only the main thread may set signal handlers: elsewhere (an embedding server's thread,
    the tests) nothing is installed, and ``TransportScope.request_shutdown`` is the way in.
    The standard library's signal API, where sse-starlette patches a private hook onto
    uvicorn's ``Server.handle_exit`` at import."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    signalled: list[int] = []
    passed: list[int] = []
    draining: set[asyncio.Task[None]] = set()

    def pass_on(sig: int, frame: FrameType | None) -> None:
        passed.append(sig)
        before = previous[signal.Signals(sig)]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def drain_then_pass_on(sig: int) -> None:
        try:
            await state.drain()
        finally:
            if not passed:  # a second signal went through meanwhile: the server has it
                pass_on(sig, None)

    def start_drain(sig: int) -> None:
        log.info("signal %d: draining %d streams before exit", sig, len(state.hub))
        task = loop.create_task(drain_then_pass_on(sig))
        draining.add(task)
        task.add_done_callback(draining.discard)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if signalled:
            pass_on(sig, frame)  # the second: no more waiting
            return
        signalled.append(sig)
        # A handler may run between any two bytecodes of the loop's thread: hand over.
        loop.call_soon_threadsafe(start_drain, sig)

    for sig in EXIT_SIGNALS:
        signal.signal(sig, on_signal)

    def undo() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, before)

    return undo


async def _supervise(
    state: GatewayState, name: str, run: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``run()`` for the life of the process: a crash (or a return) is logged and
    counted, the task is marked down (``/ready`` 503) and restarted after a backoff of 0.1 s
    doubling to 5 s."""
    delay = 0.1
    while True:
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except Exception:
            log.exception("background task %s died; restarting it in %.1fs", name, delay)
        state.task_restarts[name] += 1
        state.tasks_down.add(name)
        try:
            await asyncio.sleep(delay)
        finally:
            state.tasks_down.discard(name)
        delay = min(delay * 2, 5.0)


#: entries of partition 0's history :func:`_foreign_owners` looks at
_OWNERS_LOOKED_AT: Final = 64


async def _foreign_owners(
    redis: Any, bus: Bus, partitions: Partitions, max_payload: int
) -> str | None:
    """With more than one partition: why partition 0's history looks written with fewer
    partitions, or None. The oldest entries are checked: when most of their events belong
    to other partitions' owners, those owners' events never reach their streams. This
    catches the mistake however N got recorded (a publisher with the new N may have
    recorded it first, where :func:`refuse_repartition` sees a record). Named, not refused:
    a stolen publisher credential can put foreign events there too, and must not be able
    to keep replicas from starting."""
    if partitions.n <= 1:
        return None
    seen = foreign = 0
    entries = read_after(redis, bus, "0-0", max_payload=max_payload, chunk=_OWNERS_LOOKED_AT)
    async with contextlib.aclosing(entries):
        async for batch, _ in entries:
            for _, payload in batch:
                if payload is None:
                    continue
                try:
                    event = decode_event(payload)
                except (msgspec.MsgspecError, ValueError):
                    continue  # a marker, or what no replica dispatches
                if isinstance(event, KernelEvent):
                    seen += 1
                    foreign += bool(partitions.of(event.owner_user_id))
            break
    if not seen or foreign * 2 <= seen:
        return None
    return (
        f"this process has {partitions.n} partitions, but {foreign} of the {seen} oldest "
        f"events of partition 0's history ({bus.keys.history}) belong to owners of other "
        "partitions: it was written with fewer partitions, and those owners' events do not "
        "reach their streams (dropped, counted as wrong_partition). An existing deployment "
        "cannot change its number: keep its number, or start one with another prefix"
    )


@contextlib.asynccontextmanager
async def running_replica(settings: Settings) -> AsyncIterator[GatewayState]:
    """The replica's resources and background tasks while the block runs; on exit, the
    streams are drained, the tasks stopped and everything closed."""
    async with contextlib.AsyncExitStack() as owned:
        keys = settings.redis.keys()
        bus = Bus(keys)
        # A pooled connection found dead on first use (Redis restarted since) is retried
        # once on a fresh one: without it the first request after every restart got 503.
        # The gateway's commands are reads and idempotent writes, so a retry is safe.
        redis = connect_async(
            settings.redis.url,
            **settings.redis.options,
            pool_size=settings.redis.pool_size,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        owned.push_async_callback(redis.aclose)
        # The subscription and its probes get a client of their own, so a storm of
        # reconnecting clients can never starve the one thing every stream depends on.
        # No retries of its own: redis-py's default (10, with backoff, reconnecting and
        # re-subscribing underneath) hid a Redis restart inside one read for seconds while
        # the replica still looked ready; the subscriber's session loop reconnects, with its
        # own backoff, and gap-fills what the dropped connection missed.
        sub_options: dict[str, Any] = {"health_check_interval": 30, "retry": Retry(NoBackoff(), 0)}
        sub_redis = connect_async(settings.redis.url, **settings.redis.options, **sub_options)
        owned.push_async_callback(sub_redis.aclose)
        # on a cluster the subscription runs on the node that serves the bus' slot
        connect_node = (
            functools.partial(
                connect_node_async, settings.redis.url, **settings.redis.options, **sub_options
            )
            if keys.cluster
            else None
        )
        partitions = settings.redis.partition_set()
        # Every process of the deployment must have the same partitions (Redis records them;
        # PartitionMismatch names both numbers and stops the start-up). `gateway serve` has
        # waited for Redis; a replica started without it (tests, embedding) goes on unchecked.
        foreign: str | None = None
        try:
            await refuse_repartition(redis, keys, partitions.n)
            await check_partitions(redis, keys, partitions.n)
            foreign = await _foreign_owners(redis, bus, partitions, settings.fanout.max_payload)
            if foreign is not None:
                log.error("%s", foreign)
        except (RedisError, RedisClusterException) as exc:
            log.warning("could not check the number of partitions against Redis: %s", exc)
        hub = Hub(settings.fanout, partitions=partitions)
        store = IdentityStore(
            redis, keys, cache_ttl=settings.identity.identity_cache_ttl, watch_presence=True
        )
        browser = settings.browser
        checks = PasswordChecks(browser.login_hash_threads, browser.login_hash_queue)
        owned.callback(checks.close)
        sessions = SessionStore(
            redis,
            keys,
            store,
            checks,
            ttl=browser.session_ttl,
            max_per_key=browser.max_sessions_per_key,
        )
        # The ways in, in the order they are tried: the gateway's browser session (a request
        # without a signature), Backend.AI's console session when configured, then the keypair
        # signature (which answers every request).
        methods: list[AuthMethod] = [GatewaySessions(sessions, store)]
        if settings.identity.backendai_sessions:
            # The web server's Redis, its own client: read-only (GET AIOHTTP_SESSION_*)
            console_redis = connect_async(
                settings.identity.backendai_sessions,
                pool_size=settings.redis.pool_size,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 1),
            )
            owned.push_async_callback(console_redis.aclose)
            methods.append(BackendAISessions(console_redis, store))
        handoff = (
            Handoff(redis, keys, settings.server.handoff_ttl)
            if settings.server.handoff_ttl > 0
            else None
        )
        methods.append(
            SignedRequests(
                store,
                max_skew=timedelta(seconds=settings.identity.max_clock_skew),
                # an SDK's reconnect after a drain re-sends its first, long-signed request
                claim=handoff.claim if handoff is not None else None,
            )
        )
        # Open streams follow identity: change messages at once, every stream after each
        # (re)subscription, and every max(1, identity_cache_ttl) s as the backstop.
        reauth = Reauthorizer(
            hub, store, methods, period=max(1.0, settings.identity.identity_cache_ttl)
        )
        state = GatewayState(
            foreign_history=foreign,
            settings=settings,
            redis=redis,
            keys=keys,
            bus=bus,
            hub=hub,
            store=store,
            sessions=sessions,
            methods=methods,
            throttle=LoginThrottle(
                redis,
                keys,
                free=browser.login_free_failures,
                free_per_address=browser.login_free_failures_per_address,
                backoff=browser.login_backoff,
                backoff_max=browser.login_backoff_max,
                window=browser.login_failure_window,
            ),
            subscriber=Subscriber(
                sub_redis,
                bus,
                hub.lanes[0] if hub.lanes else hub,
                replica=settings.server.replica,
                probe_interval=settings.fanout.probe_interval,
                listeners={changes_channel(keys): reauth.on_message},
                on_subscribed=reauth.on_subscribed,
                connect_node=connect_node,
            ),
            reauth=reauth,
            # max_streams_per_key counts across the fleet (gateway.replica.limits)
            leases=KeyLeases(
                redis,
                keys,
                hub,
                replica=settings.server.replica,
                limit=settings.limits.max_streams_per_key,
                lease=settings.limits.stream_lease,
            ),
        )
        state.handoff = handoff
        owned.push_async_callback(state.subscriber.aclose)  # after its task is stopped
        if hub.lanes:
            # One subscription per partition beyond 0, while a stream needs it (the keeper):
            # each on a client of its own (a session that fails closes its client's pooled
            # connections: the others' must not go with them), and on a cluster on the
            # master of its own slot.
            state.partition_buses = [Bus(k) for k in partitions.keys]
            clients = [sub_redis]
            for _ in range(1, partitions.n):
                client = connect_async(settings.redis.url, **settings.redis.options, **sub_options)
                owned.push_async_callback(client.aclose)
                clients.append(client)

            def make_subscriber(p: int) -> Subscriber:
                return Subscriber(
                    clients[p],
                    state.partition_buses[p],
                    hub.lanes[p],
                    replica=settings.server.replica,
                    probe_interval=settings.fanout.probe_interval,
                    connect_node=connect_node,
                )

            keeper = PartitionKeeper(hub, make_subscriber, linger=settings.redis.partition_linger)
            owned.push_async_callback(keeper.aclose)  # after its task is stopped
            state.keeper = keeper
        state.history_watch = HistoryWatch(
            redis,
            bus,
            state.subscriber,
            max_skew_ms=settings.fanout.max_id_skew_ms,
            interval=settings.fanout.probe_interval or 5.0,  # (0 turns probes off, not this)
            partitions=None if state.keeper is None else state.watched_partitions,
            n=partitions.n,
        )
        tasks: set[asyncio.Task[None]] = set()

        def spawn(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
            task = asyncio.create_task(_supervise(state, name, run), name=name)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        state.loop = asyncio.get_running_loop()
        undo_signals = _chain_exit_signals(state)
        try:
            spawn("subscriber", state.subscriber.run)
            if state.keeper is not None:
                spawn("partitions", state.keeper.run)
            spawn("hub-timer", hub.run_timer)
            spawn("revalidate", reauth.run)
            spawn("history-watch", state.history_watch.run)
            if state.leases is not None:
                spawn("stream-leases", state.leases.run)
            log.info(
                "gateway replica %s up, redis %s prefix %s",
                settings.server.replica,
                redact_url(settings.redis.url),
                settings.redis.prefix,
            )
            yield state
            await state.drain()
        finally:
            undo_signals()
            # Cancelled until they end: a cancel that lands as a Redis command completes
            # can be swallowed on Python 3.11 (publisher.tasks), and the process would hang
            # here on its way out.
            await cancel_and_wait(*tasks)
