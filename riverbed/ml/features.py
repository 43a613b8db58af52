"""Plain feature transforms and checks (no Dagster): cleaned model features per partition.

Features keep stable dtypes whatever the partition holds: record id ``string``, event time
``datetime64[ns, UTC]``, numeric and integer features ``float64`` (NaN for missing), category features
``category`` with exactly the spec's categories in spec order (NaN for missing), target ``int8``
(1 = positive class). Encoding itself is part of the model pipeline, so serving applies the same encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from riverbed.specs import DatasetSpec, FeatureSpec, FeatureType
from riverbed.validation import empty_valid_frame

CHECK_NAMES = ("schema", "nulls", "ranges_and_categories", "non_empty")
EMPTY_PARTITION_MESSAGE = "partition has no records: nothing was landed for this day"


@dataclass(frozen=True)
class FeatureCheckResult:
    """One check's verdict: a plain message and counts for the UI."""

    name: str
    passed: bool
    message: str
    metadata: dict[str, object] = field(default_factory=dict)


def feature_columns(spec: DatasetSpec) -> list[str]:
    """Feature table columns, in order."""
    return [spec.record_id.name, spec.event_time.name, *spec.feature_names, spec.target.name]


def expected_dtypes(spec: DatasetSpec) -> dict[str, str]:
    """Column -> dtype name of the feature table."""
    dtypes = {spec.record_id.name: "string", spec.event_time.name: "datetime64[ns, UTC]"}
    for feature in spec.features:
        dtypes[feature.name] = "category" if feature.type is FeatureType.CATEGORY else "float64"
    dtypes[spec.target.name] = "int8"
    return dtypes


def _as_categorical(column: pd.Series, categories: list[str]) -> pd.Categorical:
    """Values as a Categorical with exactly ``categories`` (anything else becomes NaN)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        if list(column.cat.categories) == categories:
            return column.array
        return column.cat.set_categories(categories).array
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    mapping = pd.Index(categories).get_indexer(pd.Index([str(u) for u in uniques], dtype=object))
    mapped = np.where(codes >= 0, mapping[np.maximum(codes, 0)] if len(mapping) else -1, -1)
    return pd.Categorical.from_codes(mapped, categories=categories)


def build_features(spec: DatasetSpec, valid_records: pd.DataFrame) -> pd.DataFrame:
    """Model-ready features from validated records (a frame without columns gives an empty, typed frame)."""
    records = valid_records if len(valid_records.columns) else empty_valid_frame(spec)
    out: dict[str, object] = {
        spec.record_id.name: records[spec.record_id.name].astype("string").array,
        spec.event_time.name: pd.to_datetime(records[spec.event_time.name], utc=True)
        .astype("datetime64[ns, UTC]")
        .array,
    }
    for feature in spec.features:
        column = records[feature.name]
        if feature.type is FeatureType.CATEGORY:
            out[feature.name] = _as_categorical(column, feature.categories or [])
        elif pd.api.types.is_numeric_dtype(column.dtype):
            out[feature.name] = column.to_numpy(dtype="float64", na_value=np.nan)
        else:
            out[feature.name] = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    target = _as_categorical(records[spec.target.name], spec.target.classes)
    positive = spec.target.classes.index(spec.target.positive_class)
    out[spec.target.name] = (target.codes == positive).astype(np.int8)
    return pd.DataFrame(out)


def _out_of_domain(feature: FeatureSpec, column: pd.Series) -> int:
    if feature.type is FeatureType.CATEGORY:
        allowed = set(feature.categories or [])
        if isinstance(column.dtype, pd.CategoricalDtype) and set(column.cat.categories) <= allowed:
            return 0  # a Categorical cannot hold values outside its categories
        return int((column.notna() & ~column.astype("object").isin(allowed)).sum())
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isinf(values)
    if feature.minimum is not None:
        bad |= values < feature.minimum
    if feature.maximum is not None:
        bad |= values > feature.maximum
    if feature.type is FeatureType.INTEGER:
        bad |= np.isfinite(values) & (np.floor(values) != values)
    return int(bad.sum())


def _schema_check(spec: DatasetSpec, features: pd.DataFrame) -> FeatureCheckResult:
    expected = expected_dtypes(spec)
    actual = {str(c): str(features[c].dtype) for c in features.columns}
    missing = [c for c in expected if c not in actual]
    extra = [c for c in actual if c not in expected]
    wrong = {c: f"{actual[c]} (expected {t})" for c, t in expected.items() if c in actual and actual[c] != t}
    for feature in spec.features:
        if feature.type is FeatureType.CATEGORY and actual.get(feature.name) == "category":
            found = list(features[feature.name].cat.categories)
            if found != feature.categories:
                wrong[feature.name] = f"categories {found} (expected {feature.categories})"
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if wrong:
        problems.append(f"wrong dtypes {wrong}")
    return FeatureCheckResult(
        "schema",
        not problems,
        "; ".join(problems) or "columns and dtypes match the spec",
        {"missing_columns": missing, "unexpected_columns": extra, "wrong_dtypes": wrong},
    )


def _nulls_check(spec: DatasetSpec, features: pd.DataFrame) -> FeatureCheckResult:
    required = [spec.record_id.name, spec.event_time.name, *(f.name for f in spec.features if not f.nullable)]
    required.append(spec.target.name)
    null_counts = {c: int(features[c].isna().sum()) for c in required if c in features.columns}
    null_counts = {c: n for c, n in null_counts.items() if n}
    message = (
        f"nulls in columns the spec says are not nullable: {null_counts}"
        if null_counts
        else "no nulls where the spec forbids them"
    )
    return FeatureCheckResult("nulls", not null_counts, message, {"null_counts": null_counts})


def _domain_check(spec: DatasetSpec, features: pd.DataFrame) -> FeatureCheckResult:
    out_of_domain = {f.name: _out_of_domain(f, features[f.name]) for f in spec.features if f.name in features}
    if spec.target.name in features.columns:
        target = features[spec.target.name]
        out_of_domain[spec.target.name] = int((target.notna() & ~target.isin([0, 1])).sum())
    out_of_domain = {c: n for c, n in out_of_domain.items() if n}
    message = (
        f"values outside the spec's ranges or categories: {out_of_domain}"
        if out_of_domain
        else "all values within ranges and categories"
    )
    return FeatureCheckResult("ranges_and_categories", not out_of_domain, message, {"out_of_domain": out_of_domain})


def check_features(spec: DatasetSpec, features: pd.DataFrame) -> list[FeatureCheckResult]:
    """Schema, nulls, ranges and categories, non-empty (in :data:`CHECK_NAMES` order): plain verdicts."""
    rows = len(features)
    return [
        _schema_check(spec, features),
        _nulls_check(spec, features),
        _domain_check(spec, features),
        FeatureCheckResult(
            "non_empty", rows > 0, f"{rows} records" if rows else EMPTY_PARTITION_MESSAGE, {"rows": rows}
        ),
    ]


def holdout_membership(record_ids: pd.Series, test_fraction: float, seed: int) -> np.ndarray:
    """True where a record belongs to the holdout: a hash of ``<seed>:<record id>`` below ``test_fraction``.

    Membership depends on the record id and the seed alone, so a record is in the holdout (or not) whatever
    window or batch it arrives in: a model is never scored on records an earlier or later model trained on.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: {test_fraction} must be strictly between 0 and 1")
    prefix = f"{seed}:".encode()
    unit = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(prefix + str(rid).encode(), digest_size=8).digest(), "big")
            for rid in record_ids.tolist()
        ),
        dtype=np.uint64,
        count=len(record_ids),
    ) / float(2**64)
    return unit < test_fraction


def split_train_test(
    spec: DatasetSpec, features: pd.DataFrame, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frozen holdout: a record is in the test split iff its id hashes (with the seed) below ``test_fraction``.

    Not stratified: stratifying would tie a record's membership to the other records of the window.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: {test_fraction} must be strictly between 0 and 1")
    if spec.record_id.name not in features.columns:
        raise ValueError(f"dataset {spec.name!r}: the features lack the record id column {spec.record_id.name!r}")
    in_test = holdout_membership(features[spec.record_id.name], test_fraction, seed)
    train, test = features[~in_test], features[in_test]
    return train.reset_index(drop=True), test.reset_index(drop=True)
