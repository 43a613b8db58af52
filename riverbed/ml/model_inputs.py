"""The one framing of model inputs, used by training, evaluation, monitoring and the MLServer runtime.

Input columns in the model's feature order: category features as Python strings (``None`` when missing,
empty, or NaN), number features as float64 (``NaN`` when missing or not a number, which XGBoost treats as
missing). Values may arrive as ``bytes`` (MLServer's BYTES tensors) and are decoded as UTF-8.

Two shapes, one set of rules (:func:`category_value` and :func:`number_values`): :func:`frame_model_inputs`
frames a DataFrame (training, evaluation, monitoring); :func:`model_input_columns` frames plain lists of values
(the serving runtime, which decodes a few rows per request and skips pandas for them). Only numpy and pandas are
imported here, so the serving runtime uses it without the training stack.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd


class ModelInputError(ValueError):
    """The inputs cannot be framed as model inputs (a feature column is missing)."""


def category_value(value: object) -> str | None:
    """One category value as the model reads it: its text (bytes decoded), or None if missing, empty or NaN."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, bytes):
        return value.decode() or None
    if value is None:
        return None
    missing = pd.isna(value)  # NaN, NaT, pd.NA; an array for list-like values, which are not missing
    if isinstance(missing, bool | np.bool_) and missing:
        return None
    return str(value) or None


def category_values(values: Iterable[object]) -> list[str | None]:
    """:func:`category_value` of each value."""
    return [category_value(value) for value in values]


def _decoded(column: pd.Series) -> pd.Series:
    if column.dtype == object:
        return column.map(lambda v: v.decode() if isinstance(v, bytes) else v)
    return column


def _number_column(column: pd.Series) -> pd.Series:
    return pd.to_numeric(_decoded(column), errors="coerce").astype("float64")


def number_values(values: Sequence[object]) -> np.ndarray:
    """Numbers as float64: NaN for None, for text that is not a number and for missing values."""
    if all(type(value) is float or type(value) is int or value is None for value in values):
        return np.array(values, dtype=np.float64)  # None -> NaN; what pandas makes of the same numbers
    return np.asarray(_number_column(pd.Series(values, dtype=object)), dtype=np.float64)


def _category_column(column: pd.Series) -> list[str | None]:
    if isinstance(column.dtype, pd.CategoricalDtype):  # each category framed once
        framed = category_values(column.cat.categories)
        values = [None if code < 0 else framed[code] for code in column.cat.codes.tolist()]
    elif column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        values = category_values(column.tolist())
    else:  # numbers, booleans or dates given for a category: pandas' text of each present value
        texts = column.astype(str).astype("object").tolist()
        present = column.notna().tolist()
        values = [(text or None) if is_present else None for text, is_present in zip(texts, present, strict=True)]
    return values


def _check_features(features: Sequence[str], present: Collection[str], what: str) -> None:
    missing = [name for name in features if name not in present]
    if missing:
        raise ModelInputError(f"the {what} lacks feature column(s) {missing}")


def frame_model_inputs(frame: pd.DataFrame, features: Sequence[str], numeric: Collection[str]) -> pd.DataFrame:
    """``frame``'s ``features`` in order, numbers as float64 and everything else as ``str | None``."""
    _check_features(features, frame.columns, "frame")
    index = frame.index  # every column built on this one index object: no alignment, duplicates kept
    framed = {
        name: pd.Series(_number_column(frame[name]).to_numpy(), index=index, dtype="float64")
        if name in numeric
        else pd.Series(_category_column(frame[name]), index=index, dtype="object")
        for name in features
    }
    return pd.DataFrame(framed, index=index, columns=list(features))


def model_input_columns(
    columns: Mapping[str, Sequence[object]], features: Sequence[str], numeric: Collection[str]
) -> dict[str, np.ndarray | list[str | None]]:
    """Plain columns of values (one list per feature, all of one length) framed as :func:`frame_model_inputs`
    frames a DataFrame: float64 arrays for number features, lists of ``str | None`` for the others."""
    _check_features(features, columns, "request")
    return {
        name: number_values(columns[name]) if name in numeric else category_values(columns[name]) for name in features
    }
