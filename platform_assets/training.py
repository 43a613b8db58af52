"""``training_set_<dataset>`` and ``model_<dataset>``: a frozen train/test split over a window of feature
partitions, and the XGBoost model tuned on it, logged and registered in MLflow.

Why a model was trained travels as the Dagster run tag :attr:`RunTag.REASON` (set by the retraining sensor and
schedule, the Kafka ingestion sensor and the CLI) and is copied onto the MLflow run as :attr:`MlflowTag.REASON`
(read back by ``riverbed models``): :func:`reason_from_run_tags` and :func:`mlflow_run_tags` are those two steps.
The model asset also catalogues the version (:mod:`platform_assets.catalog_records`): reason, run ids, data commits,
holdout metrics, fairness and the model card.
"""

import datetime as dt
import json
from collections.abc import Mapping

import dagster as dg
import pandas as pd
from pydantic import Field

from platform_assets.catalog_records import CatalogNotRecordedError, catalog_dsn, record_training
from platform_assets.groups import TRAINING_GROUP
from platform_assets.stages import CODE_VERSION, PARTITIONS_AS_MAPPING, asset_key
from resources.inference_log_resource import InferenceLogResource
from resources.mlflow_resource import MlflowTrackingResource
from resources.versioned_io_manager import ATTR_COMMIT_ID, ATTR_URI, parquet_to_dataframe, table_path
from resources.versioned_store import VersionedStore
from riverbed.ml.features import split_train_test
from riverbed.names import MlflowTag, RunTag, Stage
from riverbed.records import DataLineage, ModelRecord, TrainingReason, TrainingSetSummary
from riverbed.specs import DatasetSpec

SPLIT_COLUMN = "split"
SUMMARY_ATTR = "riverbed.training_set"  # DataFrame attrs key of the TrainingSetSummary (JSON)


class TrainingSetError(ValueError):
    """The window holds no usable data (nothing materialised, or a split would be empty)."""


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


# ------------------------------------------------------------------------------------------- reason tags
def reason_from_run_tags(tags: Mapping[str, str]) -> TrainingReason:
    """Why this Dagster run trains: its :attr:`RunTag.REASON` tag (``manual`` when untagged)."""
    return TrainingReason(tags.get(RunTag.REASON, TrainingReason.MANUAL.value))


def mlflow_run_tags(reason: TrainingReason, training_set_commit: str) -> dict[str, str]:
    """The Riverbed tags of a training's MLflow run: why it was trained and the training set's commit."""
    return {MlflowTag.REASON.value: reason.value, MlflowTag.TRAINING_SET_COMMIT.value: training_set_commit}


# ------------------------------------------------------------------------------------------ training set
def split_of(training_set: pd.DataFrame, which: str) -> pd.DataFrame:
    """The ``train`` or ``test`` rows of a training set, without the split column."""
    return training_set[training_set[SPLIT_COLUMN] == which].drop(columns=[SPLIT_COLUMN])


def holdout_of(training_set: pd.DataFrame) -> pd.DataFrame:
    """The frozen holdout (test split) of a training set, indexed from 0: what the gate and monitoring score."""
    return split_of(training_set, "test").reset_index(drop=True)


def read_training_set(store: VersionedStore, commit_id: str, dataset: str) -> pd.DataFrame:
    """A dataset's training set as it was at ``commit_id`` (a model's pinned training-set commit)."""
    return parquet_to_dataframe(store.get_object(commit_id, table_path(asset_key(Stage.TRAINING_SET, dataset), None)))


def build_training_set(
    spec: DatasetSpec, config: TrainingSetConfig, features: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, TrainingSetSummary]:
    """The newest ``window_days`` non-empty partitions (up to ``window_end``), split by record id."""
    name = spec.name
    window_days = config.window_days or spec.training.window_days
    available = sorted(key for key, df in features.items() if len(df))
    if config.window_end:
        available = [key for key in available if key <= config.window_end]
    chosen = available[-window_days:]
    if not chosen:
        raise TrainingSetError(
            f"no materialised, non-empty feature partitions of {name} in the window "
            f"(window_days={window_days}, window_end={config.window_end or 'latest'}); materialise "
            f"{asset_key(Stage.FEATURES, name).to_user_string()} first"
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
        raise TrainingSetError(
            f"the window of {name} ({len(frame)} records) leaves an empty "
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
    result.attrs[SUMMARY_ATTR] = summary.model_dump_json()
    return result, summary


def build_training_set_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=asset_key(Stage.TRAINING_SET, name),
        group_name=TRAINING_GROUP,
        code_version=CODE_VERSION,
        kinds={"parquet", "lakefs"},
        ins={
            "features": dg.AssetIn(
                asset_key(Stage.FEATURES, name),
                partition_mapping=dg.AllPartitionMapping(),
                metadata=PARTITIONS_AS_MAPPING,
            )
        },
        description=f"Train/test split of {name} over a window of feature partitions with a frozen holdout (a "
        "record's split depends on its id alone); records the commit id of every input partition.",
        metadata={"dataset": name},
    )
    def training_set(
        context: dg.AssetExecutionContext, config: TrainingSetConfig, features: dict[str, pd.DataFrame]
    ) -> pd.DataFrame:
        try:
            result, summary = build_training_set(spec, config, features)
        except TrainingSetError as error:
            raise dg.Failure(description=str(error)) from error
        context.add_output_metadata(
            {
                "partitions": dg.MetadataValue.json(summary.partitions),
                "partition_commit_ids": dg.MetadataValue.json(summary.partition_commit_ids),
                "train_rows": summary.train_rows,
                "test_rows": summary.test_rows,
                "positive_rate_train": summary.positive_rate_train,
                "positive_rate_test": summary.positive_rate_test,
            }
        )
        return result

    return training_set


# ----------------------------------------------------------------------------------------------- model
def train_and_register(
    spec: DatasetSpec,
    config: ModelTrainingConfig,
    training_set: pd.DataFrame,
    mlflow: MlflowTrackingResource,
    reason: TrainingReason,
    dagster_run_id: str,
) -> ModelRecord:
    """Tune and train on the train split, evaluate on the holdout, log one MLflow run and register the version."""
    return train_register_and_describe(spec, config, training_set, mlflow, reason, dagster_run_id)[0]


def train_register_and_describe(
    spec: DatasetSpec,
    config: ModelTrainingConfig,
    training_set: pd.DataFrame,
    mlflow: MlflowTrackingResource,
    reason: TrainingReason,
    dagster_run_id: str,
) -> tuple[ModelRecord, str]:
    """:func:`train_and_register`, and the version's model card (Markdown) as logged, for the model catalog."""
    # xgboost + scikit-learn (~1.8 s) and mlflow (seconds) load when a model is trained, not with the code location.
    from platform_assets.mlflow_logging import log_and_register
    from riverbed.ml.training import TrainingParams, evaluate, fairness_report, tune_and_train

    summary = TrainingSetSummary.model_validate_json(training_set.attrs[SUMMARY_ATTR])
    training_set_commit = str(training_set.attrs.get(ATTR_COMMIT_ID, ""))
    training_set_uri = str(training_set.attrs.get(ATTR_URI, ""))
    train, test = split_of(training_set, "train"), split_of(training_set, "test")
    params = TrainingParams(
        optuna_trials=config.optuna_trials or spec.training.optuna_trials,
        seed=config.seed if config.seed is not None else spec.training.seed,
        primary_metric=config.primary_metric or spec.training.primary_metric,
        max_estimators=config.max_estimators or spec.training.max_estimators,
    )
    outcome = tune_and_train(spec, train, params)
    metrics = evaluate(spec, outcome.pipeline, test)
    fairness = fairness_report(spec, outcome.pipeline, test)
    lineage = DataLineage(
        training_data_uri=training_set_uri,
        test_data_uri=training_set_uri,
        data_commit_ids=[training_set_commit, *summary.partition_commit_ids.values()],
        partitions=summary.partitions,
        train_rows=len(train),
        test_rows=len(test),
        dagster_run_id=dagster_run_id,
    )
    registered = log_and_register(
        spec,
        outcome,
        metrics,
        fairness,
        train,
        test,
        lineage=lineage,
        tracking_uri=mlflow.tracking_uri,
        registry_model_name=mlflow.registered_model_name(spec.name),
        experiment_name=mlflow.prepare(spec.name),
        tags=mlflow_run_tags(reason, training_set_commit),
    )
    record = ModelRecord(
        dataset=spec.name,
        registered_model_name=registered.name,
        version=registered.version,
        mlflow_run_id=registered.run_id,
        model_uri=registered.model_uri,
        training_set_commit_id=training_set_commit,
        training_set_uri=training_set_uri,
        data_commit_ids=summary.partition_commit_ids,
        dagster_run_id=dagster_run_id,
        artifact_sha256=registered.artifact_sha256,
        reason=reason,
        metrics=metrics,
        fairness=fairness,
        trained_at=dt.datetime.now(dt.UTC),
    )
    return record, registered.model_card_markdown


def build_model_asset(spec: DatasetSpec) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=asset_key(Stage.MODEL, name),
        group_name=TRAINING_GROUP,
        code_version=CODE_VERSION,
        kinds={"xgboost", "mlflow"},
        ins={"training_set": dg.AssetIn(asset_key(Stage.TRAINING_SET, name))},
        description=f"XGBoost classifier for {name} tuned by Optuna, tracked and registered in MLflow.",
        metadata={"dataset": name},
    )
    def model(
        context: dg.AssetExecutionContext,
        config: ModelTrainingConfig,
        training_set: pd.DataFrame,
        mlflow: MlflowTrackingResource,
        inference_log: InferenceLogResource,
    ) -> ModelRecord:
        reason = reason_from_run_tags(context.run.tags)
        record, card = train_register_and_describe(spec, config, training_set, mlflow, reason, context.run.run_id)
        try:
            # Best effort for an automatic dataset; a manual-approval one fails here (see catalog_records).
            record_training(spec, record, card, dsn=lambda: catalog_dsn(inference_log))
        except CatalogNotRecordedError as error:
            raise dg.Failure(description=str(error)) from error
        context.add_output_metadata(
            {
                "registered_model": record.registered_model_name,
                "model_version": record.version,
                "mlflow_run_id": record.mlflow_run_id,
                "model_uri": record.model_uri,
                "reason": reason.value,
                "artifact_sha256": dg.MetadataValue.json(record.artifact_sha256),
                **{f"metric_{k}": float(v) for k, v in record.metrics.items()},
                "fairness": dg.MetadataValue.json(json.loads(json.dumps(record.fairness, default=float))),
            }
        )
        return record

    return model
