"""Which served model answers for each dataset: the deployment pointers in MLServer's model repository.

The deployment step loads a new version into MLServer, then rewrites the dataset's pointer, then unloads the
old version after a drain. The gateway re-reads a pointer when its file changes (checked at most every
``POINTER_POLL_SECONDS``) and immediately when MLServer says the model it used is gone, so a swap never
fails a request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from riverbed.model_repository import POINTER_POLL_SECONDS, DeployedModel, ModelRepository

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    mtime_ns: int
    checked_at: float
    deployment: DeployedModel | None


class DeploymentDirectory:
    """Cached view of the deployment pointers, refreshed by file modification time."""

    def __init__(self, repository_root: Path, poll_seconds: float = POINTER_POLL_SECONDS) -> None:
        self.repository = ModelRepository(repository_root)
        self.poll_seconds = poll_seconds
        self._entries: dict[str, _Entry] = {}

    def _pointer(self, dataset: str) -> Path:
        return self.repository.pointer_path(dataset)

    def get(self, dataset: str, *, refresh: bool = False) -> DeployedModel | None:
        """The dataset's current deployment (None if nothing is deployed)."""
        now = time.monotonic()
        entry = self._entries.get(dataset)
        if entry is not None and not refresh and now - entry.checked_at < self.poll_seconds:
            return entry.deployment
        try:
            mtime = self._pointer(dataset).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if entry is not None and entry.mtime_ns == mtime and not refresh:
            entry.checked_at = now
            return entry.deployment
        deployment = self.repository.read_deployment(dataset) if mtime >= 0 else None
        if entry is None or entry.deployment != deployment:
            logger.info(
                "dataset %s now served by %s", dataset, deployment.served_model_name if deployment else "nothing"
            )
        self._entries[dataset] = _Entry(mtime, now, deployment)
        return deployment

    def all(self) -> list[DeployedModel]:
        return self.repository.list_deployments()
