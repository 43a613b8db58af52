"""Dagster resource for MLflow tracking and the model registry (SQLite + local artifacts, or a server).

:func:`mlflow_client` is the one place an ``MlflowClient`` is built (tracking and registry on the same URI).
``import mlflow`` takes seconds (~1.3 s warm, ~6 s cold), so it happens there, on first use, never at import.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from mlflow import MlflowClient

QUIET_MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no tqdm bars in Dagster logs
}


def quiet_mlflow() -> None:
    """No telemetry and no progress bars, unless the environment says otherwise (call before ``import mlflow``)."""
    for key, value in QUIET_MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def mlflow_client(tracking_uri: str) -> "MlflowClient":
    """An ``MlflowClient`` on ``tracking_uri`` for both tracking and the model registry."""
    quiet_mlflow()
    import mlflow  # seconds to import: only when a client is needed

    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class MlflowTrackingResource(dg.ConfigurableResource["MlflowTrackingResource"]):
    """Where runs are tracked and models registered.

    ``tracking_uri`` is a ``sqlite:///`` path on embedded defaults or an ``http(s)://`` server in
    production; ``artifact_root`` applies to experiments this resource creates.
    """

    tracking_uri: str
    artifact_root: str | None = None
    experiment_prefix: str = "riverbed"
    registered_model_prefix: str = "riverbed"

    def experiment_name(self, dataset: str) -> str:
        return f"{self.experiment_prefix}-{dataset}"

    def registered_model_name(self, dataset: str) -> str:
        return f"{self.registered_model_prefix}-{dataset}"

    def client(self) -> "MlflowClient":
        """A client on this resource's tracking URI (tracking and registry)."""
        return mlflow_client(self.tracking_uri)

    def prepare(self, dataset: str) -> str:
        """Make sure the experiment exists (with its artifact root); returns the experiment name."""
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = self.client()
        name = self.experiment_name(dataset)
        if client.get_experiment_by_name(name) is None:
            location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
            client.create_experiment(name, artifact_location=location)
        return name
