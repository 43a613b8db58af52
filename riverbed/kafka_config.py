"""librdkafka client configuration from settings, shared by every Kafka client (sensors, producer, gateway)."""

from __future__ import annotations

import json
from typing import Any

from riverbed.settings import RiverbedSettings


class KafkaNotConfiguredError(RuntimeError):
    """No bootstrap servers are configured and no dev broker is running."""


def bootstrap_servers(settings: RiverbedSettings) -> str:
    """Configured servers, else the running dev broker's address from ``<home>/kafka.json``."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    try:
        recorded = json.loads(settings.kafka_dev_broker_file.read_text())
        return str(recorded["bootstrap_servers"])
    except (OSError, ValueError, KeyError) as error:
        raise KafkaNotConfiguredError(
            "no Kafka configured: set RIVERBED_KAFKA_BOOTSTRAP_SERVERS or start `riverbed kafka dev-broker`"
        ) from error


def client_config(settings: RiverbedSettings, **overrides: Any) -> dict[str, Any]:
    """Common librdkafka settings (bootstrap servers, security); callers add group ids etc. via ``overrides``."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(settings),
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    config.update(overrides)
    return config
