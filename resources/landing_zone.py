"""The landing zone: records consumed from a dataset's raw topic, committed in the versioned store.

Layout: ``landing/<dataset>/<day>/<topic>-<partition>-<first offset>-<last offset>.parquet``, one object per
(event day, topic partition) of one ingestion tick, holding that day's records from the offset range in
platform layout (record id, event time, features, target) plus the Kafka partition and offset of each
record. Names depend on the offsets alone, so landing the same offsets again rewrites the same objects
(a re-consumed range after a crash adds nothing); an object whose offset range lies inside a newly landed
range of the same day and partition is superseded and deleted in the same commit.

Readers (the ``raw_<dataset>`` asset) read one day at a commit, concatenate its objects and keep the
latest offset per record id. Plain functions over :class:`~resources.versioned_store.VersionedStore`: no
Kafka, no Dagster.
"""

import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from resources.versioned_store import NoChangesError, NotFoundError, VersionedStore

logger = logging.getLogger(__name__)

LANDING_ROOT = "landing"
PARTITION_COLUMN = "_kafka_partition"
OFFSET_COLUMN = "_kafka_offset"
LANDING_COLUMNS = (PARTITION_COLUMN, OFFSET_COLUMN)


@dataclass(frozen=True)
class LandingBatch:
    """The records of one event day from one topic partition's offset range ``[first_offset, last_offset]``."""

    day: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: pd.DataFrame  # platform layout + PARTITION_COLUMN / OFFSET_COLUMN


@dataclass(frozen=True)
class LandingResult:
    commit_id: str  # the commit on main that holds the landed objects (merge commit, or main's head if unchanged)
    paths: tuple[str, ...]
    superseded: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class _ObjectName:
    topic: str
    partition: int
    first_offset: int
    last_offset: int


def day_prefix(dataset: str, day: str) -> str:
    return f"{LANDING_ROOT}/{dataset}/{day}/"


def dataset_prefix(dataset: str) -> str:
    return f"{LANDING_ROOT}/{dataset}/"


def landing_path(dataset: str, batch: LandingBatch) -> str:
    name = f"{batch.topic}-{batch.partition}-{batch.first_offset}-{batch.last_offset}.parquet"
    return day_prefix(dataset, batch.day) + name


def _parse_name(path: str) -> _ObjectName | None:
    name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    parts = name.rsplit("-", 3)  # topic names may contain '-'; the last three fields are numbers
    if len(parts) != 4:
        return None
    try:
        return _ObjectName(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        return None


def _to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def _superseded(existing: Iterable[str], dataset: str, batch: LandingBatch) -> list[str]:
    """Objects of the same day and partition whose offsets lie inside the batch's range (re-consumed)."""
    own = landing_path(dataset, batch)
    found = []
    for path in existing:
        name = _parse_name(path)
        if (
            path != own
            and name is not None
            and name.topic == batch.topic
            and name.partition == batch.partition
            and batch.first_offset <= name.first_offset
            and name.last_offset <= batch.last_offset
        ):
            found.append(path)
    return found


def land_batches(
    store: VersionedStore,
    dataset: str,
    batches: Iterable[LandingBatch],
    message: str,
    metadata: Mapping[str, str] | None = None,
    branch_prefix: str | None = None,
) -> LandingResult:
    """Write every batch in one commit on a short-lived branch and merge it into main.

    Returns the commit id main holds the objects at. Landing byte-identical objects again changes nothing
    and returns main's head (``changed=False``).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("land_batches needs at least one batch")
    paths: list[str] = []
    superseded: list[str] = []
    with store.transaction(branch_prefix or f"landing-{dataset}"[:60]) as tx:
        existing_by_day: dict[str, list[str]] = {}
        for batch in batches:
            if batch.day not in existing_by_day:
                prefix = day_prefix(dataset, batch.day)
                existing_by_day[batch.day] = [stat.path for stat in store.list_objects(tx.branch, prefix)]
            path = landing_path(dataset, batch)
            store.put_object(tx.branch, path, _to_parquet(batch.records.reset_index(drop=True)))
            paths.append(path)
            for old in _superseded(existing_by_day[batch.day], dataset, batch):
                if old not in superseded and old not in paths:
                    store.delete_object(tx.branch, old)
                    superseded.append(old)
        try:
            store.commit_into(tx, message, metadata)
        except NoChangesError:
            tx.unchanged_commit = store.get_commit(tx.branch)
    commit_id = tx.merge_commit_id or tx.last_commit_id
    if superseded:
        logger.info("%s: %d landed object(s) superseded by re-consumed ranges", dataset, len(superseded))
    return LandingResult(commit_id, tuple(paths), tuple(superseded), changed=bool(tx.commits))


def main_commit(store: VersionedStore) -> str:
    """The commit id main points at now (readers pin to it)."""
    store.ensure_repository()
    return store.resolve_ref(store.main_branch)


def landed_days(store: VersionedStore, ref: str, dataset: str) -> dict[str, list[str]]:
    """Day -> landed object paths at ``ref`` (one listing for the whole dataset)."""
    days: dict[str, list[str]] = {}
    try:
        stats = store.list_objects(ref, dataset_prefix(dataset))
    except NotFoundError:
        return days
    root = dataset_prefix(dataset)
    for stat in stats:
        if not stat.path.endswith(".parquet"):
            continue
        day, _, _ = stat.path[len(root) :].partition("/")
        days.setdefault(day, []).append(stat.path)
    return days


def read_landed(store: VersionedStore, ref: str, paths: Iterable[str], record_id: str) -> pd.DataFrame:
    """The records of landed objects, one row per record id (the latest partition/offset wins), Kafka columns dropped.

    Rows come back in (partition, offset) order; callers sort by event time as they need.
    """
    frames = [pd.read_parquet(io.BytesIO(store.get_object(ref, path)), engine="pyarrow") for path in paths]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = frame.sort_values([PARTITION_COLUMN, OFFSET_COLUMN], kind="stable")
    frame = frame.drop_duplicates(subset=[record_id], keep="last")
    return frame.drop(columns=[c for c in LANDING_COLUMNS if c in frame.columns]).reset_index(drop=True)
