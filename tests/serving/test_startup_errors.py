"""Serving start-up when champions cannot be found or installed: a registry that cannot be read, or a champion
that cannot be installed, fails the start with a message naming the dataset and the cause (WARNING + a
``pipeline_failures`` count); a dataset without a registered model is not served, at INFO, and the rest are."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from riverbed.cli.stack import ServingStack, StackError
from riverbed.model_repository import ModelRepository
from riverbed.pipeline_failures import read_failures
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from tests.serving.gateway_fixtures import install_trained_model

pytestmark = pytest.mark.timeout(180)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_for(home: Path, dsn: str, tracking_uri: str) -> RiverbedSettings:
    return RiverbedSettings(
        home=home,
        inference_log_dsn=dsn,
        mlflow_tracking_uri=tracking_uri,
        specs_dirs=[PROJECT_ROOT / "datasets"],
        model_repository=home / "model-repository",
    )


def stack_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "riverbed.cli.stack" and r.levelno >= logging.WARNING]


def test_an_unreachable_inference_log_fails_the_start_naming_it(
    tmp_path: Path, unreachable_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, f"{unreachable_dsn} password=s3cret-of-the-test", "sqlite:///unused.db")
    with pytest.raises(StackError) as raised:
        ServingStack(settings, ["salary_band"], ephemeral_ports=True).start()
    message = str(raised.value)
    shown = re.match(
        r"^the inference-log database \((.*)\) cannot be used: OperationalError: connection failed: ", message
    )
    assert shown is not None, message
    assert conninfo_to_dict(shown.group(1)) == conninfo_to_dict(unreachable_dsn)  # the DSN, without its password
    assert "Connection refused" in message
    assert stack_warnings(caplog) == [f"serving_startup: inference_log_unusable: {message}"]
    assert "s3cret" not in message and "s3cret" not in caplog.text


def test_an_unreachable_registry_fails_the_start_naming_it(
    tmp_path: Path, migrated_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(variable, raising=False)  # the stack's own bounded retries apply
    port = closed_port()
    tracking_uri = f"http://riverbed:s3cret-of-the-test@127.0.0.1:{port}"
    stack = ServingStack(settings_for(tmp_path, migrated_dsn, tracking_uri), ["salary_band"], ephemeral_ports=True)
    started = time.monotonic()
    with pytest.raises(StackError) as raised:
        stack.start()
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith(
        f"cannot serve salary_band: the MLflow registry at http://riverbed:***@127.0.0.1:{port} could not be read "
        "for riverbed-salary_band: MlflowException: API request to"
    )
    assert "Connection refused" in message and "s3cret" not in message
    assert elapsed < 30, f"the start took {elapsed:.1f} s to give up"  # MLflow alone would retry ~4 minutes
    assert stack_warnings(caplog) == [f"serving_startup: registry_unreadable: {message}"]
    assert read_failures(migrated_dsn) == {("serving_startup", "registry_unreadable"): 1}
    assert not (tmp_path / "stack.json").exists() and stack.datasets == []
    assert "s3cret" not in caplog.text


def test_a_champion_that_cannot_be_installed_fails_the_start(
    tmp_path: Path, migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    from resources.mlflow_resource import mlflow_client

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(tracking_uri)
    client.create_registered_model("riverbed-machine_failure")
    missing = tmp_path / "no-such-model"  # the registered version points at files that are not there
    version = client.create_model_version("riverbed-machine_failure", source=missing.as_uri())
    client.set_registered_model_alias("riverbed-machine_failure", "champion", version.version)
    stack = ServingStack(settings_for(tmp_path, migrated_dsn, tracking_uri), ["machine_failure"], ephemeral_ports=True)
    with pytest.raises(StackError) as raised:
        stack.start()
    message = str(raised.value)
    assert message.startswith(
        "cannot serve machine_failure: the champion riverbed-machine_failure v1 could not be installed: "
    ), message
    assert "MlflowException: Run with id=None not found" in message  # the version has no training run
    assert stack_warnings(caplog) == [f"serving_startup: champion_install_failed: {message}"]
    assert read_failures(migrated_dsn) == {("serving_startup", "champion_install_failed"): 1}


def test_no_registered_model_is_info_and_nothing_to_serve_says_so(
    tmp_path: Path, migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="riverbed.cli.stack")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stack = ServingStack(settings_for(tmp_path, migrated_dsn, tracking_uri), ["machine_failure"], ephemeral_ports=True)
    with pytest.raises(StackError, match=r"^no champion model for machine_failure: train and deploy one first"):
        stack.start()
    assert stack_warnings(caplog) == []
    infos = [r.getMessage() for r in caplog.records if r.name == "riverbed.cli.stack"]
    assert infos == [
        f"not serving machine_failure: no registered model riverbed-machine_failure in MLflow at {tracking_uri} "
        "(train and deploy one first)"
    ]
    assert read_failures(migrated_dsn) == {}


@pytest.mark.slow
def test_a_dataset_without_a_registered_model_is_skipped_and_the_others_served(
    tmp_path: Path, migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="riverbed.cli.stack")
    settings = settings_for(tmp_path, migrated_dsn, f"sqlite:///{tmp_path / 'mlflow.db'}")
    install_trained_model(ModelRepository(tmp_path / "model-repository"), 1, trees=10, folder=tmp_path / "trained")
    with ServingStack(settings, [], ephemeral_ports=True) as stack:  # every dataset: machine_failure has no model
        assert stack.datasets == ["salary_band"]
        assert ModelRepository(tmp_path / "model-repository").read_deployment("machine_failure") is None
    assert stack_warnings(caplog) == []
    assert any(
        r.getMessage().startswith("not serving machine_failure: no registered model riverbed-machine_failure")
        for r in caplog.records
        if r.levelno == logging.INFO
    )
    assert read_failures(migrated_dsn) == {}
