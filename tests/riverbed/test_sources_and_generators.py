"""Sources in platform layout, and seeded generators with drift scenarios."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from riverbed.generators import DriftScenario, apply_drift, generate_machine_failure, generate_records
from riverbed.settings import PROJECT_ROOT
from riverbed.sources import load_source_records, records_for_window
from riverbed.specs import load_specs
from riverbed.validation import validate_records


@pytest.fixture(scope="module")
def specs():
    return load_specs([PROJECT_ROOT / "datasets"])


def test_salary_band_source_spreads_every_record_over_thirty_days(specs) -> None:
    spec = specs["salary_band"]
    records = load_source_records(spec)
    assert len(records) == 48_842
    assert records["record_id"].is_unique
    assert set(records["income_band"]) == {"<=50K", ">50K"}
    days = records["event_time"].dt.date
    assert days.nunique() == 30
    assert days.min() == dt.date(2026, 10, 1)
    one_day = records_for_window(spec, dt.datetime(2026, 10, 5, tzinfo=dt.UTC), dt.datetime(2026, 10, 6, tzinfo=dt.UTC))
    assert 1_500 < len(one_day) < 1_750


def test_machine_failure_generator_is_seeded_and_valid(specs) -> None:
    spec = specs["machine_failure"]
    first = generate_machine_failure(spec, 5_000, seed=3)
    again = generate_machine_failure(spec, 5_000, seed=3)
    other = generate_machine_failure(spec, 5_000, seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other)
    failure_rate = (first["machine_failure"] == "1").mean()
    assert 0.01 < failure_rate < 0.08
    result = validate_records(spec, first)
    assert len(result.rejected) == 0
    # Physics: torque and speed anti-correlate (constant power), as in AI4I 2020.
    assert np.corrcoef(first["torque_nm"], first["rotational_speed_rpm"])[0, 1] < -0.5


def test_numeric_drift_shifts_the_mean_only_after_its_start(specs) -> None:
    spec = specs["machine_failure"]
    records = generate_machine_failure(spec, 20_000, seed=1)
    start = dt.datetime(2026, 10, 16, tzinfo=dt.UTC)
    drifted = apply_drift(spec, records, DriftScenario(start=start, feature_shifts={"air_temperature_k": 1.0}))
    after = records["event_time"] >= pd.Timestamp(start)
    assert drifted.loc[~after, "air_temperature_k"].equals(records.loc[~after, "air_temperature_k"])
    shift = drifted.loc[after, "air_temperature_k"].mean() - records.loc[after, "air_temperature_k"].mean()
    assert shift > 0.5 * records["air_temperature_k"].std()


def test_category_drift_and_label_flip(specs) -> None:
    spec = specs["salary_band"]
    records = generate_records(spec, 20_000, seed=2)
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    drift = DriftScenario(
        start=start,
        feature_shifts={"workclass": 0.5},
        category_targets={"workclass": "Without-pay"},
        label_flip_feature="age",
        label_flip_probability=1.0,
    )
    drifted = apply_drift(spec, records, drift, seed=2)
    assert (drifted["workclass"] == "Without-pay").mean() > 0.4
    older = pd.to_numeric(records["age"]) > pd.to_numeric(records["age"]).median()
    before_rate = (records.loc[older, "income_band"] == ">50K").mean()
    after_rate = (drifted.loc[older, "income_band"] == ">50K").mean()
    assert after_rate == pytest.approx(1 - before_rate)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"feature_shifts": {"nope": 1.0}}, "drift.feature_shifts"),
        ({"label_flip_probability": 1.5}, "drift.label_flip_probability"),
        ({"feature_shifts": {"sex": 2.0}}, "drift.feature_shifts.sex"),
        ({"category_targets": {"sex": "Other"}}, "drift.category_targets"),
    ],
)
def test_bad_drift_scenarios_name_the_field(specs, kwargs: dict, field: str) -> None:
    spec = specs["salary_band"]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        DriftScenario(start=dt.datetime(2026, 10, 1, tzinfo=dt.UTC), **kwargs).validate(spec)
