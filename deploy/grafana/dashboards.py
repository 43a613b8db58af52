"""Riverbed's Grafana dashboards, kept as code (grafana-foundation-sdk, built for Grafana 11.6).

Writes one JSON file per dashboard into ``deploy/grafana/dashboards/``, which the grafana service of
``deploy/docker-compose.yml`` provisions (``deploy/grafana/provisioning/dashboards/riverbed.yml``). The JSON is
committed; regenerate it after editing this file::

    make dashboards                                   # = uv run --frozen python deploy/grafana/dashboards.py
    uv run --frozen python deploy/grafana/dashboards.py --check   # exit 1 when the committed JSON is stale

Every query reads the provisioned Prometheus data source (uid ``prometheus``) and only metrics the code exports
(``serving/gateway/metrics.py``, ``platform_assets/pipeline_metrics.py``); ``tests/deploy/test_deploy_static.py``
checks both, and that the committed files equal what :func:`render` produces.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef

logger = logging.getLogger(__name__)

OUTPUT_DIR = Path(__file__).resolve().parent / "dashboards"
# The uid that deploy/grafana/provisioning/datasources/prometheus.yml gives the data source.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE_WINDOW = "5m"
FULL_WIDTH = 24
HALF_WIDTH = 12
HEIGHT = 8


@dataclass(frozen=True)
class Query:
    """One PromQL target: the expression and the legend of each series it returns."""

    expr: str
    legend: str


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(query.expr)
        .legend_format(query.legend)
        .ref_id(ref_id)
        .range()
        .datasource(DATASOURCE)
    )


def _ref_ids(queries: tuple[Query, ...]) -> list[tuple[Query, str]]:
    return [(query, chr(ord("A") + index)) for index, query in enumerate(queries)]


def graph(
    title: str,
    description: str,
    *queries: Query,
    unit: str = "short",
    width: int = HALF_WIDTH,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series panel with one target per query."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(HEIGHT)
        .span(width)
        .fill_opacity(10)
        .line_width(1)
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    for query, ref_id in _ref_ids(queries):
        panel = panel.with_target(_target(query, ref_id))
    return panel


def single(title: str, description: str, query: Query, *, unit: str = "short", width: int = 6) -> stat.Panel:
    """A stat panel showing the latest value of one query."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(width)
        .with_target(_target(query, "A"))
    )


def _dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["riverbed"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("utc")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .readonly()
    )


def serving_dashboard() -> dashboard.Dashboard:
    """Gateway traffic, latency, errors and the health of the audit log (inference log, spool, quarantine)."""
    w = RATE_WINDOW
    return (
        _dashboard(
            "riverbed-serving",
            "Riverbed serving",
            "The gateway: request rate, latency, 5xx and the audit log behind every prediction.",
        )
        .with_row(dashboard.Row("Traffic"))
        .with_panel(
            graph(
                "Request rate by route",
                "Requests per second answered by the gateway, by route.",
                Query(f"sum by (route) (rate(riverbed_gateway_requests_total[{w}]))", "{{route}}"),
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                "Latency p50 / p99",
                "Request latency quantiles over all routes, from the gateway's histogram.",
                Query(
                    f"histogram_quantile(0.5, sum by (le) (rate(riverbed_gateway_request_seconds_bucket[{w}])))",
                    "p50",
                ),
                Query(
                    f"histogram_quantile(0.99, sum by (le) (rate(riverbed_gateway_request_seconds_bucket[{w}])))",
                    "p99",
                ),
                unit="s",
            )
        )
        .with_panel(
            graph(
                "5xx by route",
                "Server errors per second (503: MLServer or the audit log could not take the request); 0 for a "
                "route that answered only below 500.",
                Query(
                    f'sum by (route) (rate(riverbed_gateway_requests_total{{status=~"5.."}}[{w}]))'
                    f" or sum by (route) (rate(riverbed_gateway_requests_total[{w}])) * 0",
                    "{{route}}",
                ),
                unit="reqps",
            )
        )
        .with_panel(
            graph(
                "5xx ratio",
                "Share of all requests answered with a 5xx status.",
                Query(
                    f'(sum(rate(riverbed_gateway_requests_total{{status=~"5.."}}[{w}])) or vector(0))'
                    f" / sum(rate(riverbed_gateway_requests_total[{w}]))",
                    "5xx ratio",
                ),
                unit="percentunit",
            )
        )
        .with_panel(
            graph(
                "Scoring latency p99 by dataset",
                "MLServer round trip, with and without explanations.",
                Query(
                    "histogram_quantile(0.99, sum by (le, dataset, explain) "
                    f"(rate(riverbed_scoring_seconds_bucket[{w}])))",
                    "{{dataset}} explain={{explain}}",
                ),
                unit="s",
            )
        )
        .with_panel(
            graph(
                "Prediction events to Kafka",
                "Prediction events by outcome (queued, delivered, failed, dropped).",
                Query(f"sum by (outcome) (rate(riverbed_prediction_events_total[{w}]))", "{{outcome}}"),
                unit="ops",
            )
        )
        .with_row(dashboard.Row("Audit log"))
        .with_panel(
            single(
                "Degraded",
                "1 while new audit rows go to the local spool.",
                Query("max(riverbed_audit_degraded)", "degraded"),
            )
        )
        .with_panel(
            single(
                "Unavailable",
                "1 while the inference-log database is unreachable.",
                Query("max(riverbed_audit_unavailable)", "unavailable"),
            )
        )
        .with_panel(
            single(
                "Spool depth",
                "Audit records waiting in the local spool, over all gateway processes.",
                Query("sum(riverbed_audit_spool_depth)", "spool"),
            )
        )
        .with_panel(
            single(
                "Quarantined",
                "Audit rows kept outside the hash chain since each gateway process started.",
                Query("sum(riverbed_audit_quarantined)", "quarantined"),
            )
        )
        .with_panel(
            graph(
                "Audit state",
                "Degraded, unavailable, replaying, stalled (chain head locked) and checkpoint failing, per process.",
                Query("riverbed_audit_degraded", "degraded {{instance}}"),
                Query("riverbed_audit_unavailable", "unavailable {{instance}}"),
                Query("riverbed_audit_replaying", "replaying {{instance}}"),
                Query("riverbed_audit_stalled", "stalled {{instance}}"),
                Query("riverbed_audit_checkpoint_failing", "checkpoint failing {{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Spool depth and quarantine",
                "Rows waiting in the spool and rows quarantined, per gateway process.",
                Query("riverbed_audit_spool_depth", "spool {{instance}}"),
                Query("riverbed_audit_quarantined", "quarantined {{instance}}"),
            )
        )
        .with_panel(
            graph(
                "Audit write latency p99 by durability",
                "Time until a request's audit row was settled: committed, spooled, quarantined, timeout, failed.",
                Query(
                    "histogram_quantile(0.99, sum by (le, durability) "
                    f"(rate(riverbed_audit_write_seconds_bucket[{w}])))",
                    "{{durability}}",
                ),
                unit="s",
                width=FULL_WIDTH,
            )
        )
    )


def model_quality_dashboard() -> dashboard.Dashboard:
    """Drift per feature, estimated against realised performance, and the mix of predicted labels."""
    w = RATE_WINDOW
    return (
        _dashboard(
            "riverbed-model-quality",
            "Riverbed model quality",
            "The monitoring asset's latest results (read by the gateway from monitoring_results) and the label mix.",
        )
        .with_row(dashboard.Row("Drift"))
        .with_panel(
            graph(
                "Drift per feature",
                "Jensen-Shannon distance of each feature in the latest monitored chunk.",
                Query("max by (dataset, feature) (riverbed_monitoring_drift)", "{{dataset}} {{feature}}"),
            )
        )
        .with_panel(
            graph(
                "Drifted features",
                "Features flagged as drifted in the latest monitored chunk, per dataset.",
                Query("sum by (dataset) (max by (dataset, feature) (riverbed_monitoring_drift_alert))", "{{dataset}}"),
            )
        )
        .with_panel(
            graph(
                "Multivariate drift",
                "PCA reconstruction error of the latest monitored chunk.",
                Query("max by (dataset) (riverbed_monitoring_reconstruction_error)", "{{dataset}}"),
                width=FULL_WIDTH,
            )
        )
        .with_row(dashboard.Row("Performance"))
        .with_panel(
            graph(
                "Estimated vs realised performance",
                "CBPE estimate of the latest chunk and the performance measured on labelled predictions, against "
                "the spec's retraining.min_performance.",
                Query(
                    "max by (dataset, metric) (riverbed_monitoring_estimated_performance)",
                    "estimated {{dataset}} {{metric}}",
                ),
                Query(
                    "max by (dataset, metric) (riverbed_monitoring_realised_performance)",
                    "realised {{dataset}} {{metric}}",
                ),
                Query(
                    "max by (dataset, metric) (riverbed_monitoring_performance_threshold)",
                    "threshold {{dataset}} {{metric}}",
                ),
                width=FULL_WIDTH,
            )
        )
        .with_row(dashboard.Row("Predictions"))
        .with_panel(
            graph(
                "Prediction mix by label",
                "Share of each predicted label among a dataset's predictions.",
                Query(
                    f"sum by (dataset, label) (rate(riverbed_predictions_total[{w}])) / ignoring (label) "
                    f"group_left sum by (dataset) (rate(riverbed_predictions_total[{w}]))",
                    "{{dataset}} {{label}}",
                ),
                unit="percentunit",
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Predictions per second by label",
                "Predicted records per second, by dataset and label.",
                Query(f"sum by (dataset, label) (rate(riverbed_predictions_total[{w}]))", "{{dataset}} {{label}}"),
                unit="ops",
            )
        )
    )


def pipeline_dashboard() -> dashboard.Dashboard:
    """Kafka ingestion lag and dead letters, Dagster runs and ticks (the pipeline exporter), the failures the
    pipeline reported (sensors, deployments, serving start-up) and the metrics' own refresh."""
    w = RATE_WINDOW
    return (
        _dashboard(
            "riverbed-pipeline",
            "Riverbed pipeline",
            "Kafka ingestion lag, dead letters, Dagster runs and ticks (`riverbed pipeline-exporter`), and failures "
            "reported by sensors, deployments and serving start-up (the pipeline_failures table, exported by the "
            "gateway).",
        )
        .with_row(dashboard.Row("Ingestion"))
        .with_panel(
            graph(
                "Ingestion lag",
                "Records on each dataset's raw and labels topics that its Kafka sensor has not taken yet (high "
                "watermark minus the sensor's cursor).",
                Query("max by (dataset, topic) (riverbed_ingestion_lag_records)", "{{topic}}"),
                width=FULL_WIDTH,
            )
        )
        .with_panel(
            single(
                "Dead letters in the last hour",
                "Messages written to the dead-letter topics in the last hour, all datasets.",
                Query(
                    "sum(max by (dataset, topic) (increase(riverbed_kafka_dead_letters_total[1h])))",
                    "dead letters",
                ),
            )
        )
        .with_panel(
            graph(
                "Dead letters by topic",
                "Messages written to each dataset's dead-letter topic per hour (refused by the ingestion and labels "
                "sensors; each carries its reason).",
                Query(
                    "max by (dataset, topic) (increase(riverbed_kafka_dead_letters_total[1h]))",
                    "{{topic}}",
                ),
                width=18,
            )
        )
        .with_row(dashboard.Row("Dagster runs and ticks"))
        .with_panel(
            graph(
                "Runs by status",
                "Dagster runs finished per hour, by status (SUCCESS, FAILURE, CANCELED), all jobs.",
                Query(
                    "sum by (status) (max by (dagster_job, status) (increase(riverbed_dagster_runs_total[1h])))",
                    "{{status}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Failed runs by job",
                "Dagster runs that ended FAILURE per hour, by job.",
                Query(
                    'max by (dagster_job) (increase(riverbed_dagster_runs_total{status="FAILURE"}[1h]))',
                    "{{dagster_job}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Runs in progress",
                "Dagster runs queued or running, by status.",
                Query(
                    "sum by (status) (max by (dagster_job, status) (riverbed_dagster_runs_in_progress))",
                    "{{status}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Ticks by status (last hour)",
                "Sensor and schedule ticks of the last hour by status (SKIPPED: nothing to do; FAILURE: the "
                "sensor or schedule raised).",
                Query(
                    "sum by (status) (max by (instigator, status) (riverbed_dagster_ticks_last_hour))",
                    "{{status}}",
                ),
                stacked=True,
            )
        )
        .with_panel(
            graph(
                "Consecutive failing ticks",
                "Failed ticks since each sensor's or schedule's last tick that did not fail (0: healthy).",
                Query(
                    "max by (instigator, type) (riverbed_dagster_tick_failures_consecutive)",
                    "{{type}} {{instigator}}",
                ),
                width=FULL_WIDTH,
            )
        )
        .with_row(dashboard.Row("Pipeline exporter"))
        .with_panel(
            graph(
                "Exporter read errors",
                "Reads of Dagster or Kafka by the pipeline exporter that failed or ran out of time, by reason.",
                Query(
                    f"sum by (source, reason) (increase(riverbed_pipeline_exporter_collect_errors_total[{w}]))",
                    "{{source}} {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Exporter read time",
                "Time each scrape waited for Dagster and for Kafka (bounded by the exporter's --timeout-seconds).",
                Query("max by (source) (riverbed_pipeline_exporter_collect_seconds)", "{{source}}"),
                unit="s",
            )
        )
        .with_row(dashboard.Row("Failures"))
        .with_panel(
            single(
                "Failures in the last hour",
                "Pipeline failures reported in the last hour, all components.",
                Query(
                    "sum(max by (component, reason) (increase(riverbed_pipeline_failures_total[1h]))) or vector(0)",
                    "failures",
                ),
            )
        )
        .with_panel(
            graph(
                "Failures by component and reason",
                "Pipeline failures per hour by component (sensor, deployment, serving start-up) and reason.",
                Query(
                    "max by (component, reason) (increase(riverbed_pipeline_failures_total[1h]))",
                    "{{component}} {{reason}}",
                ),
                width=18,
            )
        )
        .with_panel(
            graph(
                "Failures reported (cumulative)",
                "Stored failure counts by component and reason.",
                Query("max by (component, reason) (riverbed_pipeline_failures_total)", "{{component}} {{reason}}"),
            )
        )
        .with_panel(
            graph(
                "Metrics refresh failures",
                "Reads of monitoring_results / pipeline_failures by the gateway that failed (last values kept).",
                Query(
                    f"sum by (table) (increase(riverbed_gateway_metrics_refresh_failures_total[{RATE_WINDOW}]))",
                    "{{table}}",
                ),
            )
        )
    )


DASHBOARDS = {
    "serving": serving_dashboard,
    "model-quality": model_quality_dashboard,
    "pipeline": pipeline_dashboard,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, exactly as committed."""
    return {
        f"{name}.json": json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every query of every panel, for tests that run them."""
    found = []
    for name, text in render().items():
        for panel in json.loads(text)["panels"]:
            for target in panel.get("targets") or []:
                found.append((name, str(panel["title"]), str(target["expr"])))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        stale = sorted(
            name
            for name, text in rendered.items()
            if not (args.output_dir / name).is_file() or (args.output_dir / name).read_text() != text
        )
        if stale:
            logger.error("dashboards out of date (run `make dashboards`): %s", ", ".join(stale))
            return 1
        logger.info("%d dashboards up to date in %s", len(rendered), args.output_dir)
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.output_dir / name).write_text(text)
    logger.info("wrote %d dashboards to %s", len(rendered), args.output_dir)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
