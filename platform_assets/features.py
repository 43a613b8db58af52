"""``features_<dataset>``: cleaned, typed model features per day, gated by blocking checks.

The checks (:data:`riverbed.ml.features.CHECK_NAMES`) are declared on the asset and evaluated in the same step:
a failing check blocks everything downstream. A range run featurises the whole range in one pass (per-call
overhead dominates small partitions), then splits by day.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from platform_assets.groups import FEATURES_GROUP
from platform_assets.stages import CODE_VERSION, PARTITIONS_AS_MAPPING, asset_key, by_partition
from riverbed.ml.features import CHECK_NAMES, EMPTY_PARTITION_MESSAGE, build_features, check_features
from riverbed.names import Stage
from riverbed.specs import DatasetSpec


def featurise_by_day(
    spec: DatasetSpec, keys: list[str], raw: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Features of the whole range, computed in one pass, and their split by partition key (an empty frame for a
    day without raw records)."""
    present = [key for key in keys if raw.get(key) is not None and len(raw[key])]
    combined = pd.concat([raw[key] for key in present], ignore_index=True) if present else pd.DataFrame()
    frame = build_features(spec, combined)
    bounds: dict[str, tuple[int, int]] = {}
    offset = 0
    for key in present:
        bounds[key] = (offset, offset + len(raw[key]))
        offset += len(raw[key])
    empty = frame.iloc[0:0]
    outputs = {
        key: frame.iloc[bounds[key][0] : bounds[key][1]].reset_index(drop=True) if key in bounds else empty
        for key in keys
    }
    return frame, outputs


@dataclass
class FeatureChecks:
    """Per check: the problems found (empty = passed) and the figures shown in the UI."""

    failures: dict[str, list[str]] = field(default_factory=lambda: {check: [] for check in CHECK_NAMES})
    details: dict[str, dict[str, object]] = field(default_factory=lambda: {check: {} for check in CHECK_NAMES})

    def results(self) -> Iterator[dg.AssetCheckResult]:
        for check in CHECK_NAMES:
            problems = self.failures[check]
            yield dg.AssetCheckResult(
                check_name=check,
                passed=not problems,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(problems[:10]) if problems else "passed",
                metadata={"failing_partitions": len(problems), "details": dg.MetadataValue.json(self.details[check])},
            )


def evaluate_feature_checks(spec: DatasetSpec, frame: pd.DataFrame, outputs: dict[str, pd.DataFrame]) -> FeatureChecks:
    """The checks over the whole range's ``frame`` at once, except ``non_empty``, judged per partition."""
    checks = FeatureChecks()
    for result in check_features(spec, frame):
        if result.name == "non_empty":
            continue
        checks.details[result.name] = result.metadata
        if not result.passed:
            checks.failures[result.name].append(result.message)
    for key, output in outputs.items():
        rows = len(output)
        checks.details["non_empty"][key] = rows
        if not rows:
            checks.failures["non_empty"].append(f"{key}: {EMPTY_PARTITION_MESSAGE}")
    return checks


def build_features_asset(spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    name = spec.name
    key = asset_key(Stage.FEATURES, name)

    @dg.asset(
        key=key,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=FEATURES_GROUP,
        code_version=CODE_VERSION,
        kinds={"parquet", "lakefs"},
        ins={"raw": dg.AssetIn(asset_key(Stage.RAW, name), metadata=PARTITIONS_AS_MAPPING)},
        check_specs=[dg.AssetCheckSpec(check, asset=key, blocking=True) for check in CHECK_NAMES],
        description=f"Cleaned, typed model features of {name} per day, gated by blocking checks.",
        metadata={"dataset": name},
    )
    def features(
        context: dg.AssetExecutionContext, raw: dict[str, pd.DataFrame]
    ) -> Iterator[dg.Output[object] | dg.AssetCheckResult]:
        started = time.perf_counter()
        frame, outputs = featurise_by_day(spec, list(context.partition_keys), raw)
        checks = evaluate_feature_checks(spec, frame, outputs)
        yield dg.Output(
            by_partition(context, outputs),
            metadata={
                "rows": sum(len(df) for df in outputs.values()),
                "partitions": len(outputs),
                "compute_seconds": round(time.perf_counter() - started, 4),
            },
        )
        yield from checks.results()

    return features
