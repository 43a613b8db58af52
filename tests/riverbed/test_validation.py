"""Record validation: each broken rule is a reason; valid records come out typed; nothing is dropped."""

import pandas as pd
import pytest

from platform_assets.transforms import build_features, check_features, split_train_test
from riverbed.settings import PROJECT_ROOT
from riverbed.specs import load_specs
from riverbed.validation import REASONS_COLUMN, SchemaError, validate_records


@pytest.fixture(scope="module")
def spec():
    return load_specs([PROJECT_ROOT / "datasets"])["machine_failure"]


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
    ("column", "value", "reason"),
    [
        ("torque_nm", 150.0, "torque_nm: 150 is above the maximum 100"),
        ("tool_wear_min", -1, "tool_wear_min: -1 is below the minimum 0"),
        ("tool_wear_min", 1.5, "tool_wear_min: 1.5 is not an integer"),
        ("air_temperature_k", "hot", "air_temperature_k: 'hot' is not a number"),
        ("machine_type", "Z", "machine_type: 'Z' is not one of [L, M, H]"),
        ("machine_type", None, "machine_type: missing (the feature is not nullable)"),
        ("machine_failure", "maybe", "machine_failure: 'maybe' is not one of [0, 1]"),
        ("event_time", "not a time", "event_time: 'not a time' is not a timestamp"),
        ("record_id", None, "record_id: missing"),
    ],
)
def test_each_broken_rule_is_a_reason(spec, column: str, value: object, reason: str) -> None:
    records = _good().astype("object")
    records.loc[1, column] = value
    result = validate_records(spec, records)
    assert len(result.valid) == 3 and len(result.rejected) == 1
    assert reason in result.rejected.loc[0, REASONS_COLUMN]
    assert sum(result.reason_counts.values()) >= 1


def test_duplicates_keep_the_first_and_every_reason_is_listed(spec) -> None:
    records = _good().astype("object")
    records.loc[2, "record_id"] = "r0"
    records.loc[2, "torque_nm"] = 500
    result = validate_records(spec, records)
    reasons = result.rejected.loc[0, REASONS_COLUMN]
    assert "duplicates an earlier record" in reasons and "above the maximum" in reasons
    assert list(result.valid["record_id"]) == ["r0", "r1", "r3"]
    assert len(result.valid) + len(result.rejected) == len(records)


def test_valid_records_are_typed(spec) -> None:
    valid = validate_records(spec, _good()).valid
    assert list(valid["machine_type"].cat.categories) == ["L", "M", "H"]
    assert str(valid["tool_wear_min"].dtype) == "Int64"
    assert str(valid["event_time"].dtype) == "datetime64[ns, UTC]"


def test_a_missing_column_is_a_schema_error(spec) -> None:
    with pytest.raises(SchemaError, match="torque_nm"):
        validate_records(spec, _good().drop(columns=["torque_nm"]))


def test_features_pass_their_checks_and_an_empty_partition_fails_plainly(spec) -> None:
    features = build_features(spec, validate_records(spec, _good()).valid)
    assert all(r.passed for r in check_features(spec, features))
    assert features["machine_failure"].tolist() == [0, 1, 0, 0]
    empty = build_features(spec, pd.DataFrame())
    verdicts = {r.name: r for r in check_features(spec, empty)}
    assert not verdicts["non_empty"].passed
    assert "no records" in verdicts["non_empty"].message
    assert verdicts["schema"].passed


def test_checks_catch_out_of_domain_values_and_nulls(spec) -> None:
    features = build_features(spec, validate_records(spec, _good()).valid)
    features.loc[0, "torque_nm"] = 999.0
    features.loc[1, "air_temperature_k"] = float("nan")
    verdicts = {r.name: r for r in check_features(spec, features)}
    assert not verdicts["ranges_and_categories"].passed and "torque_nm" in verdicts["ranges_and_categories"].message
    assert not verdicts["nulls"].passed and "air_temperature_k" in verdicts["nulls"].message


def test_split_is_seeded_and_stratified(spec) -> None:
    frame = pd.concat([_good()] * 50, ignore_index=True)
    frame["record_id"] = [f"r{i}" for i in range(len(frame))]
    features = build_features(spec, validate_records(spec, frame).valid)
    _train_a, test_a = split_train_test(spec, features, 0.2, seed=1)
    _train_b, test_b = split_train_test(spec, features, 0.2, seed=1)
    assert test_a["record_id"].tolist() == test_b["record_id"].tolist()
    assert len(test_a) == 40
    assert test_a["machine_failure"].mean() == pytest.approx(features["machine_failure"].mean(), abs=0.03)
