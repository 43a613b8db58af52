"""Read a dataset's records from its source (shipped files or a seeded generator) in platform layout.

Platform layout: the record id column, the event time column (UTC), one column per feature (by its
``name``) and the target column with class values. Values are kept as read: validation decides what is
valid, so bad values reach ``riverbed.validation`` and are rejected there with a reason.
"""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from collections.abc import Callable

import numpy as np
import pandas as pd

from riverbed.specs import CsvSourceSpec, DatasetSpec, GeneratorSourceSpec

_cache: dict[tuple, pd.DataFrame] = {}
_cache_lock = threading.Lock()


def assign_event_times(spec: DatasetSpec, count: int) -> pd.Series:
    """Spread ``count`` records evenly, in order, over the spec's assigned window (deterministic)."""
    start = pd.Timestamp(spec.event_time.assign_start, tz="UTC")
    days = spec.event_time.assign_days or 1
    span_ns = days * 86_400 * 10**9
    offsets = (np.arange(count, dtype=np.float64) * (span_ns / max(count, 1))).astype(np.int64)
    return pd.Series(start + pd.to_timedelta(offsets, unit="ns"), name=spec.event_time.name)


def assign_record_ids(spec: DatasetSpec, count: int, marker: str = "") -> pd.Series:
    prefix = f"{spec.record_id.assign_prefix}{marker}"
    return pd.Series([f"{prefix}{i}" for i in range(count)], name=spec.record_id.name, dtype="string")


def _read_csv(spec: DatasetSpec, source: CsvSourceSpec) -> pd.DataFrame:
    frames = []
    for relative in source.files:
        frames.append(
            pd.read_csv(
                spec.resolve_path(relative),
                header=0 if source.header else None,
                names=source.columns if not source.header else None,
                sep=source.delimiter,
                na_values=source.na_values or None,
                skiprows=source.skip_rows,
                skipinitialspace=source.strip_values,
                comment=source.comment_prefix,
                dtype=str,
                keep_default_na=True,
            )
        )
    raw = pd.concat(frames, ignore_index=True)
    if source.strip_values:
        for column in raw.columns:
            raw[column] = raw[column].str.strip()
    raw = raw.dropna(how="all").reset_index(drop=True)
    out = pd.DataFrame(index=raw.index)
    if spec.record_id.source_column:
        out[spec.record_id.name] = raw[spec.record_id.source_column].astype("string")
    else:
        out[spec.record_id.name] = assign_record_ids(spec, len(raw)).values
    if spec.event_time.source_column:
        out[spec.event_time.name] = pd.to_datetime(raw[spec.event_time.source_column], utc=True, errors="coerce")
    else:
        out[spec.event_time.name] = assign_event_times(spec, len(raw)).array
    for feature in spec.features:
        out[feature.name] = raw[feature.column] if feature.column in raw.columns else pd.NA
    target = raw[spec.target.column] if spec.target.column in raw.columns else pd.Series(pd.NA, index=raw.index)
    out[spec.target.name] = target.replace(spec.target.value_map) if spec.target.value_map else target
    return out


def _call_generator(spec: DatasetSpec, source: GeneratorSourceSpec, rows: int, seed: int) -> pd.DataFrame:
    module_name, _, function_name = source.function.partition(":")
    function: Callable[..., pd.DataFrame] = getattr(importlib.import_module(module_name), function_name)
    return function(spec, rows, seed)


def load_source_records(spec: DatasetSpec, rows: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """All records of the dataset's source, sorted by event time (cached per spec file and arguments)."""
    mtime = spec.spec_path.stat().st_mtime_ns if spec.spec_path else 0
    key = (spec.name, str(spec.spec_path), mtime, rows, seed, spec.model_dump_json())
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    if isinstance(spec.source, CsvSourceSpec):
        records = _read_csv(spec, spec.source)
    else:
        records = _call_generator(
            spec,
            spec.source,
            rows or spec.source.default_rows,
            seed if seed is not None else spec.training.seed,
        )
    records = records.sort_values(spec.event_time.name, kind="stable").reset_index(drop=True)
    with _cache_lock:
        _cache.clear()  # keep one dataset in memory at a time; sources can be large
        _cache[key] = records
    return records


def records_for_window(spec: DatasetSpec, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Source records whose event time falls in ``[start, end)``."""
    records = load_source_records(spec)
    times = records[spec.event_time.name]
    lo, hi = times.searchsorted(_utc(start)), times.searchsorted(_utc(end))
    return records.iloc[lo:hi].reset_index(drop=True)


def _utc(moment: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
