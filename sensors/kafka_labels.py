"""``kafka_labels_<dataset>``: true labels from ``<prefix>.<dataset>.labels`` into the inference log database.

Same discipline as raw ingestion: offsets live in the sensor cursor (``{"<partition>": <next offset>}``), a tick
reads a bounded batch, refused messages go to ``.dlq`` with their reason, the valid ones are stored in one
transaction (idempotent on topic/partition/offset), and only then does the cursor advance. Labels for ids not
predicted (yet) are stored too: monitoring matches them at read time.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from confluent_kafka import Consumer, KafkaException
from pydantic import ValidationError

from monitoring.labels import LabelMessage, store_labels
from resources.inference_log_resource import InferenceLogResource
from resources.kafka_resource import KafkaResource
from riverbed import names
from riverbed.events import LabelEvent
from riverbed.kafka_config import KafkaNotConfiguredError
from riverbed.names import TOPIC_PREFIX, TopicKind, topic_name
from riverbed.specs import DatasetSpec
from sensors.kafka_ingestion import (
    DeadLetters,
    IngestionLimits,
    PlannedReader,
    consumer_config,
    format_cursor,
    parse_cursor,
    plan_read,
)


@dataclass
class LabelTick:
    skip_reason: str | None = None
    cursor: dict[int, int] | None = None
    stored: int = 0
    consumed: int = 0
    dead_letters: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _parse_label(spec: DatasetSpec, value: bytes | None) -> LabelEvent:
    if value is None:
        raise ValueError("value: missing (a tombstone carries no label)")
    try:
        event = LabelEvent.model_validate_json(value)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem.get("loc", ())) or "value"
        raise ValueError(f"{where}: {problem.get('msg', 'invalid')}") from None
    if event.dataset != spec.name:
        raise ValueError(f"dataset: {event.dataset!r} is not {spec.name!r} (the topic's dataset)")
    if event.sample_id is None and event.request_id is None:
        raise ValueError("sample_id: give sample_id or request_id to name the prediction")
    if event.label not in spec.target.classes:
        raise ValueError(f"label: {event.label!r} is not one of {spec.target.classes}")
    return event


def ingest_labels_once(
    spec: DatasetSpec,
    dsn: str,
    kafka: Mapping[str, Any],
    cursor: Mapping[int, int],
    limits: IngestionLimits | None = None,
    topic_prefix: str = TOPIC_PREFIX,
) -> LabelTick:
    """One tick: consume labels from ``cursor``, dead-letter the refused, store the valid, return the new cursor."""
    limits = limits or IngestionLimits()
    topic = topic_name(spec.name, TopicKind.LABELS, prefix=topic_prefix)
    consumer = Consumer(consumer_config(kafka, f"{spec.name}-labels", limits))
    letters = DeadLetters(topic_name(spec.name, TopicKind.DLQ, prefix=topic_prefix))
    labels: list[LabelMessage] = []
    try:
        plan = plan_read(consumer, topic, cursor, limits, kafka)
        if isinstance(plan, str):
            return LabelTick(skip_reason=plan)
        if not plan.targets:
            return LabelTick(skip_reason=f"no new messages on {topic}")
        reader = PlannedReader(consumer, topic, plan, limits)
        for message in reader:
            try:
                event = _parse_label(spec, message.value())
            except ValueError as error:
                letters.add(message, str(error))
            else:
                labels.append(LabelMessage(topic, message.partition(), message.offset(), event))
    finally:
        consumer.close()
    try:
        letters.publish(kafka, limits.dead_letter_flush_seconds)
    except KafkaException as error:
        return LabelTick(skip_reason=f"could not write dead letters, nothing stored, cursor kept: {error}")
    try:
        stored = store_labels(dsn, labels)
    except Exception as error:  # database down: keep the cursor, the next tick reads the same offsets again
        return LabelTick(skip_reason=f"could not store labels, cursor kept: {error}")
    return LabelTick(
        cursor=reader.next_offset,
        stored=stored,
        consumed=reader.consumed,
        dead_letters=letters.reasons.total(),
        reasons=dict(letters.reasons),
    )


def build_kafka_labels_sensor(spec: DatasetSpec, limits: IngestionLimits | None = None) -> dg.SensorDefinition:
    """``kafka_labels_<dataset>``: stores new labels for monitoring's realised performance."""
    name = spec.name

    @dg.sensor(
        name=names.kafka_labels_sensor(name),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Consume {name}'s labels topic into prediction_labels (cursor = next offset per partition).",
    )
    def kafka_labels(
        context: dg.SensorEvaluationContext, inference_log: InferenceLogResource, kafka: KafkaResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            config = kafka.client_config()
            dsn = inference_log.get_dsn()
        except (KafkaNotConfiguredError, RuntimeError) as error:
            return dg.SkipReason(str(error))
        except Exception as error:  # database unreachable
            return dg.SkipReason(f"inference log unavailable: {error}")
        tick = ingest_labels_once(
            spec, dsn, config, parse_cursor(context.cursor), limits, topic_prefix=kafka.topic_prefix
        )
        if tick.cursor is None:
            return dg.SkipReason(tick.skip_reason)
        summary = f"{name}: {tick.consumed} label message(s), {tick.stored} stored, {tick.dead_letters} dead-lettered"
        context.log.info(summary + (f" {tick.reasons}" if tick.reasons else ""))
        return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=format_cursor(tick.cursor))

    return kafka_labels
