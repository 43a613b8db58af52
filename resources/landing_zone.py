"""The landing zone: records consumed from a dataset's raw topic, committed in the versioned store.

Layout: ``landing/<dataset>/<day>/<topic>-<partition>-<first offset>-<last offset>.parquet``, one object per
(event day, topic partition) of one ingestion tick, holding that day's records from the offset range in
platform layout (record id, event time, features, target) plus the Kafka partition and offset of each
record.

Exactly once, object by object: a tick first decides its *cut*, the offset range ``[first, end)`` it takes from
each partition, and object names derive from the cut alone. The cut is recorded beside the objects, in the same
commit, as ``landing-cuts/<dataset>/<topic>/<partition>/<first offset>.json`` (:class:`PartitionCut`). A tick
that starts where a recorded cut starts (the process died after landing, before its cursor was stored) takes
that cut as it is (:func:`find_cut`) instead of cutting again, so a retry never lands a different, overlapping
range, whatever its own limits. :func:`land_batches` refuses an object whose offsets overlap another object of
the same day and partition (:class:`LandingOverlapError`); landing the same cut again rewrites the same objects
and changes nothing.

Readers (the ``raw_<dataset>`` asset) read one day at a commit, concatenate its objects and keep the
latest offset per record id (a provider may publish a record again, corrected). Plain functions over
:class:`~resources.versioned_store.VersionedStore`: no Kafka, no Dagster.
"""

import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from resources.versioned_store import NoChangesError, NotFoundError, VersionedStore, VersionedStoreError

logger = logging.getLogger(__name__)

LANDING_ROOT = "landing"
CUTS_ROOT = "landing-cuts"
PARTITION_COLUMN = "_kafka_partition"
OFFSET_COLUMN = "_kafka_offset"
LANDING_COLUMNS = (PARTITION_COLUMN, OFFSET_COLUMN)


class LandingOverlapError(VersionedStoreError):
    """An object would hold offsets another landed object of the same day and partition already holds."""


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
class PartitionCut:
    """What one tick took from one partition: offsets ``[first_offset, end_offset)``, the records it landed per
    day and the messages it dead-lettered. Recorded with the objects; a retry from ``first_offset`` reuses it."""

    topic: str
    partition: int
    first_offset: int
    end_offset: int
    records_by_day: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "topic": self.topic,
                "partition": self.partition,
                "first_offset": self.first_offset,
                "end_offset": self.end_offset,
                "records_by_day": dict(sorted(self.records_by_day.items())),
                "dead_letters": self.dead_letters,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PartitionCut":
        raw = json.loads(data)
        return cls(
            topic=str(raw["topic"]),
            partition=int(raw["partition"]),
            first_offset=int(raw["first_offset"]),
            end_offset=int(raw["end_offset"]),
            records_by_day={str(day): int(n) for day, n in raw["records_by_day"].items()},
            dead_letters=int(raw["dead_letters"]),
        )


@dataclass(frozen=True)
class LandingResult:
    commit_id: str  # the commit on main that holds the landed objects (merge commit, or main's head if unchanged)
    paths: tuple[str, ...]
    changed: bool


@dataclass(frozen=True)
class ObjectName:
    """What a landed object's name says: its topic partition and offset range (both ends included)."""

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


def cut_path(dataset: str, topic: str, partition: int, first_offset: int) -> str:
    return f"{CUTS_ROOT}/{dataset}/{topic}/{partition}/{first_offset}.json"


def parse_object_name(path: str) -> ObjectName | None:
    """The topic, partition and offsets a landed object's name holds; ``None`` for another name."""
    name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    parts = name.rsplit("-", 3)  # topic names may contain '-'; the last three fields are numbers
    if len(parts) != 4:
        return None
    try:
        return ObjectName(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        return None


def landed_object_bytes(frame: pd.DataFrame) -> bytes:
    """A batch's records as the parquet bytes of its object (deterministic: the same records, the same bytes)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def _overlapping(existing: Iterable[str], dataset: str, batch: LandingBatch) -> list[str]:
    """Other objects of the batch's day and partition holding any of its offsets."""
    own = landing_path(dataset, batch)
    found = []
    for path in existing:
        name = parse_object_name(path)
        if (
            path != own
            and name is not None
            and name.topic == batch.topic
            and name.partition == batch.partition
            and name.first_offset <= batch.last_offset
            and batch.first_offset <= name.last_offset
        ):
            found.append(path)
    return found


def find_cut(
    store: VersionedStore, ref: str, dataset: str, topic: str, partition: int, first_offset: int
) -> PartitionCut | None:
    """The cut recorded at ``ref`` that starts at ``first_offset`` of the partition, if any."""
    try:
        data = store.get_object(ref, cut_path(dataset, topic, partition, first_offset))
    except NotFoundError:
        return None
    return PartitionCut.from_json(data)


def land_batches(
    store: VersionedStore,
    dataset: str,
    batches: Iterable[LandingBatch],
    message: str,
    metadata: Mapping[str, str] | None = None,
    branch_prefix: str | None = None,
    cuts: Iterable[PartitionCut] = (),
) -> LandingResult:
    """Write every batch and cut record in one commit on a short-lived branch and merge it into main.

    Each batch's offset range must be its partition's cut (when cuts are given). Raises
    :class:`LandingOverlapError` (nothing lands) when an object would overlap another one of its day and
    partition. Returns the commit id main holds the objects at; landing byte-identical objects again changes
    nothing and returns main's head (``changed=False``).
    """
    batches = list(batches)
    cuts = list(cuts)
    if not batches:
        raise ValueError("land_batches needs at least one batch")
    by_partition = {(cut.topic, cut.partition): cut for cut in cuts}
    for batch in batches:
        cut = by_partition.get((batch.topic, batch.partition))
        if cuts and (cut is None or (cut.first_offset, cut.end_offset - 1) != (batch.first_offset, batch.last_offset)):
            raise ValueError(f"{batch.topic}[{batch.partition}]: the batch's offsets are not its partition's cut")
    paths: list[str] = []
    with store.transaction(branch_prefix or f"landing-{dataset}"[:60]) as tx:
        existing_by_day: dict[str, list[str]] = {}
        for batch in batches:
            if batch.day not in existing_by_day:
                prefix = day_prefix(dataset, batch.day)
                existing_by_day[batch.day] = [stat.path for stat in store.list_objects(tx.branch, prefix)]
            overlapping = _overlapping(existing_by_day[batch.day], dataset, batch)
            path = landing_path(dataset, batch)
            if overlapping:
                raise LandingOverlapError(
                    f"{path} would hold offsets that {', '.join(overlapping)} already holds: the cursor of the "
                    "ingestion sensor was moved inside a landed range (set it to a cut's end, or clear it)"
                )
            store.put_object(tx.branch, path, landed_object_bytes(batch.records.reset_index(drop=True)))
            paths.append(path)
        for cut in cuts:
            store.put_object(tx.branch, cut_path(dataset, cut.topic, cut.partition, cut.first_offset), cut.to_json())
        try:
            store.commit_into(tx, message, metadata)
        except NoChangesError:
            tx.unchanged_commit = store.get_commit(tx.branch)
    commit_id = tx.merge_commit_id or tx.last_commit_id
    return LandingResult(commit_id, tuple(paths), changed=bool(tx.commits))


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
