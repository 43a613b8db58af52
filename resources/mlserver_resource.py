"""Dagster resource for MLServer: its HTTP address and the model repository folder it serves from."""

from pathlib import Path

import dagster as dg

from resources.mlserver_admin import MLServerAdmin
from riverbed.model_repository import ModelRepository


class MLServerResource(dg.ConfigurableResource["MLServerResource"]):
    """Where deployments are installed (``model_repository``) and which MLServer hot-loads them (``url``).

    MLServer need not be running: the deployment then only installs the model and moves the pointer, and
    the next ``mlserver start`` loads it.
    """

    url: str
    model_repository: str
    timeout: float = 10.0

    def repository(self) -> ModelRepository:
        return ModelRepository(Path(self.model_repository))

    def admin(self) -> MLServerAdmin:
        return MLServerAdmin(self.url, timeout=self.timeout)
