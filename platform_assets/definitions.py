"""The one Dagster ``Definitions`` of Riverbed: every dataset spec's assets, jobs, sensors and schedules, and the
resources.

``workspace.yaml`` loads ``defs`` from here. This is the one assembly point: sensors and schedules get the jobs
and asset keys built here (they import nothing from the code location). Building reads the dataset spec files
and nothing else: no connection is opened and no directory is created until a run uses a resource.
"""

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from platform_assets.dataset_assets import DatasetDefinitions, build_dataset_definitions
from platform_assets.environments import build_resources
from platform_assets.monitoring_assets import build_monitoring_definitions
from platform_assets.stages import asset_key
from riverbed import names
from riverbed.names import Stage
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import DatasetSpec, load_specs
from sensors.approvals import build_approvals_sensor
from sensors.kafka_ingestion import build_kafka_ingestion_sensor
from sensors.kafka_labels import build_kafka_labels_sensor
from sensors.retraining import build_retraining_schedule, build_retraining_sensor


@dataclass
class Collected:
    """Everything the code location registers, gathered over the dataset specs."""

    assets: list[dg.AssetsDefinition] = field(default_factory=list)
    checks: list[dg.AssetChecksDefinition] = field(default_factory=list)
    jobs: list[UnresolvedAssetJobDefinition] = field(default_factory=list)
    sensors: list[dg.SensorDefinition] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)


def build_dataset_sensors(
    spec: DatasetSpec, dataset: DatasetDefinitions, settings: RiverbedSettings
) -> list[dg.SensorDefinition]:
    """Retraining, Kafka ingestion and Kafka labels sensors of one dataset, wired to its jobs and asset keys."""
    return [
        build_retraining_sensor(
            spec,
            dataset.train_job,
            model_key=asset_key(Stage.MODEL, spec.name),
            raw_key=asset_key(Stage.RAW, spec.name),
            interval_seconds=settings.retraining_interval_seconds,
        ),
        build_kafka_ingestion_sensor(spec, dataset.ingest_job),
        build_kafka_labels_sensor(spec),
    ]


def collect(spec: DatasetSpec, into: Collected, settings: RiverbedSettings) -> None:
    """Add one dataset's definitions (pipeline, monitoring, automation) to ``into``."""
    dataset = build_dataset_definitions(spec)
    monitoring, monitor_job, monitor_sensor = build_monitoring_definitions(
        spec, interval_seconds=settings.monitoring_interval_seconds
    )
    into.sensors.extend(build_dataset_sensors(spec, dataset, settings))
    into.sensors.append(monitor_sensor)
    into.assets.append(monitoring)
    into.jobs.append(monitor_job)
    retrain_schedule = build_retraining_schedule(spec, dataset.train_job)
    if retrain_schedule is not None:
        into.schedules.append(retrain_schedule)
    into.assets.extend(dataset.assets)
    into.jobs.extend(dataset.jobs)
    into.checks.extend(dataset.asset_checks)
    if spec.promotion.approval == "manual":
        # Deploys a reviewer-approved version: the approvals sensor requests it, tagged with the version.
        deploy_job = dg.define_asset_job(
            names.deploy_job(spec.name),
            selection=dg.AssetSelection.assets(dataset.deployment),
            description=f"Deploy the {spec.name} version a reviewer approved (promotion.approval: manual).",
        )
        into.jobs.append(deploy_job)
        into.sensors.append(build_approvals_sensor(spec, deploy_job))


def build_definitions(settings: RiverbedSettings | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    collected = Collected()
    for spec in load_specs(settings.specs_dirs).values():
        collect(spec, collected, settings)
    return dg.Definitions(
        assets=collected.assets,
        asset_checks=collected.checks,
        jobs=collected.jobs,
        sensors=collected.sensors,
        schedules=collected.schedules,
        resources=build_resources(settings),
        # in_process: a run's steps share its process (no code-location start-up per step; `riverbed up`)
        executor=dg.in_process_executor if settings.dagster_executor == "in_process" else None,
    )


defs = build_definitions()
