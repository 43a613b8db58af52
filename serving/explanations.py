"""Exact TreeSHAP explanations for a fitted encoding + XGBoost pipeline, per original input feature.

XGBoost's native ``pred_contribs`` is path-dependent TreeSHAP (equal to ``shap.TreeExplainer``); the
contributions of one-hot columns are summed back to the feature they encode, so for every row
``base_value + sum(contributions) == margin`` (log-odds) exactly, up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb


class ExplanationError(ValueError):
    """The pipeline or the feature groups cannot be explained as asked."""


@dataclass(frozen=True)
class ExplainedBatch:
    """Per row: probability of the positive class, margin, base value and one contribution per feature."""

    feature_names: list[str]
    positive_probability: np.ndarray  # (n,)
    margin: np.ndarray  # (n,)
    base_value: np.ndarray  # (n,)
    contributions: np.ndarray  # (n, features)

    def top_features(self, row: int, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-np.abs(self.contributions[row]), kind="stable")[:k]
        return [(self.feature_names[i], float(self.contributions[row, i])) for i in order]


def _split_pipeline(pipeline: object) -> tuple[object, xgb.XGBClassifier]:
    steps = getattr(pipeline, "steps", None)
    if not steps or len(steps) < 2 or not isinstance(steps[-1][1], xgb.XGBClassifier):
        raise ExplanationError("expected a scikit-learn Pipeline of an encoder followed by an XGBClassifier")
    return steps[0][1], steps[-1][1]


def predict_and_explain(
    pipeline: object, feature_groups: dict[str, list[int]], inputs: pd.DataFrame, explain: bool = True
) -> ExplainedBatch:
    """Probabilities and (optionally) grouped TreeSHAP contributions for a frame of input features."""
    encoder, classifier = _split_pipeline(pipeline)
    encoded = np.asarray(encoder.transform(inputs), dtype=np.float32)
    width = encoded.shape[1]
    covered = sorted(i for columns in feature_groups.values() for i in columns)
    if covered != list(range(width)):
        raise ExplanationError(f"feature groups cover {len(covered)} encoded columns, the encoder makes {width}")
    booster = classifier.get_booster()
    matrix = xgb.DMatrix(encoded)
    margin = booster.predict(matrix, output_margin=True).astype(np.float64)
    probability = 1.0 / (1.0 + np.exp(-margin))
    names = list(feature_groups)
    if not explain:
        empty = np.empty((len(encoded), 0))
        return ExplainedBatch(names, probability, margin, np.zeros(len(encoded)), empty)
    raw = booster.predict(matrix, pred_contribs=True).astype(np.float64)  # (n, width + 1), bias last
    grouped = np.column_stack([raw[:, columns].sum(axis=1) for columns in feature_groups.values()])
    return ExplainedBatch(names, probability, margin, raw[:, -1], grouped)
