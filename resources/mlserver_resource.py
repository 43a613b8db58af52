"""Dagster resource for MLServer: its HTTP address and the model repository folder it serves from."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.mlserver_admin import MLServerAdmin
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from riverbed.stack_file import running_stack


class MLServerResource(dg.ConfigurableResource["MLServerResource"]):
    """Where deployments are installed (``model_repository``) and which MLServer hot-loads them (``url``).

    Production (``local_home`` unset): MLServer must answer before a deployment moves anything, except for a
    dataset nothing serves yet. Local (``local_home`` set): MLServer runs only inside ``riverbed serve``; while
    no such stack runs in that home, a deployment installs the model and moves the pointer, and the stack's
    next start loads it; while one runs, the production rule applies.
    """

    url: str
    model_repository: str
    timeout: float = 10.0
    local_home: str | None = Field(
        default=None,
        description="Local environment: the Riverbed home whose `riverbed serve` runs MLServer (unset: production).",
    )

    def must_answer(self) -> bool | None:
        """False: install for the next start (no local stack runs); None: the deployment's default rule."""
        if self.local_home is None:
            return None
        return None if running_stack(RiverbedSettings(home=Path(self.local_home))) is not None else False

    def repository(self) -> ModelRepository:
        return ModelRepository(Path(self.model_repository))

    def admin(self) -> MLServerAdmin:
        return MLServerAdmin(self.url, timeout=self.timeout)
