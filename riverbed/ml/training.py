"""Build, tune (Optuna), fit and evaluate the XGBoost pipeline of a dataset, and report its fairness.

The pipeline is two steps, an encoder then the classifier (the serving runtime relies on that shape). The
encoder one-hot encodes category features with exactly the spec's categories (missing or unseen values
become all zeros) and passes numbers through with NaN left to XGBoost, so whoever loads the model applies
exactly the training encoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.compose import ColumnTransformer
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from xgboost import XGBClassifier

from riverbed.ml.model_inputs import ModelInputError, frame_model_inputs
from riverbed.specs import DatasetSpec

logger = logging.getLogger(__name__)

ENCODER_STEP = "encode"
MODEL_STEP = "classifier"
CATEGORY_BLOCK = "categories"
NUMBER_BLOCK = "numbers"
MISSING_GROUP = "missing"

PrimaryMetric = Literal["roc_auc", "f1", "accuracy", "log_loss"]


class TrainingDataError(ValueError):
    """A training or test frame cannot be used as given (missing columns, one class, no rows)."""


class TrainingParams(BaseModel):
    """How to tune and fit; every field can come from the spec's training defaults or the launchpad."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optuna_trials: int = Field(default=8, ge=1)
    seed: int = 42
    primary_metric: PrimaryMetric = "roc_auc"
    max_estimators: int = Field(default=200, ge=10)
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    n_jobs: int = Field(default=1, ge=1)


@dataclass
class TrainingOutcome:
    """The refitted pipeline and what the search found."""

    pipeline: Pipeline
    best_params: dict[str, Any]
    best_validation_score: float
    trials: int
    trial_table: list[dict[str, Any]] = field(default_factory=list)
    params: TrainingParams | None = None


def build_pipeline(spec: DatasetSpec, hyperparams: dict[str, Any], seed: int = 0, n_jobs: int = 1) -> Pipeline:
    """Encoder (one-hot categories with the spec's categories, numbers passed through) + XGBClassifier."""
    blocks: list[tuple[str, Any, list[str]]] = []
    if spec.categorical_features:
        encoder = OneHotEncoder(
            categories=[list(spec.feature(name).categories or []) for name in spec.categorical_features],
            handle_unknown="ignore",  # missing and unseen values encode as all zeros
            sparse_output=False,
            dtype=np.float32,
        )
        blocks.append((CATEGORY_BLOCK, encoder, spec.categorical_features))
    if spec.numeric_features:
        blocks.append((NUMBER_BLOCK, "passthrough", spec.numeric_features))
    transformer = ColumnTransformer(blocks, remainder="drop", verbose_feature_names_out=True)
    settings: dict[str, Any] = {
        "tree_method": "hist",
        "n_jobs": n_jobs,
        "random_state": seed,
        "eval_metric": "logloss",
        **hyperparams,
    }
    return Pipeline([(ENCODER_STEP, transformer), (MODEL_STEP, XGBClassifier(**settings))])


def model_inputs(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The pipeline's input columns in spec order (see :func:`riverbed.ml.model_inputs.frame_model_inputs`)."""
    try:
        return frame_model_inputs(frame, spec.feature_names, spec.numeric_features)
    except ModelInputError as error:
        raise TrainingDataError(f"dataset {spec.name!r}: {error}") from None


def encoded_feature_groups(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, list[int]]:
    """Input feature -> indices of its encoded columns (to sum SHAP contributions back per feature).

    Read from the fitted encoder's structure (block slices and per-feature category counts), not parsed
    from column names, so features whose names prefix each other cannot be confused.
    """
    transformer: ColumnTransformer = pipeline.named_steps[ENCODER_STEP]
    if not hasattr(transformer, "output_indices_"):
        raise ValueError("the pipeline is not fitted yet; fit it before asking for its feature groups")
    groups: dict[str, list[int]] = {name: [] for name in spec.feature_names}
    if spec.categorical_features:
        start = transformer.output_indices_[CATEGORY_BLOCK].start
        encoder: OneHotEncoder = transformer.named_transformers_[CATEGORY_BLOCK]
        for name, categories in zip(spec.categorical_features, encoder.categories_, strict=True):
            groups[name] = list(range(start, start + len(categories)))
            start += len(categories)
    if spec.numeric_features:
        start = transformer.output_indices_[NUMBER_BLOCK].start
        for offset, name in enumerate(spec.numeric_features):
            groups[name] = [start + offset]
    width = len(transformer.get_feature_names_out())
    covered = sorted(index for indices in groups.values() for index in indices)
    if covered != list(range(width)):
        raise ValueError(f"feature groups cover {len(covered)} of the encoder's {width} columns")
    return groups


def _labels(spec: DatasetSpec, frame: pd.DataFrame, role: str) -> np.ndarray:
    if frame.empty:
        raise TrainingDataError(f"dataset {spec.name!r}: the {role} frame has no rows")
    if spec.target.name not in frame.columns:
        raise TrainingDataError(f"dataset {spec.name!r}: the {role} frame lacks the target column {spec.target.name!r}")
    target = frame[spec.target.name]
    if target.isna().any() or not target.isin([0, 1]).all():
        raise TrainingDataError(
            f"dataset {spec.name!r}: target {spec.target.name!r} in the {role} frame must be 0/1 "
            f"(1 = {spec.target.positive_class!r}) with no missing values"
        )
    labels: np.ndarray = target.astype(int).to_numpy()  # pandas is untyped here (no pandas-stubs)
    return labels


def _score(metric: str, y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Higher is better for every metric (log loss is negated); a one-class split scores ROC AUC 0.5."""
    if metric == "roc_auc":
        return float(roc_auc_score(y_true, probabilities)) if len(np.unique(y_true)) == 2 else 0.5
    if metric == "log_loss":
        return -float(log_loss(y_true, probabilities, labels=[0, 1]))
    predictions = (probabilities >= 0.5).astype(int)
    if metric == "f1":
        return float(f1_score(y_true, predictions, zero_division=0))
    return float(accuracy_score(y_true, predictions))


def tune_and_train(spec: DatasetSpec, train: pd.DataFrame, params: TrainingParams) -> TrainingOutcome:
    """Optuna TPE search on a seeded stratified validation split of ``train``, then a refit on all of it."""
    import optuna  # ~0.4 s to import (RESULTS.md, "Import times"): only tuning needs it, not evaluation or the gate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = _labels(spec, train, "training")
    if len(np.unique(target)) < 2:
        raise TrainingDataError(
            f"dataset {spec.name!r}: the training frame holds one class only; a classifier needs both"
        )
    inputs = model_inputs(spec, train)
    stratify = target if np.bincount(target, minlength=2).min() >= 2 else None
    fit_x, val_x, fit_y, val_y = train_test_split(
        inputs, target, test_size=params.validation_fraction, random_state=params.seed, stratify=stratify
    )

    def objective(trial: optuna.Trial) -> float:
        hyperparams = {
            "n_estimators": trial.suggest_int("n_estimators", min(50, params.max_estimators), params.max_estimators),
            "max_depth": trial.suggest_int("max_depth", 2, 8),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "subsample": trial.suggest_float("subsample", 0.6, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.6, 1.0),
            "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 10.0, log=True),
            "reg_lambda": trial.suggest_float("reg_lambda", 0.1, 10.0, log=True),
        }
        pipeline = build_pipeline(spec, hyperparams, seed=params.seed, n_jobs=params.n_jobs)
        pipeline.fit(fit_x, fit_y)
        return _score(params.primary_metric, val_y, pipeline.predict_proba(val_x)[:, 1])

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=params.seed))
    study.optimize(objective, n_trials=params.optuna_trials)
    pipeline = build_pipeline(spec, study.best_params, seed=params.seed, n_jobs=params.n_jobs)
    pipeline.fit(inputs, target)
    table = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params} for t in study.trials]
    logger.info(
        "%s: best validation %s %.4f after %d trials", spec.name, params.primary_metric, study.best_value, len(table)
    )
    return TrainingOutcome(
        pipeline=pipeline,
        best_params=dict(study.best_params),
        best_validation_score=float(study.best_value),
        trials=len(study.trials),
        trial_table=table,
        params=params,
    )


def evaluate(spec: DatasetSpec, pipeline: Pipeline, test: pd.DataFrame) -> dict[str, float]:
    """Accuracy, F1, ROC AUC and log loss on the test split (positive class = 1, threshold 0.5).

    Also ``positive_rate`` (share predicted positive), ``prevalence`` (share actually positive) and
    ``n_test``. ROC AUC is NaN when the test split holds one class.
    """
    y_true = _labels(spec, test, "test")
    probabilities = pipeline.predict_proba(model_inputs(spec, test))[:, 1]
    predictions = (probabilities >= 0.5).astype(int)
    return {
        "accuracy": float(accuracy_score(y_true, predictions)),
        "f1": float(f1_score(y_true, predictions, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, probabilities)) if len(np.unique(y_true)) == 2 else float("nan"),
        "log_loss": float(log_loss(y_true, probabilities, labels=[0, 1])),
        "positive_rate": float(predictions.mean()),
        "prevalence": float(y_true.mean()),
        "n_test": float(len(y_true)),
    }


def fairness_report(spec: DatasetSpec, pipeline: Pipeline, test: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per protected attribute: demographic parity and equalized odds differences, and per-group figures.

    Groups are the attribute's values as strings, ``"missing"`` for missing values. Per-group keys are
    ``selection_rate[<group>]``, ``accuracy[<group>]`` and ``count[<group>]``. A group holding one class
    only does not fail: fairlearn counts its undefined true (or false) positive rate as 0, which can
    inflate the equalized odds difference; the group counts show when that applies.
    """
    # fairlearn.metrics pulls in scikit-learn (~2.3 s to import): only the fairness report needs it
    from fairlearn.metrics import MetricFrame, count, demographic_parity_difference, equalized_odds_difference
    from fairlearn.metrics import selection_rate as selection_rate_metric

    y_true = _labels(spec, test, "test")
    predictions = pipeline.predict(model_inputs(spec, test))
    report: dict[str, dict[str, float]] = {}
    for attribute in spec.protected_attributes:
        groups = test[attribute].astype("object").where(test[attribute].notna(), MISSING_GROUP).astype(str).to_numpy()
        values: dict[str, float] = {
            "demographic_parity_difference": float(
                demographic_parity_difference(y_true, predictions, sensitive_features=groups)
            ),
            "equalized_odds_difference": float(
                equalized_odds_difference(y_true, predictions, sensitive_features=groups)
            ),
        }
        frame = MetricFrame(
            metrics={"selection_rate": selection_rate_metric, "accuracy": accuracy_score, "count": count},
            y_true=y_true,
            y_pred=predictions,
            sensitive_features=groups,
        )
        for group, row in frame.by_group.iterrows():
            for metric in ("selection_rate", "accuracy", "count"):
                values[f"{metric}[{group}]"] = float(row[metric])
        report[attribute] = values
    return report
