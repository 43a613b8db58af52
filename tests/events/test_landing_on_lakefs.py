"""The Kafka landing on the lakeFS backend: the ingestion sensor over librdkafka's mock cluster lands raw messages
in lakeFS (played by the API double, every request and response validated against lakeFS's published API), and
the requested raw partitions materialise from that landing.

Values are read back from the double's own state: the landing commit on ``main`` and its metadata, the object
keys under ``landing/``, and the records inside each committed Parquet object.
"""

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from confluent_kafka import Producer

from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.definitions import build_definitions
from platform_assets.environments import build_resources
from platform_assets.runner import local_instance
from riverbed.event_schemas import raw_message
from riverbed.generators import generate_machine_failure
from riverbed.names import TopicKind, topic_name
from riverbed.specs import DatasetSpec, load_specs
from sensors.kafka_ingestion import build_kafka_ingestion_sensor, parse_cursor
from tests.lakefs_double import LakeFSDouble, run_lakefs_double
from tests.lakefs_double.platform import compose_settings_on_lakefs, main_history, object_bytes, repository_state

pytestmark = pytest.mark.slow

DATASET = "machine_failure"
DAYS = ["2026-10-02", "2026-10-03"]
PER_DAY = 30
RE_LANDED = re.compile(rf"^landing/{DATASET}/(\d{{4}}-\d{{2}}-\d{{2}})/(.+)-(\d+)-(\d+)-(\d+)\.parquet$")


@pytest.fixture(scope="module")
def double() -> Iterator[LakeFSDouble]:
    with run_lakefs_double() as running:
        yield running


def _rows(spec: DatasetSpec) -> pd.DataFrame:
    """``PER_DAY`` valid generated records on each of ``DAYS``, ids ``mf-l<n>``."""
    frame = generate_machine_failure(spec, PER_DAY * len(DAYS), 7).copy()
    frame[spec.record_id.name] = [f"mf-l{n}" for n in range(len(frame))]
    step = 86_400 // PER_DAY
    frame[spec.event_time.name] = [
        pd.Timestamp(f"{day}T00:00:00Z") + pd.Timedelta(seconds=step * i) for day in DAYS for i in range(PER_DAY)
    ]
    return frame


def test_kafka_messages_land_in_lakefs_and_raw_partitions_materialise_from_there(
    double: LakeFSDouble, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = compose_settings_on_lakefs(
        monkeypatch,
        double,
        tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=f"lk{uuid.uuid4().hex[:8]}",
    )
    spec = load_specs(settings.specs_dirs)[DATASET]
    resources = build_resources(settings)
    assert resources["data_store"].backend == "lakefs"
    topic = topic_name(DATASET, TopicKind.RAW, prefix=settings.kafka_topic_prefix)
    rows = _rows(spec)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for row in rows.to_dict("records"):
        producer.produce(topic, key=str(row[spec.record_id.name]).encode(), value=raw_message(spec, row))
    assert producer.flush(10) == 0

    sensor = build_kafka_ingestion_sensor(spec, build_dataset_definitions(spec).ingest_job)
    instance = local_instance(settings)
    sensor_resources = {"data_store": resources["data_store"], "kafka": resources["kafka"]}
    with dg.build_sensor_context(cursor=None, instance=instance, resources=sensor_resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result
    double.assert_no_violations()

    # One landing commit on main, merged from its transaction branch, with the Kafka provenance in its metadata.
    repo = repository_state(double, settings)
    assert set(repo.branches) == {"main"}
    head = repo.commits[repo.branches["main"].commit_id]
    landings = [c for c in main_history(repo) if c.metadata.get("riverbed.source") == "kafka"]
    assert len(landings) == 1
    (landing,) = landings
    assert landing.metadata["riverbed.topic"] == topic
    assert landing.metadata["riverbed.records"] == str(len(rows))
    assert landing.metadata["riverbed.days"] == ",".join(DAYS)
    assert head.parents[1] == landing.id  # main's head is the merge of the landing branch

    # The objects under landing/ hold exactly the produced records, each in the object its name says.
    landed = {path: entry for path, entry in head.tree.items() if path.startswith("landing/")}
    assert landed and all(RE_LANDED.match(path) for path in landed)
    ids_by_day: dict[str, list[str]] = {}
    for path in landed:
        day, object_topic, partition, first, last = RE_LANDED.match(path).groups()  # type: ignore[union-attr]
        frame = pd.read_parquet(io.BytesIO(object_bytes(repo, head.id, path)))
        assert object_topic == topic and len(frame) > 0
        assert set(frame["_kafka_partition"]) == {int(partition)}
        assert int(first) <= frame["_kafka_offset"].min() <= frame["_kafka_offset"].max() <= int(last)
        assert set(frame[spec.event_time.name].astype(str).str[:10]) == {day}
        ids_by_day.setdefault(day, []).extend(frame[spec.record_id.name])
    expected = {day: sorted(rows[spec.record_id.name][i * PER_DAY : (i + 1) * PER_DAY]) for i, day in enumerate(DAYS)}
    assert {day: sorted(ids) for day, ids in ids_by_day.items()} == expected

    assert sorted(request.partition_key for request in result.run_requests) == DAYS
    for request in result.run_requests:
        assert request.run_key == f"{DATASET}:{request.partition_key}:{head.id}"
        assert request.tags["riverbed/records"] == str(PER_DAY)
    assert sum(parse_cursor(result.cursor).values()) == len(rows)

    # Nothing new: the next tick skips and lakeFS sees no new commit.
    with dg.build_sensor_context(cursor=result.cursor, instance=instance, resources=sensor_resources) as context:
        again = sensor(context)
    assert isinstance(again, dg.SkipReason)
    assert repo.branches["main"].commit_id == head.id

    # The requested days materialise from the landing commit: one raw commit per day with those records.
    run = (
        build_definitions(settings)
        .resolve_job_def(f"ingest_{DATASET}")
        .execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
            raise_on_error=False,
        )
    )
    assert run.success
    double.assert_no_violations()
    raw_commits = {
        c.metadata["dagster.partition_key"]: c
        for c in main_history(repo)
        if c.metadata.get("dagster.asset_key") == f"raw_{DATASET}"
    }
    assert sorted(raw_commits) == DAYS
    for day, commit in raw_commits.items():
        assert commit.metadata["dagster.run_id"] == run.run_id
        frame = pd.read_parquet(io.BytesIO(object_bytes(repo, commit.id, f"tables/raw_{DATASET}/{day}.parquet")))
        assert commit.metadata["riverbed.rows"] == str(len(frame)) == str(PER_DAY)
        assert sorted(frame[spec.record_id.name]) == expected[day]
