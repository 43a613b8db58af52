"""The monitoring sensor (today's partition every ``RIVERBED_MONITORING_INTERVAL_SECONDS``) and the automation's
intervals and executor as settings of the code location."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from platform_assets.definitions import build_definitions
from platform_assets.monitoring_assets import build_monitoring_definitions
from resources.mlserver_resource import MLServerResource
from riverbed import names
from riverbed.model_repository import DeployedModel, ModelRepository
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.specs import load_specs

DATASET = "machine_failure"


def _point_at_a_model(repository: ModelRepository) -> None:
    spec = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
    repository.set_deployment(
        DeployedModel(
            dataset=DATASET,
            served_model_name=names.served_model_name(DATASET, 1),
            registered_model_name=f"riverbed-{DATASET}",
            version=1,
            mlflow_run_id=uuid.uuid4().hex,
            model_uri=f"models:/riverbed-{DATASET}/1",
            training_set_commit_id=uuid.uuid4().hex,
            data_commit_ids={"2026-10-01": uuid.uuid4().hex},
            dagster_run_id=str(uuid.uuid4()),
            classes=list(spec.target.classes),
            features=spec.feature_names,
            deployed_at=dt.datetime.now(dt.UTC),
        )
    )


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resource: MLServerResource) -> object:
    with dg.build_sensor_context(instance=instance, resources={"mlserver": resource}) as context:
        return sensor(context)


def test_the_monitoring_sensor_waits_for_a_model_and_for_the_previous_run(tmp_path: Path) -> None:
    spec = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
    _, job, sensor = build_monitoring_definitions(spec, interval_seconds=20)
    assert sensor.name == names.monitor_sensor(DATASET)
    assert sensor.minimum_interval_seconds == 20
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    repository = ModelRepository(tmp_path / "repository")
    resource = MLServerResource(url="http://127.0.0.1:9", model_repository=str(repository.root))
    with dg.DagsterInstance.ephemeral() as instance:
        # Nothing deployed: no reference to compare with, so no run (not a failing one every interval).
        nothing = _tick(sensor, instance, resource)
        assert isinstance(nothing, dg.SkipReason)
        assert nothing.skip_message == f"{DATASET} has no deployed model yet: nothing to monitor"

        _point_at_a_model(repository)
        before = dt.datetime.now(dt.UTC)
        request = _tick(sensor, instance, resource)
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key in {before.date().isoformat(), dt.datetime.now(dt.UTC).date().isoformat()}
        assert request.run_key is not None and request.run_key.startswith(f"{DATASET}:")

        # A monitoring run still in progress: the next tick waits for it instead of piling up another.
        queued = DagsterRun(job_name=job.name, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED)
        instance.add_run(queued)
        waiting = _tick(sensor, instance, resource)
        assert isinstance(waiting, dg.SkipReason)
        assert waiting.skip_message == f"{job.name} run {queued.run_id} has not finished yet"
        # Once it is over (here: gone, and a finished one instead), the next tick asks again; another job's run
        # in progress does not hold monitoring back.
        instance.delete_run(queued.run_id)
        instance.add_run(DagsterRun(job_name=job.name, run_id=str(uuid.uuid4()), status=DagsterRunStatus.SUCCESS))
        training = DagsterRun(
            job_name=names.train_job(DATASET), run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
        )
        instance.add_run(training)
        again = _tick(sensor, instance, resource)
        assert isinstance(again, dg.RunRequest)
        assert again.run_key != request.run_key


def test_automation_intervals_and_the_executor_are_settings(tmp_path: Path) -> None:
    defaults = build_definitions(RiverbedSettings(home=tmp_path / "a"))
    assert defaults.get_sensor_def(names.monitor_sensor(DATASET)).minimum_interval_seconds == 900
    assert defaults.get_sensor_def(names.retrain_sensor(DATASET)).minimum_interval_seconds == 60
    assert not [s.name for s in defaults.schedules or [] if s.name.startswith("monitor_")]  # a sensor now
    assert defaults.resolve_job_def(names.ingest_job(DATASET)).executor_def.name == "multi_or_in_process_executor"

    tuned = build_definitions(
        RiverbedSettings(
            home=tmp_path / "b",
            monitoring_interval_seconds=20,
            retraining_interval_seconds=15,
            dagster_executor="in_process",
        )
    )
    assert tuned.get_sensor_def(names.monitor_sensor(DATASET)).minimum_interval_seconds == 20
    assert tuned.get_sensor_def(names.retrain_sensor(DATASET)).minimum_interval_seconds == 15
    assert tuned.resolve_job_def(names.train_job(DATASET)).executor_def.name == "in_process"
