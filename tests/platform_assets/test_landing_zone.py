"""The landing zone on the real local versioned store, and the raw asset reading it instead of the source."""

import dagster as dg
import pandas as pd
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.environments import build_resources
from platform_assets.runner import local_instance
from platform_assets.stages import asset_key
from resources import landing_zone
from resources.landing_zone import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    LandingBatch,
    LandingOverlapError,
    PartitionCut,
    find_cut,
    land_batches,
)
from resources.versioned_io_manager import materialized_commit, parquet_to_dataframe, table_path
from riverbed.names import Stage
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.sources import load_source_records
from riverbed.specs import load_specs

DATASET = "machine_failure"
TOPIC = "riverbed.machine_failure.raw"
RAW_KEY = asset_key(Stage.RAW, DATASET)


def _records(ids: list[str], day: str, partition: int, offsets: list[int], torque: float = 40.0) -> pd.DataFrame:
    spec = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
    source = load_source_records(spec).head(len(ids)).copy()
    source[spec.record_id.name] = ids
    source[spec.event_time.name] = pd.Timestamp(f"{day}T12:00:00Z")
    source["torque_nm"] = torque
    source[PARTITION_COLUMN] = partition
    source[OFFSET_COLUMN] = offsets
    return source.reset_index(drop=True)


def _batch(day: str, partition: int, first: int, last: int, ids: list[str], **kwargs) -> LandingBatch:
    records = _records(ids, day, partition, list(range(first, first + len(ids))), **kwargs)
    return LandingBatch(day, TOPIC, partition, first, last, records)


def test_landing_is_one_commit_idempotent_and_refuses_overlapping_ranges(local_settings: RiverbedSettings) -> None:
    store = build_resources(local_settings)["data_store"].get_store()
    cut = PartitionCut(TOPIC, 0, 0, 3, {"2026-10-02": 3}, dead_letters=0)
    first = land_batches(store, DATASET, [_batch("2026-10-02", 0, 0, 2, ["a", "b", "c"])], "land 1", cuts=[cut])
    assert first.changed and first.paths == (
        "landing/machine_failure/2026-10-02/riverbed.machine_failure.raw-0-0-2.parquet",
    )
    assert store.resolve_ref(store.main_branch) == first.commit_id
    assert find_cut(store, first.commit_id, DATASET, TOPIC, 0, 0) == cut
    assert find_cut(store, first.commit_id, DATASET, TOPIC, 0, 3) is None
    assert [stat.path for stat in store.list_objects(first.commit_id, "landing-cuts/")] == [
        "landing-cuts/machine_failure/riverbed.machine_failure.raw/0/0.json"
    ]

    again = land_batches(store, DATASET, [_batch("2026-10-02", 0, 0, 2, ["a", "b", "c"])], "land 1 again", cuts=[cut])
    assert not again.changed and again.commit_id == first.commit_id  # the same cut, the same bytes: nothing new

    # A range that overlaps a landed one (wider, narrower or shifted) is refused and nothing lands.
    for first_offset, last_offset in ((0, 4), (0, 1), (2, 5)):
        ids = [f"r{i}" for i in range(last_offset - first_offset + 1)]
        with pytest.raises(LandingOverlapError, match=r"raw-0-0-2\.parquet"):
            land_batches(store, DATASET, [_batch("2026-10-02", 0, first_offset, last_offset, ids)], "overlap")
    assert store.resolve_ref(store.main_branch) == first.commit_id

    # The next range of the partition, another partition, or the same offsets on another day are fine.
    after = land_batches(
        store,
        DATASET,
        [
            _batch("2026-10-02", 0, 3, 4, ["d", "e"]),
            _batch("2026-10-02", 1, 0, 2, ["f", "g", "h"]),
            _batch("2026-10-03", 0, 3, 4, ["i"]),
        ],
        "land 2",
    )
    days = landing_zone.landed_days(store, after.commit_id, DATASET)
    assert sorted(p.rsplit("/", 1)[-1] for p in days["2026-10-02"]) == [
        "riverbed.machine_failure.raw-0-0-2.parquet",
        "riverbed.machine_failure.raw-0-3-4.parquet",
        "riverbed.machine_failure.raw-1-0-2.parquet",
    ]
    # The first commit still holds what it held (readers pinned to it are unaffected).
    assert landing_zone.landed_days(store, first.commit_id, DATASET)["2026-10-02"] == list(first.paths)


def test_a_batch_must_match_its_partitions_cut(local_settings: RiverbedSettings) -> None:
    store = build_resources(local_settings)["data_store"].get_store()
    with pytest.raises(ValueError, match="cut"):
        land_batches(
            store,
            DATASET,
            [_batch("2026-10-02", 0, 0, 2, ["a", "b", "c"])],
            "land",
            cuts=[PartitionCut(TOPIC, 0, 0, 5, {"2026-10-02": 3})],
        )


def test_read_keeps_the_latest_offset_per_record_id(local_settings: RiverbedSettings) -> None:
    store = build_resources(local_settings)["data_store"].get_store()
    land_batches(store, DATASET, [_batch("2026-10-03", 1, 0, 1, ["x", "y"], torque=10.0)], "old")
    result = land_batches(store, DATASET, [_batch("2026-10-03", 1, 2, 3, ["y", "z"], torque=20.0)], "newer")
    paths = landing_zone.landed_days(store, result.commit_id, DATASET)["2026-10-03"]
    frame = landing_zone.read_landed(store, result.commit_id, paths, "record_id")
    assert sorted(frame["record_id"]) == ["x", "y", "z"]
    assert frame.set_index("record_id")["torque_nm"].to_dict() == {"x": 10.0, "y": 20.0, "z": 20.0}
    assert PARTITION_COLUMN not in frame.columns and OFFSET_COLUMN not in frame.columns


@pytest.mark.slow
def test_raw_asset_reads_landed_days_and_the_source_for_the_others(local_settings: RiverbedSettings) -> None:
    resources = build_resources(local_settings)
    store = resources["data_store"].get_store()
    landed = land_batches(store, DATASET, [_batch("2026-10-02", 0, 0, 3, ["k1", "k2", "k3", "k2"])], "land")
    defs = build_definitions(local_settings)
    instance = local_instance(local_settings)
    raw = defs.resolve_assets_def(RAW_KEY)
    for day, expect_landed in (("2026-10-02", True), ("2026-10-03", False)):
        result = dg.materialize([raw], instance=instance, resources=resources, partition_key=day)
        assert result.success
        commit, _ = materialized_commit(instance, RAW_KEY, day)
        frame = parquet_to_dataframe(store.get_object(commit, table_path(RAW_KEY, day)))
        metadata = result.asset_materializations_for_node(raw.node_def.name)[0].metadata
        if expect_landed:
            assert sorted(frame["record_id"]) == ["k1", "k2", "k3"]
            assert metadata["landing_commit_id"].value == landed.commit_id
        else:
            assert len(frame) > 100 and "landing_commit_id" not in metadata  # the generator's records of that day
