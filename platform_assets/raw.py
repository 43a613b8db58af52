"""``raw_<dataset>``: validated raw records per day (daily partitions), rejected records kept beside them.

A day's records come from the Kafka landing zone when anything was landed for it, else from the dataset's
source. A range run validates the whole range at once (per-call overhead dominates small partitions), then
splits by day.
"""

import time

import dagster as dg
import numpy as np
import pandas as pd

from platform_assets.groups import RAW_GROUP
from platform_assets.stages import CODE_VERSION, asset_key, by_partition
from resources import landing_zone
from resources.versioned_io_manager import TableBundle
from resources.versioned_store import VersionedStore
from riverbed.names import Stage
from riverbed.sources import records_for_window
from riverbed.specs import DatasetSpec
from riverbed.validation import ValidationResult, validate_records


def raw_records_for_range(
    spec: DatasetSpec,
    partitions: dg.DailyPartitionsDefinition,
    keys: list[str],
    store: VersionedStore,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Records of the partition range sorted by event time: a day's landed Kafka records (read at main's current
    commit, latest offset per record id) where the landing zone has any, else the dataset's source."""
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


def split_by_day(
    spec: DatasetSpec,
    partitions: dg.DailyPartitionsDefinition,
    keys: list[str],
    records: pd.DataFrame,
    result: ValidationResult,
) -> dict[str, object]:
    """One bundle per partition key: the day's valid records, with its rejected records as a companion table.

    ``records`` is sorted by event time, so each day is a slice found by binary search.
    """
    times = pd.to_datetime(records[spec.event_time.name], utc=True, errors="coerce")
    bundles: dict[str, object] = {}
    for key in keys:
        window = partitions.time_window_for_partition_key(key)
        lo, hi = times.searchsorted(pd.Timestamp(window.start)), times.searchsorted(pd.Timestamp(window.end))
        v0, v1 = np.searchsorted(result.valid_positions, [lo, hi])
        r0, r1 = np.searchsorted(result.rejected_positions, [lo, hi])
        bundles[key] = TableBundle(
            primary=result.valid.iloc[v0:v1].reset_index(drop=True),
            companions={"rejected": result.rejected.iloc[r0:r1].reset_index(drop=True)},
        )
    return bundles


def build_raw_asset(spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=asset_key(Stage.RAW, name),
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
        started = time.perf_counter()
        keys = list(context.partition_keys)
        store = context.resources.io_manager.data_store.get_store()  # the landing zone's store is the IO manager's
        records, landing = raw_records_for_range(spec, partitions, keys, store)
        if landing:
            context.add_output_metadata(landing)
        result = validate_records(spec, records)
        bundles = split_by_day(spec, partitions, keys, records, result)
        context.add_output_metadata(
            {
                "valid_records": len(result.valid),
                "rejected_records": len(result.rejected),
                "rejection_reasons": dg.MetadataValue.json(result.reason_counts),
                "partitions": len(keys),
                "compute_seconds": round(time.perf_counter() - started, 4),
            }
        )
        return by_partition(context, bundles)

    return raw_records
