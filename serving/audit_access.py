"""Auditing the auditors: every audit read the gateway serves is recorded in ``audit_access_log``.

One row per read: who (the API key id), which route, with which filters (JSON), how many rows it returned, when
it was received, and the request id (``X-Request-ID``). The table is append-only (migration
``0004_audit_access``). The gateway records a read before serving it: :func:`record_audit_access` raises
:class:`AuditAccessNotRecorded` if the row could not be written, and the read is then refused (503).
:func:`list_audit_access` reads the log back (for the CLI).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

RECORD_TIMEOUT_SECONDS = 5.0

_INSERT = (
    "insert into audit_access_log (received_at, key_id, route, filters, row_count, request_id) "
    "values (%s, %s, %s, %s, %s, %s)"
)


class AuditAccessNotRecorded(RuntimeError):
    """The audit read could not be recorded (database unreachable, or the row refused): do not serve it."""


@dataclass(frozen=True)
class AuditAccess:
    """One recorded audit read."""

    id: int
    received_at: dt.datetime
    key_id: str
    route: str
    filters: dict[str, Any]
    row_count: int
    request_id: str


async def record_audit_access(
    pool: AsyncConnectionPool,
    *,
    key_id: str,
    route: str,
    filters: dict[str, Any],
    row_count: int,
    request_id: str,
    received_at: dt.datetime,
    wait_seconds: float = RECORD_TIMEOUT_SECONDS,
) -> None:
    """Insert (and commit) the row of one audit read through ``pool``; raises :class:`AuditAccessNotRecorded`."""
    try:
        async with pool.connection(timeout=wait_seconds) as conn:
            await conn.execute(_INSERT, (received_at, key_id, route, Jsonb(filters), row_count, request_id))
    except Exception as error:  # any failure: the read must not be served unrecorded
        logger.error("audit read %s by key %s could not be recorded: %s", request_id, key_id, error)
        raise AuditAccessNotRecorded(f"{type(error).__name__}: {error}") from None


def list_audit_access(
    dsn: str,
    *,
    key_id: str | None = None,
    route: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
) -> list[AuditAccess]:
    """Recorded audit reads, newest first: optionally one key's, one route's, received in [since, until)."""
    if not 1 <= limit <= 100_000:
        raise ValueError(f"limit: must be between 1 and 100000, got {limit}")
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("key_id", key_id), ("route", route)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if since is not None:
        clauses.append("received_at >= %s")
        params.append(since)
    if until is not None:
        clauses.append("received_at < %s")
        params.append(until)
    where = f" where {' and '.join(clauses)}" if clauses else ""
    query = (
        "select id, received_at, key_id, route, filters, row_count, request_id from audit_access_log"
        f"{where} order by received_at desc, id desc limit %s"
    )
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*params, limit])
        return [AuditAccess(**row) for row in cur.fetchall()]
