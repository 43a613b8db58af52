"""Seeded generators and drift scenarios."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from riverbed.generators import DriftScenario, apply_drift, generate_machine_failure, generate_records
from riverbed.settings import PROJECT_ROOT
from riverbed.specs import DatasetSpec, load_specs
from riverbed.validation import validate_records

UTC = dt.UTC
MID_WINDOW = dt.datetime(2026, 10, 16, tzinfo=UTC)


@pytest.fixture(scope="module")
def specs() -> dict[str, DatasetSpec]:
    return load_specs([PROJECT_ROOT / "datasets"])


@pytest.fixture(scope="module")
def machines(specs) -> pd.DataFrame:
    return generate_machine_failure(specs["machine_failure"], 20_000, seed=1)


def test_machine_failure_is_seeded_sorted_and_valid(specs, machines) -> None:
    spec = specs["machine_failure"]
    pd.testing.assert_frame_equal(machines, generate_machine_failure(spec, 20_000, seed=1))
    assert not machines.equals(generate_machine_failure(spec, 20_000, seed=2))
    assert list(machines.columns) == ["record_id", "event_time", *spec.feature_names, "machine_failure"]
    assert machines["record_id"].is_unique and machines["record_id"].iloc[0] == "mf-0"
    times = machines["event_time"]
    assert times.is_monotonic_increasing
    assert times.min() == pd.Timestamp("2026-10-01", tz="UTC") and times.max() < pd.Timestamp("2026-10-31", tz="UTC")
    assert set(machines["machine_failure"]) == {"0", "1"}
    result = validate_records(spec, machines)
    assert len(result.rejected) == 0, result.reason_counts


def test_machine_failure_follows_ai4i_physics(machines) -> None:
    assert 0.02 <= (machines["machine_failure"] == "1").mean() <= 0.05  # AI4I 2020: 3.4 %
    shares = machines["machine_type"].value_counts(normalize=True)
    assert shares["L"] == pytest.approx(0.5, abs=0.02) and shares["H"] == pytest.approx(0.2, abs=0.02)
    assert machines["air_temperature_k"].mean() == pytest.approx(300, abs=0.5)
    assert machines["air_temperature_k"].std() == pytest.approx(2, abs=0.3)
    difference = machines["process_temperature_k"] - machines["air_temperature_k"]
    assert difference.mean() == pytest.approx(10, abs=0.1) and difference.std() == pytest.approx(1, abs=0.1)
    speed = machines["rotational_speed_rpm"]
    assert 1_450 < speed.median() < 1_600 and speed.skew() > 0.5  # right-skewed around ~1500 rpm
    assert np.corrcoef(machines["torque_nm"], speed)[0, 1] < -0.7  # power ~ torque x speed
    # Tool wear grows 5/3/2 minutes per process for H/M/L and resets on replacement at 200-240 minutes.
    wear = machines["tool_wear_min"].to_numpy()
    steps = np.diff(wear)
    expected = machines["machine_type"].map({"H": 5, "M": 3, "L": 2}).to_numpy()[:-1]
    grew = steps > 0
    assert (steps[grew] == expected[grew]).all()
    assert (wear[:-1][~grew] >= 200).all() and wear.max() <= 245
    assert (wear[1:][~grew] == 0).all()


def test_failure_modes_fire_as_specified(machines) -> None:
    m = machines
    failed = m["machine_failure"] == "1"
    heat = ((m["process_temperature_k"] - m["air_temperature_k"]) < 8.6) & (m["rotational_speed_rpm"] < 1380)
    power = m["torque_nm"] * m["rotational_speed_rpm"] * 2 * np.pi / 60
    limit = m["machine_type"].map({"L": 11_000, "M": 12_000, "H": 13_000})
    strain = m["tool_wear_min"] * m["torque_nm"] > limit
    for mode in (heat, (power < 3_500) | (power > 9_000), strain):
        assert mode.any() and failed[mode].all()


def test_generate_records_resamples_any_file_backed_dataset(specs) -> None:
    spec = specs["salary_band"]
    records = generate_records(spec, 5_000, seed=4)
    pd.testing.assert_frame_equal(records, generate_records(spec, 5_000, seed=4))
    assert len(records) == 5_000 and records["record_id"].iloc[0] == "adult-g0" and records["record_id"].is_unique
    assert records["event_time"].is_monotonic_increasing
    assert records["event_time"].dt.date.nunique() == 30
    assert len(validate_records(spec, records).rejected) == 0
    with pytest.raises(ValueError, match=r"source\.kind"):
        generate_records(specs["machine_failure"], 10, seed=1)


def test_numeric_drift_shifts_the_mean_only_after_its_start(specs, machines) -> None:
    spec = specs["machine_failure"]
    drift = DriftScenario(start=MID_WINDOW, feature_shifts={"torque_nm": 1.0})
    drifted = apply_drift(spec, machines, drift, seed=1)
    after = machines["event_time"] >= pd.Timestamp(MID_WINDOW)
    assert drifted.loc[~after, "torque_nm"].equals(machines.loc[~after, "torque_nm"])
    shift = drifted.loc[after, "torque_nm"].mean() - machines.loc[after, "torque_nm"].mean()
    assert shift == pytest.approx(machines["torque_nm"].std(), rel=0.05)
    assert drifted["torque_nm"].max() <= 100  # clipped into the spec's range
    assert len(validate_records(spec, drifted).rejected) == 0
    # The generator applies the same scenario.
    generated = generate_machine_failure(spec, 20_000, seed=1, drift=drift)
    pd.testing.assert_frame_equal(generated, drifted)


def test_integer_drift_stays_integral_and_text_stays_text(specs) -> None:
    spec = specs["salary_band"]
    records = generate_records(spec, 2_000, seed=5)
    records.loc[1_990:1_991, "age"] = ["150", "abc"]  # invalid values stay invalid, for validation
    drifted = apply_drift(spec, records, DriftScenario(start=MID_WINDOW, feature_shifts={"age": -0.5}), seed=5)
    assert drifted.loc[1_990:1_991, "age"].tolist() == ["150", "abc"]
    records, drifted = records.drop(index=[1_990, 1_991]), drifted.drop(index=[1_990, 1_991])
    after = records["event_time"] >= pd.Timestamp(MID_WINDOW)
    before_mean = pd.to_numeric(records.loc[after, "age"]).mean()
    assert pd.to_numeric(drifted.loc[after, "age"]).mean() < before_mean - 5
    assert drifted.loc[~after, "age"].equals(records.loc[~after, "age"])
    assert len(validate_records(spec, drifted).rejected) == 0  # whole numbers, clipped at 17


def test_category_drift_moves_a_fraction_to_the_rarest_category(specs, machines) -> None:
    spec = specs["machine_failure"]
    drift = DriftScenario(start=MID_WINDOW, feature_shifts={"machine_type": 0.4})
    drifted = apply_drift(spec, machines, drift, seed=3)
    after = machines["event_time"] >= pd.Timestamp(MID_WINDOW)
    assert drifted.loc[~after, "machine_type"].equals(machines.loc[~after, "machine_type"])
    before = (machines.loc[after, "machine_type"] == "H").mean()  # H is the rarest type (20 %)
    assert (drifted.loc[after, "machine_type"] == "H").mean() == pytest.approx(before + 0.4 * (1 - before), abs=0.02)
    chosen = DriftScenario(
        start=MID_WINDOW, feature_shifts={"machine_type": 1.0}, category_targets={"machine_type": "M"}
    )
    assert (apply_drift(spec, machines, chosen).loc[after, "machine_type"] == "M").all()


def test_label_flip_changes_the_label_rate_of_the_chosen_group_only(specs, machines) -> None:
    spec = specs["machine_failure"]
    drift = DriftScenario(start=MID_WINDOW, label_flip_feature="torque_nm", label_flip_probability=0.3)
    drifted = apply_drift(spec, machines, drift, seed=1)
    after = (machines["event_time"] >= pd.Timestamp(MID_WINDOW)).to_numpy()
    high = (machines["torque_nm"] > machines["torque_nm"].median()).to_numpy()

    def rate(frame: pd.DataFrame, mask: np.ndarray) -> float:
        return float((frame.loc[mask, "machine_failure"] == "1").mean())

    assert rate(drifted, after & high) == pytest.approx(
        0.3 * (1 - rate(machines, after & high)) + 0.7 * rate(machines, after & high), abs=0.02
    )
    assert rate(drifted, after & high) > rate(machines, after & high) + 0.2
    for untouched in (after & ~high, ~after):
        assert drifted.loc[untouched, "machine_failure"].equals(machines.loc[untouched, "machine_failure"])
    category = DriftScenario(start=MID_WINDOW, label_flip_feature="machine_type", label_flip_probability=1.0)
    flipped = apply_drift(spec, machines, category)
    low = (machines["machine_type"] == "L").to_numpy() & after  # L is the most common type
    assert rate(flipped, low) == pytest.approx(1 - rate(machines, low))


def test_drift_is_a_pure_function(specs, machines) -> None:
    before = machines.copy()
    apply_drift(specs["machine_failure"], machines, DriftScenario(start=MID_WINDOW, feature_shifts={"torque_nm": 2}))
    pd.testing.assert_frame_equal(machines, before)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"feature_shifts": {"nope": 1.0}}, "drift.feature_shifts"),
        ({"feature_shifts": {"torque_nm": float("nan")}}, "drift.feature_shifts.torque_nm"),
        ({"feature_shifts": {"machine_type": 2.0}}, "drift.feature_shifts.machine_type"),
        (
            {"feature_shifts": {"machine_type": 0.5}, "category_targets": {"machine_type": "X"}},
            "drift.category_targets.machine_type",
        ),
        ({"category_targets": {"torque_nm": "X"}}, "drift.category_targets"),
        ({"category_targets": {"machine_type": "M"}}, "drift.category_targets"),
        ({"label_flip_feature": "nope", "label_flip_probability": 0.5}, "drift.label_flip_feature"),
        ({"label_flip_feature": "torque_nm", "label_flip_probability": 1.5}, "drift.label_flip_probability"),
        ({"label_flip_feature": "torque_nm", "label_flip_probability": -0.1}, "drift.label_flip_probability"),
        ({"label_flip_probability": 0.5}, "drift.label_flip_feature"),
    ],
)
def test_bad_drift_scenarios_name_the_field(specs, machines, kwargs: dict, field: str) -> None:
    spec = specs["machine_failure"]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        apply_drift(spec, machines.head(10), DriftScenario(start=MID_WINDOW, **kwargs))
