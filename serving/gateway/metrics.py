"""Prometheus metrics of one gateway (own registry, so several apps can live in one test process).

The inference log's state is exported as gauges read at scrape time: ``riverbed_audit_spool_depth``,
``riverbed_audit_degraded`` (new rows go to the spool: PostgreSQL unreachable or the spool being replayed),
``riverbed_audit_unavailable``, ``riverbed_audit_replaying``, ``riverbed_audit_stalled`` (the chain head is
locked), ``riverbed_audit_quarantined`` (rows this process quarantined since it started) and
``riverbed_audit_checkpoint_failing`` (the last signed checkpoint could not be written); and
``riverbed_api_key_listener`` (1 while the API-key revocation listener is connected).

The retraining thresholds of the specs handed to :class:`GatewayMetrics` are static gauges:
``riverbed_monitoring_performance_threshold{dataset, metric}`` is a spec's ``retraining.min_performance`` for its
``retraining.performance_metric`` (absent when the spec sets none), so an alert rule can compare the estimated and
realised performance with it.

Read from the database in one periodic refresh (:class:`MonitoringGauges`): the latest ``monitoring_results`` as
``riverbed_monitoring_*`` gauges, and the ``pipeline_failures`` counts (sensors, serving start-up, deployments:
:mod:`riverbed.pipeline_failures`) as the counter ``riverbed_pipeline_failures_total{component, reason}``. A refresh
that fails keeps the last values, counts ``riverbed_gateway_metrics_refresh_failures_total{table}`` and logs a
WARNING when a table starts failing (or fails differently), an INFO line when it reads again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from typing import Any, Protocol

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from riverbed.pipeline_failures import READ_FAILURES
from riverbed.specs import DatasetSpec

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class AuditLogState(Protocol):
    """What the metrics read of the inference-log writer (:class:`serving.inference_log.InferenceLogWriter`)."""

    @property
    def spool_depth(self) -> int: ...

    @property
    def degraded(self) -> bool: ...

    @property
    def unavailable(self) -> bool: ...

    @property
    def replaying(self) -> bool: ...

    @property
    def stalled(self) -> bool: ...

    @property
    def quarantined(self) -> int: ...

    @property
    def checkpoint_error(self) -> str | None: ...


class GatewayMetrics:
    def __init__(
        self,
        audit: AuditLogState,
        key_listener: Callable[[], bool] | None = None,
        specs: Mapping[str, DatasetSpec] | None = None,
    ) -> None:
        # Long on purpose: one declaration per exported metric, in the order /metrics lists them, so the whole
        # set a dashboard or alert rule can use reads in one place.
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
            "Time until a request's audit row was settled, by outcome: committed, spooled, quarantined (durable "
            "outside the chain), timeout or failed (not durable: a prediction is then answered 503).",
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
            "Unauthenticated (401) predict refusals and refused console logins (reason console_<code>) beyond "
            "unauthenticated_log_per_second: answered, not logged.",
            ["reason"],
            registry=self.registry,
        )
        self.console_login_refusals = Counter(
            "riverbed_console_login_refusals",
            "Refused console logins (POST /console/login) by reason, and what became of each one's inference-log row: "
            "logged, sampled_out (beyond unauthenticated_log_per_second) or not_recorded (the log refused the write).",
            ["reason", "row"],
            registry=self.registry,
        )
        gauges: list[tuple[str, str, Callable[[], float]]] = [
            ("riverbed_audit_spool_depth", "Audit records waiting in the local spool.", lambda: audit.spool_depth),
            (
                "riverbed_audit_degraded",
                "1 while new audit rows go to the local spool (the database unreachable, or the spool being replayed).",
                lambda: audit.degraded,
            ),
            (
                "riverbed_audit_unavailable",
                "1 while the inference log database is unreachable.",
                lambda: audit.unavailable,
            ),
            (
                "riverbed_audit_replaying",
                "1 while the local spool is being replayed into the chain (new rows are spooled behind it).",
                lambda: audit.replaying,
            ),
            (
                "riverbed_audit_stalled",
                "1 while the chain head is locked: rows wait, and requests are answered 503 after the record timeout.",
                lambda: audit.stalled,
            ),
            (
                "riverbed_audit_quarantined",
                "Audit rows this process quarantined (kept outside the hash chain) since it started.",
                lambda: audit.quarantined,
            ),
            (
                "riverbed_audit_checkpoint_failing",
                "1 while the last signed checkpoint of the chain head could not be written.",
                lambda: audit.checkpoint_error is not None,
            ),
        ]
        if key_listener is not None:
            gauges.append(
                (
                    "riverbed_api_key_listener",
                    "1 while the API-key revocation listener is connected (revocations are then pushed).",
                    key_listener,
                )
            )
        for name, documentation, read in gauges:
            gauge = Gauge(name, documentation, registry=self.registry)
            gauge.set_function(partial(_as_float, read))
        self.monitoring = MonitoringGauges(self.registry)
        self.monitoring.set_performance_thresholds(specs or {})


def _as_float(read: Callable[[], float | bool | int]) -> float:
    return float(read())


# The newest analysed chunk per dataset: drift alerts per feature, estimated / realised performance.
_LATEST_MONITORING = """
select distinct on (dataset, kind, name) dataset, kind, name, value, alert
from monitoring_results
order by dataset, kind, name, day desc, chunk desc
"""


_REFRESHED_TABLES = ("monitoring_results", "pipeline_failures")  # read in this order by MonitoringGauges.refresh


class PipelineFailureCounts(Collector):
    """``riverbed_pipeline_failures_total{component, reason}``: the stored counts as of the last refresh."""

    NAME = "riverbed_pipeline_failures"
    DOCUMENTATION = (
        "Pipeline failures that were reported instead of passing silently (a sensor trigger that could not be "
        "evaluated, a serving start-up or deployment refused), by component and reason, as counted in the "
        "pipeline_failures table."
    )

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], float] = {}

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.NAME, self.DOCUMENTATION, labels=["component", "reason"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.NAME, self.DOCUMENTATION, labels=["component", "reason"])
        for (component, reason), count in sorted(self.counts.items()):
            family.add_metric([component, reason], count)
        yield family


class MonitoringGauges:
    """Monitoring results (written by the monitoring asset) as gauges and the pipeline-failure counts as a counter,
    refreshed at most every ``ttl`` seconds."""

    def __init__(self, registry: CollectorRegistry, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self.refreshed = 0.0
        self.failing: dict[str, str] = {}  # table -> the error type its last read met (absent: it read fine)
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
        self.performance_threshold = Gauge(
            "riverbed_monitoring_performance_threshold",
            "The dataset spec's retraining.min_performance for its retraining.performance_metric: retraining is "
            "asked for when the estimated or realised performance falls below it.",
            ["dataset", "metric"],
            registry=registry,
        )
        self.pipeline_failures = PipelineFailureCounts()
        registry.register(self.pipeline_failures)
        self.refresh_failures = Counter(
            "riverbed_gateway_metrics_refresh_failures",
            "Reads of a table behind the gateway's database-backed metrics that failed (the last values were kept).",
            ["table"],
            registry=registry,
        )
        for table in _REFRESHED_TABLES:  # exported at 0 from the start, so increase() sees the first failure
            self.refresh_failures.labels(table)

    async def refresh(self, fetch: Callable[[str], Awaitable[list[tuple[Any, ...]]]]) -> None:
        """Reload ``monitoring_results`` and ``pipeline_failures`` (``fetch`` runs a query).

        A table that cannot be read keeps its last values and counts one refresh failure; once the database did
        not answer, the next table is not tried (counted too). One WARNING per change of the failing state (not
        per scrape), one INFO line when every table reads again.
        """
        if time.monotonic() - self.refreshed < self.ttl:
            return
        self.refreshed = time.monotonic()
        reads: list[tuple[str, str, Callable[[list[tuple[Any, ...]]], None]]] = [
            (_REFRESHED_TABLES[0], _LATEST_MONITORING, self._set_monitoring),
            (_REFRESHED_TABLES[1], READ_FAILURES, self._set_pipeline_failures),
        ]
        failed: dict[str, Exception] = {}
        unreachable: Exception | None = None
        for table, query, apply in reads:
            if unreachable is not None:  # not tried: the database did not answer the read before
                failed[table] = unreachable
                continue
            try:
                rows = await fetch(query)
            except (psycopg.Error, OSError, TimeoutError) as error:
                failed[table] = error
                if _no_answer(error):
                    unreachable = error
                continue
            apply(rows)
        for table in failed:
            self.refresh_failures.labels(table).inc()
        state = {table: type(error).__name__ for table, error in failed.items()}
        if state and state != self.failing:
            logger.warning(
                "database-backed metrics not refreshed, the last values are kept: %s",
                "; ".join(f"{table}: {type(error).__name__}: {error}" for table, error in failed.items()),
            )
        elif not state and self.failing:
            logger.info("database-backed metrics refreshed again (%s)", ", ".join(sorted(self.failing)))
        self.failing = state

    def set_performance_thresholds(self, specs: Mapping[str, DatasetSpec]) -> None:
        """Export each spec's ``retraining.min_performance`` (specs without one export no threshold)."""
        self.performance_threshold.clear()
        for name, spec in sorted(specs.items()):
            threshold = spec.retraining.min_performance
            if threshold is not None:
                self.performance_threshold.labels(name, spec.retraining.performance_metric).set(threshold)

    def _set_pipeline_failures(self, rows: list[tuple[Any, ...]]) -> None:
        self.pipeline_failures.counts = {
            (str(component), str(reason)): float(count) for component, reason, count in rows
        }

    def _set_monitoring(self, rows: list[tuple[Any, ...]]) -> None:
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


def _no_answer(error: Exception) -> bool:
    """Whether the database gave no answer at all (no connection), rather than refusing one statement."""
    if isinstance(error, OSError | TimeoutError):
        return True
    return isinstance(error, psycopg.OperationalError) and error.sqlstate is None
