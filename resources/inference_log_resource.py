"""The inference log (PostgreSQL) as a Dagster resource: monitoring reads it, the labels sensor writes to it.

``dsn`` set: that database (production, from ``RIVERBED_INFERENCE_LOG_DSN``). Unset: the database of the
local serving stack started by ``riverbed serve`` (recorded in ``<home>/stack.json``).
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from riverbed.inference_log_schema import apply_migrations
from riverbed.settings import RiverbedSettings
from riverbed.stack_file import inference_log_dsn

_MIGRATED: set[str] = set()


class InferenceLogResource(dg.ConfigurableResource["InferenceLogResource"]):
    """Where the gateway's inference log lives; migrations are applied on first use."""

    dsn: str | None = Field(default=None, description="libpq DSN; unset means the local stack's database.")
    home: str | None = Field(default=None, description="Riverbed home of the local stack (when dsn is unset).")

    def resolve_dsn(self) -> str:
        """The configured DSN, without touching the database.

        Raises :class:`riverbed.stack_file.InferenceLogNotAvailableError` when no DSN is set and no local stack runs.
        """
        if self.dsn:
            return self.dsn
        settings = RiverbedSettings(home=Path(self.home)) if self.home else RiverbedSettings()
        return inference_log_dsn(settings)

    def get_dsn(self) -> str:
        """The DSN with the schema migrated (idempotent); raises when no database is configured or running
        (:class:`riverbed.stack_file.InferenceLogNotAvailableError`) or reachable (:class:`psycopg.Error`)."""
        dsn = self.resolve_dsn()
        if dsn not in _MIGRATED:  # once per process: sensors call this on every tick
            apply_migrations(dsn)
            _MIGRATED.add(dsn)
        return dsn
