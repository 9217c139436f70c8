"""Prometheus ``/metrics``, read from the hub's plain counters at scrape time.

The hot path only adds to ints on :class:`gateway.fanout.stats.HubStats`; this collector
turns them into metric families when Prometheus asks, so a delivery costs no metrics-library call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway.fanout.frames import EVICTIONS
from gateway.fanout.stats import DROP_KINDS
from gateway.replica.state import GatewayState

__all__ = ["GatewayCollector", "RuntimeCollector", "metrics_endpoint"]


class GatewayCollector(Collector):
    def __init__(self, state: GatewayState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        hub, stats, sub, keeper = state.hub, state.hub.stats, state.subscriber, state.keeper

        def subscriptions(counter: str) -> int:  # partition 0's and every other one's
            own: int = getattr(sub, counter)
            return own + (0 if keeper is None else keeper.count(counter))

        yield GaugeMetricFamily("kev_clients", "Connected SSE streams", value=len(hub))
        yield GaugeMetricFamily(
            "kev_buffer_bytes", "Bytes queued for clients, not yet written", hub.buffered_bytes()
        )
        yield CounterMetricFamily(
            "kev_events_received", "Events received from Redis", value=stats.events_in
        )
        yield CounterMetricFamily(
            "kev_events_duplicate", "Events dropped as already seen (gap-fill)", stats.duplicates
        )
        yield CounterMetricFamily(
            "kev_source_gaps",
            "Source-gap markers seen (a bridge's source lost events): streams were told",
            stats.source_gaps,
        )
        yield CounterMetricFamily(
            "kev_deliveries", "Event frames queued to clients", value=stats.deliveries
        )
        yield CounterMetricFamily(
            "kev_connections", "Streams opened", value=stats.connections_total
        )
        evictions = CounterMetricFamily(
            "kev_evictions", "Clients evicted, by reason", labels=["reason"]
        )
        for reason in EVICTIONS:
            evictions.add_metric([reason], stats.evictions[reason])
        yield evictions
        dropped = CounterMetricFamily(
            "kev_payloads_dropped",
            "Redis messages not dispatched (bad id, future id, bad or oversized payload)",
            labels=["kind"],
        )
        for drop in DROP_KINDS:
            dropped.add_metric([drop], stats.dropped[drop])
        yield dropped
        yield CounterMetricFamily(
            "kev_redis_reconnects",
            "Times a subscription (of any partition) was re-established",
            subscriptions("reconnects"),
        )
        yield CounterMetricFamily(
            "kev_new_histories",
            "Times Redis was found holding a new history (epoch change, in any partition): "
            "streams were told",
            subscriptions("new_histories"),
        )
        yield CounterMetricFamily(
            "kev_probe_failures",
            "Subscriptions (of any partition) found dead by the probe",
            subscriptions("probe_failures"),
        )
        restarts = CounterMetricFamily(
            "kev_task_restarts",
            "Background tasks that died (or returned) and were restarted, by task",
            labels=["task"],
        )
        for task, count in sorted(state.task_restarts.items()):
            restarts.add_metric([task], count)
        yield restarts
        auth = CounterMetricFamily(
            "kev_auth_failures", "Refused requests, by kind", labels=["kind"]
        )
        for kind, count in sorted(state.auth_failures.items()):
            auth.add_metric([kind], count)
        yield auth
        store_state = GaugeMetricFamily(
            "kev_identity_store",
            "1 for the identity store's state (ok, empty, lost: Redis lost it; re-import)",
            labels=["state"],
        )
        for name in ("unknown", "ok", "empty", "lost"):
            store_state.add_metric([name], int(state.store.state == name))
        yield store_state
        if state.reauth is not None:
            yield CounterMetricFamily(
                "kev_identity_changes",
                "Identity and browser-session change messages received",
                state.reauth.changes,
            )
            closes = CounterMetricFamily(
                "kev_reauth_closes",
                "Streams ended because the caller's rights changed, by reason",
                labels=["reason"],
            )
            for why, count in sorted(state.reauth.closes.items()):
                closes.add_metric([why], count)
            yield closes
        yield GaugeMetricFamily(
            "kev_stream_limit",
            "Streams this replica accepts: max_streams, or fewer where file descriptors run out",
            state.stream_limit,
        )
        refused = CounterMetricFamily(
            "kev_streams_refused",
            "Stream requests refused at a limit (fd_limit, max_streams, key_limit)",
            labels=["limit"],
        )
        for limit in ("fd_limit", "max_streams", "key_limit"):
            refused.add_metric([limit], state.refused[limit])
        yield refused
        watch = state.history_watch
        yield GaugeMetricFamily(
            "kev_history_ahead_seconds",
            "How far the history's last id is ahead of Redis' clock (above max_id_skew_ms: an "
            "id written in the future; the replica is not ready)",
            value=0.0 if watch is None else watch.ahead_seconds,
        )
        yield GaugeMetricFamily(
            "kev_ready", "1 when subscribed, probed live and every task running", int(state.ready)
        )
        yield GaugeMetricFamily(
            "kev_partitions_mismatch",
            "1 while Redis records another number of partitions for the prefix than this "
            "replica has (a process with another number recorded it), or partition 0's "
            "history was found written with fewer partitions",
            int(state.partitions_problem is not None),
        )
        if keeper is not None:
            yield GaugeMetricFamily(
                "kev_partitions_not_live",
                "Partitions this replica subscribes to (beyond partition 0) whose subscription "
                "has not been live for 10 s or more (their Redis unreachable): their streams "
                "wait, the others go on",
                len(keeper.not_live()),
            )
        hist = stats.dispatch
        cumulative, buckets = 0, []
        for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "kev_dispatch_seconds",
            "Time to hand one event to every matching client's buffer",
            buckets=buckets,
            sum_value=hist.total,
        )


class RuntimeCollector(Collector):
    """What the process runs besides the hub's counters: asyncio tasks (a leak of tasks is
    the first thing to look for when memory grows) and threads."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "kev_asyncio_tasks",
            "asyncio tasks alive in this process (not done)",
            value=len(asyncio.all_tasks()),
        )
        yield GaugeMetricFamily(
            "kev_threads", "Python threads alive in this process", value=threading.active_count()
        )


#: the process basics an operator graphs first (Linux, from /proc/self): resident and
#: virtual memory, open and maximum file descriptors, CPU seconds, start time. Stateless
#: between scrapes; one for the process.
_PROCESS: Final = ProcessCollector(registry=None)
_RUNTIME: Final = RuntimeCollector()


async def metrics_endpoint(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(state))
    registry.register(_PROCESS)
    registry.register(_RUNTIME)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
