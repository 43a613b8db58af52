"""Prediction events to Kafka, asynchronously: the audit log is the source of truth, Kafka is best effort.

``produce`` only appends to librdkafka's bounded in-memory queue (microseconds); a background task serves
delivery callbacks. Kafka being down or slow never fails a prediction and never blocks one: when the queue
is full the event is dropped and counted (it remains in the inference log). :func:`start_event_publisher`
starts the one publisher in the gateway's lifespan; :func:`prediction_events` builds a request's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Producer

from riverbed.kafka_config import KafkaNotConfiguredError, client_config
from riverbed.model_repository import DeployedModel
from riverbed.names import TopicKind, topic_name
from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.schemas import ParsedRequest

logger = logging.getLogger(__name__)

QUEUE_MAX_MESSAGES = 100_000
DELIVERY_TIMEOUT_MS = 30_000


class PredictionEventPublisher:
    """One producer per gateway process; :meth:`start` and :meth:`stop` in the lifespan."""

    def __init__(
        self,
        config: dict[str, Any],
        topic_for: Callable[[str], str],
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self._config = {
            **config,
            "acks": "1",
            "linger.ms": 5,
            "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
            "message.timeout.ms": DELIVERY_TIMEOUT_MS,
            "socket.connection.setup.timeout.ms": 3000,
        }
        self._topic_for = topic_for
        self._count = count or (lambda outcome, n: None)
        self._producer: Any = None
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._producer = Producer(self._config)
        self._poller = asyncio.create_task(self._poll_forever(), name="prediction-events-poller")

    async def stop(self, flush_seconds: float = 5.0) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._producer is not None:
            left = await asyncio.to_thread(self._producer.flush, flush_seconds)
            if left:
                logger.warning("%d prediction events not delivered at shutdown (they are in the audit log)", left)
                self._count("undelivered_at_shutdown", left)
            self._producer = None

    async def _poll_forever(self) -> None:
        while True:
            self._producer.poll(0)
            await asyncio.sleep(0.05)

    def _delivered(self, error: Any, message: Any) -> None:
        self._count("failed" if error is not None else "delivered", 1)

    def publish(self, dataset: str, events: list[dict[str, Any]]) -> None:
        """Queue one event per predicted record; never raises, never blocks."""
        if self._producer is None:
            return
        topic = self._topic_for(dataset)
        queued = 0
        for event in events:
            try:
                self._producer.produce(
                    topic,
                    key=(event.get("sample_id") or event["request_id"]).encode(),
                    value=orjson.dumps(event),
                    on_delivery=self._delivered,
                )
                queued += 1
            except BufferError:
                self._count("dropped", len(events) - queued)
                break
            except Exception as error:  # a misconfigured topic or client: log, keep serving
                logger.warning("prediction event not queued: %s", error)
                self._count("dropped", len(events) - queued)
                break
        if queued:
            self._count("queued", queued)


async def start_event_publisher(settings: RiverbedSettings, metrics: GatewayMetrics) -> PredictionEventPublisher | None:
    """A started publisher of prediction events, or None when Kafka is not configured."""
    try:
        config = client_config(settings)
    except KafkaNotConfiguredError:
        logger.info("no Kafka configured: prediction events are not published (the audit log has them)")
        return None
    publisher = PredictionEventPublisher(
        config,
        lambda dataset: topic_name(dataset, TopicKind.PREDICTIONS, settings.kafka_topic_prefix),
        lambda outcome, n: metrics.prediction_events.labels(outcome).inc(n),
    )
    await publisher.start()
    logger.info("publishing prediction events to %s", config["bootstrap.servers"])
    return publisher


def prediction_events(
    spec: DatasetSpec,
    request_id: str,
    received: dt.datetime,
    deployment: DeployedModel,
    parsed: ParsedRequest,
    predictions: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """One event per predicted record (its event time defaults to when the request was received)."""
    received_text = received.isoformat()
    positive = spec.target.positive_class
    events = []
    for index, (record, prediction) in enumerate(zip(parsed.records, predictions, strict=True)):
        event_time = getattr(record, "event_time", None)
        events.append(
            {
                "dataset": spec.name,
                "request_id": request_id,
                "record_index": index,
                "sample_id": prediction.get("sample_id"),
                "event_time": event_time.isoformat() if event_time is not None else received_text,
                "model_name": deployment.registered_model_name,
                "model_version": deployment.version,
                "label": prediction["label"],
                "probability": prediction["probabilities"][positive],
            }
        )
    return events
