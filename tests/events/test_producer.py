"""The data-provider simulator (``riverbed produce``) against librdkafka's mock cluster.

Produced records come back as valid raw messages keyed by sample id, in event-time order per partition; drift
changes only the records from its start; pacing holds the rate; the labeller answers prediction events with
true labels after a delay; the CLI sends and refuses bad options naming them.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from riverbed.cli import app
from riverbed.cli.producer import (
    KafkaUnavailableError,
    label_event_id,
    produce_records,
    publish_labels_for_predictions,
    replay_frame,
)
from riverbed.event_schemas import parse_raw_message
from riverbed.events import LabelEvent, PredictionEvent
from riverbed.generators import DriftScenario
from riverbed.kafka_config import client_config
from riverbed.names import TopicKind, topic_name
from riverbed.settings import PROJECT_ROOT, RiverbedSettings, get_settings
from riverbed.specs import DatasetSpec, load_specs

DATASET = "machine_failure"


def _settings(home: Path, bootstrap: str) -> RiverbedSettings:
    return RiverbedSettings(
        home=home,
        specs_dirs=[PROJECT_ROOT / "datasets"],
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:10]}",  # the mock cluster lives for the session
    )


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> RiverbedSettings:
    return _settings(tmp_path / "home", kafka_bootstrap)


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return load_specs([PROJECT_ROOT / "datasets"])[DATASET]


def _raw_topic(settings: RiverbedSettings) -> str:
    return topic_name(DATASET, TopicKind.RAW, prefix=settings.kafka_topic_prefix)


def _consume(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list[Any]:
    """Every message of ``topic`` (from the beginning of all partitions) once ``expected`` have arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}"})
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        partitions: list[int] = []
        while not partitions and time.monotonic() < deadline:
            described = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if described is not None and described.error is None:
                partitions = sorted(described.partitions)
            else:
                time.sleep(0.1)
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(num_messages=1000, timeout=0.3) if m.error() is None]
        extra_until = time.monotonic() + 0.3  # anything beyond ``expected`` would show up now
        while time.monotonic() < extra_until:
            messages += [m for m in consumer.consume(num_messages=1000, timeout=0.1) if m.error() is None]
    finally:
        consumer.close()
    return messages


def _parsed_by_id(spec: DatasetSpec, messages: list[Any]) -> dict[str, dict[str, Any]]:
    return {m.key().decode(): parse_raw_message(spec, m.value()) for m in messages}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------------------------ records


def test_produced_records_come_back_as_raw_messages_keyed_by_sample_id_in_event_time_order(
    settings: RiverbedSettings, spec: DatasetSpec
) -> None:
    frame = replay_frame(spec, None, None, None, seed=0, limit=500)
    assert len(frame) == 500
    assert frame[spec.event_time.name].is_monotonic_increasing
    assert frame[spec.event_time.name].iloc[0] == pd.Timestamp("2026-10-01T00:00:00Z")
    topic = _raw_topic(settings)
    seen: list[int] = []

    report = produce_records(spec, frame, client_config(settings), topic, rate=None, progress=seen.append)

    assert (report.sent, report.failed, report.drifted) == (500, 0, 0)
    assert seen and seen[-1] == 500 and seen == sorted(seen)
    assert report.first_event_time == frame[spec.event_time.name].iloc[0].to_pydatetime()
    assert report.last_event_time == frame[spec.event_time.name].iloc[-1].to_pydatetime()
    messages = _consume(settings.kafka_bootstrap_servers or "", topic, 500)
    assert len(messages) == report.sent
    times_by_partition: dict[int, list[dt.datetime]] = defaultdict(list)
    for message in messages:
        record = parse_raw_message(spec, message.value())
        assert message.key().decode("utf-8") == record["sample_id"]
        times_by_partition[message.partition()].append(dt.datetime.fromisoformat(record["event_time"]))
    for times in times_by_partition.values():
        assert times == sorted(times)
    assert {m.key().decode() for m in messages} == set(frame[spec.record_id.name].astype(str))


def test_replay_window_is_days_inclusive_and_limit_must_be_positive(spec: DatasetSpec) -> None:
    day = dt.date(2026, 10, 3)
    frame = replay_frame(spec, day, day, None, seed=0, limit=None)
    times = frame[spec.event_time.name]
    assert len(frame) == 1000  # 30,000 generated records over 30 days
    assert times.min() >= pd.Timestamp("2026-10-03T00:00:00Z") and times.max() < pd.Timestamp("2026-10-04T00:00:00Z")
    with pytest.raises(ValueError, match="end_day"):
        replay_frame(spec, day, day - dt.timedelta(days=1), None, seed=0, limit=None)
    with pytest.raises(ValueError, match="limit"):
        replay_frame(spec, None, None, None, seed=0, limit=0)


def test_drift_shifts_torque_from_its_start_and_leaves_earlier_records_unchanged(
    settings: RiverbedSettings, spec: DatasetSpec
) -> None:
    start = dt.datetime(2026, 10, 1, 6, tzinfo=dt.UTC)  # the first 500 records span about 12 hours
    drift = DriftScenario(start=start, feature_shifts={"torque_nm": 3.0})
    clean = replay_frame(spec, None, None, None, seed=3, limit=500)
    drifted = replay_frame(spec, None, None, drift, seed=3, limit=500)
    topic = _raw_topic(settings)

    report = produce_records(spec, drifted, client_config(settings), topic, rate=None, drift_start=start)

    after = drifted[spec.event_time.name] >= pd.Timestamp(start)
    assert 100 < report.drifted == int(after.sum()) < 500
    received = _parsed_by_id(spec, _consume(settings.kafka_bootstrap_servers or "", topic, 500))
    assert len(received) == report.sent == 500
    expected_clean = {str(row[spec.record_id.name]): row for row in clean.to_dict("records")}
    before_torque, after_torque = [], []
    for sample_id, record in received.items():
        if dt.datetime.fromisoformat(record["event_time"]) < start:
            original = expected_clean[sample_id]
            assert all(record[f] == pytest.approx(original[f]) for f in spec.numeric_features), sample_id
            assert record["machine_type"] == original["machine_type"]
            before_torque.append(record["torque_nm"])
        else:
            after_torque.append(record["torque_nm"])
    before_mean = sum(before_torque) / len(before_torque)
    after_mean = sum(after_torque) / len(after_torque)
    assert after_mean > before_mean + 15, (before_mean, after_mean)  # 3 sd of ~10 Nm, clipped at the range


def test_rate_paces_sending_by_the_wall_clock(settings: RiverbedSettings, spec: DatasetSpec) -> None:
    frame = replay_frame(spec, None, None, None, seed=0, limit=200)
    started = time.monotonic()

    report = produce_records(spec, frame, client_config(settings), _raw_topic(settings), rate=400)

    elapsed = time.monotonic() - started
    assert report.sent == 200 and report.failed == 0
    assert elapsed >= 0.45 and report.seconds >= 0.45  # record 199 is due 199/400 s after the first
    assert report.rate <= 450


def test_an_unreachable_broker_is_a_clear_error(spec: DatasetSpec) -> None:
    frame = replay_frame(spec, None, None, None, seed=0, limit=5)
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(KafkaUnavailableError, match=re.escape(address)):
        produce_records(
            spec, frame, {"bootstrap.servers": address}, "nowhere.raw", rate=None, connect_timeout_seconds=1.0
        )


# ------------------------------------------------------------------------------------------------ labels


def _publish_predictions(bootstrap: str, topic: str, events: list[PredictionEvent]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for event in events:
        producer.produce(topic, key=(event.sample_id or event.request_id).encode(), value=event.model_dump_json())
    assert producer.flush(10) == 0


def _prediction(sample_id: str | None, request_id: str, index: int = 0) -> PredictionEvent:
    return PredictionEvent(
        dataset=DATASET,
        request_id=request_id,
        record_index=index,
        sample_id=sample_id,
        event_time=dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
        model_name=DATASET,
        model_version=1,
        label="0",
        probability=0.2,
    )


def _labels(settings: RiverbedSettings, expected: int) -> list[tuple[str, LabelEvent]]:
    topic = topic_name(DATASET, TopicKind.LABELS, prefix=settings.kafka_topic_prefix)
    messages = _consume(settings.kafka_bootstrap_servers or "", topic, expected)
    return [(m.key().decode(), LabelEvent.model_validate_json(m.value())) for m in messages]


def test_labeller_labels_known_predictions_once_after_the_delay(settings: RiverbedSettings, spec: DatasetSpec) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    predictions = topic_name(DATASET, TopicKind.PREDICTIONS, prefix=settings.kafka_topic_prefix)
    truth = {"mf-1": "1", "mf-2": "0", "mf-3": "1", "mf-never-predicted": "0"}
    _publish_predictions(
        bootstrap,
        predictions,
        [
            _prediction("mf-1", "req-a", 0),
            _prediction("mf-2", "req-a", 1),
            _prediction("mf-unknown", "req-a", 2),  # not in the truth: no label
            _prediction(None, "req-b", 0),  # no sample id: no label
            _prediction("mf-3", "req-c", 0),
            _prediction("mf-1", "req-d", 0),  # predicted again: still labelled once
        ],
    )
    started = dt.datetime.now(dt.UTC)

    published = publish_labels_for_predictions(
        spec,
        client_config(settings),
        truth,
        delay_seconds=0.5,
        duration_seconds=3.0,
        topic_prefix=settings.kafka_topic_prefix,
    )

    assert published == 3
    labels = _labels(settings, 3)
    assert sorted(key for key, _ in labels) == ["mf-1", "mf-2", "mf-3"]
    by_id = {event.sample_id: event for _, event in labels}
    assert {sid: event.label for sid, event in by_id.items()} == {"mf-1": "1", "mf-2": "0", "mf-3": "1"}
    assert (by_id["mf-1"].request_id, by_id["mf-1"].record_index) == ("req-a", 0)
    assert (by_id["mf-2"].request_id, by_id["mf-2"].record_index) == ("req-a", 1)
    assert by_id["mf-3"].request_id == "req-c"
    assert all(event.dataset == DATASET for event in by_id.values())
    assert all(event.labelled_at >= started + dt.timedelta(seconds=0.5) for event in by_id.values())
    # Each label event has an id derived from the prediction it labels: labelling it again repeats the id.
    assert by_id["mf-1"].label_event_id == label_event_id(DATASET, _prediction("mf-1", "req-a", 0), "1")
    assert len({event.label_event_id for event in by_id.values()}) == 3


def test_labeller_waits_for_the_predictions_topic_and_stops_once_everything_is_labelled(
    settings: RiverbedSettings, spec: DatasetSpec
) -> None:
    bootstrap = settings.kafka_bootstrap_servers or ""
    predictions = topic_name(DATASET, TopicKind.PREDICTIONS, prefix=settings.kafka_topic_prefix)
    truth = {"mf-10": "0", "mf-11": "1"}
    later = threading.Timer(
        1.0, _publish_predictions, (bootstrap, predictions, [_prediction("mf-10", "r1"), _prediction("mf-11", "r2")])
    )
    later.start()
    started = time.monotonic()
    try:
        published = publish_labels_for_predictions(
            spec, client_config(settings), truth, 0.2, 30.0, settings.kafka_topic_prefix
        )
    finally:
        later.join()
    assert published == 2
    assert time.monotonic() - started < 10  # not the 30 s duration: every truth id was labelled
    assert {event.sample_id: event.label for _, event in _labels(settings, 2)} == truth


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli_env(settings: RiverbedSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[RiverbedSettings]:
    monkeypatch.setenv("RIVERBED_HOME", str(settings.home))
    monkeypatch.setenv("RIVERBED_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers or "")
    monkeypatch.setenv("RIVERBED_KAFKA_TOPIC_PREFIX", settings.kafka_topic_prefix)
    monkeypatch.delenv("RIVERBED_SPECS_DIRS", raising=False)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def _flat(text: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_cli_produces_records_and_prints_a_summary(cli_env: RiverbedSettings, spec: DatasetSpec) -> None:
    result = CliRunner().invoke(app, ["produce", DATASET, "--limit", "50"])

    assert result.exit_code == 0, result.output
    topic = _raw_topic(cli_env)
    assert f"sent 50 record(s) to {topic}" in result.stdout
    assert "records/s" in result.stdout
    messages = _consume(cli_env.kafka_bootstrap_servers or "", topic, 50)
    assert len(messages) == 50
    assert all(parse_raw_message(spec, m.value())["sample_id"] == m.key().decode() for m in messages)


def test_cli_with_drift_and_labeller(cli_env: RiverbedSettings) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("produce", DATASET, "--from", "2026-10-02", "--to", "2026-10-02", "--limit", "40"),
            *("--drift-from", "2026-10-02T00:10:00Z", "--shift", "torque_nm=2", "--shift", "machine_type=0.5"),
            *("--label-flip", "torque_nm=0.3", "--seed", "5", "--labels-after", "0", "--labels-for", "1"),
        ],
    )

    assert result.exit_code == 0, result.output
    assert "sent 40 record(s)" in result.stdout
    assert re.search(r"\b3[0-9] drifted\b", result.stdout), result.stdout  # 1000 records a day: ~1.4 min apart
    assert "event times 2026-10-02 00:00" in result.stdout
    assert "published 0 label(s) of 40 record(s)" in result.stdout  # nothing predicted them


@pytest.mark.parametrize(
    ("arguments", "option", "text"),
    [
        (["--drift-from", "2026-10-10T00:00:00", "--shift", "nope=1"], "--shift", "not a feature"),
        (["--drift-from", "2026-10-10T00:00:00", "--shift", "torque_nm"], "--shift", "FEATURE=STD_SHIFT"),
        (["--drift-from", "2026-10-10T00:00:00", "--shift", "machine_type=2"], "--shift", "fraction"),
        (["--shift", "torque_nm=1"], "--shift", "needs --drift-from"),
        (["--drift-from", "yesterday", "--shift", "torque_nm=1"], "--drift-from", "ISO 8601"),
        (["--drift-from", "2026-10-10T00:00:00", "--label-flip", "torque_nm=1.5"], "--label-flip", "[0, 1]"),
        (["--rate", "-1"], "--rate", "negative"),
        (["--limit", "0"], "--limit", "positive"),
        (["--from", "2026-13-01"], "--from", "YYYY-MM-DD"),
        (["--from", "2026-10-05", "--to", "2026-10-04"], "--to", "before"),
        (["--labels-for", "5"], "--labels-for", "--labels-after"),
    ],
)
def test_cli_refuses_bad_options_naming_them(
    cli_env: RiverbedSettings, arguments: list[str], option: str, text: str
) -> None:
    result = CliRunner().invoke(app, ["produce", DATASET, *arguments])

    assert result.exit_code == 2, result.output
    output = _flat(result.output)
    assert f"'{option}'" in output and text in output, output


def test_cli_unknown_dataset_lists_the_known_ones(cli_env: RiverbedSettings) -> None:
    result = CliRunner().invoke(app, ["produce", "no_such_dataset"])

    assert result.exit_code == 2, result.output
    output = _flat(result.output)
    assert "no_such_dataset" in output and "machine_failure" in output and "salary_band" in output, output
