"""Route a dataset's requests to the model its deployment pointer names, surviving a hot swap.

During a swap the new model is loaded before the pointer moves and the old one is unloaded after a drain;
a caller that still used the old name gets "model not found" from MLServer, re-reads the pointer and
retries once. The gateway can reuse :func:`resolve_served_model` and :func:`is_model_gone`.
"""

import logging
import re
from typing import Any

import httpx

from riverbed.model_repository import DeployedModel, ModelRepository

logger = logging.getLogger(__name__)

_GONE = re.compile(r"not found|not ready|unavailable|not loaded", re.IGNORECASE)


class NoDeploymentError(LookupError):
    """Nothing is deployed for the dataset (no deployment pointer)."""


def resolve_served_model(repository: ModelRepository, dataset: str) -> DeployedModel:
    """The dataset's current deployment, read from its pointer file."""
    deployment = repository.read_deployment(dataset)
    if deployment is None:
        raise NoDeploymentError(
            f"no model is deployed for dataset {dataset!r} (no pointer at {repository.pointer_path(dataset)}); "
            f"train and deploy one first"
        )
    return deployment


def is_model_gone(status_code: int, body: str) -> bool:
    """True if MLServer answered that the model is not (or no longer) there, so a re-read pointer may help."""
    return status_code in (400, 404) and bool(_GONE.search(body))


class RoutedInferenceClient:
    """Sync V2 inference client that resolves the served model through the deployment pointer."""

    def __init__(self, mlserver_url: str, repository: ModelRepository, timeout: float = 30.0) -> None:
        self.repository = repository
        self._client = httpx.Client(base_url=mlserver_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RoutedInferenceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, dataset: str, payload: dict[str, Any]) -> tuple[DeployedModel, httpx.Response]:
        """POST the V2 request to the deployed model; on "model not found" re-read the pointer and retry once."""
        deployment = resolve_served_model(self.repository, dataset)
        response = self._client.post(f"/v2/models/{deployment.served_model_name}/infer", json=payload)
        if is_model_gone(response.status_code, response.text):
            fresh = resolve_served_model(self.repository, dataset)
            logger.info(
                "%s answered %d for %s; retrying on %s",
                dataset,
                response.status_code,
                deployment.served_model_name,
                fresh.served_model_name,
            )
            deployment = fresh
            response = self._client.post(f"/v2/models/{deployment.served_model_name}/infer", json=payload)
        return deployment, response
