"""Poison messages on the mock cluster: whatever the ingestion or labels sensor cannot parse or store goes to the
dead-letter topic with its reason, the cursor moves past it and the next good message is landed / stored.

Every poison message is keyed ``b"p"`` (one partition) and followed, in that partition, by a good message, so a
message that blocked its partition would keep the good one out.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from monitoring.labels import LabelMessage, store_labels
from platform_assets.environments import build_resources
from riverbed.event_schemas import raw_message
from riverbed.events import MAX_ID_LENGTH, DeadLetter, LabelEvent
from riverbed.names import TopicKind, topic_name
from riverbed.settings import PROJECT_ROOT, get_settings
from riverbed.specs import load_specs
from sensors.kafka_ingestion import IngestionLimits, parse_cursor
from sensors.kafka_labels import LabelRefused, ingest_labels_once, parse_label
from tests.events.test_kafka_ingestion import DATASET, Env, _end_offsets, _landed_ids, _rows, _settings

SPEC = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
KEY = b"p"
NESTED = 3000


@pytest.fixture
def env(tmp_path: Path, kafka_bootstrap: str) -> Env:
    settings = _settings(tmp_path / "home", kafka_bootstrap)
    return Env(settings, SPEC, dg.DagsterInstance.ephemeral(), build_resources(settings))


def _send(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def read_dead_letters(bootstrap: str, prefix: str, expected: int) -> list[DeadLetter]:
    """The dead letters of ``machine_failure`` (waits until ``expected`` arrived, then 1 s more for extras)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic_name(DATASET, TopicKind.DLQ, prefix=prefix)])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 20
    extra_until: float | None = None
    while time.monotonic() < (extra_until or deadline):
        message = consumer.poll(0.25)
        if message is not None and message.error() is None:
            letters.append(DeadLetter.model_validate_json(message.value()))
        if len(letters) >= expected and extra_until is None:
            extra_until = time.monotonic() + 1.0
    consumer.close()
    return sorted(letters, key=lambda letter: letter.offset)


def _good_raw(marker: str) -> dict[str, Any]:
    row = _rows(SPEC, ["2026-10-04"], 1, marker).iloc[0].to_dict()
    return json.loads(raw_message(SPEC, row))


def _raw(**changes: Any) -> bytes:
    document = {**_good_raw("x"), **changes}
    return json.dumps(document).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (what, raw value, field the reason must name)
RAW_POISON: list[tuple[str, bytes, str]] = [
    ("event time overflows below year 1", _raw(event_time="0001-01-01T00:00:00+01:00"), "event_time"),
    ("event time overflows above year 9999", _raw(event_time="9999-12-31T23:30:00-01:00"), "event_time"),
    ("event time is a number", _raw(event_time=1_700_000_000), "event_time"),
    ("NUL in the sample id", _raw(sample_id="mf-\x00a"), "sample_id"),
    ("NUL in a category", _raw(machine_type="L\x00"), "machine_type"),
    ("NUL in the target", _raw(machine_failure="1\x00"), "machine_failure"),
    ("sample id longer than ids may be", _raw(sample_id="m" * (MAX_ID_LENGTH + 1)), "sample_id"),
    ("sample id with a line break", _raw(sample_id="mf-\n1"), "sample_id"),
    ("sample id is a number", _raw(sample_id=17), "sample_id"),
    ("integer beyond 64 bits", _raw(tool_wear_min=2**64 - 1), "tool_wear_min"),
    ("integer feature beyond 64 bits, as a float", _raw(rotational_speed_rpm=2**70), "rotational_speed_rpm"),
    ("integer literal beyond 64 bits in a number feature", _raw(torque_nm=2**64 - 1), "torque_nm"),
    ("non-finite number", _raw(torque_nm=1).replace(b'"torque_nm": 1', b'"torque_nm": 1e400'), "value"),
    ("NaN token", _raw(torque_nm=1).replace(b'"torque_nm": 1', b'"torque_nm": NaN'), "value"),
    ("object in a numeric feature", _raw(torque_nm={"a": 1}), "torque_nm"),
    (
        "deeply nested JSON",
        _raw(sample_id="x").replace(b'"sample_id": "x"', b'"sample_id": ' + _nested(NESTED).encode()),
        "value",
    ),
    ("oversized message", _raw(machine_type="L" * 20_000), "value"),
    ("lone surrogate", _raw(sample_id="x").replace(b'"sample_id": "x"', b'"sample_id": "\\ud800"'), "value"),
]


def test_every_poison_raw_message_is_dead_lettered_with_its_reason_and_the_next_good_one_lands(env: Env) -> None:
    good = _good_raw("after")
    messages: list[tuple[bytes | None, bytes | None]] = [(KEY, value) for _, value, _ in RAW_POISON]
    messages.append((KEY, json.dumps(good).encode()))
    _send(env.settings.kafka_bootstrap_servers or "", env.topic, messages)

    result = env.tick(None, IngestionLimits(max_message_bytes=16_384))

    assert isinstance(result, dg.SensorResult), result
    assert parse_cursor(result.cursor) == _end_offsets(env)  # moved past every poison message
    assert [r.partition_key for r in result.run_requests] == ["2026-10-04"]
    assert result.run_requests[0].tags["riverbed/dead_letters"] == str(len(RAW_POISON))
    assert _landed_ids(env) == {"2026-10-04": [good["sample_id"]]}
    letters = read_dead_letters(
        env.settings.kafka_bootstrap_servers or "", env.settings.kafka_topic_prefix, len(RAW_POISON)
    )
    assert len(letters) == len(RAW_POISON)
    for letter, (what, _, field_name) in zip(letters, RAW_POISON, strict=True):
        assert letter.topic == env.topic and letter.key == "p", what
        assert letter.reason.startswith(f"{field_name}:") or f"{field_name}:" in letter.reason, (what, letter.reason)


def test_a_huge_poison_value_is_dead_lettered_truncated_and_the_cursor_moves(env: Env) -> None:
    huge = b"\x00" * 900_000  # JSON-escaped as \u0000 it would be 6x larger than the broker takes
    good = _good_raw("after-huge")
    _send(env.settings.kafka_bootstrap_servers or "", env.topic, [(KEY, huge), (KEY, json.dumps(good).encode())])

    result = env.tick(None)

    assert isinstance(result, dg.SensorResult), result
    assert parse_cursor(result.cursor) == _end_offsets(env)
    assert _landed_ids(env) == {"2026-10-04": [good["sample_id"]]}
    [letter] = read_dead_letters(env.settings.kafka_bootstrap_servers or "", env.settings.kafka_topic_prefix, 1)
    assert letter.reason.startswith("value: not a JSON document")
    assert "truncated" in letter.reason and len(letter.value) < 100_000


# ------------------------------------------------------------------------------------------------ labels


def _label(**changes: Any) -> dict[str, Any]:
    document = {
        "dataset": DATASET,
        "sample_id": "mf-1",
        "label": "1",
        "labelled_at": dt.datetime.now(dt.UTC).isoformat(),
        "label_event_id": str(uuid.uuid4()),
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not ...}


LABEL_POISON: list[tuple[str, bytes, str]] = [
    ("NUL in the sample id", json.dumps(_label(sample_id="mf-\x00")).encode(), "sample_id"),
    ("NUL in the request id", json.dumps(_label(sample_id=..., request_id="r\x00")).encode(), "request_id"),
    ("id longer than the index allows", json.dumps(_label(sample_id="m" * 5000)).encode(), "sample_id"),
    ("id just over the limit", json.dumps(_label(sample_id="m" * (MAX_ID_LENGTH + 1))).encode(), "sample_id"),
    (
        "record index beyond a 32-bit integer",
        json.dumps(_label(request_id="r", record_index=2**40)).encode(),
        "record_index",
    ),
    ("labelled_at overflows", json.dumps(_label(labelled_at="0001-01-01T00:00:00+01:00")).encode(), "labelled_at"),
    ("labelled_at is a number", json.dumps(_label(labelled_at=1e300)).encode(), "labelled_at"),
    ("labelled_at in the future", json.dumps(_label(labelled_at="2999-01-01T00:00:00Z")).encode(), "labelled_at"),
    ("label not a class", json.dumps(_label(label="maybe")).encode(), "label"),
    ("label event id with NUL", json.dumps(_label(label_event_id="e\x00")).encode(), "label_event_id"),
    ("NaN record index", json.dumps(_label(request_id="r", record_index=float("nan"))).encode(), "record_index"),
    (
        "deeply nested",
        json.dumps(_label(label=1)).encode().replace(b'"label": 1', b'"label": ' + _nested(NESTED).encode()),
        "value",
    ),
    ("oversized", json.dumps(_label(label="1" * 20_000)).encode(), "value"),
    (
        "lone surrogate",
        json.dumps(_label(sample_id="x")).encode().replace(b'"sample_id": "x"', b'"sample_id": "\\ud800"'),
        "value",
    ),
    ("not JSON", b"{oops", "value"),
]


def _stored_labels(dsn: str) -> list[tuple[str | None, str | None, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select sample_id, request_id, label from prediction_labels where dataset = %s order by sample_id",
            (DATASET,),
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_every_poison_label_is_dead_lettered_and_the_next_label_is_stored(
    migrated_dsn: str, kafka_bootstrap: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topic = topic_name(DATASET, TopicKind.LABELS, prefix=prefix)
    good = _label(sample_id="mf-good")
    messages: list[tuple[bytes | None, bytes | None]] = [(KEY, value) for _, value, _ in LABEL_POISON]
    messages.append((KEY, json.dumps(good).encode()))
    _send(kafka_bootstrap, topic, messages)

    tick = ingest_labels_once(
        SPEC,
        migrated_dsn,
        {"bootstrap.servers": kafka_bootstrap},
        {},
        IngestionLimits(max_message_bytes=16_384),
        topic_prefix=prefix,
    )

    assert tick.cursor is not None, tick.skip_reason
    assert tick.stored == 1 and tick.dead_letters == len(LABEL_POISON), tick
    assert sum(tick.cursor.values()) == len(messages)
    assert _stored_labels(migrated_dsn) == [("mf-good", None, "1")]
    letters = read_dead_letters(kafka_bootstrap, prefix, len(LABEL_POISON))
    assert len(letters) == len(LABEL_POISON)
    for letter, (what, _, field_name) in zip(letters, LABEL_POISON, strict=True):
        assert letter.topic == topic, what
        assert letter.reason.startswith(f"{field_name}:"), (what, letter.reason)
    future = letters[[w for w, _, _ in LABEL_POISON].index("labelled_at in the future")]
    assert "clock skew" in future.reason


def test_a_label_replayed_at_another_offset_is_stored_once(migrated_dsn: str, kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topic = topic_name(DATASET, TopicKind.LABELS, prefix=prefix)
    kafka = {"bootstrap.servers": kafka_bootstrap}
    event = LabelEvent(
        dataset=DATASET, sample_id="mf-7", label="1", labelled_at=dt.datetime.now(dt.UTC), label_event_id="ev-7"
    )
    legacy = json.dumps(_label(sample_id="mf-8", label_event_id=...)).encode()  # no id: its content is its identity
    _send(kafka_bootstrap, topic, [(b"mf-7", event.model_dump_json().encode()), (b"mf-8", legacy)])
    first = ingest_labels_once(SPEC, migrated_dsn, kafka, {}, topic_prefix=prefix)
    assert first.stored == 2 and first.cursor is not None

    # A producer retry: the same label events again, at new offsets.
    _send(kafka_bootstrap, topic, [(b"mf-7", event.model_dump_json().encode()), (b"mf-8", legacy)])
    second = ingest_labels_once(SPEC, migrated_dsn, kafka, first.cursor, topic_prefix=prefix)
    assert second.stored == 0 and second.consumed == 2 and second.dead_letters == 0
    assert _stored_labels(migrated_dsn) == [("mf-7", None, "1"), ("mf-8", None, "1")]

    # A new label event for the same sample is a new label.
    newer = event.model_copy(update={"label": "0", "label_event_id": "ev-7b"})
    _send(kafka_bootstrap, topic, [(b"mf-7", newer.model_dump_json().encode())])
    third = ingest_labels_once(SPEC, migrated_dsn, kafka, second.cursor or {}, topic_prefix=prefix)
    assert third.stored == 1
    assert len(_stored_labels(migrated_dsn)) == 3


def test_a_row_the_database_refuses_is_returned_with_its_reason_and_the_others_are_stored(migrated_dsn: str) -> None:
    at = dt.datetime.now(dt.UTC)
    good = LabelEvent(dataset=DATASET, sample_id="mf-ok", label="1", labelled_at=at)
    # Built without validation: what a parser bug could let through.
    bad = LabelEvent.model_construct(
        dataset=DATASET, sample_id="mf-\x00", request_id=None, record_index=0, label="1", labelled_at=at
    )
    messages = [LabelMessage("t", 0, n, event, f"ev-{n}") for n, event in enumerate([good, bad, good])]

    result = store_labels(migrated_dsn, messages)

    assert result.stored == 2  # offsets 0 and 2: different label event ids, both stored
    assert [(m.offset, "NUL" in reason) for m, reason in result.refused] == [(1, True)]
    assert _stored_labels(migrated_dsn) == [("mf-ok", None, "1"), ("mf-ok", None, "1")]


def test_labelled_at_may_be_ahead_of_this_clock_by_the_configured_skew_only(monkeypatch: pytest.MonkeyPatch) -> None:
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    monkeypatch.setenv("RIVERBED_LABEL_CLOCK_SKEW_SECONDS", "90")
    get_settings.cache_clear()
    try:
        skew = dt.timedelta(seconds=get_settings().label_clock_skew_seconds)
    finally:
        get_settings.cache_clear()
    assert skew == dt.timedelta(seconds=90)

    def parse(labelled_at: dt.datetime) -> LabelEvent:
        value = json.dumps(_label(labelled_at=labelled_at.isoformat())).encode()
        return parse_label(SPEC, value, now=now, max_clock_skew=skew, max_message_bytes=10_000)

    assert parse(now + dt.timedelta(seconds=90)).labelled_at == now + dt.timedelta(seconds=90)
    assert parse(now - dt.timedelta(days=400)).labelled_at == now - dt.timedelta(days=400)  # late labels are fine
    with pytest.raises(LabelRefused, match=r"^labelled_at: .* clock skew of 90 s"):
        parse(now + dt.timedelta(seconds=91))
    naive = json.dumps(_label(labelled_at="2026-12-01T11:00:00")).encode()  # no offset: UTC
    event = parse_label(SPEC, naive, now=now, max_clock_skew=skew, max_message_bytes=10_000)
    assert event.labelled_at == dt.datetime(2026, 12, 1, 11, 0, tzinfo=dt.UTC)
