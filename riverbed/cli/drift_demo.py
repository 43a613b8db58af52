"""The drift scenario of ``riverbed demo``: clean data -> v1 served; drifted data -> drift found -> retraining -> v2.

Everything runs for real on embedded parts under its own state directory (``<home>/drift-demo``, kept for
inspection): librdkafka's mock cluster as the broker, the Kafka ingestion sensor, Dagster jobs, MLflow,
the embedded PostgreSQL inference log, MLServer and the gateway. The steps are public functions so the
end-to-end test drives the same code.

From the first drifted record produced until the gateway answers with v2, every step is timed on its own
(:class:`StepClock`, in :attr:`DriftDemoOutcome.step_seconds`); ``benchmarks/drift_benchmark.py`` records them.
The sensors' polling intervals are not part of the scenario: each sensor is ticked as soon as the step before it
is done.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import httpx
import numpy as np
import pandas as pd

from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.definitions import build_definitions
from platform_assets.deployment import load_registered_pipeline
from platform_assets.environments import build_resources
from platform_assets.runner import (
    QUIET_LOGGING,
    RANGE_END_TAG,
    RANGE_START_TAG,
    PipelineRun,
    local_instance,
    run_pipeline,
)
from platform_assets.stages import asset_key
from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.cli.demo_serving import gateway_records
from riverbed.cli.kafka import start_mock_cluster
from riverbed.cli.producer import produce_records
from riverbed.cli.stack import ServingStack
from riverbed.generators import DriftScenario, apply_drift, generate_machine_failure
from riverbed.kafka_config import client_config
from riverbed.ml.features import build_features
from riverbed.names import RunTag, Stage, TopicKind, topic_name
from riverbed.records import TrainingReason
from riverbed.settings import RiverbedSettings
from riverbed.sources import records_for_window
from riverbed.specs import DatasetSpec, load_specs
from riverbed.stack_file import inference_log_dsn
from riverbed.validation import validate_records
from sensors.kafka_ingestion import IngestionLimits, build_kafka_ingestion_sensor
from serving.api_keys import create_api_key

DATASET = "machine_failure"
DRIFT_START = dt.datetime(2026, 10, 21, tzinfo=dt.UTC)
DRIFT_SHIFTS = {"torque_nm": 2.5, "rotational_speed_rpm": -2.0}
SERVED_POLL_SECONDS = 0.1
SERVED_TIMEOUT_SECONDS = 120.0


@dataclass
class StepClock:
    """Wall seconds of named steps, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)


@dataclass
class ScenarioData:
    """The dataset's records split at the drift start, the later part drifted."""

    spec: DatasetSpec
    clean: pd.DataFrame
    drifted: pd.DataFrame


def scenario_data(settings: RiverbedSettings, seed: int = 3) -> ScenarioData:
    spec = load_specs(settings.specs_dirs)[DATASET]
    start = dt.datetime.combine(spec.event_time.first_partition_day, dt.time(), dt.UTC)
    everything = records_for_window(spec, start, start + dt.timedelta(days=30))
    times = pd.to_datetime(everything[spec.event_time.name], utc=True)
    clean = everything[times < DRIFT_START].reset_index(drop=True)
    drift = DriftScenario(start=DRIFT_START, feature_shifts=dict(DRIFT_SHIFTS))
    drifted = apply_drift(spec, everything[times >= DRIFT_START].reset_index(drop=True), drift, seed=seed)
    return ScenarioData(spec, clean, drifted)


def produce_frame(settings: RiverbedSettings, spec: DatasetSpec, frame: pd.DataFrame) -> int:
    """Publish records on the raw topic as fast as possible (the simulator's code); returns how many were sent."""
    topic = topic_name(spec.name, TopicKind.RAW, prefix=settings.kafka_topic_prefix)
    report = produce_records(spec, frame, client_config(settings), topic, rate=None)
    if report.failed:
        raise RuntimeError(f"{report.failed} record(s) not acknowledged by the broker")
    return report.sent


def records_with_ids(spec: DatasetSpec, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Records as the gateway's JSON, each with its record id as ``sample_id`` (so labels can find it)."""
    return gateway_records(spec, frame, list(frame[spec.record_id.name]))


def ingest_until_drained(
    settings: RiverbedSettings, instance: dg.DagsterInstance, cursor: str | None
) -> tuple[str, set[str]]:
    """Ticks of the ingestion sensor until the raw topic is drained: the new cursor and the days it requested."""
    spec = load_specs(settings.specs_dirs)[DATASET]
    dataset = build_dataset_definitions(spec)
    sensor = build_kafka_ingestion_sensor(spec, dataset.ingest_job, IngestionLimits(max_records=50_000))
    resources = build_resources(settings)
    needed = {"data_store": resources["data_store"], "kafka": resources["kafka"]}
    days: set[str] = set()
    for _ in range(20):
        with dg.build_sensor_context(cursor=cursor, instance=instance, resources=needed) as context:
            result = sensor(context)
        if not isinstance(result, dg.SensorResult):  # a SkipReason: nothing new on the topic
            break
        days |= {r.partition_key for r in result.run_requests or [] if r.partition_key is not None}
        cursor = result.cursor
    if cursor is None:
        raise RuntimeError("the ingestion sensor found nothing on the raw topic")
    return cursor, days


def retraining_tick(defs: dg.Definitions, instance: dg.DagsterInstance, dsn: str) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of the code location's retraining sensor of the dataset, on the inference log at ``dsn``."""
    sensor = defs.get_sensor_def(names.retrain_sensor(DATASET))
    resources = {"inference_log": InferenceLogResource(dsn=dsn)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    if not isinstance(result, dg.SensorResult | dg.SkipReason):
        raise TypeError(f"{sensor.name} returned {type(result).__name__}")
    return result


def unseen_drifted_records(spec: DatasetSpec, rows: int = 3000, seed: int = 99) -> pd.DataFrame:
    """Fresh records from the drifted distribution that no model trained on (for comparing v1 and v2)."""
    frame = generate_machine_failure(spec, rows, seed).reset_index(drop=True)
    frame[spec.record_id.name] = [f"mf-unseen-{i}" for i in range(rows)]
    frame[spec.event_time.name] = pd.Timestamp(DRIFT_START) + pd.to_timedelta(np.arange(rows), unit="min")
    return apply_drift(spec, frame, DriftScenario(start=DRIFT_START, feature_shifts=dict(DRIFT_SHIFTS)), seed)


def holdout_metrics(
    settings: RiverbedSettings, spec: DatasetSpec, frame: pd.DataFrame, registered_model_name: str, version: int
) -> dict[str, float]:
    """A registered version's metrics on a set of records (validated and featurised as the graph does)."""
    from riverbed.ml.training import evaluate  # xgboost + scikit-learn (~2.5 s): only for the final comparison

    features = build_features(spec, validate_records(spec, frame).valid)
    pipeline = load_registered_pipeline(settings.resolved_mlflow_tracking_uri, registered_model_name, version)
    return evaluate(spec, pipeline, features)


@dataclass
class DriftDemoOutcome:
    v1: int
    v2: int | None = None
    drifted_features: dict[str, list[str]] = field(default_factory=dict)
    reason: str | None = None
    trigger: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    failed_requests: int = 0
    seconds_to_v2: float | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    job_step_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    served_polls: int = 0
    records: dict[str, int] = field(default_factory=dict)


def _train_v1(settings: RiverbedSettings, instance: dg.DagsterInstance, data: ScenarioData) -> tuple[PipelineRun, str]:
    """Clean data through Kafka, ingested, v1 trained and deployed (reason ``initial``); returns the run and cursor."""
    produce_frame(settings, data.spec, data.clean)
    cursor, clean_days = ingest_until_drained(settings, instance, None)
    first = run_pipeline(settings, DATASET, sorted(clean_days), reason=TrainingReason.INITIAL, instance=instance)
    if first.deployment is None:
        raise RuntimeError(f"v1 was not deployed: {first.gate_reason}")
    return first, cursor


def _ingest_drifted(
    settings: RiverbedSettings,
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    data: ScenarioData,
    cursor: str,
    clock: StepClock,
) -> tuple[set[str], str]:
    """Drifted data through Kafka, ingested by the sensor and materialised: the drifted days and the ingest run id."""
    with clock.step("produce drifted records (Kafka)"):
        produce_frame(settings, data.spec, data.drifted)
    with clock.step("ingestion sensor ticks until drained (landing commits)"):
        _, drift_days = ingest_until_drained(settings, instance, cursor)
    with clock.step("ingest job: raw + features over the drifted days"):
        ingested = defs.resolve_job_def(names.ingest_job(DATASET)).execute_in_process(
            instance=instance,
            run_config=QUIET_LOGGING,
            tags={RANGE_START_TAG: min(drift_days), RANGE_END_TAG: max(drift_days)},
        )
    return drift_days, ingested.run_id


def _predict_clean_then_drifted(data: ScenarioData, gateway: httpx.Client) -> int:
    """Predictions on 2 chunks of clean, then 3 chunks of drifted records (100 per request); how many records."""
    spec = data.spec
    chunk = spec.monitoring.chunk_size
    sent = 0
    for frame in (data.clean.tail(2 * chunk), data.drifted.head(3 * chunk)):
        records = records_with_ids(spec, frame)
        for start in range(0, len(records), 100):
            body = {"records": records[start : start + 100], "explain": False}
            gateway.post(f"/v1/{DATASET}/predict", json=body).raise_for_status()
        sent += len(records)
    return sent


def wait_until_served(
    gateway: httpx.Client, record: dict[str, Any], version: int, timeout: float = SERVED_TIMEOUT_SECONDS
) -> int:
    """Predict ``record`` every ``SERVED_POLL_SECONDS`` until the answer comes from ``version``; how many polls."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        response = gateway.post(f"/v1/{DATASET}/predict", json=record)
        response.raise_for_status()
        if int(response.json()["model"]["version"]) == version:
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway still serves v{response.json()['model']['version']} after {timeout} s")
        time.sleep(SERVED_POLL_SECONDS)


def dagster_step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Wall seconds of each step of a run (STEP_START to STEP_SUCCESS), from the instance's event log."""
    starts: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or record.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[record.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and record.step_key in starts:
            seconds[record.step_key] = round(record.timestamp - starts[record.step_key], 3)
    return seconds


def _monitor_today(defs: dg.Definitions, instance: dg.DagsterInstance) -> tuple[dict[str, list[str]], str]:
    """Monitoring of today's predictions (NannyML); the drifted features by chunk and the run id."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    monitored = defs.resolve_job_def(names.monitor_job(DATASET)).execute_in_process(
        instance=instance, partition_key=today, run_config=QUIET_LOGGING
    )
    metadata = monitored.get_asset_materialization_events()[0].materialization.metadata
    drifted = metadata["drifted_features"].value
    return (dict(drifted) if isinstance(drifted, dict) else {}), monitored.run_id


def _compare(
    settings: RiverbedSettings, spec: DatasetSpec, outcome: DriftDemoOutcome, name: str, console: Any
) -> pd.DataFrame:
    """v1 and v2 on records neither trained on; returns those records."""
    window = unseen_drifted_records(spec)
    outcome.records["unseen_drifted"] = len(window)
    for version in (outcome.v1, outcome.v2):
        if version is not None:
            outcome.metrics[f"v{version}"] = holdout_metrics(settings, spec, window, name, version)
    table_rows = ", ".join(
        f"v{v}: ROC AUC {m.get('roc_auc', float('nan')):.4f}, accuracy {m.get('accuracy', float('nan')):.4f}"
        for v, m in ((v, outcome.metrics[f"v{v}"]) for v in (outcome.v1, outcome.v2) if v is not None)
    )
    console.print(f"on {len(window):,} unseen drifted records: {table_rows}")
    return window


def run_drift_demo(base: RiverbedSettings, console: Any) -> DriftDemoOutcome:
    """The whole scenario, printing each step; state is left in ``<home>/drift-demo``."""
    home = base.home / "drift-demo"
    shutil.rmtree(home, ignore_errors=True)
    broker, address = start_mock_cluster()
    settings = base.model_copy(update={"home": home, "kafka_bootstrap_servers": address})
    instance = local_instance(settings)
    data = scenario_data(settings)
    spec = data.spec
    console.print(f"state: {home}   broker (mock cluster): {address}")

    with console.status("clean data through Kafka, ingest, train v1..."):
        first, cursor = _train_v1(settings, instance, data)
    outcome = DriftDemoOutcome(v1=first.model.version)
    console.print(f"v{outcome.v1} trained on {len(data.clean):,} clean records and deployed")

    with console.status("starting the inference log, MLServer and the gateway..."):
        stack = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
    clock = StepClock()
    try:
        serving = settings.model_copy(update={"mlserver_url": stack.mlserver_url})
        dsn = inference_log_dsn(serving)
        headers = {"Authorization": f"Bearer {create_api_key(dsn, ['predict'], 'drift-demo').key}"}
        probe = gateway_records(spec, unseen_drifted_records(spec, rows=10).head(1))[0]
        defs = build_definitions(serving)  # a running platform has its code location loaded already
        first_drifted = time.perf_counter()  # the clock runs from the first drifted record produced
        with (
            console.status("drifted data through Kafka; predictions on clean, then drifted records..."),
            httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as gateway,
        ):
            drift_days, ingest_run = _ingest_drifted(settings, instance, defs, data, cursor, clock)
            with clock.step("predictions through the gateway (2 clean chunks, 3 drifted)"):
                predicted = _predict_clean_then_drifted(data, gateway)
        outcome.records = {"drifted": len(data.drifted), "clean": len(data.clean), "predicted": predicted}
        console.print(
            f"{len(data.drifted):,} drifted records landed for {len(drift_days)} days; {predicted} predictions"
        )

        with console.status("monitoring today's predictions (NannyML)..."), clock.step("monitoring job (NannyML)"):
            outcome.drifted_features, monitor_run = _monitor_today(defs, instance)
        console.print(f"drift found (chunk -> features): {outcome.drifted_features or 'none'}")

        with clock.step("retraining sensor tick"):
            decision = retraining_tick(defs, instance, dsn)
        if not isinstance(decision, dg.SensorResult):
            raise RuntimeError(f"no retraining requested: {decision.skip_message}")
        (request,) = decision.run_requests or []
        outcome.reason, outcome.trigger = request.tags[RunTag.REASON], request.tags[RunTag.TRIGGER]
        console.print(f"retraining requested: reason [bold]{outcome.reason}[/bold], evidence {outcome.trigger}")

        with (
            console.status("retraining, gate, hot swap (requests keep flowing)..."),
            clock.step("train job: training set, model, gate, deployment (hot swap)"),
        ):
            train = defs.resolve_job_def(names.train_job(DATASET)).execute_in_process(
                instance=instance, tags=dict(request.tags), run_config=QUIET_LOGGING, raise_on_error=False
            )
        if not train.success:
            raise RuntimeError("the retraining run failed or its candidate was kept out by the gate")
        v2: int = train.asset_value(asset_key(Stage.MODEL, DATASET)).version
        outcome.v2 = v2
        with (
            httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as gateway,
            clock.step("until the gateway answers with v2"),
        ):
            outcome.served_polls = wait_until_served(gateway, probe, v2)
        outcome.seconds_to_v2 = time.perf_counter() - first_drifted
        outcome.step_seconds = dict(clock.seconds)
        outcome.job_step_seconds = {
            "ingest": dagster_step_seconds(instance, ingest_run),
            "monitor": dagster_step_seconds(instance, monitor_run),
            "train": dagster_step_seconds(instance, train.run_id),
        }
        console.print(
            f"the gateway now serves v{outcome.v2}; first drifted record to v2 serving: {outcome.seconds_to_v2:.0f} s"
        )
        _compare(settings, spec, outcome, first.model.registered_model_name, console)
    finally:
        stack.stop()
        del broker
    return outcome
