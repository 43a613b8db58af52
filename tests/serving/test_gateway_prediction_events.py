"""Prediction events: one per predicted record on the predictions topic; Kafka down never fails a prediction."""

import json
import time

import httpx
import pytest
from confluent_kafka import Consumer, Producer

from riverbed.cli.mlserver_process import free_port
from riverbed.cli.stack import ServingStack
from riverbed.events import PredictionEvent
from riverbed.model_repository import ModelRepository
from riverbed.names import TopicKind, topic_name
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    api_records,
    install_trained_model,
    salary_band_features,
    salary_band_spec,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mock_cluster():
    producer = Producer({"test.mock.num.brokers": 1})
    brokers = producer.list_topics(timeout=10).brokers
    broker = next(iter(brokers.values()))
    yield f"{broker.host}:{broker.port}"
    del producer


def _serve(tmp_path, bootstrap: str):
    name, dsn = create_database()
    settings = RiverbedSettings(home=tmp_path, inference_log_dsn=dsn, kafka_bootstrap_servers=bootstrap)
    install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=tmp_path / "trained")
    return name, ServingStack(settings, ["salary_band"], ephemeral_ports=True).start()


def test_each_predicted_record_becomes_an_event(tmp_path, mock_cluster: str) -> None:
    records = api_records(salary_band_features(30), salary_band_spec())
    name, stack = _serve(tmp_path, mock_cluster)
    try:
        assert stack.dsn
        key = create_api_key(stack.dsn, ["predict"], "app").key
        with httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            single = http.post("/v1/salary_band/predict", json={**records[0], "sample_id": "one"})
            batch = http.post(
                "/v1/salary_band/predict",
                json={"records": [{**r, "sample_id": f"b-{i}"} for i, r in enumerate(records)]},
            )
        assert single.status_code == batch.status_code == 200
        consumer = Consumer(
            {
                "bootstrap.servers": mock_cluster,
                "group.id": "events-test",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
        )
        consumer.subscribe([topic_name("salary_band", TopicKind.PREDICTIONS)])
        events: list[PredictionEvent] = []
        deadline = time.monotonic() + 30
        while len(events) < 31 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                events.append(PredictionEvent.model_validate(json.loads(message.value())))
        consumer.close()
        assert len(events) == 31
        by_request = {e.request_id for e in events}
        assert by_request == {single.json()["request_id"], batch.json()["request_id"]}
        batch_events = sorted(
            (e for e in events if e.request_id == batch.json()["request_id"]), key=lambda e: e.record_index
        )
        predicted = batch.json()["predictions"]
        assert [e.sample_id for e in batch_events] == [f"b-{i}" for i in range(30)]
        assert [e.label for e in batch_events] == [p["label"] for p in predicted]
        assert all(e.model_version == 1 for e in events)
    finally:
        stack.stop()
        drop_database(name)


def test_kafka_down_never_fails_a_prediction(tmp_path) -> None:
    records = api_records(salary_band_features(20), salary_band_spec())
    name, stack = _serve(tmp_path, f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        assert stack.dsn
        key = create_api_key(stack.dsn, ["predict"], "app").key
        with httpx.Client(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            statuses = [http.post("/v1/salary_band/predict", json=record).status_code for record in records]
            assert statuses == [200] * len(records)
            assert http.get("/readyz").status_code == 200
            assert 'riverbed_prediction_events_total{outcome="queued"} 20.0' in http.get("/metrics").text
    finally:
        stack.stop()
        drop_database(name)
