"""The versioned schema files, and the raw-message parser against a JSON Schema validator."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jsonschema
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources import landing_zone
from resources.landing_zone import OFFSET_COLUMN, PARTITION_COLUMN
from riverbed.event_schemas import (
    SCHEMAS_DIR,
    RawMessageError,
    all_schemas,
    parse_raw_message,
    raw_message,
    raw_record_schema,
    schema_text,
    write_schemas,
)
from riverbed.events import MAX_ID_LENGTH, DeadLetter, LabelEvent, PredictionEvent
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import records_for_window
from riverbed.specs import DatasetSpec, load_specs
from sensors.kafka_ingestion import landing_batches

SPECS = load_specs([PROJECT_ROOT / "datasets"])


def test_schema_files_are_in_sync_with_the_specs_and_models() -> None:
    expected = all_schemas(SPECS)
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in SCHEMAS_DIR.glob("*.json")}
    assert set(on_disk) == set(expected), "run `riverbed kafka schemas` to rewrite schemas/"
    for name, schema in expected.items():
        assert on_disk[name] == schema_text(schema), f"schemas/{name} is stale: run `riverbed kafka schemas`"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_write_schemas_reports_only_changed_files(tmp_path) -> None:
    assert len(write_schemas(SPECS, tmp_path)) == len(all_schemas(SPECS))
    assert write_schemas(SPECS, tmp_path) == []
    (tmp_path / "label.v1.json").write_text("{}")
    assert [p.name for p in write_schemas(SPECS, tmp_path)] == ["label.v1.json"]


def _records(spec: DatasetSpec, rows: int = 50) -> list[dict[str, Any]]:
    start = dt.datetime.combine(spec.event_time.first_partition_day, dt.time(), dt.UTC)
    frame = records_for_window(spec, start, start + dt.timedelta(days=3))
    return frame.head(rows).to_dict("records")


@pytest.mark.parametrize("dataset", sorted(SPECS))
def test_encoded_records_are_valid_and_round_trip(dataset: str) -> None:
    spec = SPECS[dataset]
    validator = jsonschema.Draft202012Validator(raw_record_schema(spec))
    for row in _records(spec):
        value = raw_message(spec, row)
        validator.validate(json.loads(value))
        record = parse_raw_message(spec, value)
        assert record["sample_id"] == str(row[spec.record_id.name])
        expected_time = pd.Timestamp(row[spec.event_time.name]).tz_convert("UTC").floor("us")  # events carry µs
        assert pd.Timestamp(record["event_time"]) == expected_time
        for feature in spec.features:
            original = row[feature.name]
            if pd.isna(original):
                assert record[feature.name] is None
            elif feature.type == "category":
                assert record[feature.name] == original
            else:  # text files hold numbers as text
                assert record[feature.name] == pytest.approx(float(original))
        assert record[spec.target.name] == str(row[spec.target.name])


def _mutations(spec: DatasetSpec, good: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field the error must name, the broken document)."""
    numeric = next(f.name for f in spec.features if f.type in {"numeric", "integer"})
    category = next(f.name for f in spec.features if f.type == "category")
    integer = next((f.name for f in spec.features if f.type == "integer"), numeric)
    cases: list[tuple[str, Any]] = [
        ("value", [good]),
        ("value", "text"),
        ("sample_id", {**good, "sample_id": ""}),
        ("sample_id", {**good, "sample_id": 17}),
        ("event_time", {**good, "event_time": 1_700_000_000}),
        ("event_time", {**good, "event_time": "yesterday"}),
        (numeric, {**good, numeric: "lots"}),
        (numeric, {**good, numeric: True}),
        (category, {**good, category: 3}),
        (spec.target.name, {**good, spec.target.name: None}),
        (spec.target.name, {**good, spec.target.name: [1]}),
        ("surprise", {**good, "surprise": 1}),
    ]
    if integer != numeric:
        cases.append((integer, {**good, integer: 1.5}))
        cases.append((integer, {**good, integer: 2**63}))  # outside 64 bits
    cases += [
        ("sample_id", {**good, "sample_id": "x" * (MAX_ID_LENGTH + 1)}),
        ("sample_id", {**good, "sample_id": "a\x00b"}),
        ("sample_id", {**good, "sample_id": "a\nb"}),
        (category, {**good, category: "L\x00"}),
        (spec.target.name, {**good, spec.target.name: "1\x00"}),
    ]
    for name in [spec.features[0].name, "sample_id", "event_time", spec.target.name]:
        cases.append((name, {k: v for k, v in good.items() if k != name}))
    return cases


@pytest.mark.parametrize("dataset", sorted(SPECS))
def test_parser_refuses_what_the_schema_refuses_and_names_the_field(dataset: str) -> None:
    spec = SPECS[dataset]
    validator = jsonschema.Draft202012Validator(raw_record_schema(spec), format_checker=None)
    good = json.loads(raw_message(spec, _records(spec, 1)[0]))
    for field, document in _mutations(spec, good):
        value = json.dumps(document).encode()
        with pytest.raises(RawMessageError) as refused:
            parse_raw_message(spec, value)
        assert field in str(refused.value), (field, str(refused.value))
        if field not in {"event_time"}:  # "yesterday" is a string: format is an annotation in 2020-12
            assert not validator.is_valid(document), f"the schema accepts what the parser refuses: {field}"


def test_undecodable_values_are_refused_with_a_reason() -> None:
    spec = SPECS["machine_failure"]
    for value in (b"{not json", b"\xff\xfe\x00binary", b"", b"null"):
        with pytest.raises(RawMessageError, match="value:"):
            parse_raw_message(spec, value)


def test_naive_and_offset_event_times_mean_the_same_utc_instant() -> None:
    spec = SPECS["machine_failure"]
    good = json.loads(raw_message(spec, _records(spec, 1)[0]))
    naive = parse_raw_message(spec, json.dumps({**good, "event_time": "2026-10-03T10:00:00"}).encode())
    offset = parse_raw_message(spec, json.dumps({**good, "event_time": "2026-10-03T12:00:00+02:00"}).encode())
    assert naive["event_time"] == offset["event_time"] == "2026-10-03T10:00:00+00:00"


@pytest.mark.parametrize(
    "model, document",
    [
        (LabelEvent, {"dataset": "d", "sample_id": "s1", "label": "1", "labelled_at": "2026-10-03T10:00:00Z"}),
        (
            PredictionEvent,
            {
                "dataset": "d",
                "request_id": "r",
                "record_index": 0,
                "sample_id": None,
                "event_time": "2026-10-03T10:00:00Z",
                "model_name": "m",
                "model_version": 3,
                "label": "1",
                "probability": 0.7,
            },
        ),
    ],
)
def test_event_schema_files_accept_what_the_models_accept(model: Any, document: dict[str, Any]) -> None:
    name = {LabelEvent: "label.v1.json", PredictionEvent: "prediction.v1.json"}[model]
    schema = json.loads((SCHEMAS_DIR / name).read_text())
    model.model_validate(document)
    jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**document, "unexpected": 1}, schema)
    assert DeadLetter.model_json_schema()["additionalProperties"] is False


def test_event_times_outside_the_representable_years_are_refused_not_raised() -> None:
    spec = SPECS["machine_failure"]
    good = json.loads(raw_message(spec, _records(spec, 1)[0]))
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"):
        with pytest.raises(RawMessageError, match=r"event_time: .* outside the years 1 to 9999"):
            parse_raw_message(spec, json.dumps({**good, "event_time": moment}).encode())


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_the_parser_accepts_can_be_landed(data: st.DataObject) -> None:
    """Any field may hold any JSON value: the parser refuses it with a RawMessageError naming a field, or the
    record it returns goes through the landing code path (frame, parquet) without an error."""
    spec = SPECS["machine_failure"]
    good = json.loads(raw_message(spec, _records(spec, 1)[0]))
    fields = data.draw(st.lists(st.sampled_from(sorted(good)), max_size=3, unique=True))
    document = dict(good)
    for name in fields:
        document[name] = data.draw(_JSON_VALUES | st.just("2026-10-0" + str(data.draw(st.integers(1, 9))) + "T01:00Z"))
    value = json.dumps(document).encode()
    try:
        record = parse_raw_message(spec, value)
    except RawMessageError as error:
        assert str(error).split(":", 1)[0] in {*good, "value"} or ", " in str(error).split(":", 1)[0]
        return
    record[PARTITION_COLUMN], record[OFFSET_COLUMN] = 0, 0
    day = record["event_time"][:10]
    batches = landing_batches(spec, "t.raw", [record], [day], {0: 0}, {0: 1})
    assert len(batches) == 1 and len(landing_zone.landed_object_bytes(batches[0].records)) > 0
