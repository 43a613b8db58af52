"""The Kafka resource: same key in both environments, dev broker fallback, secrets only from the environment."""

import json
from pathlib import Path

import pytest
from confluent_kafka import Producer

from platform_assets.environments import build_resources
from resources.kafka_resource import KafkaResource
from riverbed.kafka_config import KafkaNotConfiguredError
from riverbed.settings import Environment, RiverbedSettings, get_settings


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_local_resource_uses_the_dev_broker_recorded_in_home(tmp_path: Path) -> None:
    resource = build_resources(RiverbedSettings(home=tmp_path))["kafka"]
    with pytest.raises(KafkaNotConfiguredError, match="dev-broker"):
        resource.client_config()
    handle = Producer({"test.mock.num.brokers": 1})
    address = ",".join(f"{b.host}:{b.port}" for b in handle.list_topics(timeout=10).brokers.values())
    (tmp_path / "kafka.json").write_text(json.dumps({"bootstrap_servers": address}))
    config = resource.client_config(**{"group.id": "g"})
    assert config["bootstrap.servers"] == address and config["group.id"] == "g"
    assert Producer(config).list_topics(timeout=10).brokers  # a real broker answers at that address


def test_production_resource_reads_the_broker_and_the_sasl_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = RiverbedSettings(
        home=tmp_path,
        env=Environment.PRODUCTION,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="riverbed",
    )
    resource = build_resources(settings)["kafka"]
    assert isinstance(resource, KafkaResource)
    monkeypatch.setenv("RIVERBED_KAFKA_BOOTSTRAP_SERVERS", "broker-1:9093")
    monkeypatch.setenv("RIVERBED_KAFKA_SASL_PASSWORD", "s3cret")
    config = resource.process_config_and_initialize().client_config()  # EnvVars resolve at launch
    assert config["bootstrap.servers"] == "broker-1:9093"
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "PLAIN"
    assert config["sasl.username"] == "riverbed"
    assert config["sasl.password"] == "s3cret"
    assert "s3cret" not in json.dumps(resource.model_dump(mode="json"), default=str)
