"""The one Dagster ``Definitions`` of Riverbed: every dataset spec's assets and jobs, and the resources.

``workspace.yaml`` loads ``defs`` from here. Building reads the dataset spec files and nothing else:
no connection is opened and no directory is created until a run uses a resource.
"""

from typing import Any

import dagster as dg

from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.environments import build_resources
from platform_assets.monitoring_assets import build_monitoring_definitions
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs
from riverbed.stack_file import inference_log_dsn
from sensors.kafka_ingestion import build_kafka_ingestion_sensor
from sensors.kafka_labels import build_kafka_labels_sensor
from sensors.retraining import build_retraining_schedule, build_retraining_sensor


def build_definitions(settings: RiverbedSettings | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    specs = load_specs(settings.specs_dirs)
    assets: list[dg.AssetsDefinition] = []
    jobs: list[Any] = []
    checks: list[dg.AssetChecksDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    for spec in specs.values():
        sensors.append(build_retraining_sensor(spec, lambda: inference_log_dsn(settings)))
        sensors.append(build_kafka_ingestion_sensor(spec))
        sensors.append(build_kafka_labels_sensor(spec))
        monitoring, monitor_job, monitor_schedule = build_monitoring_definitions(spec)
        assets.append(monitoring)
        jobs.append(monitor_job)
        schedules.append(monitor_schedule)
        schedule = build_retraining_schedule(spec)
        if schedule is not None:
            schedules.append(schedule)
        dataset = build_dataset_definitions(spec)
        assets.extend(dataset.assets)
        jobs.extend(dataset.jobs)
        checks.extend(dataset.asset_checks)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=build_resources(settings),
    )


defs = build_definitions()
