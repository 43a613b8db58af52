"""The Kafka sensors fail only for infrastructure, and then say so: a skip naming the failure, a WARNING line and
a count in ``pipeline_failures``. Plus migration 0009: labels that were stored before it keep their rows and get
an identity."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from platform_assets.environments import build_resources
from resources.inference_log_resource import InferenceLogResource
from resources.kafka_resource import KafkaResource
from riverbed.inference_log_schema import MIGRATIONS_DIR, apply_migrations
from riverbed.pipeline_failures import read_failures
from riverbed.settings import PROJECT_ROOT, get_settings
from riverbed.specs import load_specs
from sensors.kafka_ingestion import IngestionLimits
from sensors.kafka_labels import build_kafka_labels_sensor
from tests.events.test_kafka_ingestion import DATASET, Env, _settings

SPEC = load_specs([PROJECT_ROOT / "datasets"])[DATASET]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed once the block ends: nothing listens there


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def counted_in(migrated_dsn: str, monkeypatch: pytest.MonkeyPatch):
    """Failures of the ingestion sensor are counted in ``migrated_dsn`` (RIVERBED_INFERENCE_LOG_DSN)."""
    monkeypatch.setenv("RIVERBED_INFERENCE_LOG_DSN", migrated_dsn)
    get_settings.cache_clear()
    yield migrated_dsn
    get_settings.cache_clear()


def test_an_unreachable_broker_is_a_reported_ingestion_failure(
    tmp_path: Path, counted_in: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path / "home", f"127.0.0.1:{_closed_port()}")
    env = Env(settings, SPEC, dg.DagsterInstance.ephemeral(), build_resources(settings))
    result = env.tick('{"0": 5}', IngestionLimits(connect_timeout_seconds=2.0))

    assert isinstance(result, dg.SkipReason)  # no SensorResult: the stored cursor stays
    assert (result.skip_message or "").startswith(
        "ingest_machine_failure failed (kafka_unreachable): Kafka unreachable"
    )
    assert any(w.startswith("ingest_machine_failure: kafka_unreachable: Kafka unreachable") for w in _warnings(caplog))
    assert read_failures(counted_in) == {("ingest_machine_failure", "kafka_unreachable"): 1}


def _labels_tick(inference_log: InferenceLogResource, kafka: KafkaResource) -> dg.SensorResult | dg.SkipReason:
    sensor = build_kafka_labels_sensor(SPEC)
    with dg.build_sensor_context(cursor='{"0": 3}', resources={"inference_log": inference_log, "kafka": kafka}) as c:
        return sensor(c)


def test_labels_sensor_failures_name_the_part_that_is_down(
    migrated_dsn: str, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable_db = f"host=127.0.0.1 port={_closed_port()} dbname=riverbed user=nobody connect_timeout=1"
    down = _labels_tick(InferenceLogResource(dsn=unreachable_db), KafkaResource(bootstrap_servers=kafka_bootstrap))
    assert isinstance(down, dg.SkipReason)
    assert (down.skip_message or "").startswith("labels_machine_failure failed (inference_log_unavailable): ")
    warnings = _warnings(caplog)
    assert any(
        w.startswith("labels_machine_failure: inference_log_unavailable: inference log unavailable") for w in warnings
    )
    assert any("could not be counted" in w for w in warnings)  # the database is the failure: the log line remains

    no_broker = _labels_tick(
        InferenceLogResource(dsn=migrated_dsn), KafkaResource(bootstrap_servers=f"127.0.0.1:{_closed_port()}")
    )
    assert isinstance(no_broker, dg.SkipReason)
    assert "(kafka_unreachable): Kafka unreachable" in (no_broker.skip_message or "")
    assert read_failures(migrated_dsn) == {("labels_machine_failure", "kafka_unreachable"): 1}


def test_migration_0009_gives_stored_labels_an_identity_and_keeps_them(postgres_dsn: str, tmp_path: Path) -> None:
    before, through = tmp_path / "before-0009", tmp_path / "through-0009"
    before.mkdir()
    through.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if path.name < "0009":
            shutil.copy(path, before / path.name)
        if path.name < "0010":
            shutil.copy(path, through / path.name)
    apply_migrations(postgres_dsn, directory=before)
    insert = (
        'insert into prediction_labels (topic, partition, "offset", dataset, sample_id, label, labelled_at) '
        "values (%s, %s, %s, 'd', %s, '1', %s)"
    )
    at = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    with psycopg.connect(postgres_dsn) as conn:
        for offset, sample in ((0, "a"), (1, "a"), (2, "b")):  # "a" twice: a retry under the old identity
            conn.execute(insert, ("t.labels", 0, offset, sample, at))

    assert apply_migrations(postgres_dsn, directory=through) == ["0009_label_identity"]

    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            'select "offset", sample_id, label_event_id from prediction_labels order by "offset"'
        ).fetchall()
        assert rows == [
            (0, "a", "kafka:t.labels:0:0"),
            (1, "a", "kafka:t.labels:0:1"),
            (2, "b", "kafka:t.labels:0:2"),
        ]
        # An older writer that names no label event id still works (the trigger gives it the message position).
        conn.execute(insert, ("t.labels", 0, 3, "c", at))
        assert conn.execute('select label_event_id from prediction_labels where "offset" = 3').fetchone() == (
            "kafka:t.labels:0:3",
        )
        # The identity is unique: the same label event at another offset is a no-op.
        with_id = (
            'insert into prediction_labels (topic, partition, "offset", dataset, sample_id, label, labelled_at, '
            "label_event_id) values ('t.labels', 1, %s, 'd', 'e', '1', %s, 'ev-1') on conflict do nothing"
        )
        assert conn.execute(with_id, (10, at)).rowcount == 1
        assert conn.execute(with_id, (11, at)).rowcount == 0
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(with_id.removesuffix(" on conflict do nothing"), (12, at))
