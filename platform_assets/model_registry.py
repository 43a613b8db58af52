"""What the MLflow registry holds per dataset: versions, aliases, metrics, why each was trained, the gate's verdict.

The readers of the tags the pipeline writes live here: :func:`reason_from_mlflow_tags` reads what
:func:`platform_assets.training.mlflow_run_tags` wrote on the run, :func:`gate_verdict` reads what
:func:`platform_assets.promotion_gate.gate_version_tags` wrote on the model version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from resources.mlflow_resource import MlflowTrackingResource, mlflow_client
from riverbed.names import GateVerdict, MlflowTag
from riverbed.settings import RiverbedSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

KEY_METRICS = ("roc_auc", "accuracy", "f1", "log_loss")
GATE_PENDING = "pending"  # shown for a version the gate has not judged yet (no MlflowTag.GATE tag)


def reason_from_mlflow_tags(tags: Mapping[str, str]) -> str | None:
    """Why the run was trained (a TrainingReason value), from its MLflow run tags; None if not recorded."""
    return tags.get(MlflowTag.REASON)


def gate_verdict(tags: Mapping[str, str]) -> str:
    """The gate's verdict on a model version (a GateVerdict value), or ``pending`` if it was not gated yet."""
    return tags.get(MlflowTag.GATE, GATE_PENDING)


def gate_reason(tags: Mapping[str, str], default: str = "") -> str:
    return tags.get(MlflowTag.GATE_REASON, default)


def gate_passed(tags: Mapping[str, str]) -> bool:
    return gate_verdict(tags) == GateVerdict.PASSED


def registered_aliases(client: MlflowClient, registered_model_name: str) -> dict[str, int]:
    """Alias -> version of a registered model ({} if the model is not registered yet)."""
    from mlflow.exceptions import MlflowException  # imports mlflow (seconds): only when the registry is used

    try:
        model = client.get_registered_model(registered_model_name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def version_exists(client: MlflowClient, registered_model_name: str, version: int) -> bool:
    from mlflow.exceptions import MlflowException  # imports mlflow (seconds): only when the registry is used

    try:
        client.get_model_version(registered_model_name, str(version))
    except MlflowException as error:  # "no such version" only; a registry that cannot be read is an error
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True


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
        by_version: dict[int, list[str]] = {}
        for alias, aliased in registered_aliases(client, name).items():
            by_version.setdefault(aliased, []).append(alias)
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
                    reason=(reason_from_mlflow_tags(run.data.tags) if run else None) or "unknown",
                    gate=gate_verdict(tags),
                    gate_reason=gate_reason(tags),
                    metrics=metrics,
                    mlflow_run_id=version.run_id or "",
                    created_at_ms=int(version.creation_timestamp or 0),
                )
            )
    return sorted(summaries, key=lambda s: (s.dataset, -s.version))
