"""IO manager that versions every asset write in the data store and reads inputs pinned to a commit.

Each output (each partition of it) is written on a short-lived branch, committed with Dagster
lineage metadata (run id, asset key, partition key, code version) and merged into ``main``. The output
metadata carries the commit id and a commit-pinned ``lakefs://`` URI; a downstream load looks that
commit up in the materialisation record and reads it, never a branch head.

Values: DataFrames are stored as Parquet; :class:`TableBundle` adds companion tables (e.g. rejected
records) written in the same commit; pydantic models are stored as JSON.
"""

import importlib
import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
import pydantic

from resources.data_store_resource import VersionedDataStoreResource
from resources.versioned_store import NoChangesError, NotFoundError, TransactionResult, VersionedStore
from riverbed.names import CommitMetadata

logger = logging.getLogger(__name__)

COMMIT_ID_KEY = "commit_id"
URI_KEY = "uri"
UNPARTITIONED = "all"

PARTITIONS_AS_MAPPING_KEY = "partitions_as_mapping"
ATTR_COMMIT_ID = "riverbed.commit_id"
ATTR_URI = "riverbed.uri"
ATTR_PARTITION = "riverbed.partition"


# (run id, step key) -> seconds spent loading inputs in this process; read by the benchmarks.
LOAD_SECONDS_BY_STEP: dict[tuple[str, str], float] = {}


class MissingUpstreamCommitError(RuntimeError):
    """An input has no recorded materialisation with a commit id to read."""


@dataclass
class TableBundle:
    """A primary table plus companion tables committed together (the primary is what loads downstream)."""

    primary: pd.DataFrame
    companions: dict[str, pd.DataFrame] = field(default_factory=dict)


def asset_path(asset_key: dg.AssetKey) -> str:
    return "/".join(asset_key.path)


def table_path(asset_key: dg.AssetKey, partition_key: str | None, companion: str | None = None) -> str:
    base = f"tables/{asset_path(asset_key)}"
    if companion:
        base = f"{base}/_{companion}"
    return f"{base}/{partition_key or UNPARTITIONED}.parquet"


def record_path(asset_key: dg.AssetKey, partition_key: str | None) -> str:
    return f"records/{asset_path(asset_key)}/{partition_key or UNPARTITIONED}.json"


def dataframe_to_parquet(df: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def parquet_to_dataframe(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def _branch_prefix(context: dg.OutputContext) -> str:
    name = "_".join(context.asset_key.path)
    return f"dagster-{context.run_id[:8]}-{name}"[:80]


def materialized_commit(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str | None
) -> tuple[str, str | None]:
    """The commit id (and pinned URI) recorded by the latest materialisation of an asset partition."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=asset_key, asset_partitions=[partition_key] if partition_key is not None else None
    )
    result = instance.fetch_materializations(records_filter, limit=1)
    if not result.records:
        where = f" partition {partition_key}" if partition_key else ""
        raise MissingUpstreamCommitError(f"{asset_key.to_user_string()}{where} has not been materialised yet")
    materialization = result.records[0].asset_materialization
    metadata = materialization.metadata if materialization else {}
    commit = metadata.get(COMMIT_ID_KEY)
    if commit is None:
        raise MissingUpstreamCommitError(
            f"the latest materialisation of {asset_key.to_user_string()} records no commit id"
        )
    uri = metadata.get(URI_KEY)
    return str(commit.value), (str(uri.value) if uri is not None else None)


class VersionedDataIOManager(dg.ConfigurableIOManager):
    """Parquet / JSON values in the versioned data store, one commit per (asset, partition) write."""

    data_store: VersionedDataStoreResource

    @property
    def _store(self) -> VersionedStore:
        return self.data_store.get_store()

    # -- writes --------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        partition_keys: list[str | None]
        partition_keys = list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        if len(partition_keys) > 1:
            if not isinstance(obj, Mapping):
                raise TypeError(
                    f"{context.asset_key.to_user_string()}: a run over {len(partition_keys)} partitions must return "
                    "a mapping of partition key to value"
                )
            values = {key: obj[key] for key in partition_keys if key in obj}
        elif isinstance(obj, Mapping) and not isinstance(obj, pd.DataFrame) and partition_keys[0] in obj:
            values = {partition_keys[0]: obj[partition_keys[0]]}
        else:
            values = {partition_keys[0]: obj}

        store = self._store
        started = time.perf_counter()
        serialise_seconds = 0.0
        put_seconds = 0.0
        rows_total = 0
        paths: dict[str, str] = {}
        with store.transaction(_branch_prefix(context)) as tx:
            for partition_key, value in values.items():
                t0 = time.perf_counter()
                files, rows = self._serialise(context.asset_key, partition_key, value)
                t1 = time.perf_counter()
                for path, data in files.items():
                    store.put_object(tx.branch, path, data)
                put_seconds += time.perf_counter() - t1
                serialise_seconds += t1 - t0
                paths[partition_key or UNPARTITIONED] = next(iter(files))
                rows_total += rows
                try:
                    store.commit_into(tx, *self._commit_message(context, partition_key, rows))
                except NoChangesError:
                    # Byte-identical to what main holds: the existing commit already pins this content.
                    context.log.info(f"{context.asset_key.to_user_string()} [{partition_key}] unchanged")
            if not tx.commits:
                tx.unchanged_commit = store.get_commit(tx.branch)
        timings = {
            "serialise_seconds": serialise_seconds,
            "put_seconds": put_seconds,
            # Branch creation, commits, merge and branch deletion: the cost of versioning itself.
            "versioning_seconds": time.perf_counter() - started - serialise_seconds - put_seconds,
        }
        self._record_output_metadata(context, store, tx, paths, rows_total, timings)

    def _serialise(self, asset_key: dg.AssetKey, partition_key: str | None, value: Any) -> tuple[dict[str, bytes], int]:
        if isinstance(value, TableBundle):
            files = {table_path(asset_key, partition_key): dataframe_to_parquet(value.primary)}
            for name, table in value.companions.items():
                files[table_path(asset_key, partition_key, companion=name)] = dataframe_to_parquet(table)
            return files, len(value.primary)
        if isinstance(value, pd.DataFrame):
            return {table_path(asset_key, partition_key): dataframe_to_parquet(value)}, len(value)
        if isinstance(value, pydantic.BaseModel):
            payload = {"type": f"{type(value).__module__}:{type(value).__qualname__}", "value": value.model_dump()}
            return {record_path(asset_key, partition_key): json.dumps(payload, default=str).encode()}, 1
        raise TypeError(
            f"{asset_key.to_user_string()}: cannot store a {type(value).__name__}; "
            "return a DataFrame, a TableBundle or a pydantic model"
        )

    @staticmethod
    def _commit_message(context: dg.OutputContext, partition_key: str | None, rows: int) -> tuple[str, dict[str, str]]:
        asset = context.asset_key.to_user_string()
        version = None
        try:
            version = context.asset_spec.code_version
        except dg.DagsterInvariantViolationError:  # an output outside an asset job has no asset spec
            version = None
        metadata = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": asset,
            "dagster.partition_key": partition_key or "",
            "dagster.code_version": str(version or "unversioned"),
            "riverbed.rows": str(rows),
        }
        digests = context.output_metadata.get("artifact_sha256")  # the model record: its artifacts' SHA-256
        if digests is not None:
            value = getattr(digests, "value", digests)  # a JsonMetadataValue, or the plain mapping
            metadata[CommitMetadata.MODEL_ARTIFACT_SHA256] = json.dumps(value, sort_keys=True)
        message = f"{asset}" + (f" [{partition_key}]" if partition_key else "") + f": {rows} rows"
        return message, metadata

    def _record_output_metadata(
        self,
        context: dg.OutputContext,
        store: VersionedStore,
        tx: TransactionResult,
        paths: dict[str, str],
        rows_total: int,
        timings: dict[str, float],
    ) -> None:
        commit_id = tx.last_commit_id
        first_path = next(iter(paths.values()))
        metadata: dict[str, Any] = {
            COMMIT_ID_KEY: commit_id,
            URI_KEY: store.object_uri(commit_id, first_path),
            "merge_commit_id": tx.merge_commit_id or "",
            "rows": rows_total,
            **{key: round(value, 4) for key, value in timings.items()},
        }
        if len(paths) > 1:
            metadata["partition_paths"] = dg.MetadataValue.json(paths)
        context.add_output_metadata(metadata)

    # -- reads ---------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        if upstream is None or upstream.asset_key is None:
            raise MissingUpstreamCommitError("the versioned IO manager only loads asset inputs")
        asset_key = upstream.asset_key
        started = time.perf_counter()
        value = self._load(context, asset_key)
        elapsed = time.perf_counter() - started
        key = (context.step_context.run_id, context.step_context.step.key)
        LOAD_SECONDS_BY_STEP[key] = LOAD_SECONDS_BY_STEP.get(key, 0.0) + elapsed
        return value

    def _load(self, context: dg.InputContext, asset_key: dg.AssetKey) -> Any:
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            if len(keys) == 1 and not self._wants_mapping(context):
                return self._load_one(context, asset_key, keys[0])
            loaded = {}
            skipped = []
            for key in keys:
                try:
                    loaded[key] = self._load_one(context, asset_key, key)
                except MissingUpstreamCommitError:
                    # A window may include days never materialised (no data yet); the consumer sees which.
                    skipped.append(key)
            if skipped:
                context.log.info(
                    f"{asset_key.to_user_string()}: {len(skipped)} partition(s) not materialised, skipped "
                    f"({skipped[0]} .. {skipped[-1]})"
                )
            return loaded
        return self._load_one(context, asset_key, None)

    @staticmethod
    def _wants_mapping(context: dg.InputContext) -> bool:
        """An input declared with ``metadata={"partitions_as_mapping": True}`` always gets {partition: value}."""
        return bool((context.definition_metadata or {}).get(PARTITIONS_AS_MAPPING_KEY))

    def _load_one(self, context: dg.InputContext, asset_key: dg.AssetKey, partition_key: str | None) -> Any:
        commit_id, _ = materialized_commit(context.instance, asset_key, partition_key)
        return self.read_at_commit(asset_key, partition_key, commit_id)

    def read_at_commit(self, asset_key: dg.AssetKey, partition_key: str | None, commit_id: str) -> Any:
        """Read one stored value of an asset (partition) at a commit."""
        store = self._store
        path = table_path(asset_key, partition_key)
        try:
            data = store.get_object(commit_id, path)
        except NotFoundError:
            payload = json.loads(store.get_object(commit_id, record_path(asset_key, partition_key)))
            return _restore_record(payload)
        df = parquet_to_dataframe(data)
        df.attrs.update(
            {
                ATTR_COMMIT_ID: commit_id,
                ATTR_URI: store.object_uri(commit_id, path),
                ATTR_PARTITION: partition_key or "",
            }
        )
        return df


def _restore_record(payload: dict[str, Any]) -> Any:
    module_name, _, qualname = payload["type"].partition(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls.model_validate(payload["value"])
