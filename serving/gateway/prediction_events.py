"""Prediction events to Kafka, asynchronously: the audit log is the source of truth, Kafka is best effort.

``produce`` only appends to librdkafka's bounded in-memory queue (microseconds); a background task serves
delivery callbacks. Kafka being down or slow never fails a prediction and never blocks one: when the queue
is full the event is dropped and counted (it remains in the inference log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

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
        from confluent_kafka import Producer

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
