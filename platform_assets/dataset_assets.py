"""The asset graph of one dataset, built from its spec by one factory.

``raw_<dataset>`` (daily partitions) -> ``features_<dataset>`` (+ blocking checks) ->
``training_set_<dataset>`` (window of partitions, frozen holdout) -> ``model_<dataset>`` (MLflow run +
registered version; blocking gate ``beats_champion``) -> ``deployment_<dataset>`` (champion alias +
MLServer). Asset bodies stay thin: the work is in plain functions (``riverbed.sources``,
``riverbed.validation``, ``riverbed.ml.features``, ``platform_assets.training``,
``platform_assets.deployment``).
"""

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from platform_assets.groups import FEATURES_GROUP, RAW_GROUP, TRAINING_GROUP
from resources.mlflow_resource import MlflowTrackingResource
from resources.versioned_io_manager import ATTR_COMMIT_ID, ATTR_URI, PARTITIONS_AS_MAPPING_KEY, TableBundle
from resources.versioned_store import VersionedStore
from riverbed.records import ModelRecord, TrainingReason, TrainingSetSummary
from riverbed.specs import DatasetSpec

PARTITIONS_AS_MAPPING = {PARTITIONS_AS_MAPPING_KEY: True}
CODE_VERSION = "1"
SPLIT_COLUMN = "split"
REASON_TAG = "riverbed/reason"


def raw_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"raw_{dataset}")


def features_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"features_{dataset}")


def training_set_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"training_set_{dataset}")


def model_asset_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(f"model_{dataset}")


def daily_partitions(spec: DatasetSpec) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=spec.event_time.first_partition_day.isoformat(), end_offset=1)


class TrainingSetConfig(dg.Config):
    """Which feature partitions to train on and how to split them (blank: the dataset spec's defaults)."""

    window_days: int | None = Field(default=None, ge=1, description="Number of most recent daily partitions.")
    window_end: str | None = Field(default=None, description="Last partition (YYYY-MM-DD) of the window.")
    test_fraction: float | None = Field(default=None, gt=0.0, lt=0.9)
    seed: int | None = None


class ModelTrainingConfig(dg.Config):
    """Tuning and training settings, editable in the launchpad (blank: the dataset spec's defaults)."""

    optuna_trials: int | None = Field(default=None, ge=1, le=500)
    seed: int | None = None
    primary_metric: str | None = Field(default=None, pattern="^(roc_auc|f1|accuracy|log_loss)$")
    max_estimators: int | None = Field(default=None, ge=10, le=5000)


@dataclass(frozen=True)
class DatasetDefinitions:
    assets: list[dg.AssetsDefinition]
    jobs: list[Any]
    asset_checks: list[dg.AssetChecksDefinition] = field(default_factory=list)


def _by_partition(context: dg.AssetExecutionContext, values: dict[str, object]) -> object:
    """A single-partition run returns its value; a range run returns the mapping."""
    if len(context.partition_keys) == 1:
        return values[context.partition_keys[0]]
    return values


def _raw_records_for_range(
    spec: DatasetSpec,
    partitions: dg.DailyPartitionsDefinition,
    keys: list[str],
    store: VersionedStore,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Records of the partition range sorted by event time: a day's landed Kafka records (read at main's current
    commit, latest offset per record id) where the landing zone has any, else the dataset's source."""
    from resources import landing_zone
    from riverbed.sources import records_for_window

    commit = landing_zone.main_commit(store)
    landed_paths = landing_zone.landed_days(store, commit, spec.name)
    landed_keys = [key for key in keys if key in landed_paths]
    if not landed_keys:
        first = partitions.time_window_for_partition_key(keys[0])
        last = partitions.time_window_for_partition_key(keys[-1])
        return records_for_window(spec, first.start, last.end), {}  # sorted by event time
    frames = []
    for key in keys:
        if key in landed_paths:
            frames.append(landing_zone.read_landed(store, commit, landed_paths[key], spec.record_id.name))
        else:
            window = partitions.time_window_for_partition_key(key)
            frames.append(records_for_window(spec, window.start, window.end))
    records = pd.concat(frames, ignore_index=True)
    times = pd.to_datetime(records[spec.event_time.name], utc=True, errors="coerce", format="ISO8601")
    records = records.iloc[np.argsort(times.to_numpy(), kind="stable")].reset_index(drop=True)
    metadata = {"landing_commit_id": commit, "landed_partitions": dg.MetadataValue.json(landed_keys)}
    return records, metadata


def build_dataset_definitions(spec: DatasetSpec) -> DatasetDefinitions:
    """Assets and jobs for one dataset spec."""
    name = spec.name
    partitions = daily_partitions(spec)
    feature_check_names = ["schema", "nulls", "ranges_and_categories", "non_empty"]

    @dg.asset(
        key=raw_asset_key(name),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=RAW_GROUP,
        code_version=CODE_VERSION,
        kinds={"parquet", "lakefs"},
        description=f"Validated raw records of {name} per day. Records breaking the spec are kept under "
        "`_rejected` with their reasons.",
        metadata={"dataset": name},
        # Landed Kafka records live in the IO manager's versioned store; a separate `data_store` parameter would
        # clash with callers that pass their own resources to `materialize` (only `io_manager` may overlap).
        required_resource_keys={"io_manager"},
    )
    def raw_records(context: dg.AssetExecutionContext) -> object:
        from riverbed.validation import validate_records

        started = time.perf_counter()
        # Validate the whole range at once (per-call overhead dominates small partitions), then split by day.
        store = context.resources.io_manager.data_store.get_store()  # the landing zone's store is the IO manager's
        records, landing = _raw_records_for_range(spec, partitions, list(context.partition_keys), store)
        if landing:
            context.add_output_metadata(landing)
        result = validate_records(spec, records)
        times = pd.to_datetime(records[spec.event_time.name], utc=True, errors="coerce")
        bundles: dict[str, object] = {}
        for key in context.partition_keys:
            window = partitions.time_window_for_partition_key(key)
            lo, hi = times.searchsorted(pd.Timestamp(window.start)), times.searchsorted(pd.Timestamp(window.end))
            v0, v1 = np.searchsorted(result.valid_positions, [lo, hi])
            r0, r1 = np.searchsorted(result.rejected_positions, [lo, hi])
            bundles[key] = TableBundle(
                primary=result.valid.iloc[v0:v1].reset_index(drop=True),
                companions={"rejected": result.rejected.iloc[r0:r1].reset_index(drop=True)},
            )
        valid_total, rejected_total, reasons = len(result.valid), len(result.rejected), result.reason_counts
        context.add_output_metadata(
            {
                "valid_records": valid_total,
                "rejected_records": rejected_total,
                "rejection_reasons": dg.MetadataValue.json(reasons),
                "partitions": len(context.partition_keys),
                "compute_seconds": round(time.perf_counter() - started, 4),
            }
        )
        return _by_partition(context, bundles)

    @dg.asset(
        key=features_asset_key(name),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=FEATURES_GROUP,
        code_version=CODE_VERSION,
        kinds={"parquet", "lakefs"},
        ins={"raw": dg.AssetIn(raw_asset_key(name), metadata=PARTITIONS_AS_MAPPING)},
        check_specs=[
            dg.AssetCheckSpec(check, asset=features_asset_key(name), blocking=True) for check in feature_check_names
        ],
        description=f"Cleaned, typed model features of {name} per day, gated by blocking checks.",
        metadata={"dataset": name},
    )
    def features(context: dg.AssetExecutionContext, raw: dict[str, pd.DataFrame]):
        from riverbed.ml.features import build_features, check_features

        started = time.perf_counter()
        # Featurise the range in one pass (per-call overhead dominates small partitions), then split by day.
        keys = list(context.partition_keys)
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
        failures: dict[str, list[str]] = {check: [] for check in feature_check_names}
        counts: dict[str, dict[str, object]] = {check: {} for check in feature_check_names}
        for result in check_features(spec, frame):
            if result.name == "non_empty":
                continue
            counts[result.name] = result.metadata
            if not result.passed:
                failures[result.name].append(result.message)
        for key in keys:
            rows = len(outputs[key])
            counts["non_empty"][key] = rows
            if not rows:
                failures["non_empty"].append(f"{key}: partition has no records: nothing was landed for this day")
        yield dg.Output(
            _by_partition(context, outputs),
            metadata={
                "rows": sum(len(df) for df in outputs.values()),
                "partitions": len(outputs),
                "compute_seconds": round(time.perf_counter() - started, 4),
            },
        )
        for check in feature_check_names:
            problems = failures[check]
            yield dg.AssetCheckResult(
                check_name=check,
                passed=not problems,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(problems[:10]) if problems else "passed",
                metadata={"failing_partitions": len(problems), "details": dg.MetadataValue.json(counts[check])},
            )

    @dg.asset(
        key=training_set_asset_key(name),
        group_name=TRAINING_GROUP,
        code_version=CODE_VERSION,
        kinds={"parquet", "lakefs"},
        ins={
            "features": dg.AssetIn(
                features_asset_key(name), partition_mapping=dg.AllPartitionMapping(), metadata=PARTITIONS_AS_MAPPING
            )
        },
        description=f"Train/test split of {name} over a window of feature partitions with a frozen holdout (a "
        "record's split depends on its id alone); records the commit id of every input partition.",
        metadata={"dataset": name},
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, features: dict[str, pd.DataFrame]
    ) -> pd.DataFrame:
        from riverbed.ml.features import split_train_test

        window_days = config.window_days or spec.training.window_days
        available = sorted(key for key, df in features.items() if len(df))
        if config.window_end:
            available = [key for key in available if key <= config.window_end]
        chosen = available[-window_days:]
        if not chosen:
            raise dg.Failure(
                description=f"no materialised, non-empty feature partitions of {name} in the window "
                f"(window_days={window_days}, window_end={config.window_end or 'latest'}); materialise "
                f"features_{name} first"
            )
        commits = {key: str(features[key].attrs.get(ATTR_COMMIT_ID, "")) for key in chosen}
        frame = pd.concat([features[key] for key in chosen], ignore_index=True)
        train, test = split_train_test(
            spec,
            frame,
            test_fraction=config.test_fraction or spec.training.test_fraction,
            seed=config.seed if config.seed is not None else spec.training.seed,
        )
        if train.empty or test.empty:
            raise dg.Failure(
                description=f"the window of {name} ({len(frame)} records) leaves an empty "
                f"{'training' if train.empty else 'test'} split; widen window_days or change test_fraction"
            )
        result = pd.concat([train.assign(**{SPLIT_COLUMN: "train"}), test.assign(**{SPLIT_COLUMN: "test"})])
        result = result.reset_index(drop=True)
        target = spec.target.name
        summary = TrainingSetSummary(
            dataset=name,
            partitions=chosen,
            partition_commit_ids=commits,
            train_rows=len(train),
            test_rows=len(test),
            positive_rate_train=float(train[target].mean()),
            positive_rate_test=float(test[target].mean()),
        )
        result.attrs["riverbed.training_set"] = summary.model_dump_json()
        context.add_output_metadata(
            {
                "partitions": dg.MetadataValue.json(chosen),
                "partition_commit_ids": dg.MetadataValue.json(commits),
                "train_rows": summary.train_rows,
                "test_rows": summary.test_rows,
                "positive_rate_train": summary.positive_rate_train,
                "positive_rate_test": summary.positive_rate_test,
            }
        )
        return result

    @dg.asset(
        key=model_asset_key(name),
        group_name=TRAINING_GROUP,
        code_version=CODE_VERSION,
        kinds={"xgboost", "mlflow"},
        ins={"training_set": dg.AssetIn(training_set_asset_key(name))},
        description=f"XGBoost classifier for {name} tuned by Optuna, tracked and registered in MLflow.",
        metadata={"dataset": name},
    )
    def model(
        context: dg.AssetExecutionContext,
        config: ModelTrainingConfig,
        training_set: pd.DataFrame,
        mlflow: MlflowTrackingResource,
    ) -> ModelRecord:
        from platform_assets.mlflow_logging import TrainingLineage, log_and_register
        from riverbed.ml.training import TrainingParams, evaluate, fairness_report, tune_and_train

        summary = TrainingSetSummary.model_validate_json(training_set.attrs["riverbed.training_set"])
        training_set_commit = str(training_set.attrs.get(ATTR_COMMIT_ID, ""))
        training_set_uri = str(training_set.attrs.get(ATTR_URI, ""))
        train = training_set[training_set[SPLIT_COLUMN] == "train"].drop(columns=[SPLIT_COLUMN])
        test = training_set[training_set[SPLIT_COLUMN] == "test"].drop(columns=[SPLIT_COLUMN])
        params = TrainingParams(
            optuna_trials=config.optuna_trials or spec.training.optuna_trials,
            seed=config.seed if config.seed is not None else spec.training.seed,
            primary_metric=config.primary_metric or spec.training.primary_metric,
            max_estimators=config.max_estimators or spec.training.max_estimators,
        )
        outcome = tune_and_train(spec, train, params)
        metrics = evaluate(spec, outcome.pipeline, test)
        fairness = fairness_report(spec, outcome.pipeline, test)
        reason = TrainingReason(context.run.tags.get(REASON_TAG, TrainingReason.MANUAL.value))
        lineage = TrainingLineage(
            training_data_uri=training_set_uri,
            test_data_uri=training_set_uri,
            data_commit_ids=[training_set_commit, *summary.partition_commit_ids.values()],
            dagster_run_id=context.run.run_id,
            partitions=summary.partitions,
        )
        experiment = mlflow.prepare(name)
        registered = log_and_register(
            spec,
            outcome,
            metrics,
            fairness,
            train,
            test,
            lineage=lineage,
            tracking_uri=mlflow.tracking_uri,
            registry_model_name=mlflow.registered_model_name(name),
            experiment_name=experiment,
            tags={"riverbed.reason": reason.value, "riverbed.training_set_commit": training_set_commit},
        )
        record = ModelRecord(
            dataset=name,
            registered_model_name=registered.name,
            version=registered.version,
            mlflow_run_id=registered.run_id,
            model_uri=registered.model_uri,
            training_set_commit_id=training_set_commit,
            training_set_uri=training_set_uri,
            data_commit_ids=summary.partition_commit_ids,
            dagster_run_id=context.run.run_id,
            reason=reason,
            metrics=metrics,
            fairness=fairness,
            trained_at=dt.datetime.now(dt.UTC),
        )
        context.add_output_metadata(
            {
                "registered_model": registered.name,
                "model_version": registered.version,
                "mlflow_run_id": registered.run_id,
                "model_uri": registered.model_uri,
                "reason": reason.value,
                **{f"metric_{k}": float(v) for k, v in metrics.items()},
                "fairness": dg.MetadataValue.json(json.loads(json.dumps(fairness, default=float))),
            }
        )
        return record

    from platform_assets.deployment import build_deployment_definitions

    gate_check, deployment = build_deployment_definitions(
        spec, model_asset_key(name), training_set_asset_key(name), SPLIT_COLUMN
    )
    selection_ingest = dg.AssetSelection.assets(raw_records, features)
    selection_train = dg.AssetSelection.assets(training_set, model, deployment)
    jobs = [
        dg.define_asset_job(
            f"ingest_{name}",
            selection=selection_ingest,
            partitions_def=partitions,
            description=f"Land and featurise {name} partitions (backfill ranges run as one run).",
        ),
        dg.define_asset_job(
            f"train_{name}", selection=selection_train, description=f"Build the training set and train {name}."
        ),
        dg.define_asset_job(
            f"full_{name}",
            selection=selection_ingest | selection_train,
            partitions_def=partitions,
            description=f"Ingest the selected {name} partitions, then rebuild the training set and retrain.",
        ),
    ]
    return DatasetDefinitions(
        assets=[raw_records, features, training_set, model, deployment], jobs=jobs, asset_checks=[gate_check]
    )
