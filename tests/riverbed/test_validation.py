"""Record validation: each broken rule is a reason; valid records come out typed; nothing is dropped."""

import numpy as np
import pandas as pd
import pytest

from riverbed.settings import PROJECT_ROOT
from riverbed.specs import DatasetSpec, load_specs
from riverbed.validation import REASONS_COLUMN, SchemaError, empty_valid_frame, validate_records


@pytest.fixture(scope="module")
def specs() -> dict[str, DatasetSpec]:
    return load_specs([PROJECT_ROOT / "datasets"])


@pytest.fixture(scope="module")
def spec(specs) -> DatasetSpec:
    return specs["machine_failure"]


def _good(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(n)],
            "event_time": pd.date_range("2026-10-01", periods=n, freq="h", tz="UTC"),
            "machine_type": ["L", "M", "H", "L"][:n],
            "air_temperature_k": [300.1] * n,
            "process_temperature_k": [310.2] * n,
            "rotational_speed_rpm": [1500] * n,
            "torque_nm": [40.0] * n,
            "tool_wear_min": [10] * n,
            "machine_failure": ["0", "1", "0", "0"][:n],
        }
    )


@pytest.mark.parametrize(
    ("column", "value", "reason", "count_key"),
    [
        ("torque_nm", 150.0, "torque_nm: 150 is above the maximum 100", "torque_nm: above maximum"),
        ("tool_wear_min", -1, "tool_wear_min: -1 is below the minimum 0", "tool_wear_min: below minimum"),
        ("tool_wear_min", 1.5, "tool_wear_min: 1.5 is not an integer", "tool_wear_min: not an integer"),
        ("air_temperature_k", "hot", "air_temperature_k: 'hot' is not a number", "air_temperature_k: not a number"),
        ("torque_nm", [1, 2], "torque_nm: [1, 2] is not a number", "torque_nm: not a number"),
        ("machine_type", {"a": 1}, "machine_type: \"{'a': 1}\" is not one of", "machine_type: unknown category"),
        ("torque_nm", float("inf"), "torque_nm: inf is not a finite number", "torque_nm: not finite"),
        ("machine_type", "Z", "machine_type: 'Z' is not one of [L, M, H]", "machine_type: unknown category"),
        ("machine_type", None, "machine_type: missing (the feature is not nullable)", "machine_type: missing"),
        ("torque_nm", "  ", "torque_nm: missing (the feature is not nullable)", "torque_nm: missing"),
        ("machine_failure", "maybe", "machine_failure: 'maybe' is not one of [0, 1]", "machine_failure: unknown class"),
        ("machine_failure", None, "machine_failure: missing", "machine_failure: missing"),
        ("event_time", "not a time", "event_time: 'not a time' is not a timestamp", "event_time: not a timestamp"),
        (
            "event_time",
            "9999-01-01",
            "event_time: '9999-01-01' is outside the supported years",
            "event_time: out of range",
        ),
        ("event_time", None, "event_time: missing", "event_time: missing"),
        ("record_id", None, "record_id: missing", "record_id: missing"),
    ],
)
def test_each_broken_rule_is_a_reason(spec, column: str, value: object, reason: str, count_key: str) -> None:
    records = _good().astype("object")
    records[column] = [value if i == 1 else v for i, v in enumerate(records[column])]
    result = validate_records(spec, records)
    assert len(result.valid) == 3 and len(result.rejected) == 1
    assert reason in result.rejected.loc[0, REASONS_COLUMN]
    assert result.reason_counts == {count_key: 1}
    shown = result.rejected.loc[0, column]  # the offending record, as text
    assert pd.isna(shown) if value is None else shown == str(value)
    assert list(result.valid_positions) == [0, 2, 3] and list(result.rejected_positions) == [1]


def test_every_broken_rule_of_a_record_is_listed_and_duplicates_keep_the_first(spec) -> None:
    records = _good().astype("object")
    records.loc[2, "record_id"] = "r0"
    records.loc[2, "torque_nm"] = 500
    records.loc[2, "machine_type"] = "X"
    result = validate_records(spec, records)
    assert result.rejected.loc[0, REASONS_COLUMN] == (
        "record_id: 'r0' duplicates an earlier record; machine_type: 'X' is not one of [L, M, H]; "
        "torque_nm: 500 is above the maximum 100"
    )
    assert list(result.valid["record_id"]) == ["r0", "r1", "r3"]
    assert len(result.valid) + len(result.rejected) == len(records)
    assert result.reason_counts == {
        "record_id: duplicate": 1,
        "machine_type: unknown category": 1,
        "torque_nm: above maximum": 1,
    }


def test_rejected_records_keep_every_original_column_as_text(spec) -> None:
    records = _good().assign(note=["a", "b", "c", "d"])
    records.loc[3, "torque_nm"] = -5.0
    rejected = validate_records(spec, records).rejected
    assert list(rejected.columns) == [*records.columns, REASONS_COLUMN]
    assert all(str(dtype) == "string" for dtype in rejected.dtypes)
    assert rejected.loc[0, "torque_nm"] == "-5.0" and rejected.loc[0, "note"] == "d"
    assert rejected.loc[0, "event_time"].startswith("2026-10-01 03:00:00")


def test_valid_records_are_typed_per_spec(spec) -> None:
    text = _good().astype(str)  # values as read from text: "300.1", "1500", ...
    text.loc[0, "tool_wear_min"] = " 12.0 "
    valid = validate_records(spec, text).valid
    assert list(valid.columns) == ["record_id", "event_time", *spec.feature_names, "machine_failure"]
    assert str(valid["record_id"].dtype) == "string"
    assert str(valid["event_time"].dtype) == "datetime64[ns, UTC]"
    assert valid["event_time"].iloc[1] == pd.Timestamp("2026-10-01 01:00", tz="UTC")
    assert str(valid["air_temperature_k"].dtype) == "float64"
    assert str(valid["tool_wear_min"].dtype) == "Int64" and valid["tool_wear_min"].tolist() == [12, 10, 10, 10]
    assert list(valid["machine_type"].cat.categories) == ["L", "M", "H"]
    assert list(valid["machine_failure"].cat.categories) == ["0", "1"]
    assert valid["machine_failure"].tolist() == ["0", "1", "0", "0"]


def test_nullable_features_may_be_missing(specs) -> None:
    spec = specs["salary_band"]
    from riverbed.sources import load_source_records

    records = load_source_records(spec).head(200)
    assert records["workclass"].isna().any()
    result = validate_records(spec, records)
    assert len(result.rejected) == 0
    assert result.valid["workclass"].isna().sum() == records["workclass"].isna().sum()


def test_naive_event_times_are_utc_and_ids_may_be_numbers(spec) -> None:
    records = _good()
    records["event_time"] = pd.date_range("2026-10-01", periods=4, freq="h")  # no time zone
    records["record_id"] = [10, 11, 12, 13]
    records["machine_failure"] = [0, 1, 0, 0]
    valid = validate_records(spec, records).valid
    assert valid["event_time"].iloc[0] == pd.Timestamp("2026-10-01", tz="UTC")
    assert valid["record_id"].tolist() == ["10", "11", "12", "13"]
    assert valid["machine_failure"].tolist() == ["0", "1", "0", "0"]


def test_a_missing_column_is_a_schema_error_naming_it(spec) -> None:
    with pytest.raises(SchemaError, match=r"machine_failure: records lack required column\(s\) \['torque_nm'\]"):
        validate_records(spec, _good().drop(columns=["torque_nm"]))


def test_an_empty_batch_gives_an_empty_typed_frame(spec) -> None:
    result = validate_records(spec, _good().iloc[0:0])
    assert len(result.valid) == 0 and len(result.rejected) == 0 and result.reason_counts == {}
    expected = empty_valid_frame(spec).dtypes
    pd.testing.assert_series_equal(result.valid.dtypes, expected)
    pd.testing.assert_series_equal(validate_records(spec, _good()).valid.dtypes, expected)


def test_large_batches_with_many_bad_values_are_split_exactly(spec) -> None:
    rng = np.random.default_rng(0)
    records = pd.concat([_good()] * 5_000, ignore_index=True)
    records["record_id"] = [f"r{i}" for i in range(len(records))]
    bad = rng.random(len(records)) < 0.1
    records["torque_nm"] = np.where(bad, 101.0, 40.0)
    result = validate_records(spec, records)
    assert len(result.rejected) == bad.sum()
    assert (result.rejected_positions == np.flatnonzero(bad)).all()
    assert result.reason_counts == {"torque_nm: above maximum": int(bad.sum())}
