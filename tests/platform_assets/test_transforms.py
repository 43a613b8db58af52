"""Feature transforms and checks (plain functions), and a third dataset that needs only a spec and a file."""

import datetime as dt
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from riverbed.generators import generate_machine_failure, generate_records
from riverbed.ml.features import (
    CHECK_NAMES,
    build_features,
    check_features,
    expected_dtypes,
    feature_columns,
    split_train_test,
)
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import load_source_records, records_for_window
from riverbed.specs import DatasetSpec, load_spec_file, load_specs
from riverbed.validation import validate_records


@pytest.fixture(scope="module")
def specs() -> dict[str, DatasetSpec]:
    return load_specs([PROJECT_ROOT / "datasets"])


@pytest.fixture(scope="module")
def machine_features(specs) -> pd.DataFrame:
    spec = specs["machine_failure"]
    return build_features(spec, validate_records(spec, generate_machine_failure(spec, 2_000, seed=1)).valid)


def _verdicts(spec: DatasetSpec, features: pd.DataFrame) -> dict[str, object]:
    results = check_features(spec, features)
    assert [r.name for r in results] == list(CHECK_NAMES)
    return {r.name: r for r in results}


def test_features_have_stable_dtypes_and_an_int8_target(specs, machine_features) -> None:
    spec = specs["machine_failure"]
    assert list(machine_features.columns) == feature_columns(spec)
    assert {c: str(t) for c, t in machine_features.dtypes.items()} == expected_dtypes(spec)
    assert str(machine_features["tool_wear_min"].dtype) == "float64"  # integer features become float64
    assert list(machine_features["machine_type"].cat.categories) == ["L", "M", "H"]
    assert set(machine_features["machine_failure"].unique()) == {0, 1}


def test_salary_band_features_keep_missing_categories_as_nan(specs) -> None:
    spec = specs["salary_band"]
    valid = validate_records(spec, load_source_records(spec).head(3_000)).valid
    features = build_features(spec, valid)
    assert features["occupation"].isna().sum() == valid["occupation"].isna().sum() > 0
    assert list(features["native_country"].cat.categories) == spec.feature("native_country").categories
    assert features["income_band"].mean() == pytest.approx((valid["income_band"] == ">50K").mean())
    assert all(r.passed for r in check_features(spec, features))


def test_good_features_pass_every_check(specs, machine_features) -> None:
    verdicts = _verdicts(specs["machine_failure"], machine_features)
    assert all(v.passed for v in verdicts.values())
    assert verdicts["non_empty"].metadata == {"rows": 2_000}


def test_an_empty_partition_fails_plainly_but_keeps_its_schema(specs) -> None:
    spec = specs["machine_failure"]
    for empty in (
        build_features(spec, pd.DataFrame()),
        build_features(spec, validate_records(spec, pd.DataFrame(columns=feature_columns(spec))).valid),
    ):
        verdicts = _verdicts(spec, empty)
        assert not verdicts["non_empty"].passed
        assert verdicts["non_empty"].message.startswith("partition has no records")
        assert verdicts["schema"].passed and verdicts["nulls"].passed and verdicts["ranges_and_categories"].passed


def test_checks_fail_with_plain_messages_and_counts(specs, machine_features) -> None:
    spec = specs["machine_failure"]
    bad = machine_features.copy()
    bad.loc[0:2, "torque_nm"] = 999.0
    bad.loc[5, "air_temperature_k"] = np.nan
    bad.loc[6, "tool_wear_min"] = 3.5
    verdicts = _verdicts(spec, bad)
    assert not verdicts["ranges_and_categories"].passed
    assert verdicts["ranges_and_categories"].metadata["out_of_domain"] == {"torque_nm": 3, "tool_wear_min": 1}
    assert "values outside the spec's ranges or categories" in verdicts["ranges_and_categories"].message
    assert not verdicts["nulls"].passed and verdicts["nulls"].metadata["null_counts"] == {"air_temperature_k": 1}
    assert "air_temperature_k" in verdicts["nulls"].message
    assert verdicts["schema"].passed

    wrong = machine_features.drop(columns=["torque_nm"]).assign(extra=1)
    wrong["machine_type"] = wrong["machine_type"].astype(str)
    schema = _verdicts(spec, wrong)["schema"]
    assert not schema.passed
    assert "missing columns ['torque_nm']" in schema.message and "unexpected columns ['extra']" in schema.message
    assert "machine_type" in schema.message

    reordered = machine_features.copy()
    reordered["machine_type"] = reordered["machine_type"].cat.reorder_categories(["H", "M", "L"])
    assert "categories ['H', 'M', 'L']" in _verdicts(spec, reordered)["schema"].message

    text = machine_features.copy()
    text["machine_type"] = text["machine_type"].astype(object)
    text.loc[0, "machine_type"] = "Z"
    domain = _verdicts(spec, text)["ranges_and_categories"]
    assert domain.metadata["out_of_domain"] == {"machine_type": 1}


def test_the_holdout_is_frozen_per_record_id(specs, machine_features) -> None:
    spec = specs["machine_failure"]
    train_a, test_a = split_train_test(spec, machine_features, 0.2, seed=1)
    _train_b, test_b = split_train_test(spec, machine_features, 0.2, seed=1)
    _train_c, test_c = split_train_test(spec, machine_features, 0.2, seed=2)
    assert test_a["record_id"].tolist() == test_b["record_id"].tolist() != test_c["record_id"].tolist()
    assert len(test_a) + len(train_a) == 2_000 and 330 <= len(test_a) <= 470  # ~20%, binomial spread
    assert set(train_a["record_id"]).isdisjoint(test_a["record_id"])
    assert 0 < test_a["machine_failure"].sum() < len(test_a)

    # Whatever window (or order) a record arrives in, its split stays the same.
    window = machine_features.iloc[500:1_300].sample(frac=1.0, random_state=5)
    _train_w, test_w = split_train_test(spec, window, 0.2, seed=1)
    assert set(test_w["record_id"]) == set(test_a["record_id"]) & set(window["record_id"])
    with pytest.raises(ValueError, match="test_fraction"):
        split_train_test(spec, machine_features, 1.5, seed=1)


def test_a_third_dataset_loads_validates_and_featurises_with_no_code_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lines = ["loan_id;amount;term;region;defaulted"]
    for i in range(300):
        term = rng.choice(["short", "long"])
        lines.append(
            f"L{i};{rng.uniform(100, 5000):.2f};{term};{rng.choice(['north', 'south', '-'])};{rng.choice(['N', 'Y'])}"
        )
    lines += ["L300;-5;short;north;N", "L301;100;medium;north;N", "L1;100;short;north;Y"]  # three bad records
    (tmp_path / "loans.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "loan_default.yaml").write_text(
        textwrap.dedent(
            """\
            name: loan_default
            description: Whether a small loan defaults (test dataset).
            source: {kind: csv, files: [loans.csv], delimiter: ";", na_values: ["-"]}
            record_id: {name: loan_id, source_column: loan_id}
            event_time: {name: booked_at, assign_start: 2026-09-01, assign_days: 3}
            target: {name: defaulted, classes: ["no", "yes"], positive_class: "yes", value_map: {N: "no", Y: "yes"}}
            protected_attributes: [region]
            features:
              - {name: amount, type: numeric, minimum: 0, maximum: 10000}
              - {name: term, type: category, categories: [short, long]}
              - {name: region, type: category, categories: [north, south], nullable: true}
            """
        )
    )
    spec = load_spec_file(tmp_path / "loan_default.yaml")
    records = load_source_records(spec)
    assert len(records) == 303 and list(records.columns) == [
        "loan_id",
        "booked_at",
        "amount",
        "term",
        "region",
        "defaulted",
    ]
    day_two = records_for_window(spec, dt.datetime(2026, 9, 2, tzinfo=dt.UTC), dt.datetime(2026, 9, 3, tzinfo=dt.UTC))
    assert len(day_two) == 101

    result = validate_records(spec, records)
    assert len(result.valid) == 300 and len(result.rejected) == 3
    assert result.reason_counts == {"amount: below minimum": 1, "term: unknown category": 1, "loan_id: duplicate": 1}
    features = build_features(spec, result.valid)
    assert list(features.columns) == ["loan_id", "booked_at", "amount", "term", "region", "defaulted"]
    assert str(features["defaulted"].dtype) == "int8" and features["region"].isna().any()
    assert all(r.passed for r in check_features(spec, features))
    train, test = split_train_test(spec, features, spec.training.test_fraction, spec.training.seed)
    assert len(train) + len(test) == 300

    resampled = generate_records(spec, 1_000, seed=1)
    assert resampled["loan_id"].iloc[0] == "loan_default-g0"
    assert len(validate_records(spec, resampled).valid) > 900
