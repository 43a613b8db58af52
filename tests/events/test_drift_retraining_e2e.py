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
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.runner import local_instance, run_pipeline
from riverbed.cli.drift_demo import (
    DRIFT_START,
    ingest_until_drained,
    produce_frame,
    records_with_ids,
    retraining_tick,
    scenario_data,
)
from riverbed.records import TrainingReason
from riverbed.settings import PROJECT_ROOT, RiverbedSettings

DATASET = "machine_failure"
FIRST_DAY = dt.date(2026, 10, 1)


def _days(first: dt.date, count: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def _predict_all(client: httpx.Client, records: list[dict], batch: int = 100) -> list[dict]:
    bodies = []
    for start in range(0, len(records), batch):
        response = client.post(
            f"/v1/{DATASET}/predict", json={"records": records[start : start + batch], "explain": False}
        )
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return bodies


@pytest.mark.slow
def test_drift_triggers_retraining_and_v2_replaces_v1_without_a_failed_request(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    from riverbed.cli.stack import ServingStack
    from serving.api_keys import create_api_key

    settings = RiverbedSettings(
        home=tmp_path / "home",
        specs_dirs=[PROJECT_ROOT / "datasets"],
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"e2e{uuid.uuid4().hex[:8]}",
        inference_log_dsn=postgres_dsn,
    )
    instance = local_instance(settings)
    data = scenario_data(settings)
    spec, clean, drifted = data.spec, data.clean, data.drifted

    # 1. Clean data through Kafka; v1 trained and deployed (reason initial).
    assert produce_frame(settings, spec, clean) == len(clean)
    cursor, clean_days = ingest_until_drained(settings, instance, None)
    assert clean_days == set(_days(spec.event_time.first_partition_day, (DRIFT_START.date() - FIRST_DAY).days))
    first = run_pipeline(settings, DATASET, sorted(clean_days), reason=TrainingReason.INITIAL, instance=instance)
    assert first.deployment is not None and first.gate_passed
    v1 = first.model.version

    stack = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
    try:
        serving_settings = settings.model_copy(update={"mlserver_url": stack.mlserver_url})
        key = create_api_key(postgres_dsn, ["predict", "audit"], "e2e").key
        client = httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        # 2. Drifted data arrives on Kafka and lands; predictions are requested on clean, then drifted records.
        produce_frame(settings, spec, drifted)
        cursor, drift_days = ingest_until_drained(settings, instance, cursor)
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
        served = _predict_all(client, records_with_ids(spec, clean.tail(2 * chunk)))
        served += _predict_all(client, records_with_ids(spec, drifted.head(3 * chunk)))
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

        # 4. The retraining sensor (the code location's) asks for a run with reason drift and the numbers as tags.
        decision = retraining_tick(defs, instance, postgres_dsn)
        assert isinstance(decision, dg.SensorResult), decision
        (request,) = decision.run_requests
        assert request.tags["riverbed/reason"] == "drift"
        assert "torque_nm" in request.tags["riverbed/trigger"]

        # 5. The requested run trains v2 on a window that includes the drifted days; requests keep flowing.
        failures: list[str] = []
        versions: list[int] = []
        stop = threading.Event()
        probe = records_with_ids(spec, drifted.tail(20))

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
