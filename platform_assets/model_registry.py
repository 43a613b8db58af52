"""What the registry holds per dataset: versions, aliases, metrics, why each was trained, the gate's verdict."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from platform_assets.deployment import GATE_REASON_TAG, GATE_TAG, mlflow_client, registered_aliases
from resources.mlflow_resource import MlflowTrackingResource
from riverbed.settings import RiverbedSettings

KEY_METRICS = ("roc_auc", "accuracy", "f1", "log_loss")
REASON_TAG = "riverbed.reason"


class ModelVersionSummary(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    dataset: str
    registered_model_name: str
    version: int
    aliases: list[str]
    reason: str
    gate: str  # passed, failed or pending (not gated yet)
    gate_reason: str
    metrics: dict[str, float]
    mlflow_run_id: str
    created_at_ms: int


def list_model_versions(settings: RiverbedSettings, datasets: list[str]) -> list[ModelVersionSummary]:
    """Every registered version of ``datasets``, newest first."""
    tracking_uri = settings.resolved_mlflow_tracking_uri
    client = mlflow_client(tracking_uri)
    resource = MlflowTrackingResource(tracking_uri=tracking_uri)
    summaries: list[ModelVersionSummary] = []
    for dataset in datasets:
        name = resource.registered_model_name(dataset)
        aliases = registered_aliases(client, name)
        by_version: dict[int, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        for version in client.search_model_versions(f"name='{name}'"):
            run: Any = client.get_run(version.run_id) if version.run_id else None
            metrics = {k: float(v) for k, v in (run.data.metrics if run else {}).items() if k in KEY_METRICS}
            tags = version.tags or {}
            summaries.append(
                ModelVersionSummary(
                    dataset=dataset,
                    registered_model_name=name,
                    version=int(version.version),
                    aliases=sorted(by_version.get(int(version.version), [])),
                    reason=(run.data.tags.get(REASON_TAG) if run else None) or "unknown",
                    gate=tags.get(GATE_TAG, "pending"),
                    gate_reason=tags.get(GATE_REASON_TAG, ""),
                    metrics=metrics,
                    mlflow_run_id=version.run_id or "",
                    created_at_ms=int(version.creation_timestamp or 0),
                )
            )
    return sorted(summaries, key=lambda s: (s.dataset, -s.version))
