"""Versioned SQL migrations of the inference-log database (files in ``serving/migrations/NNNN_name.sql``).

:func:`apply_migrations` is idempotent and safe when several processes start at once: every migration runs in
its own transaction under one transaction-scoped advisory lock, and is recorded in ``riverbed_schema_migrations``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent  # the numbered .sql files beside this module
# An arbitrary constant identifying Riverbed's migration lock among advisory locks ("riverbed" as a number).
ADVISORY_LOCK_KEY = 0x7269766572626564
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
create table if not exists riverbed_schema_migrations (
    version text primary key,
    applied_at timestamptz not null default now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a file not named ``NNNN_name.sql`` is an error."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append(Migration(version=path.stem, path=path))
    versions = [m.version[:4] for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migration files share a version number in {directory}")
    return found


def apply_migrations(dsn: str, *, connect_timeout: float = 5.0, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction; returns the versions applied."""
    applied: list[str] = []
    migrations = available_migrations(directory)
    with psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout)), autocommit=True) as conn:
        if _all_recorded(conn, migrations):
            return applied  # nothing to do: needs only SELECT, so least-privileged roles may call this
        for migration in migrations:
            with conn.transaction():
                # Serialises concurrent starters: the loser waits, then sees the version recorded and skips it.
                conn.execute("select pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                conn.execute(_CREATE_TABLE)
                done = conn.execute(
                    "select 1 from riverbed_schema_migrations where version = %s", (migration.version,)
                ).fetchone()
                if done:
                    continue
                logger.info("applying migration %s", migration.version)
                conn.execute(migration.sql.encode())  # no parameters: several statements are allowed
                conn.execute(
                    "insert into riverbed_schema_migrations (version, applied_at) values (%s, now())",
                    (migration.version,),
                )
                applied.append(migration.version)
    if applied:
        logger.info("applied migrations %s", applied)
    return applied


def _all_recorded(conn: psycopg.Connection[Any], migrations: list[Migration]) -> bool:
    """Whether every migration is already recorded, read without DDL or locks (false if the table is missing)."""
    exists = conn.execute("select to_regclass('riverbed_schema_migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return False
    recorded = {row[0] for row in conn.execute("select version from riverbed_schema_migrations").fetchall()}
    return all(migration.version in recorded for migration in migrations)
