"""What Dagster does not export: runs, ticks, ingestion lag and dead letters, as Prometheus metrics.

Read at scrape time, bounded, from the Dagster instance (its run and schedule storage: SQLite under ``riverbed dev``,
PostgreSQL under ``riverbed up`` and in production) and from Kafka (watermarks, never a message):

``riverbed_dagster_runs_total{dagster_job, status}``
    finished runs by Dagster status (``SUCCESS``, ``FAILURE``, ``CANCELED``); 0 for every job of every known dataset.
    The label is not ``job``: Prometheus gives every scraped series the scrape job's name under that label.
``riverbed_dagster_runs_in_progress{dagster_job, status}``
    runs not finished yet (``QUEUED``, ``STARTED``...); 0 for ``QUEUED`` and ``STARTED`` of every known job.
``riverbed_dagster_ticks_last_hour{instigator, type, status}``
    sensor and schedule ticks of the last hour by status (``SUCCESS``, ``SKIPPED``, ``FAILURE``; 0 when none);
    a window, not a counter, because Dagster purges old ticks.
``riverbed_dagster_tick_failures_consecutive{instigator, type}``
    failed ticks since the instigator's last tick that did not fail (the tick in progress is not counted), up to
    :data:`TICK_LOOKBACK`.
``riverbed_ingestion_lag_records{dataset, sensor, topic}``
    records on a dataset's raw (and labels) topic its Kafka sensor has not taken yet: the high watermark minus the
    sensor's cursor, per partition (a partition not in the cursor counts from its low watermark, where the sensor
    starts), summed.
``riverbed_kafka_dead_letters_total{dataset, topic}``
    messages ever written to a dataset's dead-letter topic (the sum of its partitions' high watermarks); both the
    ingestion and the labels sensor write there. 0 while the topic does not exist.

and the exporter's own health: ``riverbed_pipeline_exporter_collect_errors_total{source, reason}`` (a source that
failed or ran out of time, or a cursor that cannot be read; logged at WARNING when a reason first appears, then
once a minute while it lasts), ``riverbed_pipeline_exporter_up{source}`` (1 when the source answered this scrape)
and ``riverbed_pipeline_exporter_collect_seconds{source}``.

Every scrape waits at most ``timeout_seconds`` for both sources together. A source that does not answer in time is
counted and left out of that scrape; its read goes on in a daemon thread, and the next scrape waits for that same
read rather than starting a second one, so a hung database or broker never piles up threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # re-exported by confluent_kafka.admin, not declared
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.scheduler.instigation import SensorInstigatorData
from dagster._core.storage.runs.schema import RunsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage
from dagster._core.storage.schedules.schema import JobTickTable
from dagster._core.storage.schedules.sql_schedule_storage import SqlScheduleStorage
from dagster._time import datetime_from_timestamp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from riverbed import names
from riverbed.names import TopicKind, topic_name
from sensors.kafka_ingestion import parse_cursor

logger = logging.getLogger(__name__)

TICK_WINDOW_SECONDS = 3600.0
TICK_LOOKBACK = 100  # consecutive failures are counted among an instigator's latest ticks, up to this many
FINISHED_RUN_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
ZERO_IN_PROGRESS_STATUSES = (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED)
ZERO_TICK_STATUSES = ("SUCCESS", "SKIPPED", "FAILURE")
ERROR_REASONS = ("timeout", "error", "not_configured", "bad_cursor")
WARNING_EVERY_SECONDS = 60.0  # a lasting failure is logged again at this pace (each one is counted)


class SourceError(Exception):
    """A source could not be read; ``reason`` is the metric label (one of :data:`ERROR_REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def dataset_jobs(dataset: str) -> list[str]:
    """The jobs of one dataset's code location (the series exported as 0 before their first run)."""
    return [names.ingest_job(dataset), names.train_job(dataset), names.full_job(dataset), names.monitor_job(dataset)]


# ------------------------------------------------------------------------------------------------ Dagster
@dataclass(frozen=True)
class Instigator:
    """One sensor or schedule as the instance knows it."""

    name: str
    type: str  # "sensor", "schedule"
    cursor: str | None
    ticks_last_hour: dict[str, int]
    consecutive_failures: int


@dataclass(frozen=True)
class DagsterSnapshot:
    runs: dict[tuple[str, str], int]  # (job, status) -> runs
    instigators: dict[str, Instigator]  # by name


def read_dagster(instance: DagsterInstance, now: float | None = None) -> DagsterSnapshot:
    """Runs by job and status, and each instigator's cursor and ticks: grouped counts and short index scans that
    read no run or tick body, so a scrape costs the same with thousands of runs and a week of ticks."""
    run_storage = instance.run_storage
    schedule_storage = instance.schedule_storage
    if not isinstance(run_storage, SqlRunStorage) or not isinstance(schedule_storage, SqlScheduleStorage):
        raise SourceError("error", f"unsupported Dagster storage {type(run_storage).__name__}: SQL storage expected")
    now = time.time() if now is None else now
    runs_query = sa.select(RunsTable.c.pipeline_name, RunsTable.c.status, sa.func.count()).group_by(
        RunsTable.c.pipeline_name, RunsTable.c.status
    )
    with run_storage.connect() as conn:
        runs = {(str(job), str(status)): int(count) for job, status, count in conn.execute(runs_query)}

    states = instance.all_instigator_state()
    by_selector: dict[str, tuple[str, str]] = {}
    latest: dict[str, Any] = {}  # name -> the state with the latest tick (a sensor can exist in two locations)
    for state in states:
        kind = str(state.instigator_type.value).lower()
        by_selector[state.selector_id] = (state.instigator_name, kind)
        data = state.instigator_data
        seen = getattr(data, "last_tick_start_timestamp", None) or getattr(data, "last_tick_timestamp", None) or 0.0
        previous = latest.get(state.instigator_name)
        if previous is None or seen >= previous[0]:
            latest[state.instigator_name] = (seen, state)

    ticks: dict[str, Counter[str]] = {name: Counter() for name, _ in by_selector.values()}
    failures: dict[str, int] = {name: 0 for name, _ in by_selector.values()}
    if by_selector:
        selectors = list(by_selector)
        window_start = datetime_from_timestamp(now - TICK_WINDOW_SECONDS)  # stored as naive UTC
        window_query = (
            sa.select(JobTickTable.c.selector_id, JobTickTable.c.status, sa.func.count())
            .where(JobTickTable.c.selector_id.in_(selectors), JobTickTable.c.timestamp > window_start)
            .group_by(JobTickTable.c.selector_id, JobTickTable.c.status)
        )
        with schedule_storage.connect() as conn:
            for selector, status, count in conn.execute(window_query):
                ticks[by_selector[selector][0]][str(status)] += int(count)
            statuses: dict[str, list[str]] = {}
            for selector in selectors:  # one short index scan each (selector_id, timestamp), never all ticks
                newest = (
                    sa.select(JobTickTable.c.status)
                    .where(JobTickTable.c.selector_id == selector)
                    .order_by(JobTickTable.c.timestamp.desc(), JobTickTable.c.id.desc())
                    .limit(TICK_LOOKBACK)
                )
                statuses[selector] = [str(status) for (status,) in conn.execute(newest)]
        for selector, newest_first in statuses.items():
            name = by_selector[selector][0]
            failures[name] = max(failures[name], consecutive_failures(newest_first))

    instigators = {}
    for name, (_, state) in latest.items():
        data = state.instigator_data
        cursor = data.cursor if isinstance(data, SensorInstigatorData) else None
        instigators[name] = Instigator(
            name=name,
            type=str(state.instigator_type.value).lower(),
            cursor=cursor,
            ticks_last_hour=dict(ticks[name]),
            consecutive_failures=failures[name],
        )
    return DagsterSnapshot(runs=runs, instigators=instigators)


def consecutive_failures(newest_first: Sequence[str]) -> int:
    """Failed ticks before the newest tick that did not fail; a tick still running (``STARTED``) is skipped."""
    count = 0
    for index, status in enumerate(newest_first):
        if status == "STARTED" and index == 0:
            continue
        if status != "FAILURE":
            break
        count += 1
    return count


# ------------------------------------------------------------------------------------------------ Kafka
Watermarks = dict[int, tuple[int, int]]  # partition -> (low, high)


def read_watermarks(admin: AdminClient, topics: Sequence[str], deadline: float) -> dict[str, Watermarks]:
    """Low and high watermarks of every partition of ``topics`` that exist, in one metadata request and two batched
    ListOffsets requests (absent topics are left out: the metadata request names no topic, so it creates none).
    Raises :class:`SourceError` when Kafka fails or ``deadline`` passes."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceError("timeout", "Kafka did not answer before the scrape's deadline")
        return left

    def failed(what: str, error: Exception) -> SourceError:
        reason = "timeout" if deadline - time.monotonic() <= 0.05 else "error"
        return SourceError(reason, f"Kafka {what}: {error}")

    try:
        metadata = admin.list_topics(timeout=remaining())
    except KafkaException as error:
        raise failed("metadata", error) from error
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        if (described := metadata.topics.get(topic)) is not None and described.error is None
        for partition in sorted(described.partitions)
    ]
    if not partitions:
        return {}
    try:
        timeout = remaining()
        low_spec, high_spec = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]
        earliest = admin.list_offsets({tp: low_spec for tp in partitions}, request_timeout=timeout)
        latest = admin.list_offsets({tp: high_spec for tp in partitions}, request_timeout=timeout)
        found: dict[str, Watermarks] = {}
        for tp in partitions:
            low = earliest[tp].result(timeout=remaining()).offset
            high = latest[tp].result(timeout=remaining()).offset
            found.setdefault(tp.topic, {})[tp.partition] = (int(low), int(high))
    except (KafkaException, FutureTimeout) as error:
        raise failed("offsets", error) from error
    return found


def lag_records(marks: Watermarks, cursor: Mapping[int, int]) -> int:
    """Records a sensor at ``cursor`` has not taken: per partition, the high watermark minus where it resumes."""
    return sum(max(0, high - max(cursor.get(partition, low), low)) for partition, (low, high) in marks.items())


# ------------------------------------------------------------------------------------------------ the collector
@dataclass
class _Source:
    name: str
    read: Callable[[float], Any]  # deadline (time.monotonic()) -> snapshot
    pending: Future[Any] | None = None
    failing: str | None = None  # why the last read gave nothing, if it did
    warned_at: dict[str, float] = field(default_factory=dict)  # reason -> when it was last logged
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


class PipelineMetrics(Collector):
    """A prometheus_client collector reading Dagster and Kafka at each scrape, within ``timeout_seconds``.

    ``open_instance`` opens the Dagster instance (called again after a failure); ``kafka_config`` gives the
    librdkafka settings (bootstrap servers...); its ``KafkaNotConfiguredError`` or ``ValueError`` is counted as
    ``not_configured``.
    """

    def __init__(
        self,
        datasets: Sequence[str],
        open_instance: Callable[[], DagsterInstance],
        kafka_config: Callable[[], dict[str, Any]],
        *,
        topic_prefix: str = names.TOPIC_PREFIX,
        timeout_seconds: float = 3.0,
    ) -> None:
        self.datasets = list(datasets)
        self.topic_prefix = topic_prefix
        self.timeout_seconds = timeout_seconds
        self._open_instance = open_instance
        self._kafka_config = kafka_config
        self._instance: DagsterInstance | None = None
        self._admin: AdminClient | None = None
        self._admin_config: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.sources = {
            "dagster": _Source("dagster", self._read_dagster),
            "kafka": _Source("kafka", self._read_kafka),
        }

    # ------------------------------------------------------------------------------------------ reads
    def _read_dagster(self, deadline: float) -> DagsterSnapshot:
        if self._instance is None:
            self._instance = self._open_instance()
        try:
            return read_dagster(self._instance)
        except Exception:
            instance, self._instance = self._instance, None  # reopened next time (a restarted database)
            try:
                instance.dispose()
            except Exception:  # disposing a broken instance must not hide why it broke
                logger.debug("disposing the Dagster instance failed", exc_info=True)
            raise

    def topics(self, dataset: str) -> dict[TopicKind, str]:
        return {kind: topic_name(dataset, kind, self.topic_prefix) for kind in TopicKind}

    def _read_kafka(self, deadline: float) -> dict[str, Watermarks]:
        try:
            config = self._kafka_config()
        except (ValueError, RuntimeError) as error:  # KafkaNotConfiguredError is a RuntimeError
            raise SourceError("not_configured", str(error)) from error
        if self._admin is None or config != self._admin_config:  # new brokers (a restarted dev broker): a new client
            timeout_ms = max(1000, int(self.timeout_seconds * 1000))
            self._admin = AdminClient(
                {**config, "socket.connection.setup.timeout.ms": timeout_ms, "log.connection.close": False},
                logger=logging.getLogger(f"{__name__}.librdkafka"),
            )
            self._admin_config = config
        wanted = [
            topic
            for dataset in self.datasets
            for kind, topic in self.topics(dataset).items()
            if kind != TopicKind.PREDICTIONS
        ]
        return read_watermarks(self._admin, wanted, deadline)

    def _start(self, source: _Source, deadline: float) -> Future[Any]:
        """A new read of ``source``, or the one an earlier scrape gave up waiting for if it still runs."""
        with self._lock:
            if source.pending is None or source.pending.done():
                source.pending = _run_in_thread(source.read, deadline, f"pipeline-metrics-{source.name}")
            return source.pending

    def _settle(self, source: _Source, future: Future[Any], began: float, deadline: float) -> Any | None:
        """The source's snapshot, or None after counting and logging why there is none (``began``: the scrape's
        start, so ``seconds`` is how long the scrape waited for this source)."""
        try:
            result = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self._failed(source, "timeout", f"no answer within {self.timeout_seconds:g} s")
            return None
        except SourceError as error:
            self._failed(source, error.reason, str(error))
            return None
        except Exception as error:
            self._failed(source, "error", f"{type(error).__name__}: {error}")
            return None
        finally:
            source.seconds = time.monotonic() - began
        if source.failing is not None:
            logger.info("pipeline metrics: %s answers again", source.name)
            source.failing = None
        return result

    def _failed(self, source: _Source, reason: str, message: str, *, read_failed: bool = True) -> None:
        """Count the failure; log it at WARNING the first time and then at most once a minute per reason.

        ``read_failed``: the source gave nothing this scrape (not merely one unreadable value).
        """
        with self._lock:  # concurrent scrapes count into the same counters
            source.errors[reason] += 1
            now = time.monotonic()
            warn = now - source.warned_at.get(reason, float("-inf")) >= WARNING_EVERY_SECONDS
            if warn:
                source.warned_at[reason] = now
            if read_failed:
                source.failing = reason
        if warn:
            logger.warning("pipeline metrics: could not read %s (%s): %s", source.name, reason, message[:500])

    # ------------------------------------------------------------------------------------------ collect
    def collect(self) -> Iterator[Metric]:
        began = time.monotonic()
        deadline = began + self.timeout_seconds
        dagster_source, kafka_source = self.sources["dagster"], self.sources["kafka"]
        dagster_read = self._start(dagster_source, deadline)  # both run at once; the scrape waits for both
        kafka_read = self._start(kafka_source, deadline)
        dagster: DagsterSnapshot | None = self._settle(dagster_source, dagster_read, began, deadline)
        kafka: dict[str, Watermarks] | None = self._settle(kafka_source, kafka_read, began, deadline)

        if dagster is not None:
            yield from self._dagster_families(dagster)
        if kafka is not None:
            yield self._dead_letters(kafka)
            if dagster is not None:
                yield self._lag(kafka, dagster)

        up = GaugeMetricFamily(
            "riverbed_pipeline_exporter_up", "1 when the source answered this scrape in time.", labels=["source"]
        )
        up.add_metric(["dagster"], 1.0 if dagster is not None else 0.0)
        up.add_metric(["kafka"], 1.0 if kafka is not None else 0.0)
        yield up
        seconds = GaugeMetricFamily(
            "riverbed_pipeline_exporter_collect_seconds",
            "Seconds from the scrape's start until the source answered or the scrape gave up on it.",
            labels=["source"],
        )
        errors = CounterMetricFamily(
            "riverbed_pipeline_exporter_collect_errors",
            "Reads of a source that failed or ran out of time (each logged at WARNING).",
            labels=["source", "reason"],
        )
        for source in (dagster_source, kafka_source):
            seconds.add_metric([source.name], source.seconds)
            for reason in ERROR_REASONS:
                errors.add_metric([source.name, reason], float(source.errors[reason]))
        yield seconds
        yield errors

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected at scrape time only: registering must not read Dagster or Kafka

    def _dagster_families(self, snapshot: DagsterSnapshot) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "riverbed_dagster_runs", "Finished Dagster runs by job and status.", labels=["dagster_job", "status"]
        )
        in_progress = GaugeMetricFamily(
            "riverbed_dagster_runs_in_progress",
            "Dagster runs not finished yet, by job and status.",
            labels=["dagster_job", "status"],
        )
        final = {status.value for status in FINISHED_RUN_STATUSES}
        runs = dict(snapshot.runs)
        for dataset in self.datasets:
            for job in dataset_jobs(dataset):
                for status in [*final, *(s.value for s in ZERO_IN_PROGRESS_STATUSES)]:
                    runs.setdefault((job, status), 0)
        for job, status in sorted(runs):
            count = float(runs[(job, status)])
            (finished if status in final else in_progress).add_metric([job, status], count)
        yield finished
        yield in_progress

        ticks = GaugeMetricFamily(
            "riverbed_dagster_ticks_last_hour",
            "Sensor and schedule ticks of the last hour by status.",
            labels=["instigator", "type", "status"],
        )
        failing = GaugeMetricFamily(
            "riverbed_dagster_tick_failures_consecutive",
            f"Failed ticks since the instigator's last tick that did not fail (at most {TICK_LOOKBACK}).",
            labels=["instigator", "type"],
        )
        for name, instigator in sorted(snapshot.instigators.items()):
            counts = {status: 0 for status in ZERO_TICK_STATUSES} | instigator.ticks_last_hour
            for status, count in sorted(counts.items()):
                ticks.add_metric([name, instigator.type, status], float(count))
            failing.add_metric([name, instigator.type], float(instigator.consecutive_failures))
        yield ticks
        yield failing

    def _dead_letters(self, kafka: Mapping[str, Watermarks]) -> Metric:
        family = CounterMetricFamily(
            "riverbed_kafka_dead_letters",
            "Messages written to a dataset's dead-letter topic (sum of its high watermarks).",
            labels=["dataset", "topic"],
        )
        for dataset in self.datasets:
            topic = self.topics(dataset)[TopicKind.DLQ]
            family.add_metric([dataset, topic], float(sum(high for _, high in kafka.get(topic, {}).values())))
        return family

    def _lag(self, kafka: Mapping[str, Watermarks], dagster: DagsterSnapshot) -> Metric:
        family = GaugeMetricFamily(
            "riverbed_ingestion_lag_records",
            "Records on a dataset's topic its Kafka sensor has not taken yet (high watermark minus the cursor).",
            labels=["dataset", "sensor", "topic"],
        )
        for dataset in self.datasets:
            topics = self.topics(dataset)
            for sensor, kind in (
                (names.kafka_ingest_sensor(dataset), TopicKind.RAW),
                (names.kafka_labels_sensor(dataset), TopicKind.LABELS),
            ):
                instigator = dagster.instigators.get(sensor)
                try:
                    cursor = parse_cursor(instigator.cursor if instigator else None)
                except (ValueError, TypeError, AttributeError) as error:
                    text = f"{sensor}'s cursor is unreadable, its lag is left out: {error}"
                    self._failed(self.sources["dagster"], "bad_cursor", text, read_failed=False)
                    continue
                family.add_metric(
                    [dataset, sensor, topics[kind]], float(lag_records(kafka.get(topics[kind], {}), cursor))
                )
        return family


def _run_in_thread(read: Callable[[float], Any], deadline: float, name: str) -> Future[Any]:
    """``read(deadline)`` in a daemon thread (a hung read must not keep the process from exiting)."""
    future: Future[Any] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(read(deadline))
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
