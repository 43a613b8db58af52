"""``kafka_labels_<dataset>``: true labels from ``<prefix>.<dataset>.labels`` into the inference log database.

Same discipline as raw ingestion: offsets live in the sensor cursor (``{"<partition>": <next offset>}``), a tick
reads a bounded batch, and only then does the cursor advance. Whatever cannot be stored goes to ``.dlq`` with its
reason: a value that is not a label event (bad JSON, wrong types, over ``max_message_bytes``), ids too long or
holding control characters, a ``labelled_at`` further ahead of this clock than ``label_clock_skew_seconds`` (it
would outrank every later label), a label for another dataset or not one of the target's classes, and any row
PostgreSQL refuses for its content. The valid labels are stored in one transaction, once per label identity
(:mod:`monitoring.labels`); dead letters are published after that, so a crash in between repeats nothing but the
dead letters. Labels for ids not predicted (yet) are stored too: monitoring matches them at read time.

A tick fails only for infrastructure (broker or database unreachable, dead letters not acknowledged): the
cursor stays, the skip reason says why and the failure is reported (component ``labels_<dataset>``).
"""

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from confluent_kafka import Consumer, KafkaException
from pydantic import ValidationError

from monitoring.labels import LabelMessage, store_labels
from resources.inference_log_resource import InferenceLogResource
from resources.kafka_resource import KafkaResource
from riverbed import names
from riverbed.events import LabelEvent
from riverbed.kafka_config import KafkaNotConfiguredError
from riverbed.names import TOPIC_PREFIX, TopicKind, topic_name
from riverbed.pipeline_failures import report_failure
from riverbed.settings import get_settings
from riverbed.specs import DatasetSpec
from riverbed.stack_file import InferenceLogNotAvailableError
from sensors.kafka_ingestion import (
    DeadLetters,
    IngestionLimits,
    PlannedReader,
    consumer_config,
    format_cursor,
    parse_cursor,
    plan_read,
)

logger = logging.getLogger(__name__)

_RULES = {  # pydantic error types -> the rule in words
    "string_pattern_mismatch": "contains a control character (NUL, line break, ...)",
}


class LabelRefused(ValueError):
    """A label message that cannot be stored; the text names the field and the rule."""


@dataclass
class LabelTick:
    skip_reason: str | None = None
    cursor: dict[int, int] | None = None
    stored: int = 0
    consumed: int = 0
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # the pipeline_failures reason label when the skip is an infrastructure failure


def _problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in problem.get("loc", ())) or "value"
    rule = _RULES.get(problem.get("type", ""), problem.get("msg", "invalid"))
    return f"{where}: {rule}"


def parse_label(
    spec: DatasetSpec,
    value: bytes | None,
    *,
    now: dt.datetime,
    max_clock_skew: dt.timedelta,
    max_message_bytes: int,
) -> LabelEvent:
    """Decode and check one label message; raises :class:`LabelRefused` naming the field and the rule."""
    if value is None:
        raise LabelRefused("value: missing (a tombstone carries no label)")
    if len(value) > max_message_bytes:
        raise LabelRefused(f"value: {len(value)} bytes, more than the {max_message_bytes} a message may have")
    try:
        event = LabelEvent.model_validate_json(value)
    except ValidationError as error:
        raise LabelRefused(_problem(error)) from None
    if event.dataset != spec.name:
        raise LabelRefused(f"dataset: {event.dataset!r} is not {spec.name!r} (the topic's dataset)")
    if event.sample_id is None and event.request_id is None:
        raise LabelRefused("sample_id: give sample_id or request_id to name the prediction")
    if event.label not in spec.target.classes:
        raise LabelRefused(f"label: {event.label!r} is not one of {spec.target.classes}")
    if event.labelled_at > now + max_clock_skew:
        raise LabelRefused(
            f"labelled_at: {event.labelled_at.isoformat()} is ahead of this consumer's clock ({now.isoformat()}) by "
            f"more than the allowed clock skew of {max_clock_skew.total_seconds():g} s (label_clock_skew_seconds)"
        )
    return event


def label_identity(event: LabelEvent, value: bytes) -> str:
    """The label event id, or (a producer that sets none) the digest of the message: a retry repeats its bytes."""
    return event.label_event_id or "sha256:" + hashlib.sha256(value).hexdigest()


def ingest_labels_once(
    spec: DatasetSpec,
    dsn: str,
    kafka: Mapping[str, Any],
    cursor: Mapping[int, int],
    limits: IngestionLimits | None = None,
    topic_prefix: str = TOPIC_PREFIX,
    *,
    max_clock_skew: dt.timedelta | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> LabelTick:
    """One tick: consume labels from ``cursor``, store the valid, dead-letter the rest, return the new cursor.

    ``max_clock_skew`` defaults to the ``label_clock_skew_seconds`` setting. Never raises for a message.
    """
    limits = limits or IngestionLimits()
    skew = (
        max_clock_skew if max_clock_skew is not None else dt.timedelta(seconds=get_settings().label_clock_skew_seconds)
    )
    topic = topic_name(spec.name, TopicKind.LABELS, prefix=topic_prefix)
    letters = DeadLetters(topic_name(spec.name, TopicKind.DLQ, prefix=topic_prefix))
    labels: list[LabelMessage] = []
    originals: dict[tuple[int, int], Any] = {}  # (partition, offset) -> message, for rows the database refuses
    try:
        consumer = Consumer(consumer_config(kafka, f"{spec.name}-labels", limits))
    except KafkaException as error:
        return LabelTick(skip_reason=f"could not create a Kafka consumer, cursor kept: {error}", failure="kafka_client")
    try:
        plan = plan_read(consumer, topic, cursor, limits, kafka)
        if isinstance(plan, str):
            failure = "kafka_unreachable" if plan.startswith("Kafka unreachable") else None
            return LabelTick(skip_reason=plan, failure=failure)
        if not plan.targets:
            return LabelTick(skip_reason=f"no new messages on {topic}")
        reader = PlannedReader(consumer, topic, plan, limits)
        now = clock()
        try:
            for message in reader:
                value = message.value()
                try:
                    event = parse_label(
                        spec, value, now=now, max_clock_skew=skew, max_message_bytes=limits.max_message_bytes
                    )
                except LabelRefused as error:
                    letters.add(message, str(error))
                except Exception as error:  # a parser bug must not hold the partition: the message goes to the DLQ
                    logger.warning("%s: unexpected error parsing a label", spec.name, exc_info=True)
                    letters.add(message, f"value: could not be parsed ({type(error).__name__}: {error})")
                else:
                    identity = label_identity(event, value or b"")
                    labels.append(LabelMessage(topic, message.partition(), message.offset(), event, identity))
                    originals[(message.partition(), message.offset())] = message
        except KafkaException as error:
            return LabelTick(skip_reason=f"reading {topic} failed, cursor kept: {error}", failure="kafka_consume")
    finally:
        consumer.close()
    try:
        result = store_labels(dsn, labels)
    except psycopg.Error as error:  # database down: keep the cursor, the next tick reads the same offsets again
        detail = str(error).strip() or type(error).__name__
        return LabelTick(skip_reason=f"could not store labels, cursor kept: {detail}", failure="labels_not_stored")
    for label, reason in result.refused:
        letters.add(originals[(label.partition, label.offset)], f"value: refused by the inference log ({reason})")
    try:
        letters.publish(kafka, limits.dead_letter_flush_seconds)
    except KafkaException as error:
        return LabelTick(
            skip_reason=f"could not write dead letters, cursor kept (the labels are stored): {error}",
            failure="dead_letters_not_acknowledged",
        )
    return LabelTick(
        cursor=reader.next_offset,
        stored=result.stored,
        consumed=reader.consumed,
        dead_letters=letters.reasons.total(),
        reasons=dict(letters.reasons),
    )


def build_kafka_labels_sensor(spec: DatasetSpec, limits: IngestionLimits | None = None) -> dg.SensorDefinition:
    """``kafka_labels_<dataset>``: stores new labels for monitoring's realised performance."""
    name = spec.name
    component = f"labels_{name}"

    @dg.sensor(
        name=names.kafka_labels_sensor(name),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Consume {name}'s labels topic into prediction_labels (cursor = next offset per partition).",
    )
    def kafka_labels(
        context: dg.SensorEvaluationContext, inference_log: InferenceLogResource, kafka: KafkaResource
    ) -> dg.SensorResult | dg.SkipReason:
        def failed(reason: str, text: str, dsn: str | None) -> dg.SkipReason:
            report_failure(component, reason, text, dsn=dsn, log=logger)
            return dg.SkipReason(f"{component} failed ({reason}): {text}")

        try:
            known_dsn: str | None = inference_log.resolve_dsn()
        except InferenceLogNotAvailableError as error:
            return failed("inference_log_not_configured", str(error), None)
        try:
            config = kafka.client_config()
        except KafkaNotConfiguredError as error:
            return failed("kafka_not_configured", str(error), known_dsn)
        try:
            dsn = inference_log.get_dsn()
        except psycopg.Error as error:
            detail = str(error).strip() or type(error).__name__
            return failed("inference_log_unavailable", f"inference log unavailable, cursor kept: {detail}", known_dsn)
        tick = ingest_labels_once(
            spec, dsn, config, parse_cursor(context.cursor), limits, topic_prefix=kafka.topic_prefix
        )
        if tick.cursor is None:
            if tick.failure is not None:
                return failed(tick.failure, tick.skip_reason or tick.failure, dsn)
            context.log.info(tick.skip_reason or "skipped")
            return dg.SkipReason(tick.skip_reason)
        summary = f"{name}: {tick.consumed} label message(s), {tick.stored} stored, {tick.dead_letters} dead-lettered"
        context.log.info(summary + (f" {tick.reasons}" if tick.reasons else ""))
        return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=format_cursor(tick.cursor))

    return kafka_labels
