"""The pipeline metrics exporter against a real Dagster instance (SQLite, in a temporary directory) and the librdkafka
mock cluster: exact run, tick, lag and dead-letter values; a Kafka that does not answer and a Dagster storage that
hangs cost one bounded scrape and a counted, logged error; the CLI serves them over HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from confluent_kafka import Producer
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.sensor_definition import SensorType
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    ScheduleInstigatorData,
    SensorInstigatorData,
    TickData,
    TickStatus,
)
from dagster._core.test_utils import create_run_for_test
from dagster_shared.error import SerializableErrorInfo
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from platform_assets.pipeline_metrics import TICK_WINDOW_SECONDS, PipelineMetrics, consecutive_failures, lag_records
from riverbed.cli import processes
from riverbed.cli.mlserver_process import free_port
from riverbed.names import TopicKind, topic_name
from riverbed.settings import PROJECT_ROOT
from tests.deploy.system_tools import require_tool
from tests.scratch_postgres import create_database, drop_database

pytestmark = pytest.mark.timeout(120)

SUCCESS, FAILURE, STARTED = dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.STARTED
REPOSITORY = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("riverbed"), "__repository__")
DOWN_KAFKA = {"bootstrap.servers": "127.0.0.1:9"}  # the discard port: nothing listens


# --- fixtures and helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    """A librdkafka mock cluster (a real Kafka-protocol broker on 127.0.0.1) for this module."""
    handle = Producer({"test.mock.num.brokers": 1})
    brokers = handle.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    handle.flush(5)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """An instance on SQLite in a temporary directory (``riverbed dev``'s storage)."""
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as found:
        yield found


@pytest.fixture(params=["sqlite", "postgres"])
def any_instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """The same on SQLite, and on a fresh database of the machine's PostgreSQL (dagster-postgres: ``riverbed up``'s
    and production's storage)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("instance")
        return
    name, _ = create_database("riverbed_exporter")
    home = tmp_path / "dagster-postgres"
    home.mkdir()
    storage = {"postgres": {"postgres_url": f"postgresql://postgres@127.0.0.1:5432/{name}"}}
    (home / "dagster.yaml").write_text(json.dumps({"storage": storage, "telemetry": {"enabled": False}}))
    try:
        with dg.DagsterInstance.from_config(str(home)) as found:
            yield found
    finally:
        drop_database(name)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def registry_of(metrics: PipelineMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metrics)
    return registry


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def values(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[tuple[str, ...], float]:
    """The samples of ``name``: label values (in label-name order) -> value."""
    return {tuple(value for _, value in labels): v for (found, labels), v in scrape.items() if found == name}


def add_instigator(
    instance: dg.DagsterInstance, name: str, kind: InstigatorType = InstigatorType.SENSOR, cursor: str | None = None
) -> InstigatorState:
    origin = RemoteInstigatorOrigin(REPOSITORY, name)
    data = (
        SensorInstigatorData(cursor=cursor, min_interval=10, sensor_type=SensorType.STANDARD)
        if kind == InstigatorType.SENSOR
        else ScheduleInstigatorData("*/15 * * * *")
    )
    state = InstigatorState(origin, kind, InstigatorStatus.RUNNING, data)
    if instance.get_instigator_state(state.instigator_origin_id, state.selector_id) is not None:
        return instance.update_instigator_state(state)  # the sensor stored a new cursor
    return instance.add_instigator_state(state)


def add_tick(instance: dg.DagsterInstance, state: InstigatorState, status: TickStatus, timestamp: float) -> None:
    instance.create_tick(
        TickData(
            instigator_origin_id=state.instigator_origin_id,
            instigator_name=state.instigator_name,
            instigator_type=state.instigator_type,
            status=status,
            timestamp=timestamp,
            selector_id=state.selector_id,
            run_ids=[],
            run_keys=[],
            error=SerializableErrorInfo("KafkaException: broker down", [], "KafkaException")
            if status == TickStatus.FAILURE
            else None,
        )
    )


def produce(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition, count in per_partition.items():
        for index in range(count):
            producer.produce(topic, value=f"message {index}".encode(), partition=partition)
    assert producer.flush(10) == 0


def no_kafka() -> dict[str, str]:
    raise RuntimeError("no Kafka configured: set RIVERBED_KAFKA_BOOTSTRAP_SERVERS")


# --- Dagster: runs and ticks ---------------------------------------------------------------------------------------


def test_runs_are_counted_by_job_and_status_with_zeros_for_known_jobs(any_instance: dg.DagsterInstance) -> None:
    instance = any_instance
    for status, count in ((FAILURE, 3), (SUCCESS, 5), (STARTED, 1)):
        for _ in range(count):
            create_run_for_test(instance, job_name="ingest_salary_band", status=status)
    create_run_for_test(instance, job_name="train_salary_band", status=FAILURE)
    create_run_for_test(instance, job_name="adhoc_job", status=dg.DagsterRunStatus.CANCELED)
    create_run_for_test(
        instance,
        job_name="train_salary_band",
        status=dg.DagsterRunStatus.QUEUED,
        remote_job_origin=RemoteJobOrigin(REPOSITORY, "train_salary_band"),  # a queued run says where to launch it
    )

    scrape = samples(registry_of(PipelineMetrics(["salary_band"], lambda: instance, no_kafka)))

    finished = values(scrape, "riverbed_dagster_runs_total")
    assert finished[("ingest_salary_band", "FAILURE")] == 3
    assert finished[("ingest_salary_band", "SUCCESS")] == 5
    assert finished[("ingest_salary_band", "CANCELED")] == 0
    assert finished[("train_salary_band", "FAILURE")] == 1
    assert finished[("train_salary_band", "SUCCESS")] == 0
    assert finished[("adhoc_job", "CANCELED")] == 1  # a job of no known dataset still counts
    # every job of every known dataset has its three finished statuses, even before its first run
    for job in ("ingest", "train", "full", "monitor"):
        for finished_status in ("SUCCESS", "FAILURE", "CANCELED"):
            assert (f"{job}_salary_band", finished_status) in finished
    assert len(finished) == 4 * 3 + 1
    in_progress = values(scrape, "riverbed_dagster_runs_in_progress")
    assert in_progress[("ingest_salary_band", "STARTED")] == 1
    assert in_progress[("train_salary_band", "QUEUED")] == 1
    assert in_progress[("monitor_salary_band", "QUEUED")] == 0
    assert not {status for _, status in in_progress} & {"SUCCESS", "FAILURE", "CANCELED"}
    # Kafka is not configured: counted, not silent, and the Dagster half still served
    errors = values(scrape, "riverbed_pipeline_exporter_collect_errors_total")
    assert errors[("not_configured", "kafka")] == 1 and errors[("error", "dagster")] == 0
    assert values(scrape, "riverbed_pipeline_exporter_up") == {("dagster",): 1, ("kafka",): 0}


def test_ticks_of_the_last_hour_and_consecutive_failures(any_instance: dg.DagsterInstance) -> None:
    instance = any_instance
    now = time.time()
    failing = add_instigator(instance, "kafka_ingest_salary_band")
    add_tick(instance, failing, TickStatus.FAILURE, now - 2 * TICK_WINDOW_SECONDS)  # outside the window
    add_tick(instance, failing, TickStatus.SUCCESS, now - 600)
    for offset in (500, 400, 300):
        add_tick(instance, failing, TickStatus.FAILURE, now - offset)
    add_tick(instance, failing, TickStatus.STARTED, now - 5)  # in progress: neither a failure nor a recovery
    recovered = add_instigator(instance, "kafka_labels_salary_band")
    for offset, status in ((300, TickStatus.FAILURE), (200, TickStatus.FAILURE), (100, TickStatus.SKIPPED)):
        add_tick(instance, recovered, status, now - offset)
    schedule = add_instigator(instance, "monitor_salary_band_schedule", InstigatorType.SCHEDULE)
    add_tick(instance, schedule, TickStatus.FAILURE, now - 60)
    add_instigator(instance, "retrain_salary_band")  # never ticked

    scrape = samples(registry_of(PipelineMetrics(["salary_band"], lambda: instance, no_kafka)))

    assert values(scrape, "riverbed_dagster_ticks_last_hour") == {
        ("kafka_ingest_salary_band", "FAILURE", "sensor"): 3,
        ("kafka_ingest_salary_band", "SKIPPED", "sensor"): 0,
        ("kafka_ingest_salary_band", "STARTED", "sensor"): 1,
        ("kafka_ingest_salary_band", "SUCCESS", "sensor"): 1,
        ("kafka_labels_salary_band", "FAILURE", "sensor"): 2,
        ("kafka_labels_salary_band", "SKIPPED", "sensor"): 1,
        ("kafka_labels_salary_band", "SUCCESS", "sensor"): 0,
        ("monitor_salary_band_schedule", "FAILURE", "schedule"): 1,
        ("monitor_salary_band_schedule", "SKIPPED", "schedule"): 0,
        ("monitor_salary_band_schedule", "SUCCESS", "schedule"): 0,
        ("retrain_salary_band", "FAILURE", "sensor"): 0,
        ("retrain_salary_band", "SKIPPED", "sensor"): 0,
        ("retrain_salary_band", "SUCCESS", "sensor"): 0,
    }
    assert values(scrape, "riverbed_dagster_tick_failures_consecutive") == {
        ("kafka_ingest_salary_band", "sensor"): 3,
        ("kafka_labels_salary_band", "sensor"): 0,
        ("monitor_salary_band_schedule", "schedule"): 1,
        ("retrain_salary_band", "sensor"): 0,
    }


@pytest.mark.parametrize(
    ("newest_first", "expected"),
    [
        ([], 0),
        (["SUCCESS", "FAILURE"], 0),
        (["FAILURE", "FAILURE", "SKIPPED", "FAILURE"], 2),
        (["STARTED", "FAILURE", "SUCCESS"], 1),
        (["FAILURE", "STARTED", "FAILURE"], 1),  # a STARTED tick below the newest (left dangling) ends the run
    ],
)
def test_consecutive_failures_count_from_the_newest_tick(newest_first: list[str], expected: int) -> None:
    assert consecutive_failures(newest_first) == expected


@pytest.mark.slow
def test_a_scrape_of_a_few_hundred_runs_is_well_under_a_second(instance: dg.DagsterInstance) -> None:
    """The bound the exporter is built for (the queries group and limit; no run or tick body is read); measured
    ~15 ms with Kafka on an idle 2-core machine, so the 1 s bound holds on a busy one."""
    for index in range(300):
        create_run_for_test(instance, job_name="ingest_salary_band", status=FAILURE if index % 3 == 0 else SUCCESS)
    state = add_instigator(instance, "kafka_ingest_salary_band")
    now = time.time()
    for index in range(360):  # as many ticks as an hour at the ingestion sensor's 10 s interval
        add_tick(instance, state, TickStatus.SKIPPED, now - 5 * index - 1)
    registry = registry_of(PipelineMetrics(["salary_band", "machine_failure"], lambda: instance, no_kafka))
    samples(registry)  # the first scrape opens the storage
    began = time.perf_counter()
    scrape = samples(registry)
    elapsed = time.perf_counter() - began
    assert values(scrape, "riverbed_dagster_runs_total")[("ingest_salary_band", "FAILURE")] == 100
    assert values(scrape, "riverbed_dagster_ticks_last_hour")[("kafka_ingest_salary_band", "SKIPPED", "sensor")] == 360
    assert elapsed < 1.0, f"a scrape took {elapsed:.3f} s"


# --- Kafka: lag and dead letters -----------------------------------------------------------------------------------


def test_lag_is_the_high_watermark_minus_the_sensor_cursor_and_dead_letters_are_counted(
    instance: dg.DagsterInstance, kafka_bootstrap: str, prefix: str
) -> None:
    raw = topic_name("salary_band", TopicKind.RAW, prefix)
    labels = topic_name("salary_band", TopicKind.LABELS, prefix)
    dlq = topic_name("salary_band", TopicKind.DLQ, prefix)
    produce(kafka_bootstrap, raw, {0: 5, 1: 3, 2: 4})  # partition 3 stays empty
    produce(kafka_bootstrap, labels, {0: 2, 3: 6})
    produce(kafka_bootstrap, dlq, {1: 2, 2: 1})
    # the ingestion sensor took 4 of partition 0 and all of partition 1; partition 2 is not in its cursor yet
    add_instigator(instance, "kafka_ingest_salary_band", cursor='{"0": 4, "1": 3}')
    # machine_failure has no topic at all yet: zeros, and no topic is created by looking

    metrics = PipelineMetrics(
        ["salary_band", "machine_failure"],
        lambda: instance,
        lambda: {"bootstrap.servers": kafka_bootstrap},
        topic_prefix=prefix,
    )
    scrape = samples(registry_of(metrics))

    assert values(scrape, "riverbed_ingestion_lag_records") == {
        ("salary_band", "kafka_ingest_salary_band", raw): 1 + 0 + 4 + 0,
        ("salary_band", "kafka_labels_salary_band", labels): 8,  # the labels sensor never ticked: all of it
        ("machine_failure", "kafka_ingest_machine_failure", topic_name("machine_failure", "raw", prefix)): 0,
        ("machine_failure", "kafka_labels_machine_failure", topic_name("machine_failure", "labels", prefix)): 0,
    }
    assert values(scrape, "riverbed_kafka_dead_letters_total") == {
        ("salary_band", dlq): 3,
        ("machine_failure", topic_name("machine_failure", "dlq", prefix)): 0,
    }
    assert values(scrape, "riverbed_pipeline_exporter_up") == {("dagster",): 1, ("kafka",): 1}
    listed = Producer({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert not {t for t in listed if t.startswith(f"{prefix}.machine_failure")}, "the exporter created a topic"

    # the sensor catches up; more dead letters arrive: the next scrape follows
    add_instigator(instance, "kafka_ingest_salary_band", cursor='{"0": 5, "1": 3, "2": 4}')
    produce(kafka_bootstrap, dlq, {0: 4})
    scrape = samples(registry_of(metrics))
    assert values(scrape, "riverbed_ingestion_lag_records")[("salary_band", "kafka_ingest_salary_band", raw)] == 0
    assert values(scrape, "riverbed_kafka_dead_letters_total")[("salary_band", dlq)] == 7


def test_lag_counts_from_the_low_watermark_where_the_cursor_is_behind_it() -> None:
    # partition 0: the cursor is past 3 of 10; partition 1: retention dropped offsets 0..4, the cursor says 2
    assert lag_records({0: (0, 10), 1: (5, 9), 2: (0, 0)}, {0: 3, 1: 2}) == 7 + 4 + 0
    assert lag_records({0: (0, 10)}, {0: 12}) == 0  # never negative


def test_an_unreadable_cursor_is_counted_and_its_lag_left_out(
    instance: dg.DagsterInstance, kafka_bootstrap: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    produce(kafka_bootstrap, topic_name("salary_band", TopicKind.RAW, prefix), {0: 2})
    add_instigator(instance, "kafka_ingest_salary_band", cursor="not json")
    metrics = PipelineMetrics(
        ["salary_band"], lambda: instance, lambda: {"bootstrap.servers": kafka_bootstrap}, topic_prefix=prefix
    )
    with caplog.at_level(logging.WARNING):
        scrape = samples(registry_of(metrics))
    lag = values(scrape, "riverbed_ingestion_lag_records")
    assert [labels[1] for labels in lag] == ["kafka_labels_salary_band"]
    assert values(scrape, "riverbed_pipeline_exporter_collect_errors_total")[("bad_cursor", "dagster")] == 1
    assert any("kafka_ingest_salary_band's cursor is unreadable" in r.getMessage() for r in caplog.records)


# --- bounded scrapes -------------------------------------------------------------------------------------------------


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a hung Kafka."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("kafka", ["down", "silent"])
def test_kafka_down_or_hung_costs_one_bounded_scrape_with_the_error_counted_and_logged(
    kafka: str, instance: dg.DagsterInstance, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    create_run_for_test(instance, job_name="ingest_salary_band", status=FAILURE)
    config = DOWN_KAFKA if kafka == "down" else {"bootstrap.servers": request.getfixturevalue("silent_broker")}
    metrics = PipelineMetrics(["salary_band"], lambda: instance, lambda: dict(config), timeout_seconds=1.0)
    registry = registry_of(metrics)
    for scrape_number in (1, 2, 3):
        began = time.monotonic()
        with caplog.at_level(logging.WARNING):
            scrape = samples(registry)
        elapsed = time.monotonic() - began
        # never more than the bound; a broker that accepts and never answers costs the whole bound the first time
        # (once librdkafka has marked every broker down, it may fail at once: still counted)
        assert elapsed < 1.5, f"scrape {scrape_number} took {elapsed:.2f} s with a 1 s bound"
        errors = values(scrape, "riverbed_pipeline_exporter_collect_errors_total")
        assert errors[("timeout", "kafka")] + errors[("error", "kafka")] == scrape_number
        if kafka == "silent" and scrape_number == 1:
            assert elapsed >= 0.9, f"gave up after {elapsed:.2f} s, before the bound"
            assert errors[("timeout", "kafka")] == 1
            waited = values(scrape, "riverbed_pipeline_exporter_collect_seconds")
            assert waited[("kafka",)] >= 0.9 and waited[("dagster",)] < 0.9, waited
        assert values(scrape, "riverbed_pipeline_exporter_up") == {("dagster",): 1, ("kafka",): 0}
        # the Dagster half is served; nothing is made up for Kafka
        assert values(scrape, "riverbed_dagster_runs_total")[("ingest_salary_band", "FAILURE")] == 1
        assert values(scrape, "riverbed_ingestion_lag_records") == {}
        assert values(scrape, "riverbed_kafka_dead_letters_total") == {}
    # logged, once per reason (not at every scrape)
    reasons = {reason for reason in ("timeout", "error") if errors[(reason, "kafka")]}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("metrics")]
    assert len(warnings) == len(reasons), warnings
    assert all(w.startswith("pipeline metrics: could not read kafka (") for w in warnings), warnings


def test_a_hung_dagster_storage_costs_one_bounded_scrape_and_no_second_thread(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    opened: list[float] = []

    def hanging_instance() -> dg.DagsterInstance:
        opened.append(time.monotonic())
        release.wait(30)
        raise ConnectionError("the database never answered")

    metrics = PipelineMetrics(["salary_band"], hanging_instance, lambda: dict(DOWN_KAFKA), timeout_seconds=0.5)
    registry = registry_of(metrics)
    try:
        for scrape_number in (1, 2, 3):
            began = time.monotonic()
            with caplog.at_level(logging.WARNING):
                scrape = samples(registry)
            assert time.monotonic() - began < 1.0
            errors = values(scrape, "riverbed_pipeline_exporter_collect_errors_total")
            assert errors[("timeout", "dagster")] == scrape_number
            assert values(scrape, "riverbed_dagster_runs_total") == {}
        assert len(opened) == 1, "each scrape started another read of the hung storage"
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while metrics.sources["dagster"].pending is not None and not metrics.sources["dagster"].pending.done():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    scrape = samples(registry)  # the failed read is over: the next scrape tries again, and says why it failed
    assert len(opened) == 2
    assert any("could not read dagster (timeout)" in r.getMessage() for r in caplog.records)


# --- the command -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cli_serves_metrics_and_health_over_http(tmp_path: Path, kafka_bootstrap: str, prefix: str) -> None:
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:  # SQLite storage in that directory
        for status, count in ((FAILURE, 2), (SUCCESS, 3)):
            for _ in range(count):
                create_run_for_test(instance, job_name="ingest_machine_failure", status=status)
        add_instigator(instance, "kafka_ingest_machine_failure", cursor='{"0": 1}')
    produce(kafka_bootstrap, topic_name("machine_failure", TopicKind.RAW, prefix), {0: 3, 1: 2})
    produce(kafka_bootstrap, topic_name("machine_failure", TopicKind.DLQ, prefix), {0: 1})

    port = free_port()
    env = {
        **os.environ,
        "RIVERBED_HOME": str(tmp_path / "riverbed-home"),
        "RIVERBED_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RIVERBED_KAFKA_TOPIC_PREFIX": prefix,
    }
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "riverbed.cli", "pipeline-exporter", "--port", str(port)]
    command += ["--dagster-home", str(dagster_home)]
    log = (tmp_path / "exporter.log").open("wb")
    child = processes.spawn(command, env=env, cwd=PROJECT_ROOT, stdout=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert child.poll() is None, (tmp_path / "exporter.log").read_text()
                assert time.monotonic() < deadline, "the exporter did not answer in 60 s"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        response = httpx.get(f"{base}/metrics", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        scraped = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
        runs = values(scraped, "riverbed_dagster_runs_total")
        assert runs[("ingest_machine_failure", "FAILURE")] == 2 and runs[("ingest_machine_failure", "SUCCESS")] == 3
        assert runs[("ingest_salary_band", "FAILURE")] == 0  # every dataset spec's jobs
        raw = topic_name("machine_failure", TopicKind.RAW, prefix)
        assert (
            values(scraped, "riverbed_ingestion_lag_records")[("machine_failure", "kafka_ingest_machine_failure", raw)]
            == 4
        )
        dlq = topic_name("machine_failure", TopicKind.DLQ, prefix)
        assert values(scraped, "riverbed_kafka_dead_letters_total")[("machine_failure", dlq)] == 1
        assert values(scraped, "riverbed_pipeline_exporter_up") == {("dagster",): 1, ("kafka",): 1}
        assert httpx.get(f"{base}/nothing", timeout=5).status_code == 404
        assert httpx.get(f"{base}/healthz", timeout=5).json()["sources"] == {"dagster": "ok", "kafka": "ok"}
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=10) == 0, (tmp_path / "exporter.log").read_text()
    finally:
        processes.stop(child, "pipeline-exporter", 5)
        log.close()


def test_the_cli_refuses_a_missing_dagster_home(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "riverbed.cli", "pipeline-exporter", "--port", str(free_port())),
            *("--dagster-home", str(tmp_path / "absent")),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RIVERBED_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 2
    assert f"no Dagster instance at {tmp_path / 'absent'}" in result.stderr


# --- a real Prometheus over the exporter: every pipeline panel and alert expression has data --------------------------

EXPORTER_PREFIXES = ("riverbed_dagster_", "riverbed_ingestion_", "riverbed_kafka_", "riverbed_pipeline_exporter_")


def exporter_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every pipeline dashboard query reading the exporter's metrics."""
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "pipeline.json").read_text())
    found = [
        (str(panel["title"]), str(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets") or []
        if any(prefix in str(target["expr"]) for prefix in EXPORTER_PREFIXES)
    ]
    assert len(found) >= 8, found
    return found


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter_and_every_pipeline_panel_has_data(
    tmp_path: Path, kafka_bootstrap: str, prefix: str
) -> None:
    prometheus = require_tool("prometheus")
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        create_run_for_test(instance, job_name="ingest_salary_band", status=SUCCESS)
        state = add_instigator(instance, "kafka_ingest_salary_band", cursor='{"0": 1}')
        add_tick(instance, state, TickStatus.FAILURE, time.time() - 30)
        add_tick(instance, state, TickStatus.FAILURE, time.time() - 20)
        add_instigator(instance, "kafka_labels_salary_band")
    produce(kafka_bootstrap, topic_name("salary_band", TopicKind.RAW, prefix), {0: 3})

    exporter_port, prometheus_port = free_port(), free_port()
    env = {
        **os.environ,
        "RIVERBED_HOME": str(tmp_path / "riverbed-home"),
        "RIVERBED_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RIVERBED_KAFKA_TOPIC_PREFIX": prefix,
    }
    command = [sys.executable, "-m", "riverbed.cli", "pipeline-exporter", "--port", str(exporter_port)]
    command += ["--dagster-home", str(dagster_home)]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROJECT_ROOT / "deploy" / "prometheus" / "rules" / "riverbed.rules.yml")],
        "scrape_configs": [{"job_name": "exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    prometheus_command = [
        str(prometheus),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    logs = [(tmp_path / "exporter.log").open("wb"), (tmp_path / "prometheus.log").open("wb")]
    exporter = processes.spawn(command, env=env, cwd=PROJECT_ROOT, stdout=logs[0])
    server = processes.spawn(prometheus_command, env=dict(os.environ), cwd=tmp_path, stdout=logs[1])
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    try:
        deadline = time.monotonic() + 90
        while True:  # two scrapes in which both sources answered: increase() in the panels needs two samples
            try:  # Prometheus answers 503 (not JSON) until it is ready
                ready = httpx.get(f"http://127.0.0.1:{prometheus_port}/-/ready", timeout=5).status_code == 200
                answered = query("min(sum_over_time(riverbed_pipeline_exporter_up[1m]))") if ready else []
                if answered and float(answered[0]["value"][1]) >= 2:
                    break
            except httpx.TransportError:
                pass
            for process, log in ((exporter, "exporter.log"), (server, "prometheus.log")):
                assert process.poll() is None, (tmp_path / log).read_text()[-3000:]
            assert time.monotonic() < deadline, "no two complete scrapes of the exporter in 90 s"
            time.sleep(0.5)
        empty = [title for title, expr in exporter_queries() if not query(expr)]
        assert not empty, f"pipeline panels without data: {empty}"
        lag = query('riverbed_ingestion_lag_records{sensor="kafka_ingest_salary_band"}')
        assert [float(series["value"][1]) for series in lag] == [2.0]
        failing = query("riverbed_dagster_tick_failures_consecutive")
        by_instigator = {series["metric"]["instigator"]: float(series["value"][1]) for series in failing}
        assert by_instigator == {"kafka_ingest_salary_band": 2.0, "kafka_labels_salary_band": 0.0}
        runs = query('riverbed_dagster_runs_total{dagster_job="ingest_salary_band"}')
        assert {s["metric"]["status"]: float(s["value"][1]) for s in runs} == {
            "SUCCESS": 1,
            "FAILURE": 0,
            "CANCELED": 0,
        }
        assert all(s["metric"]["job"] == "exporter" for s in runs), "the scrape job's label is left alone"
        rules = httpx.get(f"{api}/rules", timeout=10).json()["data"]["groups"]
        health = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
        assert health["RiverbedIngestionLagHigh"] == "ok" and health["RiverbedSensorTicksFailing"] == "ok", health
    finally:
        processes.stop(server, "prometheus", 10)
        processes.stop(exporter, "pipeline-exporter", 10)
        for output in logs:
            output.close()
