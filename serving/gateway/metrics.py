"""Prometheus metrics of one gateway (own registry, so several apps can live in one test process)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self, spool_depth: Callable[[], float], degraded: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "riverbed_gateway_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "riverbed_gateway_request_seconds",
            "Request latency by route and status.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "riverbed_predictions",
            "Predicted records by dataset and label.",
            ["dataset", "label"],
            registry=self.registry,
        )
        self.scoring_seconds = Histogram(
            "riverbed_scoring_seconds",
            "Round trip to MLServer by dataset and whether explanations were computed.",
            ["dataset", "explain"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.explanation_seconds = Histogram(
            "riverbed_explanation_seconds",
            "Time spent scoring requests with explanations (MLServer round trip incl. TreeSHAP).",
            ["dataset"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audit_write_seconds = Histogram(
            "riverbed_audit_write_seconds",
            "Time until a request's audit row was durable (group commit or spool).",
            ["durability"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prediction_events = Counter(
            "riverbed_prediction_events",
            "Prediction events to Kafka by outcome (queued, delivered, failed, dropped).",
            ["outcome"],
            registry=self.registry,
        )
        self.unlogged_refusals = Counter(
            "riverbed_gateway_unlogged_refusals",
            "Unauthenticated (401) predict refusals beyond unauthenticated_log_per_second: answered, not logged.",
            ["reason"],
            registry=self.registry,
        )
        spool = Gauge("riverbed_audit_spool_depth", "Audit records waiting in the local spool.", registry=self.registry)
        spool.set_function(spool_depth)
        down = Gauge(
            "riverbed_audit_degraded", "1 while the inference log database is unreachable.", registry=self.registry
        )
        down.set_function(degraded)
        self.monitoring = MonitoringGauges(self.registry)


# The newest analysed chunk per dataset: drift alerts per feature, estimated / realised performance.
_LATEST_MONITORING = """
select distinct on (dataset, kind, name) dataset, kind, name, value, alert
from monitoring_results
order by dataset, kind, name, day desc, chunk desc
"""


class MonitoringGauges:
    """Monitoring results (written by the monitoring asset) as gauges, refreshed at most every ``ttl`` seconds."""

    def __init__(self, registry: CollectorRegistry, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self.refreshed = 0.0
        self.drift_value = Gauge(
            "riverbed_monitoring_drift",
            "Jensen-Shannon distance of each feature in the latest monitored chunk.",
            ["dataset", "feature"],
            registry=registry,
        )
        self.drift_alert = Gauge(
            "riverbed_monitoring_drift_alert",
            "1 when the feature drifted in the latest monitored chunk.",
            ["dataset", "feature"],
            registry=registry,
        )
        self.reconstruction_error = Gauge(
            "riverbed_monitoring_reconstruction_error",
            "Multivariate drift (PCA reconstruction error) of the latest monitored chunk.",
            ["dataset"],
            registry=registry,
        )
        self.estimated = Gauge(
            "riverbed_monitoring_estimated_performance",
            "CBPE-estimated performance of the latest monitored chunk.",
            ["dataset", "metric"],
            registry=registry,
        )
        self.realised = Gauge(
            "riverbed_monitoring_realised_performance",
            "Performance on labelled predictions of the latest chunk with labels.",
            ["dataset", "metric"],
            registry=registry,
        )

    async def refresh(self, fetch: Callable[[str], Awaitable[list[tuple[Any, ...]]]]) -> None:
        """Reload from ``monitoring_results`` (``fetch`` runs a query); failures keep the last values."""
        if time.monotonic() - self.refreshed < self.ttl:
            return
        self.refreshed = time.monotonic()
        try:
            rows = await fetch(_LATEST_MONITORING)
        except Exception:  # the table may not exist yet, or the database is down: keep what is there
            return
        for dataset, kind, name, value, alert in rows:
            if value is None:
                continue
            if kind == "univariate_drift":
                self.drift_value.labels(dataset, name).set(value)
                self.drift_alert.labels(dataset, name).set(1.0 if alert else 0.0)
            elif kind == "multivariate_drift":
                self.reconstruction_error.labels(dataset).set(value)
            elif kind == "cbpe":
                self.estimated.labels(dataset, name).set(value)
            elif kind == "realised":
                self.realised.labels(dataset, name).set(value)
