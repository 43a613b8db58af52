"""Kafka ingestion: each tick moves new messages of ``<prefix>.<dataset>.raw`` into the landing zone.

Progress lives in the sensor cursor alone, ``{"<partition>": <next offset>}`` as JSON: the consumer *assigns*
partitions at those offsets (no group offsets, no auto-commit). A tick reads up to ``max_records`` messages
or ``max_seconds``, parses each (:func:`riverbed.event_schemas.parse_raw_message`), sends every message it
cannot land (undecodable, over ``max_message_bytes``, breaking the schema, an event day outside the dataset's
daily partitions) to ``.dlq`` as :class:`~riverbed.events.DeadLetter` JSON with its reason, and lands the valid
records grouped by event day in one commit on main (:mod:`resources.landing_zone`). Only then does it return
the new cursor with one run request of the ingest job it was given (``ingest_<dataset>``) per affected day
(run key ``<dataset>:<day>:<landing commit>``), tagged with :class:`riverbed.names.RunTag` tags. No message can
fail a tick or hold its partition back: whatever cannot be landed is dead-lettered and the cursor moves on.

Exactly once per object: the offsets a tick took from each partition (its cut) are recorded in the landing
commit, and object names derive from them. If the process dies after landing but before the cursor is stored,
the next tick starts where that cut starts, finds it (:func:`resources.landing_zone.find_cut`) and moves the
cursor past it, requesting its days again, instead of reading and cutting those offsets a second time; the
landed objects stay exactly as they were, whatever the retry's own limits. Dead letters are at-least-once (they
are published before landing).

A tick only fails for infrastructure (broker unreachable, dead letters not acknowledged, versioned store
unavailable): it keeps the cursor, returns a ``SkipReason`` naming the failure and reports it
(:func:`riverbed.pipeline_failures.report_failure`, component ``ingest_<dataset>``; counted in the inference-log
database when one is configured).
"""

import datetime as dt
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from resources.data_store_resource import VersionedDataStoreResource
from resources.kafka_resource import KafkaResource
from resources.landing_zone import (
    OFFSET_COLUMN,
    PARTITION_COLUMN,
    LandingBatch,
    LandingOverlapError,
    PartitionCut,
    find_cut,
    land_batches,
    main_commit,
)
from resources.versioned_store import VersionedStore, VersionedStoreError
from riverbed import names
from riverbed.event_schemas import RawMessageError, parse_raw_message
from riverbed.events import SAMPLE_ID_FIELD, DeadLetter
from riverbed.kafka_config import KafkaNotConfiguredError
from riverbed.names import TOPIC_PREFIX, CommitMetadata, RunTag, TopicKind, topic_name
from riverbed.pipeline_failures import report_failure
from riverbed.records import TrainingReason
from riverbed.specs import DatasetSpec
from riverbed.stack_file import configured_inference_log_dsn

logger = logging.getLogger(__name__)

# Fault hooks for the crash tests: exit abruptly right after the landing commit, or after consuming N messages;
# end the tick's time budget after N messages (a tick cut by its time limit, deterministically).
FAULT_AFTER_LANDING_ENV = "RIVERBED_FAULT_AFTER_LANDING"
FAULT_DURING_CONSUMPTION_ENV = "RIVERBED_FAULT_DURING_CONSUMPTION"
FAULT_TIME_LIMIT_AFTER_ENV = "RIVERBED_FAULT_TIME_LIMIT_AFTER"
_EVENT_TIME_FIELD = "event_time"
_BATCH_MESSAGES = 10_000
# A dead letter must fit in a broker's default 1 MB message even when its value is JSON-escaped (6x for control
# bytes), or publishing it would fail and hold the cursor for good: values and keys are cut, and the reason says so.
MAX_DEAD_LETTER_VALUE_BYTES = 65_536
MAX_DEAD_LETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class IngestionLimits:
    """How much one tick may do, and how long it waits for a broker."""

    max_records: int = 100_000
    max_seconds: float = 5.0
    connect_timeout_seconds: float = 5.0
    dead_letter_flush_seconds: float = 10.0
    max_message_bytes: int = 1_000_000  # a larger value is dead-lettered unparsed (Kafka's default message.max.bytes)


@dataclass
class TickOutcome:
    """What one tick did; ``cursor`` is ``None`` when the stored cursor must stay as it is.

    ``failure`` is the ``pipeline_failures`` reason label when the skip is an infrastructure failure (not merely
    "nothing new").
    """

    skip_reason: str | None = None
    cursor: dict[int, int] | None = None
    records_by_day: dict[str, int] = field(default_factory=dict)
    landing_commit_id: str | None = None
    consumed: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    expired_offsets: int = 0
    recovered: list[PartitionCut] = field(default_factory=list)
    cuts: list[PartitionCut] = field(default_factory=list)
    failure: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def landed(self) -> int:
        return sum(self.records_by_day.values())

    @property
    def recovered_records(self) -> int:
        return sum(sum(cut.records_by_day.values()) for cut in self.recovered)


def _failed(failure: str, reason: str) -> TickOutcome:
    return TickOutcome(skip_reason=reason, failure=failure)


def parse_cursor(cursor: str | None) -> dict[int, int]:
    """``{"<partition>": <next offset>}`` -> ``{partition: next offset}``; an empty cursor means "from the start"."""
    if not cursor:
        return {}
    data = json.loads(cursor)
    return {int(partition): int(offset) for partition, offset in data.items()}


def format_cursor(offsets: Mapping[int, int]) -> str:
    return json.dumps({str(partition): offsets[partition] for partition in sorted(offsets)})


def run_key(dataset: str, day: str, landing_commit_id: str) -> str:
    return f"{dataset}:{day}:{landing_commit_id}"


def ingest_run_tags(dataset: str, records: int, dead_letters: int, landing_commit_id: str) -> dict[str, str]:
    """Tags of an ingest run requested for one landed day (reason ``new_data``)."""
    return {
        RunTag.REASON.value: TrainingReason.NEW_DATA.value,
        RunTag.RECORDS.value: str(records),
        RunTag.DEAD_LETTERS.value: str(dead_letters),
        RunTag.LANDING_COMMIT.value: landing_commit_id,
        RunTag.DATASET.value: dataset,
    }


def landing_metadata(
    topic: str, offsets: Mapping[str, list[int]], records: int, dead_letters: int, days: list[str]
) -> dict[str, str]:
    """The versioned-store commit metadata of one landing (besides Dagster's)."""
    return {
        CommitMetadata.SOURCE.value: "kafka",
        CommitMetadata.TOPIC.value: topic,
        CommitMetadata.OFFSETS.value: json.dumps(dict(offsets), sort_keys=True),
        CommitMetadata.RECORDS.value: str(records),
        CommitMetadata.DEAD_LETTERS.value: str(dead_letters),
        CommitMetadata.DAYS.value: ",".join(sorted(days)),
    }


def _reason_kind(reason: str) -> str:
    """A low-cardinality label for counting: the part of the reason before its first ':' (the field)."""
    return reason.split(":", 1)[0].strip()[:80] or "unknown"


def _cut_bytes(data: bytes | None, limit: int) -> tuple[str | None, bool]:
    """``data`` as text (replacement characters where it is not UTF-8), cut to ``limit`` bytes; (text, was cut)."""
    if data is None:
        return None, False
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _day_of(event_time: str) -> str:
    """The UTC day (daily partition key) of an ISO 8601 timestamp; naive means UTC."""
    moment = dt.datetime.fromisoformat(event_time)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()


def consumer_config(kafka: Mapping[str, Any], dataset: str, limits: IngestionLimits) -> dict[str, Any]:
    timeout_ms = int(limits.connect_timeout_seconds * 1000)
    return {
        **kafka,
        # librdkafka wants a group id even for assign(); it is never joined and nothing is committed to it.
        "group.id": f"riverbed-ingest-{dataset}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "socket.connection.setup.timeout.ms": timeout_ms,
        "socket.timeout.ms": max(timeout_ms, 10_000),
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.wait.max.ms": 100,
        "log.connection.close": False,
    }


class DeadLetters:
    """Collects refused messages; published (and flushed) before anything is landed."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.items: list[tuple[bytes | None, bytes]] = []
        self.reasons: Counter[str] = Counter()

    def add(self, message: Any, reason: str) -> None:
        key, value = message.key(), message.value()
        shown_key, key_cut = _cut_bytes(key, MAX_DEAD_LETTER_KEY_BYTES)
        shown_value, value_cut = _cut_bytes(value or b"", MAX_DEAD_LETTER_VALUE_BYTES)
        if key_cut or value_cut:
            reason += (
                f" (dead letter shows the first {MAX_DEAD_LETTER_VALUE_BYTES} of {len(value or b'')} value bytes and "
                f"the first {MAX_DEAD_LETTER_KEY_BYTES} of {len(key or b'')} key bytes: truncated)"
            )
        letter = DeadLetter(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=shown_key,
            value=shown_value or "",
            reason=reason[:MAX_REASON_CHARS],
            refused_at=dt.datetime.now(dt.UTC),
        )
        kafka_key = key[:MAX_DEAD_LETTER_KEY_BYTES] if key is not None else None
        self.items.append((kafka_key, letter.model_dump_json().encode()))
        self.reasons[_reason_kind(reason)] += 1

    def publish(self, kafka: Mapping[str, Any], flush_seconds: float) -> None:
        """Send every dead letter and wait for the broker's acknowledgement; raises if any is not delivered."""
        if not self.items:
            return
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        producer = Producer(
            {**kafka, "linger.ms": 20, "acks": "all", "message.timeout.ms": int(flush_seconds * 1000)},
            logger=logger,
        )
        for key, value in self.items:
            while True:
                try:
                    producer.produce(self.topic, key=key, value=value, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
        remaining = producer.flush(flush_seconds)
        if remaining or failures:
            raise KafkaException(
                f"{remaining + len(failures)} of {len(self.items)} dead letter(s) not acknowledged by {self.topic}"
                + (f": {failures[0]}" if failures else "")
            )


def _fault(name: str) -> None:
    logger.error("fault hook %s: exiting abruptly", name)
    os._exit(9)


@dataclass(frozen=True)
class ReadPlan:
    """Where a tick starts in each partition (the cursor, or the earliest retained offset) and where it ends."""

    start: dict[int, int]
    targets: dict[int, int]  # partitions with something new -> their end offset at planning time
    expired: int  # offsets the broker dropped before they were read


def plan_read(
    consumer: Consumer,
    topic: str,
    cursor: Mapping[int, int],
    limits: IngestionLimits,
    kafka: Mapping[str, Any],
    log: logging.Logger | Any = logger,
    resolve_start: Callable[[int, int], int] | None = None,
) -> ReadPlan | str:
    """The offsets one tick reads, or a skip reason (broker unreachable, topic not there yet).

    ``resolve_start(partition, position)`` may move a partition's start forward (past offsets already taken
    care of) before expired offsets are accounted for.
    """
    try:
        metadata = consumer.list_topics(topic, timeout=limits.connect_timeout_seconds)
    except KafkaException as error:
        return f"Kafka unreachable at {kafka.get('bootstrap.servers')}: {error}"
    topic_metadata = metadata.topics.get(topic)
    if topic_metadata is None or topic_metadata.error is not None or not topic_metadata.partitions:
        problem = topic_metadata.error if topic_metadata is not None else "not in the metadata"
        return f"topic {topic} has no partitions yet ({problem})"
    start: dict[int, int] = {}
    targets: dict[int, int] = {}
    expired = 0
    for partition in sorted(topic_metadata.partitions):
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=limits.connect_timeout_seconds
            )
        except KafkaException as error:
            return f"Kafka unreachable reading offsets of {topic}[{partition}]: {error}"
        position = cursor.get(partition, low)
        if resolve_start is not None:
            position = resolve_start(partition, position)
        if position < low:
            expired += low - position
            log.warning(
                f"{topic}[{partition}]: offsets {position}..{low - 1} expired before they were read; resuming at {low}"
            )
            position = low
        start[partition] = position
        if position < high:
            targets[partition] = high
    return ReadPlan(start, targets, expired)


class PlannedReader:
    """The messages of one tick's plan, in offset order per partition, until the plan's end offsets,
    ``max_records`` or ``max_seconds``. Redeliveries and transient consumer errors are skipped; ``next_offset``
    and ``consumed`` advance as each message is handed out, and the time limit is checked before each one."""

    def __init__(self, consumer: Consumer, topic: str, plan: ReadPlan, limits: IngestionLimits) -> None:
        self.consumer = consumer
        self.topic = topic
        self.targets = plan.targets
        self.limits = limits
        self.next_offset = dict(plan.start)
        self.consumed = 0
        self.timed_out = False
        self._time_limit_after = int(os.environ.get(FAULT_TIME_LIMIT_AFTER_ENV) or 0)
        consumer.assign([TopicPartition(topic, p, plan.start[p]) for p in sorted(plan.targets)])

    def _out_of_time(self, deadline: float) -> bool:
        if self._time_limit_after:
            self.timed_out = self.consumed >= self._time_limit_after
        else:
            self.timed_out = time.monotonic() >= deadline
        return self.timed_out

    def __iter__(self) -> Iterator[Any]:
        remaining = set(self.targets)
        deadline = time.monotonic() + self.limits.max_seconds
        while remaining and self.consumed < self.limits.max_records and not self._out_of_time(deadline):
            wanted = min(_BATCH_MESSAGES, self.limits.max_records - self.consumed)
            timeout = min(max(deadline - time.monotonic(), 0.01), 0.5)
            for message in self.consumer.consume(num_messages=wanted, timeout=timeout):
                error = message.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    logger.warning("%s: consumer error: %s", self.topic, error)
                    continue
                partition, offset = message.partition(), message.offset()
                if partition is None or offset is None:
                    continue  # only error events lack a position, and those were handled above
                if partition not in self.targets or offset < self.next_offset[partition]:
                    continue  # a redelivery of something this tick already has
                if offset >= self.targets[partition] or self._out_of_time(deadline):
                    continue  # beyond the plan, or past the time limit: the next tick reads it
                self.next_offset[partition] = offset + 1
                self.consumed += 1
                if self.next_offset[partition] >= self.targets[partition]:
                    remaining.discard(partition)
                yield message


def _recover_cuts(
    store: VersionedStore, dataset: str, topic: str, log: logging.Logger | Any
) -> tuple[Callable[[int, int], int], list[PartitionCut]]:
    """A ``resolve_start`` for :func:`plan_read` that follows the cuts recorded on main from each position (a
    landing whose cursor was never stored), and the list it fills with the cuts it followed."""
    ref = main_commit(store)
    recovered: list[PartitionCut] = []

    def resolve(partition: int, position: int) -> int:
        while (cut := find_cut(store, ref, dataset, topic, partition, position)) is not None:
            if cut.end_offset <= position:
                break  # never loop on a malformed record
            log.warning(
                f"{topic}[{partition}]: offsets {cut.first_offset}..{cut.end_offset - 1} were landed by a tick whose "
                "cursor was not stored; taking that landing as it is"
            )
            recovered.append(cut)
            position = cut.end_offset
        return position

    return resolve, recovered


def ingest_once(
    spec: DatasetSpec,
    store: VersionedStore,
    kafka: Mapping[str, Any],
    cursor: Mapping[int, int],
    partitions: dg.PartitionsDefinition,
    limits: IngestionLimits | None = None,
    topic_prefix: str = TOPIC_PREFIX,
    log: logging.Logger | Any = logger,
) -> TickOutcome:
    """One tick: consume from ``cursor``, dead-letter the refused, land the valid, return the outcome.

    Records whose event day is not one of ``partitions`` (the ingest job's daily partitions) are dead-lettered.
    Never raises for a message; infrastructure failures come back as a skip with ``failure`` set.
    """
    limits = limits or IngestionLimits()
    name = spec.name
    topic = topic_name(name, TopicKind.RAW, prefix=topic_prefix)
    started = time.perf_counter()
    try:
        resolve_start, recovered = _recover_cuts(store, name, topic, log)
    except VersionedStoreError as error:
        return _failed("versioned_store_unavailable", f"could not read the landing zone, cursor kept: {error}")
    try:
        consumer = Consumer(consumer_config(kafka, name, limits), logger=logger)
    except KafkaException as error:
        return _failed("kafka_client", f"could not create a Kafka consumer, cursor kept: {error}")
    try:
        try:
            plan = plan_read(consumer, topic, cursor, limits, kafka, log, resolve_start)
        except VersionedStoreError as error:
            return _failed("versioned_store_unavailable", f"could not read the landing zone, cursor kept: {error}")
        if isinstance(plan, str):
            if plan.startswith("Kafka unreachable"):
                return _failed("kafka_unreachable", plan)
            return TickOutcome(skip_reason=plan)
        if not plan.targets and not recovered:
            return TickOutcome(skip_reason=f"no new messages on {topic}", expired_offsets=plan.expired)
        dead_letters = DeadLetters(topic_name(name, TopicKind.DLQ, prefix=topic_prefix))
        reader = PlannedReader(consumer, topic, plan, limits)
        try:
            outcome, batches = _consume(spec, partitions, reader, plan.start, dead_letters, limits)
        except KafkaException as error:
            return _failed("kafka_consume", f"reading {topic} failed, cursor kept: {error}")
        outcome.expired_offsets = plan.expired
        outcome.recovered = recovered
    finally:
        consumer.close()
    outcome.seconds["consume"] = time.perf_counter() - started

    t0 = time.perf_counter()
    try:
        dead_letters.publish(kafka, limits.dead_letter_flush_seconds)
    except KafkaException as error:
        text = f"could not write dead letters, nothing landed, cursor kept: {error}"
        return _failed("dead_letters_not_acknowledged", text)
    outcome.seconds["dead_letters"] = time.perf_counter() - t0

    if batches:
        t0 = time.perf_counter()
        ranges = {str(c.partition): [c.first_offset, c.end_offset - 1] for c in outcome.cuts}
        try:
            result = land_batches(
                store,
                name,
                batches,
                message=f"land {outcome.landed} {name} record(s) from {topic}",
                metadata=landing_metadata(
                    topic, ranges, outcome.landed, dead_letters.reasons.total(), list(outcome.records_by_day)
                ),
                branch_prefix=f"kafka-ingest-{name}"[:60],
                cuts=outcome.cuts,
            )
        except LandingOverlapError as error:
            return _failed("landing_overlap", f"nothing landed, cursor kept: {error}")
        except VersionedStoreError as error:
            return _failed(
                "versioned_store_unavailable", f"could not land records in the versioned store, cursor kept: {error}"
            )
        outcome.landing_commit_id = result.commit_id
        outcome.seconds["land"] = time.perf_counter() - t0
        if os.environ.get(FAULT_AFTER_LANDING_ENV) == "1":
            _fault(FAULT_AFTER_LANDING_ENV)
    elif recovered:
        try:
            outcome.landing_commit_id = store.resolve_ref(store.main_branch)
        except VersionedStoreError as error:
            return _failed("versioned_store_unavailable", f"could not read the landing zone, cursor kept: {error}")
    for cut in recovered:
        for day, count in cut.records_by_day.items():
            outcome.records_by_day[day] = outcome.records_by_day.get(day, 0) + count
    outcome.seconds["total"] = time.perf_counter() - started
    return outcome


def _refusal(spec: DatasetSpec, message: Any, limits: IngestionLimits) -> tuple[str | None, dict[str, Any] | None]:
    """(reason, None) for a message that cannot be landed, else (None, the parsed record)."""
    value = message.value()
    if value is None:
        return "value: missing (a tombstone carries no record)", None
    if len(value) > limits.max_message_bytes:
        return f"value: {len(value)} bytes, more than the {limits.max_message_bytes} a message may have", None
    try:
        record = parse_raw_message(spec, value)
        _day_of(str(record[_EVENT_TIME_FIELD]))
    except RawMessageError as error:
        return str(error), None
    except Exception as error:  # a parser bug must not hold the partition: the message is kept in the DLQ
        logger.warning("%s: unexpected error parsing a message", spec.name, exc_info=True)
        return f"value: could not be parsed ({type(error).__name__}: {error})", None
    return None, record


def _consume(
    spec: DatasetSpec,
    partitions: dg.PartitionsDefinition,
    reader: PlannedReader,
    start: dict[int, int],
    letters: DeadLetters,
    limits: IngestionLimits,
) -> tuple[TickOutcome, list[LandingBatch]]:
    first_day = spec.event_time.first_partition_day.isoformat()
    last_day = partitions.get_last_partition_key() or first_day
    fault_after = int(os.environ.get(FAULT_DURING_CONSUMPTION_ENV) or 0)

    rows: list[dict[str, Any]] = []
    days: list[str] = []
    letters_by_partition: Counter[int] = Counter()
    for message in reader:
        reason, record = _refusal(spec, message, limits)
        if record is not None:
            day = _day_of(str(record[_EVENT_TIME_FIELD]))
            if first_day <= day <= last_day:
                record[PARTITION_COLUMN] = message.partition()
                record[OFFSET_COLUMN] = message.offset()
                rows.append(record)
                days.append(day)
            else:
                reason = (
                    f"event_time: day {day} is outside the daily partitions of {spec.name} ({first_day} .. {last_day})"
                )
        if reason is not None:
            letters.add(message, reason)
            letters_by_partition[message.partition()] += 1
        if fault_after and reader.consumed >= fault_after:
            _fault(FAULT_DURING_CONSUMPTION_ENV)

    next_offset = reader.next_offset
    outcome = TickOutcome(cursor=next_offset, consumed=reader.consumed)
    outcome.dead_letters = letters.reasons.total()
    outcome.dead_letter_reasons = dict(letters.reasons)
    batches = landing_batches(spec, reader.topic, rows, days, start, next_offset)
    landed: dict[int, dict[str, int]] = {}
    for batch in batches:
        outcome.records_by_day[batch.day] = outcome.records_by_day.get(batch.day, 0) + len(batch.records)
        landed.setdefault(batch.partition, {})[batch.day] = len(batch.records)
    outcome.cuts = [
        PartitionCut(
            topic=reader.topic,
            partition=partition,
            first_offset=start[partition],
            end_offset=next_offset[partition],
            records_by_day=landed.get(partition, {}),
            dead_letters=letters_by_partition[partition],
        )
        for partition in sorted(next_offset)
        if next_offset[partition] > start[partition]
    ]
    return outcome, batches


def landing_batches(
    spec: DatasetSpec,
    topic: str,
    rows: list[dict[str, Any]],
    days: list[str],
    start: Mapping[int, int],
    next_offset: Mapping[int, int],
) -> list[LandingBatch]:
    """One landing batch per (day, partition), named by the partition's cut: its whole range in this tick."""
    if not rows:
        return []
    frame = pd.DataFrame.from_records(rows)
    columns = [spec.record_id.name, spec.event_time.name, *spec.feature_names, spec.target.name]
    frame = frame.rename(columns={SAMPLE_ID_FIELD: spec.record_id.name, _EVENT_TIME_FIELD: spec.event_time.name})
    frame[spec.event_time.name] = pd.to_datetime(frame[spec.event_time.name], utc=True, format="ISO8601")
    frame = frame[[*columns, PARTITION_COLUMN, OFFSET_COLUMN]]
    frame["_day"] = days
    batches = []
    for (day, partition), group in frame.groupby(["_day", PARTITION_COLUMN], sort=True):
        batches.append(
            LandingBatch(
                day=str(day),
                topic=topic,
                partition=int(partition),
                first_offset=start[int(partition)],
                last_offset=next_offset[int(partition)] - 1,
                records=group.drop(columns=["_day"]),
            )
        )
    return batches


def failure_dsn(kafka: KafkaResource) -> str | None:
    """Where failures are counted: the configured inference-log database or the local stack's, else nowhere."""
    try:
        return configured_inference_log_dsn(kafka.settings())
    except (OSError, ValueError) as error:  # reporting must not become a second failure
        logger.warning("could not resolve the inference-log DSN to count a failure: %s", error)
        return None


def build_kafka_ingestion_sensor(
    spec: DatasetSpec,
    ingest_job: UnresolvedAssetJobDefinition | dg.JobDefinition,
    limits: IngestionLimits | None = None,
) -> dg.SensorDefinition:
    """``kafka_ingest_<dataset>``: lands new raw messages and requests ``ingest_job`` for each affected day.

    The days it accepts are ``ingest_job``'s partitions (the dataset's daily partitions).
    """
    name = spec.name
    component = f"ingest_{name}"
    limits = limits or IngestionLimits()
    partitions = ingest_job.partitions_def
    if partitions is None:
        raise ValueError(f"{ingest_job.name} has no partitions: the Kafka ingestion sensor requests one run per day")

    @dg.sensor(
        name=names.kafka_ingest_sensor(name),
        job=ingest_job,
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Consume {name}'s raw topic into the landing zone (cursor = next offset per partition) and "
        "materialise the affected daily partitions.",
    )
    def kafka_ingest(
        context: dg.SensorEvaluationContext, data_store: VersionedDataStoreResource, kafka: KafkaResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            config = kafka.client_config()
        except KafkaNotConfiguredError as error:
            report_failure(component, "kafka_not_configured", str(error), dsn=failure_dsn(kafka), log=logger)
            return dg.SkipReason(f"{component} failed: {error}")
        try:
            store = data_store.get_store()
        except VersionedStoreError as error:
            text = f"versioned store unavailable, cursor kept: {error}"
            report_failure(component, "versioned_store_unavailable", text, dsn=failure_dsn(kafka), log=logger)
            return dg.SkipReason(f"{component} failed: {text}")
        outcome = ingest_once(
            spec,
            store,
            config,
            parse_cursor(context.cursor),
            partitions,
            limits,
            topic_prefix=kafka.topic_prefix,
            log=context.log,
        )
        if outcome.cursor is None:
            if outcome.failure is not None:
                text = outcome.skip_reason or outcome.failure
                report_failure(component, outcome.failure, text, dsn=failure_dsn(kafka), log=logger)
                return dg.SkipReason(f"{component} failed ({outcome.failure}): {text}")
            context.log.info(outcome.skip_reason or "skipped")
            return dg.SkipReason(outcome.skip_reason)
        recovered = (
            f", took over {len(outcome.recovered)} landed cut(s) of {outcome.recovered_records} record(s)"
            if outcome.recovered
            else ""
        )
        summary = (
            f"{name}: consumed {outcome.consumed}, landed {outcome.landed - outcome.recovered_records} in "
            f"{len(outcome.records_by_day)} day(s), "
            f"dead-lettered {outcome.dead_letters} {outcome.dead_letter_reasons or ''}{recovered} in "
            f"{outcome.seconds.get('total', 0.0):.2f}s (commit {outcome.landing_commit_id})"
        )
        context.log.info(summary)
        commit = outcome.landing_commit_id or ""
        requests = [
            dg.RunRequest(
                run_key=run_key(name, day, commit),
                partition_key=day,
                tags=ingest_run_tags(name, count, outcome.dead_letters, commit),
            )
            for day, count in sorted(outcome.records_by_day.items())
        ]
        new_cursor = format_cursor(outcome.cursor)
        if not requests:
            return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=new_cursor)
        return dg.SensorResult(run_requests=requests, cursor=new_cursor)

    return kafka_ingest
