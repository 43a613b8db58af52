"""``monitoring_<dataset>``: drift and performance of one day of logged predictions (daily partitions).

The window is the predictions the gateway logged (``received_at``) on the partition's day, compared with the
reference stored when the serving champion was deployed. Results replace that day's rows in
``monitoring_results`` (which the retraining sensor reads), an HTML report is written beside the model
repository, and the asset's metadata carries the summary. The sensor ``monitor_<dataset>`` materialises today's
partition every ``RIVERBED_MONITORING_INTERVAL_SECONDS`` (900 by default; a sensor rather than a cron schedule so
the interval can go below a minute), stopped by default like every automation, and only while a model is deployed
and no monitoring run of the dataset is still queued or running.
"""

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from monitoring.analysis import analyse_window, html_report, store_results
from monitoring.inference_data import logged_predictions
from monitoring.reference import read_reference
from platform_assets.groups import MONITORING_GROUP
from platform_assets.stages import asset_key, daily_partitions
from resources.inference_log_resource import InferenceLogResource
from resources.mlserver_resource import MLServerResource
from riverbed import names
from riverbed.model_repository import DeployedModel
from riverbed.names import RunTag, Stage
from riverbed.specs import DatasetSpec

MONITORING_CODE_VERSION = "1"
UNFINISHED_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
SUMMARY_METRICS = ("roc_auc", "accuracy")


def report_path(repository_root: Path, dataset: str, day: dt.date) -> Path:
    return Path(repository_root) / "monitoring" / dataset / f"{day.isoformat()}.html"


@dataclass(frozen=True)
class MonitoringSummary:
    """What one monitoring window found (the asset's value)."""

    dataset: str
    day: str
    model_version: str | None
    records: int
    labelled: int
    chunks: int
    drifted_features_by_chunk: dict[int, list[str]] = field(default_factory=dict)
    estimated: dict[str, float | None] = field(default_factory=dict)
    realised: dict[str, float | None] = field(default_factory=dict)
    report: str | None = None


def monitor_window(
    spec: DatasetSpec,
    dsn: str,
    repository_root: Path,
    deployed: DeployedModel,
    window: dg.TimeWindow,
) -> MonitoringSummary:
    """Analyse the window's logged predictions against the champion's reference; store results and a report."""
    day = window.start.date()
    predictions = logged_predictions(dsn, spec, window.start, window.end)
    reference = read_reference(repository_root, spec.name, deployed.version)
    found = analyse_window(
        spec,
        reference,
        predictions,
        day=day,
        chunk_size=spec.monitoring.chunk_size,
        model_version=str(deployed.version),
    )
    store_results(dsn, spec.name, day, found.rows)
    report = report_path(repository_root, spec.name, day)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(html_report(spec, day, found), encoding="utf-8")
    return MonitoringSummary(
        dataset=spec.name,
        day=day.isoformat(),
        model_version=str(deployed.version),
        records=found.records,
        labelled=found.labelled,
        chunks=found.chunks,
        drifted_features_by_chunk=found.drifted_features(),
        estimated={m: found.latest("cbpe", m) for m in SUMMARY_METRICS},
        realised={m: found.latest("realised", m) for m in SUMMARY_METRICS},
        report=str(report),
    )


def summary_metadata(summary: MonitoringSummary) -> dict[str, Any]:
    """The materialisation's metadata (the results themselves live in ``monitoring_results``)."""
    return {
        "summary": dg.MetadataValue.json(asdict(summary)),
        "records": summary.records,
        "labelled": summary.labelled,
        "chunks": summary.chunks,
        "drifted_chunks": len(summary.drifted_features_by_chunk),
        "drifted_features": dg.MetadataValue.json({str(k): v for k, v in summary.drifted_features_by_chunk.items()}),
        "estimated_roc_auc": summary.estimated.get("roc_auc") or float("nan"),
        "realised_roc_auc": summary.realised.get("roc_auc") or float("nan"),
        "model_version": summary.model_version,
        "report": dg.MetadataValue.path(str(summary.report)),
    }


def build_monitoring_asset(spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=asset_key(Stage.MONITORING, name),
        group_name=MONITORING_GROUP,
        partitions_def=partitions,
        deps=[asset_key(Stage.DEPLOYMENT, name)],
        code_version=MONITORING_CODE_VERSION,
        kinds={"nannyml", "postgres"},
        description=f"NannyML univariate and multivariate drift, CBPE and realised performance of the {name} "
        "predictions logged on the partition's day, against the deployed champion's reference.",
        metadata={"dataset": name},
    )
    def monitoring(
        context: dg.AssetExecutionContext, inference_log: InferenceLogResource, mlserver: MLServerResource
    ) -> dg.MaterializeResult[None]:
        dsn = inference_log.get_dsn()
        repository = mlserver.repository()
        deployed = repository.read_deployment(name)
        if deployed is None:
            deployment = asset_key(Stage.DEPLOYMENT, name).to_user_string()
            raise dg.Failure(description=f"{name} has no deployed model: materialise {deployment} first")
        summary = monitor_window(spec, dsn, repository.root, deployed, context.partition_time_window)
        context.log.info(
            f"{name} {summary.day}: {summary.records} predictions in {summary.chunks} chunk(s), {summary.labelled} "
            f"labelled; drift {summary.drifted_features_by_chunk or 'none'}"
        )
        return dg.MaterializeResult(metadata=summary_metadata(summary))

    return monitoring


def build_monitoring_sensor(
    spec: DatasetSpec, job: UnresolvedAssetJobDefinition, interval_seconds: int
) -> dg.SensorDefinition:
    """``monitor_<dataset>``: today's partition every ``interval_seconds`` (stopped by default).

    Skips while nothing is deployed (there is no reference to compare with) and while a run of ``job`` is still
    queued or in progress (runs never pile up when an analysis takes longer than the interval).
    """
    name = spec.name

    @dg.sensor(
        name=names.monitor_sensor(name),
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Monitor today's {name} predictions every {interval_seconds} s while a model is deployed.",
    )
    def monitor_today(context: dg.SensorEvaluationContext, mlserver: MLServerResource) -> dg.RunRequest | dg.SkipReason:
        if mlserver.repository().read_deployment(name) is None:
            return dg.SkipReason(f"{name} has no deployed model yet: nothing to monitor")
        unfinished = context.instance.get_run_records(
            dg.RunsFilter(job_name=job.name, statuses=UNFINISHED_STATUSES), limit=1
        )
        if unfinished:
            return dg.SkipReason(f"{job.name} run {unfinished[0].dagster_run.run_id} has not finished yet")
        now = dt.datetime.now(dt.UTC)
        return dg.RunRequest(run_key=f"{name}:{now.isoformat()}", partition_key=now.date().isoformat())

    return monitor_today


def build_monitoring_definitions(
    spec: DatasetSpec, *, interval_seconds: int
) -> tuple[dg.AssetsDefinition, UnresolvedAssetJobDefinition, dg.SensorDefinition]:
    """The monitoring asset, its job and the (stopped) sensor that monitors today every ``interval_seconds``."""
    partitions = daily_partitions(spec)
    monitoring = build_monitoring_asset(spec, partitions)
    job = dg.define_asset_job(
        names.monitor_job(spec.name),
        selection=dg.AssetSelection.assets(monitoring),
        partitions_def=partitions,
        tags={RunTag.DATASET.value: spec.name},
        description=f"Monitor one day of {spec.name} predictions.",
    )
    return monitoring, job, build_monitoring_sensor(spec, job, interval_seconds)
