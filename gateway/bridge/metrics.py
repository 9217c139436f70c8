"""The bridge's Prometheus metrics, on a registry of its own (``/metrics`` of its port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BridgeMetrics"]


class BridgeMetrics:
    """Counters and gauges of one bridge process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.read = Counter(
            "kev_bridge_events_read",
            "Messages read from Backend.AI's bus, lifecycle or not",
            ["format"],
            registry=r,
        )
        self.published = Counter(
            "kev_bridge_events_published",
            "Lifecycle events written to the gateway's history (reconciled ones included)",
            registry=r,
        )
        self.dropped = Counter(
            "kev_bridge_events_dropped",
            "Messages not published, by reason: malformed (envelope, encoding, msgpack, "
            "oversized, shape, uuid, pickle), not_found (no row after the lookup timeout), "
            "invalid (a row the gateway's schema refuses)",
            ["reason"],
            registry=r,
        )
        self.ignored = Counter(
            "kev_bridge_events_ignored",
            "Messages of Backend.AI's bus that are not lifecycle events the stream shows",
            registry=r,
        )
        self.lookup = Histogram(
            "kev_bridge_enrichment_seconds",
            "Seconds to find whose a batch's events are (cache, then PostgreSQL)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.lag = Gauge(
            "kev_bridge_source_lag_seconds",
            "Seconds between the last published event's time on Backend.AI's bus and its write",
            registry=r,
        )
        self.gaps = Counter(
            "kev_bridge_gaps",
            "Spans of Backend.AI's bus the bridge could not follow (outage, trimmed stream, "
            "a source that lost its data), each told to streams as history_truncated",
            ["why"],
            registry=r,
        )
        self.reconciled = Counter(
            "kev_bridge_reconciled_events",
            "Terminal events published from PostgreSQL after a gap",
            registry=r,
        )
        self.retries = Counter(
            "kev_bridge_publish_retries",
            "Writes to the gateway's Redis that failed and were tried again",
            registry=r,
        )
        self.active = Gauge(
            "kev_bridge_active", "1 while this process holds the lease and follows", registry=r
        )
        self.database_up = Gauge(
            "kev_bridge_database_up", "1 while Backend.AI's PostgreSQL answers", registry=r
        )
        self.source_up = Gauge(
            "kev_bridge_source_up", "1 while Backend.AI's Redis is followed", registry=r
        )
        self.takeovers = Counter(
            "kev_bridge_lease_acquired", "Times this process became the active bridge", registry=r
        )
