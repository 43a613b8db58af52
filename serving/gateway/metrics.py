"""Prometheus metrics of one gateway (own registry, so several apps can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable

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
        spool = Gauge("riverbed_audit_spool_depth", "Audit records waiting in the local spool.", registry=self.registry)
        spool.set_function(spool_depth)
        down = Gauge(
            "riverbed_audit_degraded", "1 while the inference log database is unreachable.", registry=self.registry
        )
        down.set_function(degraded)
