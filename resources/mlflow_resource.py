"""Dagster resource for MLflow tracking and the model registry (SQLite + local artifacts, or a server)."""

import os
from pathlib import Path

import dagster as dg


class MlflowTrackingResource(dg.ConfigurableResource):
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

    def prepare(self, dataset: str) -> str:
        """Make sure the experiment exists (with its artifact root); returns the experiment name."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        name = self.experiment_name(dataset)
        if client.get_experiment_by_name(name) is None:
            location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
            client.create_experiment(name, artifact_location=location)
        return name
