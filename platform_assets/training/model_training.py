"""Build, tune (Optuna), fit and evaluate the XGBoost pipeline of a dataset, and report its fairness.

The pipeline holds its own encoding (one-hot for categories with the spec's categories, numerics passed
through with NaN left to XGBoost), so whoever loads the model applies exactly the training encoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.compose import ColumnTransformer
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from xgboost import XGBClassifier

from riverbed.specs import DatasetSpec

logger = logging.getLogger(__name__)

ENCODER_STEP = "encode"
MODEL_STEP = "classifier"


class TrainingParams(BaseModel):
    optuna_trials: int = Field(default=8, ge=1)
    seed: int = 42
    primary_metric: str = Field(default="roc_auc", pattern="^(roc_auc|f1|accuracy|log_loss)$")
    max_estimators: int = Field(default=200, ge=10)
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    n_jobs: int = 1


@dataclass
class TrainingOutcome:
    pipeline: Pipeline
    best_params: dict[str, Any]
    best_validation_score: float
    trials: int
    trial_table: list[dict[str, Any]] = field(default_factory=list)
    params: TrainingParams | None = None


def build_pipeline(spec: DatasetSpec, hyperparams: dict[str, Any], seed: int = 0, n_jobs: int = 1) -> Pipeline:
    """One-hot encoding of category features (spec categories, unknown -> all zeros) + XGBClassifier."""
    categorical = spec.categorical_features
    numeric = spec.numeric_features
    encoder = ColumnTransformer(
        [
            (
                "categories",
                OneHotEncoder(
                    categories=[spec.feature(name).categories for name in categorical],
                    handle_unknown="ignore",
                    sparse_output=False,
                    dtype=np.float32,
                ),
                categorical,
            ),
            ("numbers", "passthrough", numeric),
        ],
        remainder="drop",
        verbose_feature_names_out=True,
    )
    model = XGBClassifier(
        tree_method="hist",
        n_jobs=n_jobs,
        random_state=seed,
        eval_metric="logloss",
        **hyperparams,
    )
    return Pipeline([(ENCODER_STEP, encoder), (MODEL_STEP, model)])


def model_inputs(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The pipeline's input columns: the spec's features, categories as plain objects, numbers as float."""
    inputs = pd.DataFrame(index=frame.index)
    for name in spec.categorical_features:
        inputs[name] = frame[name].astype("object").where(frame[name].notna(), None)
    for name in spec.numeric_features:
        inputs[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return inputs[spec.feature_names]


def encoded_feature_groups(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, list[int]]:
    """Input feature -> indices of its encoded columns (to sum SHAP contributions back per feature)."""
    names = list(pipeline.named_steps[ENCODER_STEP].get_feature_names_out())
    groups: dict[str, list[int]] = {name: [] for name in spec.feature_names}
    for index, encoded in enumerate(names):
        transformer, _, rest = encoded.partition("__")
        if transformer == "numbers":
            groups[rest].append(index)
        else:
            owner = max((f for f in spec.categorical_features if rest.startswith(f"{f}_")), key=len)
            groups[owner].append(index)
    return groups


def _score(metric: str, y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Higher is better for every metric (log loss is negated)."""
    if metric == "roc_auc":
        return float(roc_auc_score(y_true, probabilities)) if len(np.unique(y_true)) == 2 else 0.5
    if metric == "log_loss":
        return -float(log_loss(y_true, probabilities, labels=[0, 1]))
    predictions = (probabilities >= 0.5).astype(int)
    if metric == "f1":
        return float(f1_score(y_true, predictions, zero_division=0))
    return float(accuracy_score(y_true, predictions))


def tune_and_train(spec: DatasetSpec, train: pd.DataFrame, params: TrainingParams) -> TrainingOutcome:
    """Optuna TPE search on a seeded stratified validation split, then a refit on all of ``train``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = train[spec.target.name].astype(int).to_numpy()
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
    table = [{"number": t.number, "value": t.value, **t.params} for t in study.trials if t.value is not None]
    logger.info("%s: best %s %.4f after %d trials", spec.name, params.primary_metric, study.best_value, len(table))
    return TrainingOutcome(
        pipeline=pipeline,
        best_params=dict(study.best_params),
        best_validation_score=float(study.best_value),
        trials=len(study.trials),
        trial_table=table,
        params=params,
    )


def evaluate(spec: DatasetSpec, pipeline: Pipeline, test: pd.DataFrame) -> dict[str, float]:
    """Accuracy, F1, ROC AUC and log loss on the test split (positive class = 1)."""
    y_true = test[spec.target.name].astype(int).to_numpy()
    probabilities = pipeline.predict_proba(model_inputs(spec, test))[:, 1]
    predictions = (probabilities >= 0.5).astype(int)
    return {
        "accuracy": float(accuracy_score(y_true, predictions)),
        "f1": float(f1_score(y_true, predictions, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, probabilities)) if len(np.unique(y_true)) == 2 else float("nan"),
        "log_loss": float(log_loss(y_true, probabilities, labels=[0, 1])),
        "positive_rate": float(predictions.mean()) if len(predictions) else 0.0,
        "n_test": float(len(y_true)),
    }


def fairness_report(spec: DatasetSpec, pipeline: Pipeline, test: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per protected attribute: demographic parity and equalized odds differences, and per-group rates."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        selection_rate,
    )

    y_true = test[spec.target.name].astype(int).to_numpy()
    predictions = pipeline.predict(model_inputs(spec, test))
    report: dict[str, dict[str, float]] = {}
    for attribute in spec.protected_attributes:
        groups = test[attribute].astype("object").fillna("missing").astype(str).to_numpy()
        values: dict[str, float] = {
            "demographic_parity_difference": float(
                demographic_parity_difference(y_true, predictions, sensitive_features=groups)
            ),
            "equalized_odds_difference": float(
                np.nan_to_num(equalized_odds_difference(y_true, predictions, sensitive_features=groups), nan=0.0)
            ),
        }
        frame = MetricFrame(
            metrics={"selection_rate": selection_rate, "accuracy": accuracy_score},
            y_true=y_true,
            y_pred=predictions,
            sensitive_features=groups,
        )
        for group, row in frame.by_group.iterrows():
            values[f"selection_rate[{group}]"] = float(row["selection_rate"])
            values[f"accuracy[{group}]"] = float(row["accuracy"])
        report[attribute] = values
    return report
