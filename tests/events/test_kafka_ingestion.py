"""The Kafka ingestion sensor against librdkafka's mock cluster, the local versioned store and a real instance.

One test per ordering of events (first messages, nothing new, a landed day gets more, days out of order across
partitions), bad messages to the DLQ, an unreachable broker, and crashes (SIGKILL-style exits) during
consumption and after landing combined with ticks cut by their time limit: the landed objects (not a
de-duplicated read of them) hold every produced record exactly once, then the raw partitions are materialised.
"""

import io
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.definitions import build_definitions
from platform_assets.environments import build_resources
from platform_assets.runner import local_instance
from platform_assets.stages import asset_key
from resources import landing_zone
from resources.versioned_io_manager import materialized_commit, parquet_to_dataframe, table_path
from resources.versioned_store import VersionedStore
from riverbed.events import DeadLetter
from riverbed.generators import generate_machine_failure
from riverbed.names import Stage, TopicKind, topic_name
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.specs import DatasetSpec, load_specs
from sensors.kafka_ingestion import (
    FAULT_AFTER_LANDING_ENV,
    FAULT_DURING_CONSUMPTION_ENV,
    FAULT_TIME_LIMIT_AFTER_ENV,
    IngestionLimits,
    build_kafka_ingestion_sensor,
    parse_cursor,
)

DATASET = "machine_failure"


@pytest.fixture(scope="session")
def bootstrap(kafka_bootstrap: str) -> str:
    """The session's mock cluster (tests/events/conftest.py)."""
    return kafka_bootstrap


@dataclass
class Env:
    settings: RiverbedSettings
    spec: DatasetSpec
    instance: dg.DagsterInstance
    resources: dict

    @property
    def store(self) -> VersionedStore:
        return self.resources["data_store"].get_store()

    @property
    def topic(self) -> str:
        return topic_name(DATASET, TopicKind.RAW, prefix=self.settings.kafka_topic_prefix)

    def tick(self, cursor: str | None, limits: IngestionLimits | None = None):
        sensor = build_kafka_ingestion_sensor(self.spec, build_dataset_definitions(self.spec).ingest_job, limits)
        resources = {"data_store": self.resources["data_store"], "kafka": self.resources["kafka"]}
        with dg.build_sensor_context(cursor=cursor, instance=self.instance, resources=resources) as context:
            return sensor(context)


def _settings(home: Path, bootstrap: str) -> RiverbedSettings:
    prefix = f"t{uuid.uuid4().hex[:10]}"  # topics are per test: the mock cluster lives for the session
    return RiverbedSettings(
        home=home, specs_dirs=[PROJECT_ROOT / "datasets"], kafka_bootstrap_servers=bootstrap, kafka_topic_prefix=prefix
    )


@pytest.fixture
def env(tmp_path: Path, bootstrap: str) -> Env:
    settings = _settings(tmp_path / "home", bootstrap)
    spec = load_specs(settings.specs_dirs)[DATASET]
    return Env(settings, spec, dg.DagsterInstance.ephemeral(), build_resources(settings))


def _rows(spec: DatasetSpec, days: list[str], per_day: int, marker: str, seed: int = 1) -> pd.DataFrame:
    """Valid generated records, ``per_day`` for each day (hours spread over the day), ids ``mf-<marker><n>``."""
    frame = generate_machine_failure(spec, per_day * len(days), seed).copy()
    frame[spec.record_id.name] = [f"mf-{marker}{n}" for n in range(len(frame))]
    step = 86_400 // max(per_day, 1)
    stamps = [pd.Timestamp(f"{day}T00:00:00Z") + pd.Timedelta(seconds=step * i) for day in days for i in range(per_day)]
    frame[spec.event_time.name] = stamps
    return frame


def _produce(env: Env, rows: pd.DataFrame, extra: list[tuple[bytes | None, bytes]] = ()) -> None:
    from riverbed.event_schemas import raw_message

    producer = Producer({"bootstrap.servers": env.settings.kafka_bootstrap_servers, "linger.ms": 5})
    for row in rows.to_dict("records"):
        producer.produce(env.topic, key=str(row[env.spec.record_id.name]).encode(), value=raw_message(env.spec, row))
    for key, value in extra:
        producer.produce(env.topic, key=key, value=value)
    assert producer.flush(10) == 0


def _end_offsets(env: Env) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": env.settings.kafka_bootstrap_servers, "group.id": "watermarks"})
    try:
        partitions = consumer.list_topics(env.topic, timeout=10).topics[env.topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(env.topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def _landed_ids(env: Env) -> dict[str, list[str]]:
    """Day -> record ids landed at main's head (after the per-record-id dedup readers apply)."""
    store = env.store
    commit = landing_zone.main_commit(store)
    days = landing_zone.landed_days(store, commit, DATASET)
    return {
        day: sorted(landing_zone.read_landed(store, commit, paths, env.spec.record_id.name)[env.spec.record_id.name])
        for day, paths in days.items()
    }


def _expected(rows: pd.DataFrame, spec: DatasetSpec) -> dict[str, list[str]]:
    days = rows[spec.event_time.name].dt.strftime("%Y-%m-%d")
    return {day: sorted(group) for day, group in rows[spec.record_id.name].groupby(days)}


def test_first_messages_land_in_one_commit_then_nothing_new_skips(env: Env) -> None:
    days = ["2026-10-02", "2026-10-03", "2026-10-05"]
    rows = _rows(env.spec, days, 40, "a")
    _produce(env, rows)

    result = env.tick(None)
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == days
    assert parse_cursor(result.cursor) == _end_offsets(env)
    assert _landed_ids(env) == _expected(rows, env.spec)
    head = env.store.get_commit(env.store.main_branch)
    landing_commits = [c for c in env.store.log(env.store.main_branch) if c.metadata.get("riverbed.source") == "kafka"]
    assert len(landing_commits) == 1 and landing_commits[0].metadata["riverbed.records"] == "120"
    for request in result.run_requests:
        assert request.run_key == f"{DATASET}:{request.partition_key}:{head.id}"
        assert request.tags["riverbed/reason"] == "new_data"
        assert request.tags["riverbed/records"] == "40" and request.tags["riverbed/dead_letters"] == "0"

    again = env.tick(result.cursor)
    assert isinstance(again, dg.SkipReason) and "no new messages" in (again.skip_message or "")
    assert env.store.resolve_ref(env.store.main_branch) == head.id


def test_more_records_for_a_landed_day_request_that_day_only(env: Env) -> None:
    first = _rows(env.spec, ["2026-10-02", "2026-10-03"], 30, "a")
    _produce(env, first)
    cursor = env.tick(None).cursor

    later = _rows(env.spec, ["2026-10-03"], 12, "b")
    _produce(env, later)
    result = env.tick(cursor)
    assert [r.partition_key for r in result.run_requests] == ["2026-10-03"]
    assert result.run_requests[0].tags["riverbed/records"] == "12"
    assert parse_cursor(result.cursor) == _end_offsets(env)
    landed = _landed_ids(env)
    assert landed["2026-10-03"] == sorted([*_expected(first, env.spec)["2026-10-03"], *later["record_id"]])
    assert len(landed["2026-10-02"]) == 30
    day_objects = landing_zone.landed_days(env.store, env.store.main_branch, DATASET)["2026-10-03"]
    assert len(day_objects) > len({p.rsplit("-", 3)[-3] for p in day_objects})  # a new object, old ones kept


def test_days_out_of_event_time_order_across_partitions_land_on_their_day(env: Env) -> None:
    rows = _rows(env.spec, ["2026-10-06", "2026-10-07", "2026-10-08"], 25, "c")
    shuffled = rows.sample(frac=1.0, random_state=3).reset_index(drop=True)  # keys spread over partitions
    _produce(env, shuffled)
    result = env.tick(None, IngestionLimits(max_records=40))  # several ticks, each seeing a mix of days
    requested: set[str] = set()
    while isinstance(result, dg.SensorResult):
        requested |= {r.partition_key for r in result.run_requests}
        cursor = result.cursor
        result = env.tick(cursor, IngestionLimits(max_records=40))
    assert requested == {"2026-10-06", "2026-10-07", "2026-10-08"}
    assert parse_cursor(cursor) == _end_offsets(env)
    assert _landed_ids(env) == _expected(rows, env.spec)


def test_bad_messages_go_to_the_dlq_with_reasons_and_the_rest_lands(env: Env) -> None:
    from riverbed.event_schemas import raw_message

    good = _rows(env.spec, ["2026-10-04"], 20, "g")
    bad_row = _rows(env.spec, ["2026-10-04"], 1, "bad").iloc[0].to_dict()
    schema_breaking = json.loads(raw_message(env.spec, bad_row))
    schema_breaking["torque_nm"] = "lots"
    missing_field = json.loads(raw_message(env.spec, bad_row))
    missing_field.pop("tool_wear_min")
    too_early = _rows(env.spec, ["2020-01-01"], 1, "early").iloc[0].to_dict()
    bad = [
        (b"k1", b"{not json"),
        (b"k2", b"\xff\xfe\x00binary"),
        (b"k3", json.dumps(schema_breaking).encode()),
        (b"k4", json.dumps(missing_field).encode()),
        (b"k5", raw_message(env.spec, too_early)),
    ]
    _produce(env, good, extra=bad)

    result = env.tick(None)
    assert [r.partition_key for r in result.run_requests] == ["2026-10-04"]
    assert result.run_requests[0].tags["riverbed/dead_letters"] == "5"
    assert _landed_ids(env) == _expected(good, env.spec)
    assert parse_cursor(result.cursor) == _end_offsets(env)  # bad messages never block their partition

    dlq = topic_name(DATASET, TopicKind.DLQ, prefix=env.settings.kafka_topic_prefix)
    consumer = Consumer(
        {
            "bootstrap.servers": env.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([dlq])
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 15
    while len(letters) < 5 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            letters.append(DeadLetter.model_validate_json(message.value()))
    consumer.close()
    by_key = {letter.key: letter for letter in letters}
    assert sorted(by_key) == ["k1", "k2", "k3", "k4", "k5"]
    assert all(letter.topic == env.topic and letter.reason for letter in letters)
    assert "torque_nm" in by_key["k3"].reason and "tool_wear_min" in by_key["k4"].reason
    assert "event_time" in by_key["k5"].reason and "outside" in by_key["k5"].reason
    assert by_key["k1"].value == "{not json"


def test_unreachable_broker_skips_quickly_and_keeps_the_cursor(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    settings = _settings(tmp_path / "home", f"127.0.0.1:{port}")
    spec = load_specs(settings.specs_dirs)[DATASET]
    env = Env(settings, spec, dg.DagsterInstance.ephemeral(), build_resources(settings))
    started = time.monotonic()
    result = env.tick('{"0": 5}', IngestionLimits(connect_timeout_seconds=3.0))
    assert time.monotonic() - started < 10
    assert isinstance(result, dg.SkipReason) and "unreachable" in (result.skip_message or "")


_TICK_SCRIPT = """
import json, sys
import dagster as dg
from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.environments import build_resources
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from sensors.kafka_ingestion import IngestionLimits, build_kafka_ingestion_sensor

settings = RiverbedSettings.model_validate_json(sys.argv[1])
cursor = sys.argv[2] or None
spec = load_specs(settings.specs_dirs)["machine_failure"]
ingest_job = build_dataset_definitions(spec).ingest_job
sensor = build_kafka_ingestion_sensor(spec, ingest_job, IngestionLimits(max_records=int(sys.argv[3])))
resources = build_resources(settings)
needed = {"data_store": resources["data_store"], "kafka": resources["kafka"]}
with dg.build_sensor_context(cursor=cursor, resources=needed) as context:
    result = sensor(context)
sys.stdout.write(json.dumps({"cursor": getattr(result, "cursor", None)}))
"""


def _tick_in_subprocess(
    env: Env, cursor: str | None, max_records: int, fault: dict[str, str]
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _TICK_SCRIPT, env.settings.model_dump_json(), cursor or "", str(max_records)],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
            **fault,
        },
        capture_output=True,
        timeout=120,
    )


def _positions(env: Env) -> dict[tuple[int, int], tuple[str, str]]:
    """(partition, offset) -> (record id, event day) of every message on the raw topic, read back from the broker."""
    ends = _end_offsets(env)
    consumer = Consumer(
        {"bootstrap.servers": env.settings.kafka_bootstrap_servers, "group.id": f"read-{uuid.uuid4().hex}"}
    )
    consumer.assign([TopicPartition(env.topic, p, 0) for p in ends])
    found: dict[tuple[int, int], tuple[str, str]] = {}
    deadline = time.monotonic() + 30
    while len(found) < sum(ends.values()) and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is None:
                record = json.loads(message.value())
                found[(message.partition(), message.offset())] = (record["sample_id"], record["event_time"][:10])
    consumer.close()
    assert len(found) == sum(ends.values())
    return found


def _objects(env: Env) -> dict[str, bytes]:
    """Every landed object at main's head, by path, as bytes (no reader's de-duplication)."""
    store = env.store
    commit = landing_zone.main_commit(store)
    days = landing_zone.landed_days(store, commit, DATASET)
    return {path: store.get_object(commit, path) for paths in days.values() for path in paths}


def _assert_exact_objects(objects: dict[str, bytes], positions: dict[tuple[int, int], tuple[str, str]]) -> None:
    """Per partition, the objects' offset ranges tile [0, end) without overlap, and every object holds exactly the
    records of its range and day: each produced record lands in exactly one object."""
    ranges: dict[int, set[tuple[int, int]]] = {}
    for path, data in objects.items():
        day = path.split("/")[-2]
        name = landing_zone.parse_object_name(path)
        assert name is not None and name.topic.endswith(".raw"), path
        ranges.setdefault(name.partition, set()).add((name.first_offset, name.last_offset))
        frame = pd.read_parquet(io.BytesIO(data))
        expected = sorted(
            record_id
            for (partition, offset), (record_id, record_day) in positions.items()
            if partition == name.partition and name.first_offset <= offset <= name.last_offset and record_day == day
        )
        assert len(frame) == len(expected), path
        assert sorted(frame["record_id"]) == expected, path
        assert frame[landing_zone.OFFSET_COLUMN].between(name.first_offset, name.last_offset).all(), path
    ends: dict[int, int] = {}
    for partition, offset in positions:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    for partition, end in ends.items():
        tiles = sorted(ranges.get(partition, set()))
        assert tiles and tiles[0][0] == 0 and tiles[-1][1] == end - 1, (partition, tiles)
        for (_, last), (first, _) in itertools.pairwise(tiles):
            assert first == last + 1, (partition, tiles)  # contiguous, no overlap
    landed = [record_id for data in objects.values() for record_id in pd.read_parquet(io.BytesIO(data))["record_id"]]
    assert len(landed) == len(set(landed)) == len(positions)


@pytest.mark.slow
def test_crashes_and_time_limits_land_every_record_in_exactly_one_object(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = ["2026-10-10", "2026-10-11", "2026-10-12"]
    rows = _rows(env.spec, days, 1667, "z")[:5000]
    _produce(env, rows)
    positions = _positions(env)

    # Killed while consuming: nothing landed, nothing recorded, no cursor stored.
    killed = _tick_in_subprocess(env, None, 3000, {FAULT_DURING_CONSUMPTION_ENV: "1500"})
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert _objects(env) == {}
    assert env.store.list_objects(env.store.main_branch, landing_zone.CUTS_ROOT + "/") == []

    # A tick cut by its time limit after 1200 messages, killed right after its landing commit: the cursor is lost.
    killed = _tick_in_subprocess(env, None, 100_000, {FAULT_TIME_LIMIT_AFTER_ENV: "1200", FAULT_AFTER_LANDING_ENV: "1"})
    assert killed.returncode == 9, killed.stderr[-2000:]
    first = _objects(env)
    assert sum(len(pd.read_parquet(io.BytesIO(data))) for data in first.values()) == 1200

    # The retry starts from the same (empty) cursor and is cut even shorter by its own time limit (300 messages).
    # It takes the landed cut over instead of landing 0..299 again beside it, then reads 300 new messages.
    monkeypatch.setenv(FAULT_TIME_LIMIT_AFTER_ENV, "300")
    retry = env.tick(None)
    monkeypatch.delenv(FAULT_TIME_LIMIT_AFTER_ENV)
    assert isinstance(retry, dg.SensorResult)
    second = _objects(env)
    assert {path: second[path] for path in first} == first  # the same keys, byte for byte
    assert sum(len(pd.read_parquet(io.BytesIO(data))) for data in second.values()) == 1500
    assert sum(int(r.tags["riverbed/records"]) for r in retry.run_requests) == 1500  # recovered days requested too
    assert sum(parse_cursor(retry.cursor).values()) == 1500

    # The retry's cursor is lost as well (a crash before Dagster stored it): the next tick, with a narrower
    # max_records, follows both recorded cuts and lands only what comes after them.
    again = env.tick(None, IngestionLimits(max_records=100))
    assert isinstance(again, dg.SensorResult)
    third = _objects(env)
    assert {path: third[path] for path in second} == second
    assert sum(parse_cursor(again.cursor).values()) == 1600

    cursor: str | None = again.cursor
    requested: set[str] = {r.partition_key for r in again.run_requests}
    for _ in range(10):
        result = env.tick(cursor, IngestionLimits(max_records=3000))
        if isinstance(result, dg.SkipReason):
            break
        requested |= {r.partition_key for r in result.run_requests}
        cursor = result.cursor
    assert parse_cursor(cursor) == _end_offsets(env)
    assert requested == set(days)
    _assert_exact_objects(_objects(env), positions)

    # Materialise the requested partitions (one run over the range, as a backfill would).
    instance = local_instance(env.settings)
    run = (
        build_definitions(env.settings)
        .resolve_job_def(f"ingest_{DATASET}")
        .execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
            raise_on_error=False,
        )
    )
    raw_steps = [e for e in run.all_events if e.event_type_value == "STEP_SUCCESS" and e.step_key == f"raw_{DATASET}"]
    assert raw_steps, "the raw step did not succeed"
    ids: list[str] = []
    for day in days:
        commit, _ = materialized_commit(instance, asset_key(Stage.RAW, DATASET), day)
        frame = parquet_to_dataframe(env.store.get_object(commit, table_path(asset_key(Stage.RAW, DATASET), day)))
        ids.extend(frame[env.spec.record_id.name])
    assert len(ids) == len(set(ids)) == 5000
    assert set(ids) == set(rows[env.spec.record_id.name])


def test_a_tick_of_only_bad_messages_moves_the_cursor_without_runs(env: Env) -> None:
    _produce(env, _rows(env.spec, ["2026-10-04"], 1, "none").iloc[:0], extra=[(b"k", b"[1, 2"), (b"k", b"null")])
    result = env.tick(None)
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    assert parse_cursor(result.cursor) == _end_offsets(env)
    assert _landed_ids(env) == {}
