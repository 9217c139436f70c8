"""Prometheus ``/metrics``, read from the hub's plain counters at scrape time.

The hot path only adds to ints on :class:`gateway.fanout.stats.HubStats`; this collector
turns them into metric families when Prometheus asks, so a delivery costs no metrics-library call.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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

from .state import GatewayState

__all__ = ["GatewayCollector", "metrics_endpoint"]


class GatewayCollector(Collector):
    def __init__(self, state: GatewayState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        hub, stats, sub = state.hub, state.hub.stats, state.subscriber
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
            "kev_redis_reconnects", "Times the subscription was re-established", sub.reconnects
        )
        yield CounterMetricFamily(
            "kev_new_histories",
            "Times Redis was found holding a new history (epoch change): streams were told",
            sub.new_histories,
        )
        yield CounterMetricFamily(
            "kev_probe_failures", "Subscriptions found dead by the probe", sub.probe_failures
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
        yield GaugeMetricFamily(
            "kev_ready", "1 when subscribed, probed live and every task running", int(state.ready)
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


async def metrics_endpoint(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
