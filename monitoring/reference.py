"""The monitoring reference: the champion's predictions on its own frozen holdout, stored when it is deployed.

Stored as Parquet beside the model repository (``<repository>/references/<dataset>/v<version>.parquet``), so
whatever can read the deployment pointer can find the reference of the model that is serving. Columns: the
spec's features, ``y_pred_proba`` (probability of the positive class), ``y_pred`` and ``y_true`` (1 for the
positive class, else 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from riverbed.specs import DatasetSpec

PROBABILITY = "y_pred_proba"
PREDICTION = "y_pred"
TRUTH = "y_true"


class ReferenceMissingError(FileNotFoundError):
    """No reference is stored for the model version being monitored."""


def reference_path(repository_root: Path, dataset: str, version: int | str) -> Path:
    return Path(repository_root) / "references" / dataset / f"v{version}.parquet"


def positive_labels(spec: DatasetSpec, labels: pd.Series) -> np.ndarray:
    """1 where the label is the spec's positive class, else 0 (missing labels stay NaN)."""
    values = labels.astype("string")
    result = (values == spec.target.positive_class).astype("Float64")
    values_or_nan: np.ndarray = result.to_numpy(dtype=float, na_value=np.nan)
    return values_or_nan


def build_reference(spec: DatasetSpec, pipeline: Any, holdout: pd.DataFrame) -> pd.DataFrame:
    """Score the holdout with the deployed pipeline: the reference NannyML calibrates on."""
    from riverbed.ml.training import model_inputs  # xgboost + scikit-learn (~1.8 s): only when a reference is built

    inputs = model_inputs(spec, holdout)
    probabilities = pipeline.predict_proba(inputs)[:, 1]
    frame = holdout[spec.feature_names].reset_index(drop=True).copy()
    for feature in spec.categorical_features:
        frame[feature] = frame[feature].astype("string")
    frame[PROBABILITY] = probabilities
    frame[PREDICTION] = (probabilities >= 0.5).astype(int)
    frame[TRUTH] = positive_labels(spec, holdout[spec.target.name].reset_index(drop=True))
    return frame


def write_reference(repository_root: Path, dataset: str, version: int, frame: pd.DataFrame) -> Path:
    path = reference_path(repository_root, dataset, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(scratch, index=False)
    os.replace(scratch, path)
    return path


def read_reference(repository_root: Path, dataset: str, version: int | str) -> pd.DataFrame:
    path = reference_path(repository_root, dataset, version)
    if not path.exists():
        raise ReferenceMissingError(
            f"no monitoring reference for {dataset} version {version} at {path}: it is written when the version "
            "is deployed (materialise deployment_<dataset>)"
        )
    return pd.read_parquet(path)
