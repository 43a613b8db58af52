"""Typed records shared across the platform: the lineage of a model version, and what assets return.

``ModelLineage`` is the one lineage type. The model asset returns it (inside ``ModelRecord``), the deployment
pointer carries it (``DeployedModel``), and the gateway writes it into every inference-log row
(:meth:`ModelLineage.audit_fields`): model version -> MLflow run -> data commits -> Dagster run.
``DataLineage`` is where a training's data came from (MLflow dataset inputs and the model card).
"""

from __future__ import annotations

import datetime as dt
import enum

from pydantic import BaseModel, ConfigDict, Field


class TrainingReason(enum.StrEnum):
    """Why a model version was trained."""

    INITIAL = "initial"
    MANUAL = "manual"
    DRIFT = "drift"
    PERFORMANCE = "performance"
    NEW_DATA = "new_data"
    SCHEDULE = "schedule"


class TrainingSetSummary(BaseModel):
    """What a training set was built from."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    partitions: list[str]
    partition_commit_ids: dict[str, str]
    train_rows: int
    test_rows: int
    positive_rate_train: float
    positive_rate_test: float


class ModelLineage(BaseModel):
    """A registered model version and everything it was built from; every link stored, never recomputed."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    dataset: str
    registered_model_name: str
    version: int
    mlflow_run_id: str
    model_uri: str = Field(description="Pinned registry URI, models:/<name>/<version> (never 'latest').")
    training_set_commit_id: str
    data_commit_ids: dict[str, str] = Field(
        default_factory=dict, description="Feature partition -> commit id it was read at."
    )
    dagster_run_id: str
    artifact_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="File name -> SHA-256 of the version's model artifacts, as recorded when it was registered.",
    )

    def audit_fields(self) -> dict[str, str | dict[str, str]]:
        """The lineage columns of an inference-log row (``model_version`` as text, as the log stores it)."""
        return {
            "model_name": self.registered_model_name,
            "model_version": str(self.version),
            "mlflow_run_id": self.mlflow_run_id,
            "training_set_commit_id": self.training_set_commit_id,
            "data_commit_ids": dict(self.data_commit_ids),
            "dagster_run_id": self.dagster_run_id,
        }


class DataLineage(BaseModel):
    """Where a training's data came from: commit-pinned ``lakefs://`` URIs, commits, partitions, row counts."""

    model_config = ConfigDict(frozen=True)

    training_data_uri: str
    test_data_uri: str
    data_commit_ids: list[str]
    partitions: list[str]
    train_rows: int
    test_rows: int
    dagster_run_id: str


class ModelRecord(ModelLineage):
    """A trained, registered model version and the lineage behind it (what the model asset returns)."""

    training_set_uri: str
    reason: TrainingReason = TrainingReason.MANUAL
    metrics: dict[str, float] = Field(default_factory=dict)
    fairness: dict[str, dict[str, float]] = Field(default_factory=dict)
    trained_at: dt.datetime


class DeploymentRecord(BaseModel):
    """A model version made the dataset's champion and installed for serving (what the deployment asset returns)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    dataset: str
    registered_model_name: str
    version: int
    served_model_name: str
    model_uri: str = Field(description="Pinned registry URI, models:/<name>/<version>.")
    previous_version: int | None = None
    previous_served_model_name: str | None = None
    mlserver_loaded: bool = Field(description="True if a running MLServer hot-loaded it; else the next start will.")
    old_model_unloaded: bool = False
    deployed_at: dt.datetime
