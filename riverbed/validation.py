"""Validate records against their dataset spec: typed valid records, and rejected ones with every reason.

Rules: the record id is present and unique within the batch (the first occurrence wins, later ones are
rejected), the event time is a timestamp (ISO 8601 text or a datetime; naive means UTC), the target is
one of the classes, numeric features parse, are finite and lie within ``[minimum, maximum]``, integer
features are whole numbers, category features hold one of their categories, and only nullable features
may be missing (blank text counts as missing).

A batch that lacks a required column raises :class:`SchemaError` naming the column(s): that is a broken
feed, not a bad record, and rejecting every record would hide it. Otherwise every input row ends up either
in ``valid`` (typed per the spec, only the spec's columns) or in ``rejected`` (all original columns as
text plus ``rejection_reasons``). Checks are vectorised per column (distinct values are parsed once);
reason strings are built only for rejected rows.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from riverbed.specs import DatasetSpec, FeatureSpec, FeatureType

REASONS_COLUMN = "rejection_reasons"
_INT64_LIMIT = 2.0**63


class SchemaError(ValueError):
    """Records lack a column the spec requires (raised instead of rejecting every record)."""


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_records`.

    ``valid_positions`` / ``rejected_positions`` are the input row positions of each output row, so a
    caller can split both frames by ranges of the (sorted) input.
    """

    valid: pd.DataFrame
    rejected: pd.DataFrame
    reason_counts: dict[str, int] = field(default_factory=dict)
    valid_positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    rejected_positions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def required_columns(spec: DatasetSpec) -> list[str]:
    """The record columns every batch must have, in platform order."""
    return [spec.record_id.name, spec.event_time.name, *spec.feature_names, spec.target.name]


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < _INT64_LIMIT else f"{value:g}"


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _category_list(categories: list[str], limit: int = 8) -> str:
    shown = ", ".join(categories[:limit])
    return f"[{shown}{', ...' if len(categories) > limit else ''}]"


class _Reasons:
    """Collects, per rejected row position, the reasons in rule order; counts them by field and rule."""

    def __init__(self, size: int) -> None:
        self.bad = np.zeros(size, dtype=bool)
        self.by_row: dict[int, list[str]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, mask: np.ndarray, field_name: str, rule: str, message_for: Callable[[int], str]) -> None:
        positions = np.flatnonzero(mask)
        if not len(positions):
            return
        self.bad |= mask
        self.counts[f"{field_name}: {rule}"] += len(positions)
        for position in positions.tolist():
            self.by_row.setdefault(position, []).append(f"{field_name}: {message_for(position)}")


@dataclass
class _Distinct:
    """A column as codes into its distinct values (parsed once each); code -1 means missing or blank."""

    codes: np.ndarray
    values: list[object]


def _distinct(column: pd.Series) -> _Distinct:
    try:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
    except TypeError:  # unhashable values (lists, dicts from JSON) are compared by their text
        column = column.map(lambda v: v if isinstance(v, Hashable) else repr(v))
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
    values = [u.strip() if isinstance(u, str) else u for u in np.asarray(uniques, dtype=object).tolist()]
    blank = np.fromiter((v == "" for v in values), dtype=bool, count=len(values))
    if blank.any():
        codes = np.where((codes >= 0) & blank[np.maximum(codes, 0)], -1, codes)
    return _Distinct(codes=codes, values=values)


def _lookup(distinct: _Distinct, allowed: list[str]) -> np.ndarray:
    """Per row: index of its value in ``allowed``, -1 when missing, -2 when not allowed."""
    index = pd.Index(allowed).get_indexer(pd.Index([str(v) for v in distinct.values], dtype=object))
    index = np.where(index < 0, -2, index)
    return np.where(distinct.codes >= 0, index[np.maximum(distinct.codes, 0)] if len(index) else -2, -1)


def _check_category(feature: FeatureSpec, column: pd.Series, reasons: _Reasons) -> tuple[pd.Categorical, np.ndarray]:
    categories = feature.categories or []
    distinct = _distinct(column)
    codes = _lookup(distinct, categories)
    listed = _category_list(categories)
    reasons.add(
        codes == -2,
        feature.name,
        "unknown category",
        lambda i: f"{str(distinct.values[distinct.codes[i]])!r} is not one of {listed}",
    )
    typed = pd.Categorical.from_codes(np.where(codes < 0, -1, codes), categories=categories)
    return typed, codes == -1


def _parse_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Float values (NaN where missing or unparseable) and the missing mask."""
    if is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.isnan(values)
    distinct = _distinct(column)
    parsed = pd.to_numeric(pd.Series(distinct.values, dtype=object), errors="coerce")
    table = np.append(parsed.to_numpy(dtype="float64", na_value=np.nan), np.nan)
    return table[distinct.codes], distinct.codes == -1  # code -1 picks the trailing NaN


def _check_number(feature: FeatureSpec, column: pd.Series, reasons: _Reasons) -> tuple[object, np.ndarray]:
    values, missing = _parse_numbers(column)
    name = feature.name
    nan = np.isnan(values)
    reasons.add(~missing & nan, name, "not a number", lambda i: f"{_shown(column.iloc[i])} is not a number")
    infinite = np.isinf(values)
    reasons.add(infinite, name, "not finite", lambda i: f"{_shown(column.iloc[i])} is not a finite number")
    finite = ~nan & ~infinite
    bad = ~finite
    if feature.minimum is not None:
        low = finite & (values < feature.minimum)
        bad |= low
        lowest = _format_number(feature.minimum)
        reasons.add(low, name, "below minimum", lambda i: f"{_format_number(values[i])} is below the minimum {lowest}")
    if feature.maximum is not None:
        high = finite & (values > feature.maximum)
        bad |= high
        highest = _format_number(feature.maximum)
        reasons.add(
            high, name, "above maximum", lambda i: f"{_format_number(values[i])} is above the maximum {highest}"
        )
    if feature.type is not FeatureType.INTEGER:
        return values, missing
    fractional = finite & (np.floor(values) != values)
    reasons.add(fractional, name, "not an integer", lambda i: f"{_format_number(values[i])} is not an integer")
    huge = finite & (np.abs(values) >= _INT64_LIMIT)
    reasons.add(huge, name, "integer too large", lambda i: f"{values[i]:g} is too large for an integer")
    unusable = bad | fractional | huge
    whole = np.where(unusable, 0.0, values).astype(np.int64)
    return pd.arrays.IntegerArray(whole, unusable), missing


def _check_event_time(spec: DatasetSpec, column: pd.Series, reasons: _Reasons) -> pd.Series:
    name = spec.event_time.name
    if is_datetime64_any_dtype(column.dtype):
        times = column if getattr(column.dtype, "tz", None) else column.dt.tz_localize("UTC")
        times = times.dt.tz_convert("UTC")
        missing = times.isna().to_numpy()
    else:
        distinct = _distinct(column)
        missing = distinct.codes == -1
        # ISO 8601 text or datetime objects; numbers are not taken as epochs (their unit is ambiguous).
        uniques = pd.Series([v if isinstance(v, str | dt.date | np.datetime64) else None for v in distinct.values])
        parsed = pd.to_datetime(uniques.astype(object), utc=True, errors="coerce", format="ISO8601")
        parsed = pd.Series(pd.DatetimeIndex(parsed).append(pd.DatetimeIndex([pd.NaT], tz="UTC")))
        times = parsed.iloc[distinct.codes].reset_index(drop=True)  # code -1 picks the trailing NaT
        reasons.add(
            ~missing & times.isna().to_numpy(),
            name,
            "not a timestamp",
            lambda i: f"{_shown(column.iloc[i])} is not a timestamp",
        )
    reasons.add(missing, name, "missing", lambda _: "missing")
    try:
        return times.astype("datetime64[ns, UTC]").reset_index(drop=True)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        outside = ((times < low) | (times > high)).fillna(False).to_numpy(dtype=bool)
        reasons.add(
            outside,
            name,
            "out of range",
            lambda i: f"{_shown(column.iloc[i])} is outside the supported years 1678-2261",
        )
        return times.where(~outside).astype("datetime64[ns, UTC]").reset_index(drop=True)


def validate_records(spec: DatasetSpec, records: pd.DataFrame) -> ValidationResult:
    """Split ``records`` into typed valid records and rejected records with every reason.

    Raises :class:`SchemaError` naming the column(s) when a required column is absent. Valid dtypes:
    record id ``string``, event time ``datetime64[ns, UTC]``, numeric ``float64``, integer ``Int64``,
    category and target ``category`` with exactly the spec's categories / classes in spec order.
    """
    missing_columns = [c for c in required_columns(spec) if c not in records.columns]
    if missing_columns:
        raise SchemaError(f"{spec.name}: records lack required column(s) {missing_columns}")
    records = records.reset_index(drop=True)
    reasons = _Reasons(len(records))
    typed: dict[str, object] = {}

    # Record id: present and unique within the batch (the first occurrence wins).
    id_name = spec.record_id.name
    ids = records[id_name].astype("string")
    id_missing = (ids.str.strip().fillna("") == "").to_numpy(dtype=bool)
    reasons.add(id_missing, id_name, "missing", lambda _: "missing")
    duplicated = ids.duplicated(keep="first").to_numpy(dtype=bool) & ~id_missing
    reasons.add(duplicated, id_name, "duplicate", lambda i: f"{ids.iloc[i]!r} duplicates an earlier record")
    typed[id_name] = ids

    typed[spec.event_time.name] = _check_event_time(spec, records[spec.event_time.name], reasons)

    for feature in spec.features:
        column = records[feature.name]
        if feature.type is FeatureType.CATEGORY:
            typed[feature.name], is_null = _check_category(feature, column, reasons)
        else:
            typed[feature.name], is_null = _check_number(feature, column, reasons)
        if not feature.nullable:
            reasons.add(is_null, feature.name, "missing", lambda _: "missing (the feature is not nullable)")

    target_name = spec.target.name
    target = _distinct(records[target_name])
    target_codes = _lookup(target, spec.target.classes)
    reasons.add(target_codes == -1, target_name, "missing", lambda _: "missing")
    classes = _category_list(spec.target.classes)
    reasons.add(
        target_codes == -2,
        target_name,
        "unknown class",
        lambda i: f"{str(target.values[target.codes[i]])!r} is not one of {classes}",
    )
    typed[target_name] = pd.Categorical.from_codes(
        np.where(target_codes < 0, -1, target_codes), categories=spec.target.classes
    )

    frame = pd.DataFrame(typed)
    valid_positions = np.flatnonzero(~reasons.bad)
    rejected_positions = np.flatnonzero(reasons.bad)
    valid = frame.take(valid_positions).reset_index(drop=True)
    rejected = records.take(rejected_positions).astype("string").reset_index(drop=True)
    rejected[REASONS_COLUMN] = pd.array(
        ["; ".join(reasons.by_row[i]) for i in rejected_positions.tolist()], dtype="string"
    )
    return ValidationResult(
        valid=valid,
        rejected=rejected,
        reason_counts=dict(reasons.counts),
        valid_positions=valid_positions,
        rejected_positions=rejected_positions,
    )


def empty_valid_frame(spec: DatasetSpec) -> pd.DataFrame:
    """A zero-row frame with the valid records' columns and dtypes."""
    empty = pd.DataFrame({c: pd.Series(dtype="object") for c in required_columns(spec)})
    return validate_records(spec, empty).valid
