"""Fixtures of the event tests: one librdkafka mock cluster (a real Kafka-protocol broker) for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from tests.serving.conftest import migrated_dsn, postgres_dsn  # noqa: F401 - fresh databases on the machine PostgreSQL


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a mock cluster living as long as the session (tests use their own topic prefix)."""
    producer = Producer({"test.mock.num.brokers": 1})
    brokers = producer.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
    producer.flush(5)
