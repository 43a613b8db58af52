"""Plain feature transforms and checks (no Dagster): cleaned model features per partition.

Features keep stable dtypes whatever the partition holds: numeric -> float64 (NaN for missing),
category -> Categorical with exactly the spec's categories, target -> int8 (1 = positive class).
Encoding itself is part of the model pipeline, so serving applies the very same encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from riverbed.specs import DatasetSpec, FeatureType
from riverbed.validation import empty_valid_frame


@dataclass(frozen=True)
class FeatureCheckResult:
    name: str
    passed: bool
    message: str
    metadata: dict[str, object] = field(default_factory=dict)


def feature_columns(spec: DatasetSpec) -> list[str]:
    return [spec.record_id.name, spec.event_time.name, *spec.feature_names, spec.target.name]


def expected_dtypes(spec: DatasetSpec) -> dict[str, str]:
    dtypes = {spec.record_id.name: "string", spec.event_time.name: "datetime64[ns, UTC]", spec.target.name: "int8"}
    for feature in spec.features:
        dtypes[feature.name] = "category" if feature.type is FeatureType.CATEGORY else "float64"
    return dtypes


def build_features(spec: DatasetSpec, valid_records: pd.DataFrame) -> pd.DataFrame:
    """Model-ready features from validated records (an empty frame gives an empty, typed frame)."""
    records = valid_records if len(valid_records.columns) else empty_valid_frame(spec)
    out = pd.DataFrame(
        {
            spec.record_id.name: records[spec.record_id.name].astype("string"),
            spec.event_time.name: pd.to_datetime(records[spec.event_time.name], utc=True).astype("datetime64[ns, UTC]"),
        }
    )
    for feature in spec.features:
        column = records[feature.name]
        if feature.type is FeatureType.CATEGORY:
            out[feature.name] = pd.Categorical(column.astype("object"), categories=feature.categories)
        else:
            out[feature.name] = pd.to_numeric(column, errors="coerce").astype("float64")
    target = records[spec.target.name].astype("object")
    out[spec.target.name] = (target == spec.target.positive_class).astype("int8")
    return out.reset_index(drop=True)


def check_features(spec: DatasetSpec, features: pd.DataFrame) -> list[FeatureCheckResult]:
    """Schema, nulls, ranges and categories, non-empty: each a plain verdict with counts."""
    results = []
    expected = expected_dtypes(spec)
    actual = {c: str(features[c].dtype) for c in features.columns}
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = {c: f"{actual[c]} (expected {t})" for c, t in expected.items() if c in actual and actual[c] != t}
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if wrong:
        problems.append(f"wrong dtypes {wrong}")
    results.append(
        FeatureCheckResult("schema", not problems, "; ".join(problems) or "columns and dtypes match the spec", {})
    )

    null_counts: dict[str, int] = {}
    for feature in spec.features:
        if not feature.nullable and feature.name in features:
            count = int(features[feature.name].isna().sum())
            if count:
                null_counts[feature.name] = count
    for name in (spec.record_id.name, spec.event_time.name, spec.target.name):
        if name in features and int(features[name].isna().sum()):
            null_counts[name] = int(features[name].isna().sum())
    results.append(
        FeatureCheckResult(
            "nulls",
            not null_counts,
            f"nulls in non-nullable columns: {null_counts}" if null_counts else "no nulls where the spec forbids them",
            {"null_counts": null_counts},
        )
    )

    out_of_domain: dict[str, int] = {}
    for feature in spec.features:
        if feature.name not in features:
            continue
        column = features[feature.name]
        if feature.type is FeatureType.CATEGORY:
            text = column.astype("object")
            bad = int((~text.isna() & ~text.isin(feature.categories or [])).sum())
        else:
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            bad = 0
            if feature.minimum is not None:
                bad += int(np.sum(values < feature.minimum))
            if feature.maximum is not None:
                bad += int(np.sum(values > feature.maximum))
        if bad:
            out_of_domain[feature.name] = bad
    results.append(
        FeatureCheckResult(
            "ranges_and_categories",
            not out_of_domain,
            f"values outside the spec: {out_of_domain}" if out_of_domain else "all values within ranges and categories",
            {"out_of_domain": out_of_domain},
        )
    )

    rows = len(features)
    results.append(
        FeatureCheckResult(
            "non_empty",
            rows > 0,
            f"{rows} records" if rows else "partition has no records: nothing was landed for this day",
            {"rows": rows},
        )
    )
    return results


def split_train_test(
    spec: DatasetSpec, features: pd.DataFrame, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split, stratified by the target when both classes have at least two records."""
    from sklearn.model_selection import train_test_split  # sklearn import costs seconds; only training needs it

    target = features[spec.target.name]
    counts = target.value_counts()
    stratify = target if len(counts) == 2 and counts.min() >= 2 else None
    train, test = train_test_split(features, test_size=test_fraction, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)
