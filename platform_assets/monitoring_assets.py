"""``monitoring_<dataset>``: drift and performance of one day of logged predictions (daily partitions).

The window is the predictions the gateway logged (``received_at``) on the partition's day, compared with the
reference stored when the serving champion was deployed. Results replace that day's rows in
``monitoring_results`` (which the retraining sensor reads), an HTML report is written beside the model
repository, and the asset's metadata carries the summary. A schedule materialises today's partition every
15 minutes (stopped by default, like every automation).
"""

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from platform_assets.dataset_assets import daily_partitions
from platform_assets.deployment import deployment_asset_key
from platform_assets.groups import MONITORING_GROUP
from resources.inference_log_resource import InferenceLogResource
from resources.mlserver_resource import MLServerResource
from riverbed.specs import DatasetSpec

MONITORING_CODE_VERSION = "1"


def monitoring_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"monitoring_{dataset}")


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


def build_monitoring_definitions(
    spec: DatasetSpec,
) -> tuple[dg.AssetsDefinition, Any, dg.ScheduleDefinition]:
    """The monitoring asset, its job and the (stopped) schedule that monitors today."""
    name = spec.name
    partitions = daily_partitions(spec)

    @dg.asset(
        key=monitoring_asset_key(name),
        group_name=MONITORING_GROUP,
        partitions_def=partitions,
        deps=[deployment_asset_key(name)],
        code_version=MONITORING_CODE_VERSION,
        kinds={"nannyml", "postgres"},
        description=f"NannyML univariate and multivariate drift, CBPE and realised performance of the {name} "
        "predictions logged on the partition's day, against the deployed champion's reference.",
        metadata={"dataset": name},
    )
    def monitoring(
        context: dg.AssetExecutionContext, inference_log: InferenceLogResource, mlserver: MLServerResource
    ) -> dg.MaterializeResult:
        from monitoring.analysis import analyse_window, html_report, store_results
        from monitoring.inference_data import logged_predictions
        from monitoring.reference import read_reference

        window = context.partition_time_window
        day = window.start.date()
        dsn = inference_log.get_dsn()
        repository = mlserver.repository()
        deployed = repository.read_deployment(name)
        if deployed is None:
            raise dg.Failure(description=f"{name} has no deployed model: materialise deployment_{name} first")
        predictions = logged_predictions(dsn, spec, window.start, window.end)
        reference = read_reference(repository.root, name, deployed.version)
        found = analyse_window(
            spec,
            reference,
            predictions,
            day=day,
            chunk_size=spec.monitoring.chunk_size,
            model_version=str(deployed.version),
        )
        store_results(dsn, name, day, found.rows)
        report = report_path(repository.root, name, day)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(html_report(spec, day, found), encoding="utf-8")
        summary = MonitoringSummary(
            dataset=name,
            day=day.isoformat(),
            model_version=str(deployed.version),
            records=found.records,
            labelled=found.labelled,
            chunks=found.chunks,
            drifted_features_by_chunk=found.drifted_features(),
            estimated={m: found.latest("cbpe", m) for m in ("roc_auc", "accuracy")},
            realised={m: found.latest("realised", m) for m in ("roc_auc", "accuracy")},
            report=str(report),
        )
        context.log.info(
            f"{name} {day}: {found.records} predictions in {found.chunks} chunk(s), {found.labelled} labelled; "
            f"drift {summary.drifted_features_by_chunk or 'none'}"
        )
        # The results live in monitoring_results (PostgreSQL); the materialisation carries the summary.
        return dg.MaterializeResult(
            metadata={
                "summary": dg.MetadataValue.json(asdict(summary)),
                "records": found.records,
                "labelled": found.labelled,
                "chunks": found.chunks,
                "drifted_chunks": len(summary.drifted_features_by_chunk),
                "drifted_features": dg.MetadataValue.json(
                    {str(k): v for k, v in summary.drifted_features_by_chunk.items()}
                ),
                "estimated_roc_auc": summary.estimated.get("roc_auc") or float("nan"),
                "realised_roc_auc": summary.realised.get("roc_auc") or float("nan"),
                "model_version": str(deployed.version),
                "report": dg.MetadataValue.path(str(report)),
            }
        )

    job = dg.define_asset_job(
        f"monitor_{name}",
        selection=dg.AssetSelection.assets(monitoring),
        partitions_def=partitions,
        tags={"riverbed/dataset": name},
        description=f"Monitor one day of {name} predictions.",
    )

    @dg.schedule(
        name=f"monitor_{name}_schedule",
        cron_schedule="*/15 * * * *",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        execution_timezone="UTC",
        description=f"Monitor today's {name} predictions every 15 minutes.",
    )
    def monitor_today(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        day = moment.astimezone(dt.UTC).date().isoformat()
        return dg.RunRequest(run_key=f"{name}:{moment.isoformat()}", partition_key=day)

    return monitoring, job, monitor_today
