"""Small typed records shared across the platform (assets, CLI, serving)."""

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


class ModelRecord(BaseModel):
    """A trained, registered model version and the lineage behind it (what the model asset returns)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    dataset: str
    registered_model_name: str
    version: int
    mlflow_run_id: str
    model_uri: str = Field(description="Pinned registry URI, models:/<name>/<version> (never 'latest').")
    training_set_commit_id: str
    training_set_uri: str
    data_commit_ids: dict[str, str] = Field(description="Feature partition -> commit id it was read at.")
    dagster_run_id: str
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
