"""Seeded record generators with drift controls, for demos, tests and replay.

- :func:`generate_machine_failure`: AI4I-2020-style predictive maintenance records (Matzka 2020), with the
  data set's five failure modes derived from the physics.
- :func:`generate_records`: any file-backed dataset, by seeded bootstrap resampling of its source.
- :class:`DriftScenario` / :func:`apply_drift`: shift named features and change the label relationship
  from a given event time on; shared by both generators.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from riverbed.specs import DatasetSpec, FeatureType


@dataclass(frozen=True)
class DriftScenario:
    """A change in the data from ``start`` on.

    ``feature_shifts``: numeric feature -> shift in standard deviations (clipped to the spec's range);
    category feature -> fraction in [0, 1] of records whose value becomes ``category_targets[feature]``
    (default: the rarest category present). ``label_flip_feature`` / ``label_flip_probability``: for
    records in the group "above the median" (numeric) or "the most common category", flip the label with
    that probability, changing the label relationship.
    """

    start: dt.datetime
    feature_shifts: dict[str, float] = field(default_factory=dict)
    category_targets: dict[str, str] = field(default_factory=dict)
    label_flip_feature: str | None = None
    label_flip_probability: float = 0.0

    def validate(self, spec: DatasetSpec) -> None:
        names = set(spec.feature_names)
        unknown = sorted(set(self.feature_shifts) - names)
        if unknown:
            raise ValueError(f"drift.feature_shifts: {unknown} are not features of {spec.name}")
        for feature, target in self.category_targets.items():
            categories = spec.feature(feature).categories or []
            if target not in categories:
                raise ValueError(f"drift.category_targets: {target!r} is not a category of {feature!r}")
        for feature, shift in self.feature_shifts.items():
            if spec.feature(feature).type is FeatureType.CATEGORY and not 0.0 <= shift <= 1.0:
                raise ValueError(f"drift.feature_shifts.{feature}: a category shift is a fraction in [0, 1]")
        if self.label_flip_feature is not None and self.label_flip_feature not in names:
            raise ValueError(f"drift.label_flip_feature: {self.label_flip_feature!r} is not a feature of {spec.name}")
        if not 0.0 <= self.label_flip_probability <= 1.0:
            raise ValueError("drift.label_flip_probability: must be within [0, 1]")


def apply_drift(spec: DatasetSpec, records: pd.DataFrame, drift: DriftScenario, seed: int = 0) -> pd.DataFrame:
    """A copy of ``records`` with the scenario applied to records at or after ``drift.start``."""
    drift.validate(spec)
    rng = np.random.default_rng(seed)
    out = records.copy()
    start = pd.Timestamp(drift.start)
    start = start.tz_convert("UTC") if start.tzinfo else start.tz_localize("UTC")
    after = (pd.to_datetime(out[spec.event_time.name], utc=True) >= start).to_numpy()
    if not after.any():
        return out
    for name, shift in drift.feature_shifts.items():
        feature = spec.feature(name)
        if feature.type is FeatureType.CATEGORY:
            target = drift.category_targets.get(name)
            if target is None:
                counts = out[name].value_counts()
                target = str(counts.index[-1]) if len(counts) else (feature.categories or [""])[0]
            replace = after & (rng.random(len(out)) < shift)
            values = out[name].astype("object").to_numpy(copy=True)
            values[replace] = target
            out[name] = values
        else:
            values = pd.to_numeric(out[name], errors="coerce").astype("float64")
            std = float(values.std()) or 1.0
            shifted = values.to_numpy(copy=True)
            shifted[after] = shifted[after] + shift * std
            lo = feature.minimum if feature.minimum is not None else -np.inf
            hi = feature.maximum if feature.maximum is not None else np.inf
            shifted = np.clip(shifted, lo, hi)
            if feature.type is FeatureType.INTEGER:
                shifted = np.round(shifted)
            out[name] = shifted
    if drift.label_flip_feature and drift.label_flip_probability > 0:
        column = out[drift.label_flip_feature]
        if spec.feature(drift.label_flip_feature).type is FeatureType.CATEGORY:
            mode = column.mode()
            group = (column == (mode.iloc[0] if len(mode) else None)).fillna(False).to_numpy(dtype=bool)
        else:
            numeric = pd.to_numeric(column, errors="coerce")
            group = (numeric > numeric.median()).fillna(False).to_numpy(dtype=bool)
        flip = after & group & (rng.random(len(out)) < drift.label_flip_probability)
        positive = spec.target.positive_class
        negative = next(c for c in spec.target.classes if c != positive)
        labels = out[spec.target.name].astype("object").to_numpy(copy=True)
        labels[flip] = np.where(labels[flip] == positive, negative, positive)
        out[spec.target.name] = labels
    return out


def _event_times(spec: DatasetSpec, rows: int) -> pd.api.extensions.ExtensionArray:
    from riverbed.sources import assign_event_times

    return assign_event_times(spec, rows).array


def generate_machine_failure(
    spec: DatasetSpec, rows: int, seed: int, drift: DriftScenario | None = None
) -> pd.DataFrame:
    """AI4I-2020-style milling records with its five failure modes; target "1" when any mode fires."""
    rng = np.random.default_rng(seed)
    machine_type = rng.choice(np.array(["L", "M", "H"]), size=rows, p=[0.5, 0.3, 0.2])
    # Air temperature: a slow random walk around 300 K (sd ~2 K), process temperature ~10 K above it.
    walk = np.cumsum(rng.normal(0, 0.02, rows))
    walk = (walk - walk.mean()) / (walk.std() or 1.0) * 1.5
    air = np.clip(300.0 + walk + rng.normal(0, 0.5, rows), 295.0, 305.0)
    process = np.clip(air + 10.0 + rng.normal(0, 1.0, rows), 305.0, 315.0)
    # Torque ~ N(40, 10) Nm; speed follows from a noisy ~6.3 kW power level (so the two anti-correlate).
    torque = np.clip(rng.normal(40.0, 10.0, rows), 3.8, 76.6)
    power_level = rng.normal(6300.0, 900.0, rows)
    speed = np.clip(np.round(power_level / torque * 60 / (2 * np.pi)), 1168, 2886)
    # Tool wear: 5/3/2 minutes per process for H/M/L, tools replaced between 200 and 240 minutes.
    wear_step = np.select([machine_type == "H", machine_type == "M"], [5, 3], default=2)
    wear = np.zeros(rows, dtype=np.int64)
    replace_at = rng.integers(200, 241, size=rows)
    current = 0
    for i in range(rows):  # sequential by nature (a tool's life); ~0.3 s per million rows
        current += wear_step[i]
        if current > replace_at[i]:
            current = 0
        wear[i] = current
    wear = np.minimum(wear, 253)

    omega = speed * 2 * np.pi / 60
    power = torque * omega
    tool_wear_failure = (wear >= 200) & (wear <= 240) & (rng.random(rows) < 0.05)
    heat_dissipation = ((process - air) < 8.6) & (speed < 1380)
    power_failure = (power < 3500) | (power > 9000)
    limit = np.select([machine_type == "L", machine_type == "M"], [11000, 12000], default=13000)
    overstrain = wear * torque > limit
    random_failure = rng.random(rows) < 0.001
    failure = tool_wear_failure | heat_dissipation | power_failure | overstrain | random_failure

    records = pd.DataFrame(
        {
            spec.record_id.name: [f"{spec.record_id.assign_prefix}{i}" for i in range(rows)],
            spec.event_time.name: _event_times(spec, rows),
            "machine_type": machine_type,
            "air_temperature_k": np.round(air, 1),
            "process_temperature_k": np.round(process, 1),
            "rotational_speed_rpm": speed.astype(np.int64),
            "torque_nm": np.round(torque, 1),
            "tool_wear_min": wear,
            spec.target.name: np.where(failure, spec.target.positive_class, spec.target.classes[0]),
        }
    )
    records[spec.record_id.name] = records[spec.record_id.name].astype("string")
    return apply_drift(spec, records, drift, seed) if drift is not None else records


def generate_records(spec: DatasetSpec, rows: int, seed: int, drift: DriftScenario | None = None) -> pd.DataFrame:
    """Seeded bootstrap resample of a file-backed dataset, with fresh ids and event times over its window."""
    from riverbed.sources import assign_record_ids, load_source_records

    source = load_source_records(spec)
    rng = np.random.default_rng(seed)
    sample = source.iloc[rng.integers(0, len(source), size=rows)].reset_index(drop=True)
    sample[spec.record_id.name] = assign_record_ids(spec, rows, marker="g").to_numpy()
    sample[spec.event_time.name] = _event_times(spec, rows)
    return apply_drift(spec, sample, drift, seed) if drift is not None else sample
