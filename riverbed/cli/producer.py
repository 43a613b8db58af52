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
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
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
_LABEL_NAMESPACE = uuid.UUID("6f1c2a52-3d0e-4c1b-9a57-0c2f7e4b9d10")  # label event ids of the labeller (uuid5)


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


class _Deliveries:
    """A producer's delivery callback: how many messages the broker acknowledged, and the delivery errors."""

    def __init__(self) -> None:
        self.acknowledged = 0
        self.errors: list[str] = []

    def __call__(self, error: KafkaError | None, _message: Any) -> None:
        if error is None:
            self.acknowledged += 1
        else:
            self.errors.append(str(error))


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, on_delivery: _Deliveries) -> None:
    """Queue one message; while the local queue is full, let librdkafka deliver some, then retry."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.1)


def _event_time(value: Any) -> dt.datetime | None:
    if value is None or pd.isna(value):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_convert("UTC") if stamp.tzinfo else stamp.tz_localize("UTC")
    moment: dt.datetime = stamp.to_pydatetime()  # pandas is untyped here (no pandas-stubs)
    return moment


def _event_window(spec: DatasetSpec, frame: pd.DataFrame) -> tuple[dt.datetime | None, dt.datetime | None]:
    """First and last event time of ``frame`` (None, None when it is empty)."""
    if frame.empty:
        return None, None
    times = frame[spec.event_time.name]
    return _event_time(times.min()), _event_time(times.max())


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
    deliveries = _Deliveries()
    started = time.monotonic()
    queued = _queue_paced(spec, frame, producer, topic, rate, deliveries, progress, started)
    remaining = producer.flush(flush_seconds)
    seconds = time.monotonic() - started
    if progress is not None:
        progress(queued)
    if remaining:
        logger.warning("%d message(s) still queued for %s after %g s of flushing", remaining, topic, flush_seconds)
    if deliveries.errors:
        logger.warning(
            "%d message(s) to %s not delivered, first error: %s", len(deliveries.errors), topic, deliveries.errors[0]
        )
    first_event_time, last_event_time = _event_window(spec, frame)
    report = ProduceReport(
        sent=deliveries.acknowledged,
        failed=len(deliveries.errors) + remaining,
        seconds=seconds,
        first_event_time=first_event_time,
        last_event_time=last_event_time,
        drifted=drifted_count(spec, frame, drift_start),
    )
    logger.info("%s: %d sent, %d failed to %s in %.2f s", spec.name, report.sent, report.failed, topic, seconds)
    return report


def _queue_paced(
    spec: DatasetSpec,
    frame: pd.DataFrame,
    producer: Producer,
    topic: str,
    rate: float | None,
    deliveries: _Deliveries,
    progress: Callable[[int], None] | None,
    started: float,
) -> int:
    """Queue the rows of ``frame`` in order, row ``i`` no earlier than ``started + i / rate``; returns how many."""
    id_column = spec.record_id.name
    interval = 1.0 / rate if rate else 0.0
    queued = 0
    last_progress = started
    for row in frame.to_dict("records"):
        if interval:
            due = started + queued * interval
            while (wait := due - time.monotonic()) > 0:
                producer.poll(wait)  # serves delivery callbacks while waiting for the record's turn
        _produce(producer, topic, str(row[id_column]).encode("utf-8"), raw_message(spec, row), deliveries)
        producer.poll(0)
        queued += 1
        if progress is not None and time.monotonic() - last_progress >= PROGRESS_INTERVAL_SECONDS:
            progress(queued)
            last_progress = time.monotonic()
    return queued


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
    = when it is published, ``label_event_id`` from :func:`label_event_id`) goes to ``<prefix>.<dataset>.labels``
    no earlier than ``delay_seconds`` after the prediction was seen. Each sample id is labelled once. Stops after
    ``duration_seconds``, or as soon as every id of ``truth`` is labelled; labels not yet due by then are dropped.
    Returns how many labels the broker acknowledged.

    Raises :class:`KafkaUnavailableError` when the broker does not answer within ``connect_timeout_seconds``.
    """
    if delay_seconds < 0:
        raise ValueError(f"delay_seconds: {delay_seconds} is negative")
    if duration_seconds < 0:
        raise ValueError(f"duration_seconds: {duration_seconds} is negative")
    if not truth:
        return 0
    labeller = _Labeller(spec, truth, delay_seconds, topic_prefix)
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
    try:
        _check_reachable(consumer, kafka_config, connect_timeout_seconds)
        producer = Producer(
            {**kafka_config, "linger.ms": 5, "message.timeout.ms": max(int(flush_seconds * 1000), 1000)},
            logger=logger,
        )
        labeller.run(consumer, producer, deadline)
    finally:
        consumer.close()
        remaining = producer.flush(flush_seconds) if producer is not None else 0
    labeller.log_outcome(remaining)
    return labeller.deliveries.acknowledged


def label_event_id(dataset: str, prediction: PredictionEvent, label: str) -> str:
    """The id of the label this labeller gives ``prediction``: derived from what it labels, so labelling the same
    prediction again (a retry, the labeller run twice) publishes the same label event, stored once."""
    parts = [dataset, prediction.request_id, str(prediction.record_index), str(prediction.sample_id), label]
    return str(uuid.uuid5(_LABEL_NAMESPACE, "\x1f".join(parts)))


class _Labeller:
    """The labeller's loop: prediction events in, each known sample's label out ``delay_seconds`` later."""

    def __init__(self, spec: DatasetSpec, truth: Mapping[str, str], delay_seconds: float, topic_prefix: str) -> None:
        self.spec = spec
        self.truth = truth
        self.delay_seconds = delay_seconds
        self.predictions_topic = topic_name(spec.name, TopicKind.PREDICTIONS, prefix=topic_prefix)
        self.labels_topic = topic_name(spec.name, TopicKind.LABELS, prefix=topic_prefix)
        self.deliveries = _Deliveries()
        self.scheduled: set[str] = set()
        self.consumer_errors: dict[int, int] = {}  # predictions-consumer errors by code
        self.unparsed_events = 0  # prediction events that did not parse (skipped; logged once)
        self.pending: collections.deque[tuple[float, str, PredictionEvent]] = collections.deque()
        self.published = 0
        self._assigned = False
        self._next_metadata = 0.0

    def run(self, consumer: Consumer, producer: Producer, deadline: float) -> None:
        """Until ``deadline``, or until every sample of ``truth`` is labelled."""
        while time.monotonic() < deadline and self.published < len(self.truth):
            self._assign_once_the_topic_exists(consumer)
            wait = _LABEL_POLL_SECONDS
            if self.pending:
                wait = min(wait, max(self.pending[0][0] - time.monotonic(), 0.0))
            wait = max(min(wait, deadline - time.monotonic()), 0.0)
            if self._assigned:
                for message in consumer.consume(num_messages=500, timeout=wait):
                    self._schedule(message)
            elif wait > 0:
                producer.poll(wait)
            self._publish_due(producer)
            producer.poll(0)

    def _assign_once_the_topic_exists(self, consumer: Consumer) -> None:
        if self._assigned or time.monotonic() < self._next_metadata:
            return
        partitions = _partitions(consumer, self.predictions_topic, min(_METADATA_RETRY_SECONDS, 5.0))
        if partitions:
            consumer.assign([TopicPartition(self.predictions_topic, p, OFFSET_BEGINNING) for p in partitions])
            self._assigned = True
            logger.debug("reading %s (%d partitions)", self.predictions_topic, len(partitions))
        else:
            self._next_metadata = time.monotonic() + _METADATA_RETRY_SECONDS

    def _schedule(self, message: Message) -> None:
        """Schedule the label of a prediction event's sample, if it is one of ours and not scheduled yet."""
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if error.code() not in self.consumer_errors:  # once per kind: a broker hiccup repeats on every poll
                logger.warning("predictions consumer: %s", error)
            self.consumer_errors[error.code()] = self.consumer_errors.get(error.code(), 0) + 1
            return
        try:
            event = PredictionEvent.model_validate_json(message.value() or b"")
        except ValidationError as invalid:
            if not self.unparsed_events:
                logger.warning("skipping prediction events that do not parse, first: %s", invalid.errors()[0])
            self.unparsed_events += 1
            return
        sample_id = event.sample_id
        if event.dataset != self.spec.name or sample_id is None or sample_id not in self.truth:
            return
        if sample_id in self.scheduled:
            return
        self.scheduled.add(sample_id)
        self.pending.append((time.monotonic() + self.delay_seconds, sample_id, event))

    def _publish_due(self, producer: Producer) -> None:
        while self.pending and self.pending[0][0] <= time.monotonic():
            _, sample_id, event = self.pending.popleft()
            label = LabelEvent(
                dataset=self.spec.name,
                sample_id=sample_id,
                request_id=event.request_id,
                record_index=event.record_index,
                label=self.truth[sample_id],
                labelled_at=dt.datetime.now(dt.UTC),
                label_event_id=label_event_id(self.spec.name, event, self.truth[sample_id]),
            )
            value = label.model_dump_json().encode("utf-8")
            _produce(producer, self.labels_topic, sample_id.encode("utf-8"), value, self.deliveries)
            self.published += 1

    def log_outcome(self, remaining: int) -> None:
        """Log what was dropped or not delivered, and how many labels the broker acknowledged."""
        if self.pending:
            logger.info("%d label(s) were not due yet when the labeller stopped", len(self.pending))
        errors = self.deliveries.errors
        if remaining or errors:
            logger.warning(
                "%d of %d label(s) to %s not delivered%s",
                remaining + len(errors),
                self.published,
                self.labels_topic,
                f", first error: {errors[0]}" if errors else "",
            )
        if self.unparsed_events or self.consumer_errors:
            logger.warning(
                "%s: %d prediction event(s) skipped as unparseable; consumer errors by code: %s",
                self.predictions_topic,
                self.unparsed_events,
                self.consumer_errors or "none",
            )
        logger.info("%s: %d label(s) published to %s", self.spec.name, self.deliveries.acknowledged, self.labels_topic)
