"""The versioned schema files, and the raw-message parser against a JSON Schema validator."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jsonschema
import pandas as pd
import pytest

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
from riverbed.events import DeadLetter, LabelEvent, PredictionEvent
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import records_for_window
from riverbed.specs import DatasetSpec, load_specs

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
