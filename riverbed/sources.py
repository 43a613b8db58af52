"""Read a dataset's records from its source (shipped files or a seeded generator) in platform layout.

Platform layout: the record id column (``spec.record_id.name``), the event time column
(``spec.event_time.name``, tz-aware UTC), one column per feature (by its ``name``) and the target column
(``spec.target.name``) with class values. Values are kept as read: validation decides what is valid, so
bad values reach :mod:`riverbed.validation` and are rejected there with a reason. A source that lacks a
column the spec names raises :class:`~riverbed.validation.SchemaError` naming the file and the column.

Loaded sources are kept in a small in-process LRU cache keyed by the spec (name, file, modification
times, content) and the arguments, so reading one partition after another does not reparse the source.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
import pandas as pd

from riverbed.specs import CsvSourceSpec, DatasetSpec, GeneratorSourceSpec
from riverbed.validation import SchemaError

logger = logging.getLogger(__name__)

CACHE_SIZE = 2  # whole sources are cached; keep few of them (they can be large)
_NANOS_PER_DAY = 86_400 * 10**9

_cache: OrderedDict[Hashable, pd.DataFrame] = OrderedDict()
_cache_lock = threading.Lock()


def clear_source_cache() -> None:
    """Forget every cached source (tests, or after editing data files in place within one second)."""
    with _cache_lock:
        _cache.clear()


def _window(spec: DatasetSpec) -> tuple[pd.Timestamp, int]:
    """First day (UTC midnight) and length in days of the window that assigned event times spread over."""
    start = pd.Timestamp(spec.event_time.first_partition_day).tz_localize("UTC")
    return start, spec.event_time.assign_days or spec.training.window_days


def assign_event_times(spec: DatasetSpec, count: int) -> pd.Series:
    """Spread ``count`` records evenly, in order, over ``[start, start + days)`` (deterministic).

    Record ``i`` gets ``start + floor(i * span / count)`` (exact integer nanoseconds), so the records of
    day ``k`` are a contiguous run and form partition ``k``. Specs whose event times come from a column
    use their first partition day and the training window length.
    """
    start, days = _window(spec)
    span = days * _NANOS_PER_DAY
    step, remainder = divmod(span, max(count, 1))
    index = np.arange(count, dtype=np.int64)
    offsets = index * step + (index * remainder) // max(count, 1)
    times = pd.DatetimeIndex(start.as_unit("ns") + pd.to_timedelta(offsets, unit="ns"))
    return pd.Series(times, name=spec.event_time.name)


def assign_record_ids(spec: DatasetSpec, count: int, marker: str = "") -> pd.Series:
    """Ids ``<assign_prefix><marker><n>`` for ``n`` in ``0..count-1`` (``<dataset>-`` when no prefix)."""
    prefix = f"{spec.record_id.assign_prefix or spec.name + '-'}{marker}"
    numbers = pd.Series(np.arange(count, dtype=np.int64)).astype("string")
    return (prefix + numbers).rename(spec.record_id.name)


def _read_one_csv(path: Path, source: CsvSourceSpec) -> pd.DataFrame:
    missing_values = ["", *source.na_values]
    frame = pd.read_csv(
        path,
        header=0 if source.header else None,
        names=None if source.header else source.columns,
        sep=source.delimiter,
        skiprows=source.skip_rows,
        skipinitialspace=source.strip_values,
        comment=source.comment_prefix,
        dtype="string",
        keep_default_na=False,  # only the spec's markers mean "missing" ("NA" may be a real category)
        na_values=missing_values,
        skip_blank_lines=True,
    )
    if source.strip_values:
        for column in frame.columns:
            text = frame[column].str.strip()
            frame[column] = text.where(~text.isin(missing_values))
    return frame


def _require_columns(spec: DatasetSpec, path: Path, columns: pd.Index) -> None:
    missing = [f"{column!r} ({role})" for column, role in spec.source_columns().items() if column not in columns]
    if missing:
        raise SchemaError(f"{spec.name}: source file {path} lacks column(s) {', '.join(missing)}")


def _read_csv(spec: DatasetSpec, source: CsvSourceSpec) -> pd.DataFrame:
    frames = []
    for relative in source.files:
        path = spec.resolve_path(relative)
        frame = _read_one_csv(path, source)
        _require_columns(spec, path, frame.columns)
        frames.append(frame)
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    out: dict[str, object] = {}
    if spec.record_id.source_column:
        out[spec.record_id.name] = raw[spec.record_id.source_column].astype("string")
    else:
        out[spec.record_id.name] = assign_record_ids(spec, len(raw)).array
    if spec.event_time.source_column:
        text = raw[spec.event_time.source_column]
        times = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")  # naive means UTC
        unparsed = int((times.isna() & text.notna()).sum())
        if unparsed:
            logger.warning("%s: %d event time(s) could not be parsed; they belong to no partition", spec.name, unparsed)
        out[spec.event_time.name] = times.astype("datetime64[ns, UTC]").array
    else:
        out[spec.event_time.name] = assign_event_times(spec, len(raw)).array
    for feature in spec.features:
        out[feature.name] = raw[feature.column].array
    target = raw[spec.target.column]
    out[spec.target.name] = (target.replace(spec.target.value_map) if spec.target.value_map else target).array
    return pd.DataFrame(out)


def _call_generator(spec: DatasetSpec, source: GeneratorSourceSpec, rows: int, seed: int) -> pd.DataFrame:
    module_name, _, function_name = source.function.partition(":")
    function: Callable[..., pd.DataFrame] = getattr(importlib.import_module(module_name), function_name)
    return function(spec, rows, seed)


def _cache_key(spec: DatasetSpec, rows: int | None, seed: int | None) -> Hashable:
    files: list[Path] = [spec.spec_path] if spec.spec_path else []
    if isinstance(spec.source, CsvSourceSpec):
        files += [spec.resolve_path(f) for f in spec.source.files]
    stamps: list[tuple[str, int | None, int | None]] = []
    for path in files:
        try:
            stat = path.stat()
            stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((str(path), None, None))
    return (spec.name, str(spec.spec_path), tuple(stamps), rows, seed, spec.model_dump_json())


def load_source_records(spec: DatasetSpec, rows: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """All records of the dataset's source in platform layout, sorted by event time.

    CSV sources are read whole (``rows``/``seed`` do not apply); generator sources are called with
    ``rows`` (default: the spec's ``default_rows``) and ``seed`` (default: the spec's training seed).
    Results are cached per spec and arguments; callers get their own shallow copy.
    """
    key = _cache_key(spec, rows, seed)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached.copy(deep=False)
    if isinstance(spec.source, CsvSourceSpec):
        records = _read_csv(spec, spec.source)
    else:
        records = _call_generator(
            spec,
            spec.source,
            rows if rows is not None else spec.source.default_rows,
            seed if seed is not None else spec.training.seed,
        )
    records = records.sort_values(spec.event_time.name, kind="stable", na_position="last").reset_index(drop=True)
    logger.debug("%s: loaded %d source records", spec.name, len(records))
    with _cache_lock:
        _cache[key] = records
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return records.copy(deep=False)


def records_for_window(spec: DatasetSpec, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Source records whose event time falls in ``[start, end)`` (naive datetimes are taken as UTC)."""
    records = load_source_records(spec)
    times = records[spec.event_time.name]
    known = int(times.notna().sum())  # unparseable times sort last and belong to no window
    ordered = times.iloc[:known]
    lo, hi = int(ordered.searchsorted(_utc(start))), int(ordered.searchsorted(_utc(end)))
    return records.iloc[lo:hi].reset_index(drop=True)


def _utc(moment: dt.datetime | dt.date) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
