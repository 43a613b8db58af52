"""The data-provider simulator behind ``riverbed produce``: replay a dataset's records onto its raw topic.

- :func:`replay_frame`: the dataset's records for a window of days, with an optional drift scenario applied.
- :func:`produce_records`: send them as raw messages (key = sample id), optionally paced to a rate.
- :func:`publish_labels_for_predictions`: play the labeller: for every prediction event of a replayed record,
  publish its true label on the labels topic some seconds later.

Kafka is reached with confluent-kafka (librdkafka); the configuration comes from
:func:`riverbed.kafka_config.client_config`.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from riverbed.event_schemas import raw_message
from riverbed.events import LabelEvent, PredictionEvent
from riverbed.generators import DriftScenario, apply_drift
from riverbed.names import TopicKind, topic_name
from riverbed.sources import load_source_records, records_for_window
from riverbed.specs import DatasetSpec

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
FLUSH_SECONDS = 30.0
PROGRESS_INTERVAL_SECONDS = 0.1
_LABEL_POLL_SECONDS = 0.2
_METADATA_RETRY_SECONDS = 1.0


class KafkaUnavailableError(RuntimeError):
    """The broker could not be reached (nothing was sent)."""


@dataclass(frozen=True)
class ProduceReport:
    """What one :func:`produce_records` call did."""

    sent: int
    """Messages the broker acknowledged."""
    failed: int
    """Messages not delivered (delivery error, or still queued when the final flush timed out)."""
    seconds: float
    """Wall-clock time from the first message queued to the end of the final flush."""
    first_event_time: dt.datetime | None
    last_event_time: dt.datetime | None
    drifted: int = 0
    """Records at or after the drift start (0 without drift)."""

    @property
    def rate(self) -> float:
        """Acknowledged messages per second of wall-clock time."""
        return self.sent / self.seconds if self.seconds > 0 else float(self.sent)


# ------------------------------------------------------------------------------------------------ replay


def _utc_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def dataset_window(spec: DatasetSpec) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) of the dataset's event times.

    Assigned event times spread over ``assign_days`` days from the first partition day; event times read from
    a source column run from the first partition day to the day of the latest parseable event time.
    """
    first = spec.event_time.first_partition_day
    if spec.event_time.assign_days is not None:
        return first, first + dt.timedelta(days=spec.event_time.assign_days - 1)
    times = load_source_records(spec)[spec.event_time.name].dropna()
    if times.empty:
        return first, first
    last = pd.Timestamp(times.max()).tz_convert("UTC").date()
    return first, max(first, last)


def replay_frame(
    spec: DatasetSpec,
    start_day: dt.date | None,
    end_day: dt.date | None,
    drift: DriftScenario | None,
    seed: int,
    limit: int | None,
) -> pd.DataFrame:
    """The records to replay: event times on days ``start_day`` to ``end_day`` (both inclusive; default: the
    dataset's whole window, see :func:`dataset_window`), with ``drift`` applied (its random draws seeded by
    ``seed``), sorted by event time and cut to the first ``limit`` records.

    Raises ``ValueError`` when the days are reversed, the limit is below 1 or the drift does not fit the spec.
    """
    first, last = dataset_window(spec)
    start_day = start_day or first
    end_day = end_day or last
    if end_day < start_day:
        raise ValueError(f"end_day: {end_day} is before start_day {start_day}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: {limit} is not a positive number of records")
    if drift is not None:
        drift.validate(spec)
    frame = records_for_window(spec, _utc_midnight(start_day), _utc_midnight(end_day + dt.timedelta(days=1)))
    if drift is not None:
        frame = apply_drift(spec, frame, drift, seed)
    frame = frame.sort_values(spec.event_time.name, kind="stable").reset_index(drop=True)
    if limit is not None:
        frame = frame.iloc[:limit].reset_index(drop=True)
    logger.debug("%s: %d record(s) to replay from %s to %s", spec.name, len(frame), start_day, end_day)
    return frame


def drifted_count(spec: DatasetSpec, frame: pd.DataFrame, drift_start: dt.datetime | None) -> int:
    """Records of ``frame`` whose event time is at or after ``drift_start`` (naive = UTC)."""
    if drift_start is None or frame.empty:
        return 0
    start = pd.Timestamp(drift_start)
    start = start.tz_convert("UTC") if start.tzinfo else start.tz_localize("UTC")
    times = pd.to_datetime(frame[spec.event_time.name], utc=True, errors="coerce")
    return int((times >= start).sum())


# ------------------------------------------------------------------------------------------------ produce


def _check_reachable(client: Producer | Consumer, kafka_config: Mapping[str, Any], timeout: float) -> None:
    try:
        client.list_topics(timeout=timeout)
    except KafkaException as error:
        raise KafkaUnavailableError(
            f"Kafka unreachable at {kafka_config.get('bootstrap.servers')} (no answer within {timeout:g} s): "
            f"{error.args[0] if error.args else error}"
        ) from None


def _event_time(value: Any) -> dt.datetime | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
    moment: dt.datetime = stamp.to_pydatetime()  # pandas is untyped here (no pandas-stubs)
    return moment


def produce_records(
    spec: DatasetSpec,
    frame: pd.DataFrame,
    kafka_config: dict[str, Any],
    topic: str,
    rate: float | None,
    progress: Callable[[int], None] | None = None,
    *,
    drift_start: dt.datetime | None = None,
    flush_seconds: float = FLUSH_SECONDS,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
) -> ProduceReport:
    """Send every record of ``frame`` (in its order) to ``topic`` as a raw message keyed by its sample id.

    ``rate``: records per second, paced by the wall clock (record ``i`` is queued no earlier than ``i / rate``
    seconds after the first); ``None`` or 0 sends as fast as possible. ``progress`` is called now and then,
    and once at the end, with the number of records queued so far. ``drift_start`` only feeds the report's
    ``drifted`` count. The producer is idempotent, so retries never reorder a partition.

    Raises :class:`KafkaUnavailableError` (before sending anything) when the broker does not answer within
    ``connect_timeout_seconds``.
    """
    if rate is not None and rate < 0:
        raise ValueError(f"rate: {rate} is negative (0 or None sends as fast as possible)")
    producer = Producer(
        {
            **kafka_config,
            "enable.idempotence": True,
            "linger.ms": 10,
            "message.timeout.ms": max(int(flush_seconds * 1000), 1000),
            "socket.connection.setup.timeout.ms": max(int(connect_timeout_seconds * 1000), 1000),
        },
        logger=logger,
    )
    _check_reachable(producer, kafka_config, connect_timeout_seconds)

    delivered = 0
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        nonlocal delivered
        if error is None:
            delivered += 1
        else:
            errors.append(str(error))

    id_column = spec.record_id.name
    interval = 1.0 / rate if rate else 0.0
    queued = 0
    started = time.monotonic()
    last_progress = started
    for row in frame.to_dict("records"):
        if interval:
            due = started + queued * interval
            while (wait := due - time.monotonic()) > 0:
                producer.poll(wait)  # serves delivery callbacks while waiting for the record's turn
        key = str(row[id_column]).encode("utf-8")
        value = raw_message(spec, row)
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka deliver some, then retry
                producer.poll(0.1)
        producer.poll(0)
        queued += 1
        if progress is not None and time.monotonic() - last_progress >= PROGRESS_INTERVAL_SECONDS:
            progress(queued)
            last_progress = time.monotonic()
    remaining = producer.flush(flush_seconds)
    seconds = time.monotonic() - started
    if progress is not None:
        progress(queued)
    if remaining:
        logger.warning("%d message(s) still queued for %s after %g s of flushing", remaining, topic, flush_seconds)
    if errors:
        logger.warning("%d message(s) to %s not delivered, first error: %s", len(errors), topic, errors[0])

    times = frame[spec.event_time.name] if not frame.empty else pd.Series(dtype="datetime64[ns, UTC]")
    report = ProduceReport(
        sent=delivered,
        failed=len(errors) + remaining,
        seconds=seconds,
        first_event_time=_event_time(times.min()) if len(times) else None,
        last_event_time=_event_time(times.max()) if len(times) else None,
        drifted=drifted_count(spec, frame, drift_start),
    )
    logger.info("%s: %d sent, %d failed to %s in %.2f s", spec.name, report.sent, report.failed, topic, seconds)
    return report


# ------------------------------------------------------------------------------------------------ labels


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    """The topic's partitions, or [] while it does not exist yet."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as error:
        logger.debug("metadata of %s not available yet: %s", topic, error)
        return []
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return []
    return sorted(described.partitions)


def publish_labels_for_predictions(
    spec: DatasetSpec,
    kafka_config: dict[str, Any],
    truth: Mapping[str, str],
    delay_seconds: float,
    duration_seconds: float,
    topic_prefix: str,
    *,
    connect_timeout_seconds: float = CONNECT_TIMEOUT_SECONDS,
    flush_seconds: float = FLUSH_SECONDS,
) -> int:
    """Label the predictions of known records, like a delayed ground-truth feed.

    Reads ``<prefix>.<dataset>.predictions`` from the beginning of every partition (no consumer group offsets
    are committed). For each :class:`~riverbed.events.PredictionEvent` whose ``sample_id`` is in ``truth``, a
    :class:`~riverbed.events.LabelEvent` (sample id, request id, record index, the true label, ``labelled_at``
    = when it is published) goes to ``<prefix>.<dataset>.labels`` no earlier than ``delay_seconds`` after the
    prediction was seen. Each sample id is labelled once. Stops after ``duration_seconds``, or as soon as every
    id of ``truth`` is labelled; labels not yet due by then are dropped. Returns how many labels the broker
    acknowledged.

    Raises :class:`KafkaUnavailableError` when the broker does not answer within ``connect_timeout_seconds``.
    """
    if delay_seconds < 0:
        raise ValueError(f"delay_seconds: {delay_seconds} is negative")
    if duration_seconds < 0:
        raise ValueError(f"duration_seconds: {duration_seconds} is negative")
    if not truth:
        return 0
    predictions_topic = topic_name(spec.name, TopicKind.PREDICTIONS, prefix=topic_prefix)
    labels_topic = topic_name(spec.name, TopicKind.LABELS, prefix=topic_prefix)
    deadline = time.monotonic() + duration_seconds

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"riverbed-labeller-{uuid.uuid4().hex[:12]}",  # never committed: assign() only
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        },
        logger=logger,
    )
    producer: Producer | None = None
    acknowledged = 0
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
        else:
            errors.append(str(error))

    scheduled: set[str] = set()
    pending: collections.deque[tuple[float, str, PredictionEvent]] = collections.deque()
    published = 0
    try:
        _check_reachable(consumer, kafka_config, connect_timeout_seconds)
        producer = Producer(
            {**kafka_config, "linger.ms": 5, "message.timeout.ms": max(int(flush_seconds * 1000), 1000)},
            logger=logger,
        )
        assigned = False
        next_metadata = 0.0
        while time.monotonic() < deadline and published < len(truth):
            now = time.monotonic()
            if not assigned and now >= next_metadata:
                partitions = _partitions(consumer, predictions_topic, min(_METADATA_RETRY_SECONDS, 5.0))
                if partitions:
                    consumer.assign([TopicPartition(predictions_topic, p, OFFSET_BEGINNING) for p in partitions])
                    assigned = True
                    logger.debug("reading %s (%d partitions)", predictions_topic, len(partitions))
                else:
                    next_metadata = time.monotonic() + _METADATA_RETRY_SECONDS
            wait = _LABEL_POLL_SECONDS
            if pending:
                wait = min(wait, max(pending[0][0] - time.monotonic(), 0.0))
            wait = max(min(wait, deadline - time.monotonic()), 0.0)
            if assigned:
                for message in consumer.consume(num_messages=500, timeout=wait):
                    if message.error() is not None:
                        logger.debug("predictions consumer: %s", message.error())
                        continue
                    try:
                        event = PredictionEvent.model_validate_json(message.value() or b"")
                    except ValidationError as error:
                        logger.debug("skipping a prediction event that does not parse: %s", error.errors()[0])
                        continue
                    sample_id = event.sample_id
                    if event.dataset != spec.name or sample_id is None or sample_id not in truth:
                        continue
                    if sample_id in scheduled:
                        continue
                    scheduled.add(sample_id)
                    pending.append((time.monotonic() + delay_seconds, sample_id, event))
            elif wait > 0:
                producer.poll(wait)
            while pending and pending[0][0] <= time.monotonic():
                _, sample_id, event = pending.popleft()
                label = LabelEvent(
                    dataset=spec.name,
                    sample_id=sample_id,
                    request_id=event.request_id,
                    record_index=event.record_index,
                    label=truth[sample_id],
                    labelled_at=dt.datetime.now(dt.UTC),
                )
                value = label.model_dump_json().encode("utf-8")
                key = sample_id.encode("utf-8")
                while True:
                    try:
                        producer.produce(labels_topic, key=key, value=value, on_delivery=on_delivery)
                        break
                    except BufferError:
                        producer.poll(0.1)
                published += 1
            producer.poll(0)
    finally:
        consumer.close()
        remaining = producer.flush(flush_seconds) if producer is not None else 0
    if pending:
        logger.info("%d label(s) were not due yet when the labeller stopped", len(pending))
    if remaining or errors:
        logger.warning(
            "%d of %d label(s) to %s not delivered%s",
            remaining + len(errors),
            published,
            labels_topic,
            f", first error: {errors[0]}" if errors else "",
        )
    logger.info("%s: %d label(s) published to %s", spec.name, acknowledged, labels_topic)
    return acknowledged
