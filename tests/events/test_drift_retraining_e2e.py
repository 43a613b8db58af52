"""End to end: clean data -> v1 served; drifted data -> drift detected -> retraining (reason drift) -> v2 served.

Real parts throughout: librdkafka's mock cluster (Kafka protocol), the Kafka ingestion sensor into the local
versioned store, Dagster jobs, MLflow, the machine's PostgreSQL (inference log + monitoring results), MLServer
and the gateway as processes. Requests are fired at the gateway during the v1 -> v2 swap: none may fail.
"""

import datetime as dt
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest
from confluent_kafka import Producer

from platform_assets.definitions import build_definitions
from platform_assets.runner import local_instance, run_pipeline
from riverbed.event_schemas import raw_message
from riverbed.events import TopicKind, topic_name
from riverbed.generators import DriftScenario, apply_drift
from riverbed.records import TrainingReason
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.sources import records_for_window
from riverbed.specs import load_specs
from sensors.kafka_ingestion import IngestionLimits, build_kafka_ingestion_sensor
from sensors.retraining import build_retraining_sensor

DATASET = "machine_failure"
FIRST_DAY = dt.date(2026, 10, 1)
CLEAN_DAYS = 20
DRIFT_START = dt.datetime(2026, 10, 21, tzinfo=dt.UTC)
DRIFT = DriftScenario(start=DRIFT_START, feature_shifts={"torque_nm": 2.5, "rotational_speed_rpm": -2.0})


def _days(first: dt.date, count: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def _produce(settings: RiverbedSettings, frame: pd.DataFrame) -> None:
    spec = load_specs(settings.specs_dirs)[DATASET]
    topic = topic_name(DATASET, TopicKind.RAW, prefix=settings.kafka_topic_prefix)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 20})
    for row in frame.to_dict("records"):
        producer.produce(topic, key=str(row[spec.record_id.name]).encode(), value=raw_message(spec, row))
        producer.poll(0)
    assert producer.flush(30) == 0


def _ingest_from_kafka(settings: RiverbedSettings, instance: dg.DagsterInstance, cursor: str | None) -> tuple[str, set]:
    """Sensor ticks until the topic is drained; returns the cursor and the days it asked to materialise."""
    spec = load_specs(settings.specs_dirs)[DATASET]
    defs = build_definitions(settings)
    sensor = build_kafka_ingestion_sensor(spec, settings, IngestionLimits(max_records=50_000))
    days: set[str] = set()
    for _ in range(10):
        with dg.build_sensor_context(
            cursor=cursor, instance=instance, resources={"data_store": defs.resources["data_store"]}
        ) as context:
            result = sensor(context)
        if isinstance(result, dg.SkipReason):
            break
        days |= {r.partition_key for r in result.run_requests}
        cursor = result.cursor
    assert cursor is not None
    return cursor, days


def _predict_all(client: httpx.Client, records: list[dict], batch: int = 100) -> list[dict]:
    bodies = []
    for start in range(0, len(records), batch):
        response = client.post(
            f"/v1/{DATASET}/predict", json={"records": records[start : start + batch], "explain": False}
        )
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return bodies


def _api_records(frame: pd.DataFrame, features: list[str], id_column: str) -> list[dict]:
    out = []
    for row in frame.to_dict("records"):
        record = {"sample_id": str(row[id_column])}
        for name in features:
            value = row[name]
            record[name] = value.item() if hasattr(value, "item") else value
        out.append(record)
    return out


@pytest.mark.slow
def test_drift_triggers_retraining_and_v2_replaces_v1_without_a_failed_request(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    from riverbed.serving_stack import ServingStack
    from serving.api_keys import create_api_key

    settings = RiverbedSettings(
        home=tmp_path / "home",
        specs_dirs=[PROJECT_ROOT / "datasets"],
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        inference_log_dsn=postgres_dsn,
    )
    spec = load_specs(settings.specs_dirs)[DATASET]
    instance = local_instance(settings)
    start = dt.datetime.combine(FIRST_DAY, dt.time(), dt.UTC)
    everything = records_for_window(spec, start, start + dt.timedelta(days=30))
    times = pd.to_datetime(everything[spec.event_time.name], utc=True)
    clean = everything[times < DRIFT_START].reset_index(drop=True)
    drifted = apply_drift(spec, everything[times >= DRIFT_START].reset_index(drop=True), DRIFT, seed=3)

    # 1. Clean data through Kafka; v1 trained and deployed (reason initial).
    _produce(settings, clean)
    cursor, clean_days = _ingest_from_kafka(settings, instance, None)
    assert clean_days == set(_days(FIRST_DAY, CLEAN_DAYS))
    first = run_pipeline(settings, DATASET, sorted(clean_days), reason=TrainingReason.INITIAL, instance=instance)
    assert first.deployment is not None and first.gate_passed
    v1 = first.model.version

    stack = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
    try:
        serving_settings = settings.model_copy(update={"mlserver_url": stack.mlserver_url})
        key = create_api_key(postgres_dsn, ["predict", "audit"], "e2e").key
        client = httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        # 2. Drifted data arrives on Kafka and lands; predictions are requested on clean, then drifted records.
        _produce(settings, drifted)
        cursor, drift_days = _ingest_from_kafka(settings, instance, cursor)
        assert drift_days == set(_days(DRIFT_START.date(), 10))
        ingest = (
            build_definitions(serving_settings)
            .resolve_job_def(f"ingest_{DATASET}")
            .execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": min(drift_days),
                    "dagster/asset_partition_range_end": max(drift_days),
                },
            )
        )
        assert ingest.success
        chunk = spec.monitoring.chunk_size
        served = _predict_all(client, _api_records(clean.tail(2 * chunk), spec.feature_names, spec.record_id.name))
        served += _predict_all(client, _api_records(drifted.head(3 * chunk), spec.feature_names, spec.record_id.name))
        assert {b["model"]["version"] for b in served} == {v1}

        # 3. Monitoring today's predictions finds the drift and stores it for the sensor.
        today = dt.datetime.now(dt.UTC).date().isoformat()
        defs = build_definitions(serving_settings)
        monitored = defs.resolve_job_def(f"monitor_{DATASET}").execute_in_process(
            instance=instance, partition_key=today
        )
        assert monitored.success
        metadata = monitored.get_asset_materialization_events()[0].materialization.metadata
        drifted_by_chunk = metadata["drifted_features"].value
        assert metadata["records"].value == 5 * chunk
        assert {"torque_nm"} <= set(drifted_by_chunk.get("4", [])), drifted_by_chunk
        assert not drifted_by_chunk.get("0"), drifted_by_chunk  # clean chunks stay quiet

        # 4. The retraining sensor asks for a run with reason drift and the numbers as tags.
        sensor = build_retraining_sensor(spec, lambda: postgres_dsn)
        with dg.build_sensor_context(instance=instance) as context:
            decision = sensor(context)
        assert isinstance(decision, dg.SensorResult), decision
        (request,) = decision.run_requests
        assert request.tags["riverbed/reason"] == "drift"
        assert "torque_nm" in request.tags["riverbed/trigger"]

        # 5. The requested run trains v2 on a window that includes the drifted days; requests keep flowing.
        failures: list[str] = []
        versions: list[int] = []
        stop = threading.Event()
        probe = _api_records(drifted.tail(20), spec.feature_names, spec.record_id.name)

        def fire() -> None:
            with httpx.Client(base_url=stack.gateway_url, headers=client.headers, timeout=30) as own:
                index = 0
                while not stop.is_set():
                    response = own.post(f"/v1/{DATASET}/predict", json={**probe[index % len(probe)], "top_k": 2})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        versions.append(response.json()["model"]["version"])
                    index += 1

        firing = threading.Thread(target=fire, daemon=True)
        firing.start()
        try:
            train = defs.resolve_job_def(f"train_{DATASET}").execute_in_process(
                instance=instance, tags=dict(request.tags), raise_on_error=False
            )
            assert train.success, [e.message for e in train.all_events if e.is_failure]
            time.sleep(3)  # the gateway reloads its deployment pointer within a second
        finally:
            stop.set()
            firing.join(timeout=30)
        v2_record = train.asset_value(dg.AssetKey(f"model_{DATASET}"))
        assert v2_record.reason == TrainingReason.DRIFT
        assert max(v2_record.data_commit_ids) >= max(drift_days)  # partitions it read, drifted days included
        assert not failures, failures[:5]
        assert versions[0] == v1 and versions[-1] == v2_record.version, (versions[:3], versions[-3:])
        after = client.post(f"/v1/{DATASET}/predict", json=probe[0]).json()
        assert after["model"]["version"] == v2_record.version
        client.close()
    finally:
        stack.stop()
