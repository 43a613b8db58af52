"""Run the platform's jobs headless, in process, against a persistent Dagster instance under ``.riverbed/``.

Used by ``riverbed demo`` and the benchmarks. Runs land in the same instance ``dagster dev`` shows, so
everything the demo did can be inspected in the UI afterwards.
"""

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from platform_assets.definitions import build_definitions
from platform_assets.stages import asset_key, daily_partitions
from riverbed import names
from riverbed.names import GATE_CHECK_NAME, RunTag, Stage
from riverbed.records import DeploymentRecord, ModelRecord, TrainingReason
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs

logger = logging.getLogger(__name__)

DAGSTER_YAML = """\
# Written by Riverbed for the embedded (local) environment.
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
"""

RANGE_START_TAG = "dagster/asset_partition_range_start"
QUIET_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
RANGE_END_TAG = "dagster/asset_partition_range_end"


class JobFailedError(RuntimeError):
    """A job run did not succeed."""


@dataclass
class StepTiming:
    asset: str
    seconds: float


@dataclass
class PipelineRun:
    """What one ingest + train pass produced."""

    dataset: str
    partitions: list[str]
    ingest_run_id: str
    train_run_id: str
    model: ModelRecord
    ingest_seconds: float
    train_seconds: float
    materializations: dict[str, dict[str, object]] = field(default_factory=dict)
    deployment: DeploymentRecord | None = None  # None when the promotion gate kept the champion
    gate_passed: bool | None = None
    gate_reason: str = ""


def prepare_dagster_home(settings: RiverbedSettings) -> Path:
    """Create ``.riverbed/dagster`` with a dagster.yaml (telemetry off) and point DAGSTER_HOME at it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def local_instance(settings: RiverbedSettings) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(prepare_dagster_home(settings)))


def demo_partitions(spec: DatasetSpec, days: int) -> list[str]:
    """The first ``days`` daily partitions of a dataset."""
    first = spec.event_time.first_partition_day
    keys = daily_partitions(spec).get_partition_keys()
    wanted = {(first + dt.timedelta(days=i)).isoformat() for i in range(days)}
    return [key for key in keys if key in wanted]


def _materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        found[materialization.asset_key.to_user_string()] = {
            key: getattr(value, "value", value) for key, value in materialization.metadata.items()
        }
    return found


def train_run_config(
    dataset: str, train_config: dict[str, object] | None = None, gate_config: dict[str, object] | None = None
) -> dict[str, object]:
    """Run config of a train job: quiet logs, the model's training config and the gate's overrides."""
    run_config: dict[str, object] = dict(QUIET_LOGGING)
    model_op = asset_key(Stage.MODEL, dataset).to_python_identifier()
    ops: dict[str, object] = {}
    if train_config:
        ops[model_op] = {"config": train_config}
    if gate_config:
        ops[f"{model_op}_{GATE_CHECK_NAME}"] = {"config": gate_config}
    if ops:
        run_config["ops"] = ops
    return run_config


def run_pipeline(
    settings: RiverbedSettings,
    dataset: str,
    partitions: list[str],
    reason: TrainingReason = TrainingReason.MANUAL,
    train_config: dict[str, object] | None = None,
    instance: dg.DagsterInstance | None = None,
    gate_config: dict[str, object] | None = None,
) -> PipelineRun:
    """Ingest ``partitions`` (one run over the range), then build the training set, train and deploy if gated in.

    A candidate the promotion gate rejects is not an error: the run returns with ``deployment=None``.
    """
    if not partitions:
        raise ValueError("run_pipeline needs at least one partition")
    specs = load_specs(settings.specs_dirs)
    if dataset not in specs:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(specs)}")
    instance = instance or local_instance(settings)
    defs = build_definitions(settings)

    started = time.perf_counter()
    ingest_job = names.ingest_job(dataset)
    ingest = defs.resolve_job_def(ingest_job).execute_in_process(
        instance=instance,
        run_config=QUIET_LOGGING,
        tags={RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1], RunTag.DATASET.value: dataset},
        raise_on_error=False,
    )
    if not ingest.success:
        raise JobFailedError(f"{ingest_job} failed (run {ingest.run_id}); see the Dagster UI for details")
    ingest_seconds = time.perf_counter() - started

    started = time.perf_counter()
    train_job = names.train_job(dataset)
    train = defs.resolve_job_def(train_job).execute_in_process(
        instance=instance,
        run_config=train_run_config(dataset, train_config, gate_config),
        tags={RunTag.REASON.value: reason.value, RunTag.DATASET.value: dataset},
        raise_on_error=False,
    )
    gate = _gate_evaluation(train)
    if not train.success and not (gate is not None and not gate.passed and _only_gate_failed(train)):
        raise JobFailedError(f"{train_job} failed (run {train.run_id}); see the Dagster UI for details")
    train_seconds = time.perf_counter() - started
    model = train.asset_value(asset_key(Stage.MODEL, dataset))
    materializations = {**_materialization_metadata(ingest), **_materialization_metadata(train)}
    deployment_key = asset_key(Stage.DEPLOYMENT, dataset)
    # Not materialised when a manual-approval dataset's candidate waits for a reviewer (the champion stays).
    deployed = train.success and deployment_key.to_user_string() in materializations
    deployment = train.asset_value(deployment_key) if deployed else None
    return PipelineRun(
        dataset=dataset,
        partitions=partitions,
        ingest_run_id=ingest.run_id,
        train_run_id=train.run_id,
        model=model,
        ingest_seconds=ingest_seconds,
        train_seconds=train_seconds,
        materializations=materializations,
        deployment=deployment,
        gate_passed=gate.passed if gate is not None else None,
        gate_reason=(gate.description or "") if gate is not None else "",
    )


def _gate_evaluation(result: dg.ExecuteInProcessResult) -> Any:
    """The promotion gate's check evaluation in a run, if it ran."""
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.asset_check_evaluation_data
            if evaluation.check_name == GATE_CHECK_NAME:
                return evaluation
    return None


def _only_gate_failed(result: dg.ExecuteInProcessResult) -> bool:
    """True if the run failed only because the promotion gate blocked deployment (the champion stays)."""
    failed_steps = [event.step_key for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    return bool(failed_steps) and all(str(step).endswith(GATE_CHECK_NAME) for step in failed_steps)
