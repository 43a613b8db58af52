"""The lineage chain of one logged request, as the audit API and ``riverbed audit show`` present it."""

from __future__ import annotations

from typing import Any


def lineage_of(row: dict[str, Any]) -> dict[str, Any]:
    """model version -> MLflow run -> lakeFS commit ids -> Dagster run id, as recorded with the request."""
    return {
        "model": {"name": row.get("model_name"), "version": row.get("model_version")},
        "mlflow_run_id": row.get("mlflow_run_id"),
        "training_set_commit_id": row.get("training_set_commit_id"),
        "data_commit_ids": row.get("data_commit_ids") or {},
        "dagster_run_id": row.get("dagster_run_id"),
    }
