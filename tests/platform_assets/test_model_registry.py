"""The registry helpers tell "no such model or version" apart from "the registry cannot be read"."""

from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from platform_assets.model_registry import registered_aliases, version_exists


def test_missing_models_and_versions_are_answers(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert version_exists(client, "riverbed-nothing", 1) is False
    assert registered_aliases(client, "riverbed-nothing") == {}
    client.create_registered_model("riverbed-empty")
    assert version_exists(client, "riverbed-empty", 3) is False


def test_an_unreachable_registry_is_an_error_not_a_missing_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(tracking_uri="http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(MlflowException):
        version_exists(client, "riverbed-salary_band", 1)
    with pytest.raises(MlflowException):
        registered_aliases(client, "riverbed-salary_band")
