"""Labels from Kafka into PostgreSQL, joined to logged predictions (in either order); monitoring's window query
and NannyML analysis on top of it. Real mock-cluster broker, real PostgreSQL."""

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer

from monitoring.analysis import analyse_window, html_report, store_results
from monitoring.inference_data import logged_predictions
from monitoring.labels import label_counts
from riverbed.events import LabelEvent
from riverbed.generators import generate_machine_failure
from riverbed.names import TopicKind, topic_name
from riverbed.settings import PROJECT_ROOT
from riverbed.specs import load_specs
from sensors.kafka_ingestion import format_cursor, parse_cursor
from sensors.kafka_labels import ingest_labels_once
from sensors.retraining import monitoring_days

SPEC = load_specs([PROJECT_ROOT / "datasets"])["machine_failure"]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _log_predictions(dsn: str, rows: pd.DataFrame, probabilities: np.ndarray, at: dt.datetime) -> list[str]:
    """One logged request per 50 records through the real writer; returns the request ids."""
    from serving.inference_log import InferenceLogWriter, InferenceRecord, RequestStatus

    async def write() -> list[str]:
        writer = InferenceLogWriter(dsn, Path(f"/tmp/riverbed-spool-{uuid.uuid4().hex}"), pool_size=2)
        await writer.start()
        ids = []
        try:
            for start in range(0, len(rows), 50):
                part = rows.iloc[start : start + 50]
                inputs = json.loads(part[SPEC.feature_names].to_json(orient="records"))
                outputs = [
                    {
                        "sample_id": sample,
                        "label": "1" if p >= 0.5 else "0",
                        "probabilities": {"0": round(1 - p, 6), "1": round(p, 6)},
                    }
                    for sample, p in zip(part["record_id"], probabilities[start : start + 50], strict=True)
                ]
                request_id = str(uuid.uuid4())
                await writer.record(
                    InferenceRecord(
                        request_id=request_id,
                        received_at=at + dt.timedelta(seconds=start),
                        dataset=SPEC.name,
                        route="/v1/{dataset}/predict",
                        status=RequestStatus.OK,
                        http_status=200,
                        model_name="riverbed-machine_failure",
                        model_version="1",
                        inputs=inputs,
                        outputs=outputs,
                        labels=[o["label"] for o in outputs],
                    )
                )
                ids.append(request_id)
        finally:
            await writer.stop()
        return ids

    return asyncio.run(write())


def _frame(rows: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    frame = generate_machine_failure(SPEC, rows, seed).reset_index(drop=True)
    frame["record_id"] = [f"mf-{seed}-{i}" for i in range(rows)]
    frame["torque_nm"] = (frame["torque_nm"] + shift).clip(0, 100)
    probability = 1 / (1 + np.exp(-(frame["torque_nm"].to_numpy() - 45) / 5))
    return frame, probability


def _send_labels(bootstrap: str, topic: str, events: list[LabelEvent], extra: list[bytes] = ()) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for event in events:
        producer.produce(topic, key=(event.sample_id or event.request_id).encode(), value=event.model_dump_json())
    for value in extra:
        producer.produce(topic, key=b"bad", value=value)
    assert producer.flush(10) == 0


def test_labels_before_and_after_their_prediction_match_and_bad_ones_go_to_the_dlq(
    migrated_dsn: str, kafka_bootstrap: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topic = topic_name(SPEC.name, TopicKind.LABELS, prefix=prefix)
    kafka = {"bootstrap.servers": kafka_bootstrap}
    frame, probability = _frame(100, 1)
    truth = {sid: ("1" if p > 0.6 else "0") for sid, p in zip(frame["record_id"], probability, strict=True)}
    early = [LabelEvent(dataset=SPEC.name, sample_id=s, label=truth[s], labelled_at=NOW) for s in list(truth)[:30]]
    unknown = LabelEvent(dataset=SPEC.name, sample_id="never-predicted", label="1", labelled_at=NOW)
    _send_labels(kafka_bootstrap, topic, [*early, unknown], extra=[b"{oops", b'{"dataset": "machine_failure"}'])

    tick = ingest_labels_once(SPEC, migrated_dsn, kafka, {}, topic_prefix=prefix)  # before any prediction
    assert tick.stored == 31 and tick.dead_letters == 2, tick
    assert label_counts(migrated_dsn, SPEC.name) == (31, 0)

    request_ids = _log_predictions(migrated_dsn, frame, probability, NOW)
    by_request = [
        LabelEvent(dataset=SPEC.name, request_id=request_ids[1], record_index=i, label=truth[s], labelled_at=NOW)
        for i, s in enumerate(frame["record_id"][50:60])
    ]
    _send_labels(kafka_bootstrap, topic, by_request)
    again = ingest_labels_once(SPEC, migrated_dsn, kafka, tick.cursor, topic_prefix=prefix)
    assert again.stored == 10 and again.dead_letters == 0
    replay = ingest_labels_once(SPEC, migrated_dsn, kafka, {}, topic_prefix=prefix)  # cursor lost: no duplicates
    assert replay.stored == 0
    assert label_counts(migrated_dsn, SPEC.name) == (41, 40)
    assert parse_cursor(format_cursor(again.cursor)) == again.cursor

    window = logged_predictions(migrated_dsn, SPEC, NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(hours=1))
    assert len(window) == 100
    labelled = window[window["y_true"].notna()]
    assert len(labelled) == 40
    expected = [1.0 if truth[s] == "1" else 0.0 for s in labelled["sample_id"]]
    assert labelled["y_true"].tolist() == expected
    assert window["torque_nm"].tolist() == pytest.approx(frame["torque_nm"].tolist())


@pytest.mark.slow
def test_window_analysis_flags_the_drifted_chunks_and_the_sensor_reads_them(migrated_dsn: str) -> None:
    reference, reference_probability = _frame(4000, 7)
    reference = reference[SPEC.feature_names].assign(
        y_pred_proba=reference_probability,
        y_pred=(reference_probability >= 0.5).astype(int),
        y_true=(np.random.default_rng(0).random(4000) < reference_probability).astype(float),
    )
    clean, clean_probability = _frame(1000, 8)
    shifted, shifted_probability = _frame(1000, 9, shift=20.0)
    _log_predictions(migrated_dsn, clean, clean_probability, NOW)
    _log_predictions(migrated_dsn, shifted, shifted_probability, NOW + dt.timedelta(hours=1))
    window = logged_predictions(migrated_dsn, SPEC, NOW - dt.timedelta(minutes=1), NOW + dt.timedelta(hours=2))
    day = NOW.date()
    found = analyse_window(SPEC, reference, window, day=day, chunk_size=500, model_version="1")
    assert found.records == 2000 and found.chunks == 4 and found.labelled == 0
    drifted = found.drifted_features()
    assert "torque_nm" in drifted.get(2, []) and "torque_nm" in drifted.get(3, [])
    assert "torque_nm" not in drifted.get(0, []) + drifted.get(1, [])
    multivariate = {r.chunk: r.alert for r in found.rows if r.kind == "multivariate_drift"}
    assert multivariate[3] and not multivariate[0]
    assert {r.name for r in found.rows if r.kind == "cbpe"} == {"roc_auc", "accuracy", "f1"}
    assert "torque_nm" in html_report(SPEC, day, found)

    store_results(migrated_dsn, SPEC.name, day, found.rows)
    store_results(migrated_dsn, SPEC.name, day, found.rows)  # rematerialising replaces, never duplicates
    chunks = monitoring_days(migrated_dsn, SPEC.name, "roc_auc")
    assert [c.chunk for c in chunks] == [0, 1, 2, 3]
    assert "torque_nm" in chunks[-1].drifted_features and chunks[-1].estimated_performance is not None


def test_too_small_a_reference_is_refused_naming_the_setting() -> None:
    reference, probability = _frame(600, 3)
    reference = reference[SPEC.feature_names].assign(y_pred_proba=probability, y_pred=0, y_true=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        analyse_window(SPEC, reference, reference.head(10), day=NOW.date(), chunk_size=500)
