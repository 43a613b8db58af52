"""Kafka (confluent-kafka / librdkafka) as a Dagster resource: what every Riverbed client connects with.

``bootstrap_servers`` unset means the embedded dev broker recorded under ``home`` by ``riverbed kafka
dev-broker``. SASL/SSL options are plain fields except the SASL password, which is never part of the resource's
(visible) configuration: it is read from ``RIVERBED_KAFKA_SASL_PASSWORD`` when a client is built.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from riverbed.kafka_config import client_config
from riverbed.settings import RiverbedSettings, get_settings


class KafkaResource(dg.ConfigurableResource["KafkaResource"]):
    """Broker address, security and topic prefix; ``client_config()`` gives the librdkafka settings."""

    bootstrap_servers: str | None = Field(default=None, description="host:port,...; unset: the local dev broker.")
    home: str | None = Field(default=None, description="Riverbed home holding the dev broker's address.")
    security_protocol: str = Field(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.")
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    ssl_ca_location: str | None = None
    topic_prefix: str = "riverbed"

    def settings(self) -> RiverbedSettings:
        update: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap_servers or None,
            "kafka_security_protocol": self.security_protocol,
            "kafka_sasl_mechanism": self.sasl_mechanism,
            "kafka_sasl_username": self.sasl_username,
            "kafka_ssl_ca_location": Path(self.ssl_ca_location) if self.ssl_ca_location else None,
            "kafka_topic_prefix": self.topic_prefix,
        }
        if self.home:
            update["home"] = Path(self.home)
        return get_settings().model_copy(update=update)

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings; raises ``KafkaNotConfiguredError`` when no broker is configured or running."""
        return client_config(self.settings(), **overrides)


def kafka_resource_for(settings: RiverbedSettings, bootstrap_servers: Any = None) -> KafkaResource:
    """The resource for ``settings`` (``bootstrap_servers`` may be a ``dg.EnvVar``)."""
    return KafkaResource(
        bootstrap_servers=bootstrap_servers if bootstrap_servers is not None else settings.kafka_bootstrap_servers,
        home=str(settings.home),
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        ssl_ca_location=str(settings.kafka_ssl_ca_location) if settings.kafka_ssl_ca_location else None,
        topic_prefix=settings.kafka_topic_prefix,
    )
