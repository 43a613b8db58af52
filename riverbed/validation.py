"""Validate records against their dataset spec: typed valid records, and rejected ones with every reason.

Vectorised per column; reason strings are built only for rejected rows. Nothing is dropped silently:
every input row ends up either in ``valid`` or in ``rejected`` (with ``rejection_reasons``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from riverbed.specs import DatasetSpec, FeatureType

REASONS_COLUMN = "rejection_reasons"


class SchemaError(ValueError):
    """A batch lacks a column the spec requires (every record would be invalid)."""


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    rejected: pd.DataFrame
    reason_counts: dict[str, int] = field(default_factory=dict)
    valid_positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    rejected_positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _category_list(categories: list[str], limit: int = 8) -> str:
    shown = ", ".join(categories[:limit])
    return f"[{shown}{', ...' if len(categories) > limit else ''}]"


class _Reasons:
    """Collects (row position, field, rule, message) for rejected rows."""

    def __init__(self, size: int) -> None:
        self.bad = np.zeros(size, dtype=bool)
        self.by_row: dict[int, list[str]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, mask: np.ndarray, field_name: str, rule: str, message_for) -> None:
        positions = np.flatnonzero(mask)
        if not len(positions):
            return
        self.bad |= mask
        self.counts[f"{field_name}: {rule}"] += len(positions)
        for position in positions:
            self.by_row.setdefault(int(position), []).append(f"{field_name}: {message_for(int(position))}")


def _required_columns(spec: DatasetSpec) -> list[str]:
    return [spec.record_id.name, spec.event_time.name, *spec.feature_names, spec.target.name]


def empty_valid_frame(spec: DatasetSpec) -> pd.DataFrame:
    """A zero-row frame with the valid records' columns and dtypes."""
    return validate_records(spec, pd.DataFrame({c: pd.Series(dtype="object") for c in _required_columns(spec)})).valid


def validate_records(spec: DatasetSpec, records: pd.DataFrame) -> ValidationResult:
    """Split ``records`` into typed valid records and rejected records with their reasons."""
    missing = [c for c in _required_columns(spec) if c not in records.columns]
    if missing:
        raise SchemaError(f"{spec.name}: records lack required column(s) {missing}")
    records = records.reset_index(drop=True)
    size = len(records)
    reasons = _Reasons(size)
    typed: dict[str, object] = {}

    # Record id: present and unique within the batch (the first occurrence wins).
    ids = records[spec.record_id.name].astype("string")
    id_missing = ids.isna().to_numpy() | (ids.str.strip() == "").fillna(False).to_numpy()
    reasons.add(id_missing, spec.record_id.name, "missing", lambda _: "missing")
    duplicated = ids.duplicated(keep="first").to_numpy() & ~id_missing
    reasons.add(duplicated, spec.record_id.name, "duplicate", lambda i: f"{ids.iloc[i]!r} duplicates an earlier record")
    typed[spec.record_id.name] = ids

    # Event time: a timestamp (naive values are taken as UTC).
    raw_times = records[spec.event_time.name]
    times = pd.to_datetime(raw_times, utc=True, errors="coerce", format="mixed") if size else raw_times
    if not size:
        times = pd.Series(pd.DatetimeIndex([], tz="UTC"))
    reasons.add(
        times.isna().to_numpy(),
        spec.event_time.name,
        "not a timestamp",
        lambda i: f"{raw_times.iloc[i]!r} is not a timestamp",
    )
    typed[spec.event_time.name] = times.astype("datetime64[ns, UTC]")

    for feature in spec.features:
        column = records[feature.name]
        is_null = column.isna().to_numpy()
        if feature.type is FeatureType.CATEGORY:
            text = column.astype("string").str.strip()
            categories = feature.categories or []
            unknown = ~is_null & ~text.isin(categories).fillna(False).to_numpy()
            listed = _category_list(categories)
            reasons.add(
                unknown,
                feature.name,
                "unknown category",
                lambda i, t=text, c=listed: f"{t.iloc[i]!r} is not one of {c}",
            )
            typed[feature.name] = pd.Categorical(text.where(~unknown), categories=categories)
        else:
            numbers = pd.to_numeric(column, errors="coerce").astype("float64")
            not_numeric = ~is_null & numbers.isna().to_numpy()
            reasons.add(not_numeric, feature.name, "not a number", lambda i, c=column: f"{c.iloc[i]!r} is not a number")
            values = numbers.to_numpy()
            if feature.minimum is not None:
                low = values < feature.minimum
                reasons.add(
                    low,
                    feature.name,
                    "below minimum",
                    lambda i, v=values, m=feature.minimum: (
                        f"{_format_number(v[i])} is below the minimum {_format_number(m)}"
                    ),
                )
            if feature.maximum is not None:
                high = values > feature.maximum
                reasons.add(
                    high,
                    feature.name,
                    "above maximum",
                    lambda i, v=values, m=feature.maximum: (
                        f"{_format_number(v[i])} is above the maximum {_format_number(m)}"
                    ),
                )
            if feature.type is FeatureType.INTEGER:
                fractional = ~np.isnan(values) & (np.floor(values) != values)
                reasons.add(
                    fractional,
                    feature.name,
                    "not an integer",
                    lambda i, v=values: f"{_format_number(v[i])} is not an integer",
                )
                typed[feature.name] = numbers.round().astype("Int64")
            else:
                typed[feature.name] = numbers
        if not feature.nullable:
            reasons.add(is_null, feature.name, "missing", lambda _: "missing (the feature is not nullable)")

    target = records[spec.target.name].astype("string").str.strip()
    bad_target = ~target.isin(spec.target.classes).fillna(False).to_numpy()
    classes = _category_list(spec.target.classes)
    reasons.add(
        bad_target,
        spec.target.name,
        "unknown class",
        lambda i: "missing" if pd.isna(target.iloc[i]) else f"{target.iloc[i]!r} is not one of {classes}",
    )
    typed[spec.target.name] = pd.Categorical(target.where(~bad_target), categories=spec.target.classes)

    frame = pd.DataFrame(typed)
    good = ~reasons.bad
    valid = frame.loc[good].reset_index(drop=True)
    rejected = records.loc[reasons.bad].astype("string").reset_index(drop=True)
    rejected[REASONS_COLUMN] = pd.Series(
        ["; ".join(reasons.by_row[i]) for i in np.flatnonzero(reasons.bad)], dtype="string"
    )
    return ValidationResult(
        valid=valid,
        rejected=rejected,
        reason_counts=dict(reasons.counts),
        valid_positions=np.flatnonzero(good),
        rejected_positions=np.flatnonzero(reasons.bad),
    )
