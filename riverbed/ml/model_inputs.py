"""The one framing of model inputs, used by training, evaluation, monitoring and the MLServer runtime.

Input columns in the model's feature order: category features as Python strings (``None`` when missing,
empty, or NaN), number features as float64 (``NaN`` when missing or not a number, which XGBoost treats as
missing). Values may arrive as ``bytes`` (MLServer's BYTES tensors) and are decoded as UTF-8. Only pandas is
imported here, so the serving runtime uses it without the training stack.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pandas as pd


class ModelInputError(ValueError):
    """The frame cannot be framed as model inputs (a feature column is missing)."""


def _decoded(column: pd.Series) -> pd.Series:
    if column.dtype == object:
        return column.map(lambda v: v.decode() if isinstance(v, bytes) else v)
    return column


def _category_column(column: pd.Series) -> pd.Series:
    values = pd.Series([None] * len(column), index=column.index, dtype="object")
    present = column.notna()
    if present.any():
        values[present] = _decoded(column[present]).astype(str).astype("object")
        values[values == ""] = None
    return values


def _number_column(column: pd.Series) -> pd.Series:
    return pd.to_numeric(_decoded(column), errors="coerce").astype("float64")


def frame_model_inputs(frame: pd.DataFrame, features: Sequence[str], numeric: Collection[str]) -> pd.DataFrame:
    """``frame``'s ``features`` in order, numbers as float64 and everything else as ``str | None``."""
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise ModelInputError(f"the frame lacks feature column(s) {missing}")
    inputs = pd.DataFrame(index=frame.index)
    for name in features:
        column = frame[name]
        if name in numeric:
            inputs[name] = _number_column(column)
        else:
            inputs[name] = _category_column(column)
    return inputs
